"""The LoRA baseline of the demo: the same control module, with LoRA instead of OFT on the same 144-style targets.

``LoRAControl`` is ``ControlOFT`` (same data, loss, optimizer, checkpoints, Lightning ``fit``) whose OFT layers
(R = 0, i.e. exactly the base) are stripped and replaced by PEFT LoRA adapters on ``CONTROL_TARGETS``; the hint
encoder trains as for OFT. ``export`` writes the trained LoRA and hint encoder (a few MB, the base referenced
through the initial control file); ``load_lora_control`` rebuilds it with the LoRA folded into the base weights
(PEFT's ``merge``): a ``ControlModel`` the sampler takes as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import oft_layers
from oft.common.files import atomic_write
from oft.control.checkpoint import ControlModel, load_control
from oft.control.model import ControlOFT
from oft.sd import CONTROL_TARGETS
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


def inject_lora(cm: ControlModel, rank: int) -> None:
    """Replace the R = 0 OFT layers of ``cm`` (exactly the base) by rank-``rank`` LoRA (alpha = rank, B = 0)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    oft_layers.strip(cm.sd.unet)  # R = 0: the plain base layers come back unchanged
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_REGEX, init_lora_weights=True)
    inject_adapter_in_model(config, cm.sd.unet)


def merge_lora(unet: nn.Module) -> None:
    """Fold every LoRA layer into its base weight (in place): the plain layers, with W + s·B·A."""
    for name, layer in lora_modules(unet):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent), child, layer.get_base_layer())


class LoRAControl(ControlOFT):
    """``ControlOFT`` with rank-``rank`` LoRA instead of OFT on the control targets.

    ``model`` is an initial control file of ``tool_add_control_oft.py`` (its R = 0 rotations are removed).
    """

    def __init__(self, model: str | os.PathLike, base: str | None = None, *, rank: int, **kwargs) -> None:
        super().__init__(model, base, stage="oft", **kwargs)
        inject_lora(self.cm, rank)
        self.rank, self.init_file = rank, str(model)

    def adapter_parameters(self) -> int:
        """Trainable LoRA parameters (A and B of every target)."""
        return sum(p.numel() for n, p in self.unet.named_parameters() if "lora_" in n and p.requires_grad)

    def export(self, path: str | os.PathLike, **extra: object) -> Path:
        """Write the trained LoRA (``lora.*``) and hint encoder (``hint.*``) with the rank, the initial file and
        ``extra`` in the metadata (``ControlOFT.export``'s interface: snapshots call it too)."""
        tensors = {f"lora.{n}": p for n, p in self.unet.named_parameters() if "lora_" in n}
        tensors.update({f"hint.{n}": p for n, p in self.hint.state_dict().items()})
        tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in tensors.items()}
        meta = {
            "rank": str(self.rank),
            "init": self.init_file,
            "lora_parameters": str(self.adapter_parameters()),
            "global_step": str(self.global_step),
            **{k: str(v) for k, v in extra.items()},
        }
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file written by ``LoRAControl.export``."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def load_lora_control(path: str | os.PathLike, base: str | None = None) -> ControlModel:
    """The trained LoRA control model of ``path``, LoRA merged into the base weights (ready to sample)."""
    tensors, meta = read_lora(path)
    cm = load_control(meta["init"], base)
    inject_lora(cm, int(meta["rank"]))
    unet_state = {k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")}
    missing = set(unet_state) - {n for n, _ in cm.sd.unet.named_parameters()}
    if missing:
        raise ValueError(f"{path} does not fit its initial model {meta['init']}: e.g. {sorted(missing)[0]}")
    cm.sd.unet.load_state_dict(unet_state, strict=False)
    cm.hint.load_state_dict({k[len("hint.") :]: v for k, v in tensors.items() if k.startswith("hint.")})
    merge_lora(cm.sd.unet)
    return cm
