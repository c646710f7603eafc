"""The LoRA baseline of the demo: the same control module, with LoRA instead of OFT on the same 144-style targets.

``LoRAControl`` is ``ControlOFT`` (same data, loss, optimizer, checkpoints, Lightning ``fit``) whose OFT layers
(R = 0, i.e. exactly the base) are stripped and replaced by PEFT LoRA adapters on ``CONTROL_TARGETS``; the hint
encoder trains as for OFT. For sampling, ``export_merged`` folds the trained LoRA into the base weights (PEFT's
``merge``) and writes (a) that merged SD as a single-file checkpoint and (b) a control file on it carrying the
trained hint encoder and identity rotations, so ``test_oft_parallel.py`` samples the LoRA model unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import oft_layers
from oft.control.checkpoint import new_control_model, save_control
from oft.control.model import ControlOFT
from oft.sd import CONTROL_TARGETS, load_sd
from oft.sd.convert import save_single_file
from oft.sd.targets import match_targets

try:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
except ImportError as err:  # pragma: no cover - peft is in the dev extra that `make demo` installs
    raise ImportError("the LoRA baseline needs peft: pip install -e '.[dev]' (or run `make demo`)") from err

TARGET_REGEX = (
    "(?:" + "|".join(CONTROL_TARGETS) + ")"
)  # PEFT full-matches a string target against module names


def _plain(layer: nn.Module) -> nn.Module:
    """The frozen base layer of an OFT-wrapped target, else the layer itself."""
    return layer.base if isinstance(layer, oft_layers.layers.OFTLayer) else layer


def lora_parameters_per_rank(unet: nn.Module) -> int:
    """Trainable LoRA parameters per unit of rank on the control targets: Σ (in + out) over the target linears."""
    modules = dict(unet.named_modules())
    layers = [_plain(modules[n]) for n in match_targets(modules, CONTROL_TARGETS)]
    return sum(layer.in_features + layer.out_features for layer in layers)


def matched_rank(unet: nn.Module, oft_parameters: int) -> int:
    """The LoRA rank (>= 1) whose parameter count on the control targets is closest to ``oft_parameters``."""
    per_rank = lora_parameters_per_rank(unet)
    return max(1, round(oft_parameters / per_rank))


def lora_modules(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


class LoRAControl(ControlOFT):
    """``ControlOFT`` with rank-``rank`` LoRA (alpha = rank, B = 0 at start) instead of OFT on the control targets.

    ``model_path`` is an initial control file of ``tool_add_control_oft.py`` (its R = 0 rotations are removed).
    """

    def __init__(self, model_path: str, base: str | None = None, *, rank: int, **kwargs) -> None:
        super().__init__(model_path, base, stage="oft", **kwargs)
        if rank < 1:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        oft_layers.strip(self.unet)  # R = 0: the plain base layers come back unchanged
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_REGEX, init_lora_weights=True)
        inject_adapter_in_model(config, self.unet)
        self.rank = rank

    def adapter_parameters(self) -> int:
        """Trainable LoRA parameters (A and B of every target)."""
        return sum(p.numel() for n, p in self.unet.named_parameters() if "lora_" in n and p.requires_grad)

    def export_merged(self, base_out: str | os.PathLike, control_out: str | os.PathLike) -> tuple[Path, Path]:
        """Fold the LoRA into the UNet (in place) and write the merged SD and a control file on it (see module doc)."""
        for name, layer in lora_modules(self.unet):
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(self.unet.get_submodule(parent), child, layer.get_base_layer())
        base_out = save_single_file(self.cm.sd, base_out)
        sd = load_sd(base_out)
        model = new_control_model(sd, r=int(self.cm.meta["r"]), eps=None, coft=False, block_share=False)
        with torch.no_grad():
            model.hint.load_state_dict(self.hint.state_dict())
        return base_out, save_control(
            model, control_out, base_path=base_out, extra={"method": f"lora_r{self.rank}"}
        )
