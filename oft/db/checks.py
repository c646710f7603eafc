"""What a DreamBooth run checks before any model loads or class image is made, one line per problem: the output
folders, the subject photos, r against the layer widths, and the checkpoint to resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import UNet2DConditionModel

import oft_layers
from oft.common.files import create_output_folder
from oft.db.checkpoints import find_checkpoint, read_state
from oft.db.config import DreamBoothConfig
from oft.db.data import instance_images
from oft.sd.checks import base_name
from oft.sd.configs import preset_config
from oft.sd.loading import peek_preset
from oft.sd.targets import match_targets, target_set


class Inputs(NamedTuple):
    """The checked inputs of a run: the subject photos and the checkpoint to resume (with its state), if any."""

    instance_paths: list[Path]
    checkpoint: Path | None
    state: dict | None


def _width(module: torch.nn.Module, config: oft_layers.OFTConfig) -> int | None:
    """The width r must divide: a Linear's inputs, a flat-layout conv's in*kh*kw; None where r plays no part
    (a conv in the "channel" layout has one block per input channel)."""
    if isinstance(module, torch.nn.Conv2d):
        return None if config.conv_layout == "channel" else module.weight[0].numel()
    return module.in_features


def check_block_sizes(unet: torch.nn.Module, options: dict, targets: str, model: str) -> None:
    """Raise ``oft_layers``' one-line ``ValueError`` unless r divides the input width of every layer of the
    target set ``targets`` of ``unet`` (default "attn": the 128 attention projections; SD1.5: widths 320, 640,
    768, 1280)."""
    config = oft_layers.OFTConfig(**options)
    modules = dict(unet.named_modules())
    widths = {name: _width(modules[name], config) for name in match_targets(modules, target_set(targets))}
    widths = {name: width for name, width in widths.items() if width is not None}
    for name, width in widths.items():
        try:
            config.block_size(width, where=f"--r {config.r}: {model} layer {name}")
        except ValueError as err:
            # that layer's divisors alone could send the user to an r that another layer refuses
            common = math.gcd(*widths.values())
            fits = [d for d in range(1, common + 1) if common % d == 0]
            raise ValueError(
                f"{err}; all {len(widths)} target layers (widths {sorted(set(widths.values()))}) "
                f"take r among {fits}"
            ) from None


def unet_without_weights(preset: str) -> torch.nn.Module:
    """The UNet of ``preset`` on the meta device: every layer's shape from the architecture config, no weights."""
    with torch.device("meta"):
        return UNet2DConditionModel(**preset_config(preset)["unet"])


def check_inputs(cfg: DreamBoothConfig, out: Path) -> Inputs:
    """Every input of a run checked before any model loads or class image is made (``cfg`` validated already):
    the output folders can be made, every photo decodes, r fits the base's layers, the checkpoint reads safely."""
    create_output_folder(out, f"--output_dir {out}")  # or one WriteError line (run_main prints it)
    if cfg.with_prior_preservation:
        create_output_folder(cfg.class_data_dir, f"--class_data_dir {cfg.class_data_dir}")
    instance_paths = instance_images(cfg.instance_data_dir)  # present, and every photo decodes
    # r against the base's layer widths from its config (no weights), the base read from the file's header
    # (SD1.5 where that needs loading: a .ckpt); the trainer checks again on the loaded model, still before any
    # class image is made
    preset = peek_preset(cfg.pretrained_model) or "sd15"
    check_block_sizes(unet_without_weights(preset), cfg.oft_options(), cfg.targets, base_name(preset))
    checkpoint = find_checkpoint(out, cfg.resume_from_checkpoint)
    state = read_state(checkpoint) if checkpoint is not None else None  # tensors and plain values only
    return Inputs(instance_paths, checkpoint, state)
