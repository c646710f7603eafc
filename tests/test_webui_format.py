"""The web UIs' weight-difference file (``oft.sd.webui``): names both UIs map, shapes, values, application.

The UIs' rules are restated here from their sources (not imported: neither UI is installed), each with the file
and function it comes from, and checked on the names of the real SD1.5 UNet (built on the meta device).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from safetensors import safe_open
from torch import nn

import oft_layers
from oft.common.files import temporaries
from oft.sd import build_sd
from oft.sd.configs import preset_config
from oft.sd.keymaps import UNET_PREFIX, unet_to_ldm
from oft.sd.targets import TARGET_SETS, match_targets, target_set
from oft.sd.webui import apply_webui, read_webui, save_webui, webui_diff, webui_key
from tests.helpers.numerics import EFFECT, eps, network_terms, tol

# --- the UIs' rules, restated -----------------------------------------------------------------------------

# AUTOMATIC1111/stable-diffusion-webui extensions-builtin/Lora/networks.py::convert_diffusers_name_to_compvis:
# a ResBlock's layers get their LDM names; attention suffixes pass unchanged.
_A1111_RESNET = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


def a1111_module(lora_name: str) -> str | None:
    """The LDM module name A1111 gives a LoRA module name (SD1 branch), or None where it has no rule."""
    m = re.fullmatch(r"lora_unet_(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", lora_name)
    if m:
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        rest = _A1111_RESNET.get(rest, rest) if kind == "resnets" else rest
        block = f"input_blocks_{1 + 3 * i + j}" if side == "down" else f"output_blocks_{3 * i + j}"
        return f"diffusion_model_{block}_{1 if kind == 'attentions' else 0}_{rest}"
    m = re.fullmatch(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", lora_name)
    if m:
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        rest = _A1111_RESNET.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * j}_{rest}"
    m = re.fullmatch(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lora_name)
    if m:
        return f"diffusion_model_input_blocks_{3 + 3 * int(m.group(1))}_0_op"
    m = re.fullmatch(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", lora_name)
    if m:
        i = int(m.group(1))
        return f"diffusion_model_output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv"
    m = re.fullmatch(r"lora_unet_time_embedding_linear_(\d+)", lora_name)
    if m:
        return f"diffusion_model_time_embed_{2 * int(m.group(1)) - 2}"
    return {
        "lora_unet_conv_in": "diffusion_model_input_blocks_0_0",
        "lora_unet_conv_out": "diffusion_model_out_2",
    }.get(lora_name)


def a1111_layer_names(ldm_weight_keys) -> set[str]:
    """The names A1111 finds modules under: extensions-builtin/Lora/networks.py::
    assign_network_names_to_compvis_modules names ``sd_model.model``'s modules with dots -> underscores."""
    return {k[len("model.") : -len(".weight")].replace(".", "_") for k in ldm_weight_keys}


# comfyanonymous/ComfyUI comfy/utils.py::unet_to_diffusers lists these diffusers weights (per ResBlock,
# SpatialTransformer, transformer block, sampler, and the basic map); comfy/lora.py::model_lora_keys_unet keys
# each as "lora_unet_" + the weight name without ".weight", dots -> underscores.
_LEVEL = r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)"
_COMFY_WEIGHTS = re.compile(
    rf"(?:{_LEVEL}\.resnets\.\d+\.(?:conv1|conv2|time_emb_proj|conv_shortcut|norm1|norm2)"
    rf"|{_LEVEL}\.attentions\.\d+\.(?:proj_in|proj_out|norm"
    r"|transformer_blocks\.\d+\.(?:norm[123]|attn[12]\.to_(?:q|k|v|out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv"
    r"|conv_in|conv_out|conv_norm_out|time_embedding\.linear_[12])\.weight"
)


def comfy_keys(diffusers_weight_keys) -> set[str]:
    """The ``lora_unet_*`` names ComfyUI maps for a UNet with these diffusers weights."""
    return {
        "lora_unet_" + k[: -len(".weight")].replace(".", "_")
        for k in diffusers_weight_keys
        if _COMFY_WEIGHTS.fullmatch(k)
    }


# --- models ----------------------------------------------------------------------------------------------


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def oft_unet(targets: str = "extended", magnitude: bool = False, seed: int = 0):
    """(tiny UNet with OFT on ``targets``, non-identity rotations and scales; a plain copy of its base)."""
    unet = build_sd("tiny", seed=0).unet
    plain = copy.deepcopy(unet)
    oft_layers.inject(unet, target_set(targets), r=4, magnitude=magnitude)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(unet):
            layer.R.copy_(0.1 * torch.randn(layer.R.shape, generator=g))  # an identity R hides merge bugs
            if layer.s is not None:
                layer.s.copy_(1 + 0.1 * torch.randn(layer.s.shape, generator=g))
    return unet, plain


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 7, 32, generator=g)
    return sample, torch.tensor([10, 500]), context


def _out(unet: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return unet(*_inputs()).sample


@pytest.fixture(scope="module")
def sd15_unet():
    return build_sd("sd15", device="meta").unet


# --- (1) names and shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_every_layer_of_every_target_set_gets_one_key_of_the_weights_shape(targets):
    unet, _ = oft_unet(targets)
    diffs = webui_diff(unet)
    layers = dict(oft_layers.oft_modules(unet))
    # one "<lora name>.diff" per OFT layer: the name before the first dot, "diff" after it
    # (A1111 extensions-builtin/Lora/networks.py::load_network splits there; network_full.py::ModuleTypeFull
    # takes a module with "diff"; ComfyUI comfy/lora.py::load_lora reads "<name>.diff")
    assert sorted(diffs) == sorted(webui_key(n) + ".diff" for n in layers)
    assert all(k.count(".") == 1 for k in diffs)
    for name, layer in layers.items():
        diff = diffs[webui_key(name) + ".diff"]
        # ComfyUI comfy/lora.py::calculate_weight adds a "diff" only if its shape is the weight's, exactly
        assert diff.shape == layer.base.weight.shape and diff.dtype == torch.float16
        assert diff.abs().max() > 0
    if targets in ("conv", "extended"):
        assert any(d.ndim == 4 for d in diffs.values())


def test_key_spelling():
    # kohya's SD1.x spelling: "lora_unet_" + the diffusers path, dots -> underscores
    assert (
        webui_key("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
        == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    )
    assert webui_key("up_blocks.1.resnets.2.conv_shortcut") == "lora_unet_up_blocks_1_resnets_2_conv_shortcut"
    assert webui_key("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj").endswith("ff_net_0_proj")
    for bad in (
        "text_model.encoder.layers.0.self_attn.q_proj",
        "down_blocks.0.attentions.0.norm",
        "to_q",
        "",
    ):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            webui_key(bad)


def test_both_uis_map_every_sd15_layer_to_its_ldm_module(sd15_unet):
    layers = _layers(sd15_unet)
    names = list(layers)
    keys = [webui_key(n) for n in names]
    assert len(set(keys)) == len(keys) == 282  # every Linear/Conv2d of SD1.5's UNet, no two alike
    # the LDM name of each layer: our diffusers -> LDM renaming (weights only: shapes suffice)
    ldm = unet_to_ldm({n + ".weight": layers[n].weight for n in names}, preset_config("sd15")["unet"])
    ldm_of = dict(zip(names, ldm, strict=True))
    assert all(k.startswith(UNET_PREFIX) for k in ldm)
    a1111_known = a1111_layer_names(ldm)
    comfy_known = comfy_keys(n for n, _ in sd15_unet.named_parameters())
    for name, key in zip(names, keys, strict=True):
        # A1111: its rule gives the module of the LDM checkpoint that holds this weight
        assert a1111_module(key) == ldm_of[name][len("model.") : -len(".weight")].replace(".", "_"), name
        assert a1111_module(key) in a1111_known
        # ComfyUI: the key is one of those model_lora_keys_unet builds from unet_to_diffusers
        assert key in comfy_known, name


@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_every_sd15_target_layer_has_a_key(sd15_unet, targets):
    layers = _layers(sd15_unet)
    names = match_targets(layers, target_set(targets))
    assert names and all(a1111_module(webui_key(n)) for n in names)
    kinds = {re.sub(r"\d+", "N", n) for n in names}
    if targets == "extended":  # linears, the GEGLU projection, ResBlock convs and the time projection
        assert {
            "down_blocks.N.attentions.N.transformer_blocks.N.attnN.to_out.N",
            "down_blocks.N.attentions.N.transformer_blocks.N.ff.net.N.proj",
            "up_blocks.N.resnets.N.conv_shortcut",
            "mid_block.resnets.N.time_emb_proj",
        } <= kinds


# --- (2) values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets, magnitude", [("attn", False), ("extended", True)])
def test_base_plus_diff_is_the_merged_weight(targets, magnitude):
    unet, plain = oft_unet(targets, magnitude)
    d32, d16 = webui_diff(unet, torch.float32), webui_diff(unet, torch.float16)
    merged = copy.deepcopy(unet)
    oft_layers.strip(merged, merge=True)
    merged_layers, plain_layers = _layers(merged), _layers(plain)
    for name, _ in oft_layers.oft_modules(unet):
        key = webui_key(name) + ".diff"
        W, W_merged = plain_layers[name].weight, merged_layers[name].weight
        scale = max(W.abs().max().item(), W_merged.abs().max().item())
        # two roundings (the diff's and the sum's), each at most eps/2 of its result
        torch.testing.assert_close(
            W + d32[key], W_merged, **tol(torch.float32, 2, scale=scale, worst_case=True)
        )
        # fp16: the float32 diff rounded to nearest (eps(fp16) = twice the unit roundoff; atol: subnormals)
        torch.testing.assert_close(d16[key].float(), d32[key], rtol=eps(torch.float16), atol=2.0**-24)
        assert (W_merged - W).abs().max() > EFFECT * scale * eps(torch.float32)


def test_a_float64_model_computes_its_diff_in_float64():
    unet, _ = oft_unet("attn")
    unet.double()
    d32 = webui_diff(unet, torch.float32)
    merged = copy.deepcopy(unet)
    base = {n: layer.base.weight.clone() for n, layer in oft_layers.oft_modules(unet)}
    oft_layers.strip(merged, merge=True)
    for name, W_merged in ((n, m.weight) for n, m in _layers(merged).items() if n in base):
        # same float64 kernels on the same inputs, then one rounding to float32: exact
        assert torch.equal(d32[webui_key(name) + ".diff"], (W_merged - base[name]).float())


def test_file_round_trip_and_metadata(tmp_path):
    unet, _ = oft_unet("attn+ff")
    path = save_webui(unet, tmp_path / "dog.safetensors", metadata={"base_model": "sd15-abc"})
    assert path == tmp_path / "dog.safetensors" and not temporaries(path)
    tensors, expected = read_webui(path), webui_diff(unet)
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["oft_format"] == "webui-diff" and meta["oft_dtype"] == "float16"
    assert meta["oft_layers"] == "36" and meta["base_model"] == "sd15-abc"
    # A1111 extensions-builtin/Lora/network.py::NetworkOnDisk.detect_version: any metadata -> SD1, unless
    # ss_base_model_version starts with "sdxl_" or ss_v2 is "True" (the Lora page hides SD1 files for SDXL)
    assert not meta["ss_base_model_version"].startswith("sdxl_") and meta.get("ss_v2") != "True"
    assert "ss_network_module" not in meta
    f32 = save_webui(unet, tmp_path / "dog32.safetensors", torch.float32)
    assert {t.dtype for t in read_webui(f32).values()} == {torch.float32}
    assert f32.stat().st_size > 1.9 * path.stat().st_size  # the option changes what is stored


# --- (3) applied to a plain UNet ------------------------------------------------------------------------


def test_applied_to_a_plain_unet_the_outputs_are_the_oft_models(tmp_path):
    unet, plain = oft_unet("extended", magnitude=True)
    base_out = _out(plain)
    tensors = read_webui(save_webui(unet, tmp_path / "a.safetensors", torch.float32))
    changed = apply_webui(plain, tensors)
    assert sorted(changed) == sorted(n for n, _ in oft_layers.oft_modules(unet))
    expected, got = _out(unet), _out(plain)
    t = tol(torch.float32, network_terms(plain))
    torch.testing.assert_close(got, expected, **t)
    assert (base_out - expected).abs().max() > EFFECT * t["atol"]


def test_strength_scales_the_diff():
    unet, plain = oft_unet("attn")
    tensors = webui_diff(unet, torch.float32)
    name = next(n for n, _ in oft_layers.oft_modules(unet))
    W = _layers(plain)[name].weight.clone()
    zero, half = copy.deepcopy(plain), copy.deepcopy(plain)
    apply_webui(zero, tensors, strength=0.0)
    apply_webui(half, tensors, strength=0.5)
    assert torch.equal(_layers(zero)[name].weight, W)
    diff = tensors[webui_key(name) + ".diff"]
    half_weight = _layers(half)[name].weight
    torch.testing.assert_close(half_weight, W + 0.5 * diff, **tol(torch.float32, 2, worst_case=True))
    assert (half_weight - W).abs().max() > EFFECT * eps(torch.float32)


# --- (4) errors ---------------------------------------------------------------------------------------------


def test_a_model_without_oft_or_with_a_merged_layer_is_refused():
    with pytest.raises(ValueError, match="no OFT layers"):
        webui_diff(build_sd("tiny").unet)
    unet, _ = oft_unet("attn")
    name, layer = next(oft_layers.oft_modules(unet))
    layer.merge()
    with pytest.raises(ValueError, match=re.escape(name) + ".*merged"):
        webui_diff(unet)


def test_layers_the_uis_cannot_map_and_other_dtypes_are_refused():
    text_encoder = build_sd("tiny").text_encoder
    names = oft_layers.inject(text_encoder, [r".*self_attn\.q_proj"], r=4)
    with pytest.raises(ValueError, match=re.escape(names[0])):
        webui_diff(text_encoder)
    unet, _ = oft_unet("attn")
    with pytest.raises(ValueError, match="dtype"):
        webui_diff(unet, torch.bfloat16)


@pytest.mark.parametrize("name", ["a.ckpt", "a.pt", "a.safetensors.tmp", "a"])
def test_only_safetensors_paths_are_written(tmp_path, name):
    unet, _ = oft_unet("attn")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_webui(unet, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_apply_refuses_foreign_keys_shapes_and_oft_models():
    unet, plain = oft_unet("attn")
    tensors = webui_diff(unet, torch.float32)
    key = next(iter(tensors))
    bad = {
        "names no layer": {"lora_unet_down_blocks_9_resnets_0_conv1.diff": tensors[key]},
        "only '.diff'": {key[: -len(".diff")] + ".diff_b": tensors[key]},
        "shape": {key: tensors[key].reshape(-1)},
    }
    for message, sd in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            apply_webui(copy.deepcopy(plain), sd)
    with pytest.raises(ValueError, match="plain UNet"):
        apply_webui(unet, tensors)
