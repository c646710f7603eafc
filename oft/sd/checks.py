"""The strict checks of weights before they are used: which base they are (``recognise_family``,
``resolve_preset``), a single file's keys and their shapes against the architecture, its EMA copy, and the
architecture it records. Pure: they read dicts and strings, not files.
"""

from __future__ import annotations

import json

from torch import Tensor

from oft.sd.configs import BASES, PRESETS, preset_config
from oft.sd.keymaps import UNET_PREFIX, ema_key, is_ignored

ARCHITECTURE_KEY = (
    "oft_sd_architecture"  # safetensors metadata: the preset name and config a file was written with
)


def _summary(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
BASE_NAMES = {"sd15": "SD1.5", "sd21": "SD2.1", "sdxl": "SDXL"}
_FIXES = {  # the last sentence of a key-check refusal, per family
    "sd1": "Use the SD1.5 file from scripts/download_model.sh or a diffusers folder.",
    "sd2": "Use an original SD2.1 file (v2-1_768-ema-pruned) or a diffusers folder.",
    "sdxl": "Use an original SDXL base file (sd_xl_base_1.0) or a diffusers folder.",
}


def base_name(preset: str) -> str:
    """How messages name a preset: "SD2.1" for a real base, "tiny-sd2 (SD2 family)" for a test preset."""
    return BASE_NAMES.get(preset) or f"{preset} ({FAMILY_NAMES[BASES[preset].family]} family)"


def recognise_family(keys: set[str] | dict[str, Tensor]) -> str | None:
    """The family of an original single file from its keys: SDXL (``conditioner.embedders.*``, the UNet's
    ``label_emb``), SD2 (OpenCLIP text encoder ``cond_stage_model.model.*``), SD1 (CLIP's
    ``cond_stage_model.transformer.*``); None without any of them."""
    if any(k.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    return None


def resolve_preset(family: str | None, width: int | None, preset: str | None, source: str, kind: str) -> str:
    """The preset to build for weights of ``family`` whose UNet starts ``width`` channels wide.

    ``preset`` None: the family's preset of that width, else its real base (SD1.5 when the family is unknown:
    the key check then names what is missing). A given ``preset`` of another base is a one-line
    ``ValueError`` naming what ``source`` (a ``kind``: "checkpoint", "diffusers folder") is.
    """
    family = family or (BASES[preset].family if preset else "sd1")
    found = next(
        (
            p
            for p in PRESETS
            if BASES[p].family == family and PRESETS[p]["unet"]["block_out_channels"][0] == width
        ),
        None,
    )
    if preset is None:
        return found or next(p for p in BASE_NAMES if BASES[p].family == family)
    if BASES[preset].family != family or found not in (None, preset):
        what = base_name(found) if found else FAMILY_NAMES[family]
        article = "an" if what.startswith("S") else "a"
        hint = f"load it with preset={found!r}" if found else f"load it with a preset of the {what} family"
        raise ValueError(f"{source} is {article} {what} {kind}, not {base_name(preset)}: {hint}")
    return preset


def check_ldm_keys(
    checkpoint: dict[str, Tensor],
    expected: dict[str, Tensor],
    source: str,
    optional: dict[str, Tensor] | None = None,
    family: str = "sd1",
) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys of ``checkpoint`` against ``expected``.

    ``expected`` maps LDM key -> tensor of the right shape (a weight-free model's converted state dict suffices);
    ``optional`` keys (``oft.sd.keymaps.unused_ldm_keys``) may be absent, but if present must have their shape.
    ``family`` chooses the advice that ends the message.
    """
    present = {k for k in checkpoint if not is_ignored(k)}
    expected = {k: v for k, v in expected.items() if not is_ignored(k)}
    known = {**(optional or {}), **expected}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(known))
    shapes = sorted(
        f"{k} {tuple(checkpoint[k].shape)} (expected {tuple(known[k].shape)})"
        for k in present & set(known)
        if checkpoint[k].shape != known[k].shape
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
            + f". {_FIXES[family]}"
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
        for part in preset_config(preset)
        for key, value in current[part].items()
        if recorded.get(part, {}).get(key) != value
    ]
    if changed:
        raise ValueError(
            f"{source} was written with an older {preset!r} architecture ({'; '.join(changed)}): its weights do "
            "not fit the current code; rebuild the file (the demo base: python scripts/pretrain_tiny_base.py)"
        )
