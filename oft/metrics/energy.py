"""Preservation (paper §3, Fig. 3): how much finetuning changed the hyperspherical energy of each adapted layer.

OFT and COFT rotate every neuron of a layer by the same orthogonal matrix (and post-fitting rescales neurons),
so the pairwise angles between neurons, and with them the energy, stay exactly as pretrained: a change is float
rounding only. LoRA's additive update has no such constraint; its change is the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from oft_layers import OFTLayer, hyperspherical_energy


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: ``diag(s) W Bᵀ`` for an OFT layer (merged or not), else its weight."""
    if isinstance(module, OFTLayer):
        return module.base.weight if module.merged else module.rotated_weight()
    return module.weight


def effective_weights(unet: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """``effective_weight`` of each module of ``unet`` named in ``names``."""
    modules = dict(unet.named_modules())
    return {name: effective_weight(modules[name]).detach() for name in names}


def energy_changes(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``|E(W') - E(W)| / E(W)`` per layer: the relative change of its hyperspherical energy (float64)."""
    if set(base) != set(tuned):
        raise ValueError(f"the layers differ: {sorted(set(base) ^ set(tuned))[:3]}")
    out = {}
    for name, weight in base.items():
        before = hyperspherical_energy(weight)
        out[name] = float((hyperspherical_energy(tuned[name]) - before).abs() / before)
    return out


def summarize(changes: Mapping[str, float]) -> dict[str, float]:
    """The largest and the mean relative change over the layers, and how many layers there are."""
    values = list(changes.values())
    return {"max": max(values), "mean": sum(values) / len(values), "layers": len(values)}
