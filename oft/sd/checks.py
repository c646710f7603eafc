"""The strict checks of a single-file checkpoint before its weights are used: its keys and their shapes against
the architecture, its EMA copy, and the architecture it records. Pure: they read dicts and strings, not files.
"""

from __future__ import annotations

import json

from torch import Tensor

from oft.sd.configs import preset_config
from oft.sd.keymaps import UNET_PREFIX, ema_key, is_ignored

ARCHITECTURE_KEY = (
    "oft_sd_architecture"  # safetensors metadata: the preset name and config a file was written with
)


def _summary(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_ldm_keys(checkpoint: dict[str, Tensor], expected: dict[str, Tensor], source: str) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys of ``checkpoint`` against ``expected``.

    ``expected`` maps LDM key -> tensor of the right shape (a weight-free model's converted state dict suffices).
    """
    present = {k for k in checkpoint if not is_ignored(k)}
    expected = {k: v for k, v in expected.items() if not is_ignored(k)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    shapes = sorted(
        f"{k} {tuple(checkpoint[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in present & set(expected)
        if checkpoint[k].shape != expected[k].shape
    )
    problems = [
        f"{len(missing)} missing key(s): {_summary(missing)}" if missing else "",
        f"{len(unexpected)} unexpected key(s): {_summary(unexpected)}" if unexpected else "",
        f"{len(shapes)} mis-shaped key(s): {_summary(shapes, 4)}" if shapes else "",
    ]
    if any(problems):
        raise ValueError(
            f"{source} is not a Stable Diffusion checkpoint of this architecture: "
            + "; ".join(p for p in problems if p)
            + ". Use the SD1.5 file from scripts/download_model.sh or a diffusers folder."
        )


def take_ema(checkpoint: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Replace the UNet weights by their EMA copy (``model_ema.diffusion_model<key without dots>``), as LDM does."""
    out = dict(checkpoint)
    missing = []
    for key in checkpoint:
        if key.startswith(UNET_PREFIX):
            ema = ema_key(key)
            if ema in checkpoint:
                out[key] = checkpoint[ema]
            else:
                missing.append(ema)
    if missing:
        raise ValueError(
            f"{source} has no EMA weights for {len(missing)} UNet key(s) ({_summary(missing, 3)}): load it without ema=True"
        )
    return out


def architecture_record(preset: str) -> str:
    """What a written file records under ``ARCHITECTURE_KEY``: the preset and its config, as JSON."""
    return json.dumps({"preset": preset, **preset_config(preset)}, sort_keys=True)


def check_architecture(recorded: str | None, preset: str, source: str) -> None:
    """Raise ``ValueError`` if ``recorded`` (a file's ``architecture_record``) is not ``preset``'s config.

    Files without the record (``None``: every original SD checkpoint, ``.ckpt`` files) pass: their shapes were
    checked. Some of the config (GroupNorm groups, heads) leaves no trace in the weights' shapes.
    """
    if recorded is None:
        return
    recorded = json.loads(recorded)
    current = json.loads(
        json.dumps({"preset": preset, **preset_config(preset)})
    )  # tuples -> lists, as recorded
    if recorded.get("preset") != preset:
        raise ValueError(f"{source} was written for the {recorded.get('preset')!r} preset, not {preset!r}")
    changed = [
        f"{part}.{key} {recorded[part].get(key)!r} (now {value!r})"
        for part in ("unet", "vae", "text_encoder")
        for key, value in current[part].items()
        if recorded.get(part, {}).get(key) != value
    ]
    if changed:
        raise ValueError(
            f"{source} was written with an older {preset!r} architecture ({'; '.join(changed)}): its weights do "
            "not fit the current code; rebuild the file (the demo base: python scripts/pretrain_tiny_base.py)"
        )
