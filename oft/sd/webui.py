"""A trained OFT adapter as the per-layer weight differences that AUTOMATIC1111's web UI and ComfyUI apply to any
SD1.5 checkpoint (their "full"/"diff" network type), and the same file applied to a diffusers UNet.

One tensor per OFT layer: ``<name>.diff`` = adapted weight - base weight, in the base weight's shape (4-D for a
convolution), fp16 by default. The rules below were read in the UIs' sources (A1111's built-in Lora extension,
``extensions-builtin/Lora/``; ComfyUI's ``comfy/lora.py`` before and after ``comfy/weight_adapter/``):

* Names. ``lora_unet_`` + the diffusers module path with every ``.`` replaced by ``_`` (kohya's SD1.x spelling):
  - A1111 ``extensions-builtin/Lora/networks.py``: ``load_network`` splits each key at its first ``.``
    (module name, then ``diff``) and ``convert_diffusers_name_to_compvis`` turns ``lora_unet_down_blocks_i_
    {attentions|resnets}_j_<rest>`` into ``diffusion_model_input_blocks_{3i+j+1}_{1|0}_<rest>`` (``mid_block`` ->
    ``middle_block_{1|2j}``, ``up_blocks`` -> ``output_blocks_{3i+j}``), renaming a ResBlock's ``conv1``,
    ``conv2``, ``time_emb_proj``, ``conv_shortcut`` to ``in_layers_2``, ``out_layers_3``, ``emb_layers_1``,
    ``skip_connection``; it also maps ``conv_in``, ``conv_out``, ``time_embedding_linear_N`` and the
    down/upsampler convs. ``assign_network_names_to_compvis_modules`` names the LDM modules the same way
    (dots -> underscores), so attention suffixes (``transformer_blocks_0_attn1_to_out_0``, ``ff_net_0_proj``,
    ``proj_in``) pass unchanged. The block arithmetic (3 modules per level, ``up_blocks.0`` without attention)
    is SD1.x's: these names are right for SD1.5-shaped UNets only.
  - ComfyUI ``comfy/lora.py::model_lora_keys_unet`` maps ``lora_unet_`` + every diffusers weight name that
    ``comfy/utils.py::unet_to_diffusers`` lists (dots -> underscores) to the LDM weight; that table, built from
    the loaded model's config, has every Linear/Conv2d of the SD UNet. (Both also take the LDM spelling
    ``lora_unet_input_blocks_...``, A1111 through a fallback in ``load_network``; the diffusers spelling is the
    one kohya's SD1.x LoRAs use, and both UIs map it through explicit tables.)
* Tensors. A1111 ``extensions-builtin/Lora/network_full.py``: a module whose keys include ``diff`` is a full
  difference; ``diff_b`` (a bias difference) is optional, as are ``alpha``/``scale`` (without them the scale is
  1, ``network.py::NetworkModule.calc_scale``); the diff is moved to the weight's device and dtype, reshaped
  to it if the element count matches (``finalize_updown``) and added (``networks.py::network_apply_weights``).
  ComfyUI ``comfy/lora.py::load_lora`` reads ``<name>.diff`` (and ``diff_b``) as a "diff" patch;
  ``calculate_weight`` adds ``strength * diff`` cast to the weight's dtype only when ``diff.shape ==
  weight.shape`` exactly, else it logs "WEIGHT NOT MERGED". OFT leaves biases unchanged: no ``diff_b``.
* Metadata. Neither UI needs any to load the file. A1111 (``network.py::NetworkOnDisk.detect_version``) lists a
  file with any metadata as SD1 unless ``ss_base_model_version`` starts with ``sdxl_`` or ``ss_v2`` is "True";
  we write kohya's ``ss_base_model_version: sd_v1`` and our own ``oft_*`` keys. ``ss_network_module`` names the
  training module (e.g. "lycoris.kohya") that kohya's scripts import for a file; it would be false here and is
  not written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import oft_layers
from oft.common.files import atomic_write
from oft.sd.targets import LEVEL

PREFIX = "lora_unet_"
SUFFIX = ".diff"
FORMAT = "webui-diff"
WEBUI_DTYPES = (torch.float16, torch.float32)

# Every Linear/Conv2d of an SD1.x UNet, as diffusers names them: the modules both UIs' tables hold.
_MAPPABLE = re.compile(
    r"conv_in|conv_out|time_embedding\.linear_[12]"
    rf"|{LEVEL}\.resnets\.\d+\.(?:conv1|conv2|conv_shortcut|time_emb_proj)"
    rf"|{LEVEL}\.attentions\.\d+\.(?:proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(?:attn[12]\.to_(?:q|k|v|out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv"
)


def webui_key(module_name: str) -> str:
    """The web UIs' LoRA module name of a diffusers UNet module path (``lora_unet_`` + path, dots -> ``_``)."""
    if not _MAPPABLE.fullmatch(module_name):
        raise ValueError(
            f"module {module_name!r} has no name A1111 and ComfyUI map to an SD1.5 UNet layer (they map the "
            "UNet's Linear/Conv2d layers, e.g. 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')"
        )
    return PREFIX + module_name.replace(".", "_")


@torch.no_grad()
def webui_diff(unet: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """``{<webui key>.diff: adapted - base weight}`` per OFT layer, in float32/float64 cast to ``dtype``."""
    if dtype not in WEBUI_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in WEBUI_DTYPES]}, got {dtype}")
    layers = list(oft_layers.oft_modules(unet))
    if not layers:
        raise ValueError(
            "the model has no OFT layers: load an adapter into it first (oft_layers.load_adapter)"
        )
    out = {}
    for name, layer in layers:
        key = webui_key(name) + SUFFIX
        if layer.merged:
            raise ValueError(
                f"OFT layer {name} is merged (its weight already holds the rotation); unmerge it first"
            )
        # in float32/float64, not rounded to an fp16 model's dtype first (the diff would keep only fp16-ulp(W))
        rotated = layer.rotated_weight(full_precision=True)
        diff = rotated - layer.base.weight.to(rotated.dtype)
        if not torch.isfinite(diff).all():
            raise ValueError(f"OFT layer {name} gives NaN/inf weights (training diverged?)")
        out[key] = diff.to(device="cpu", dtype=dtype).contiguous()
    return out


def save_webui(
    unet: nn.Module,
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``webui_diff(unet, dtype)`` and ``metadata`` atomically to a ``.safetensors`` file for the UIs."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the web UIs' file must end in .safetensors, got {path.name}")
    tensors = webui_diff(unet, dtype)
    meta = {
        "oft_format": FORMAT,
        "oft_format_version": "1",
        "oft_layers": str(len(tensors)),
        "oft_dtype": str(dtype).removeprefix("torch."),
        "ss_base_model_version": "sd_v1",
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_webui(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a web-UI diff file (``save_webui``'s or any ``lora_unet_*.diff`` file)."""
    return load_file(str(path))


@torch.no_grad()
def apply_webui(unet: nn.Module, tensors: dict[str, Tensor], strength: float = 1.0) -> list[str]:
    """Add ``strength * diff`` to the weights of a plain diffusers UNet, as the UIs do (every tensor checked
    before any weight changes); returns the changed modules."""
    modules = {webui_key(n): (n, m) for n, m in unet.named_modules() if _MAPPABLE.fullmatch(n)}
    updates = []
    for key, diff in tensors.items():
        lora_name, dot, part = key.partition(".")
        if dot + part != SUFFIX:
            raise ValueError(f"{key}: only '{SUFFIX}' tensors are supported, not '{dot + part}'")
        if lora_name not in modules:
            raise ValueError(f"{key} names no layer of this UNet")
        name, module = modules[lora_name]
        if isinstance(module, oft_layers.OFTLayer):
            raise ValueError(f"{name} has OFT: apply the diff to a plain UNet (oft_layers.strip first)")
        weight = module.weight
        if diff.shape != weight.shape:  # ComfyUI skips such a layer; here it is an error
            raise ValueError(f"{key} has shape {tuple(diff.shape)}, {name}.weight {tuple(weight.shape)}")
        updates.append((name, weight, diff))
    for _, weight, diff in updates:
        exact = torch.promote_types(weight.dtype, torch.float32)
        weight.copy_((weight.to(exact) + strength * diff.to(weight.device, exact)).to(weight.dtype))
    return [name for name, _, _ in updates]
