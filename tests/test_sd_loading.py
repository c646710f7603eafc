"""Single-file (LDM layout) and diffusers-folder loading: exact round trips on the tiny preset, strict keys."""

import os
from pathlib import Path

import pytest
import torch

from oft.sd import build_sd, load_sd
from oft.sd.configs import PRESETS
from oft.sd.loading import missing_checkpoint_message, save_single_file, to_ldm_state_dict
from oft.sd.weightfiles import read_single_file


@pytest.fixture(scope="module")
def tiny():
    return build_sd("tiny", seed=7).freeze()


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory) -> Path:
    return save_single_file(tiny, tmp_path_factory.mktemp("sd") / "tiny.ckpt")


def _outputs(models):
    """UNet noise prediction, VAE decode and CLIP context for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = models.encode_prompts(["a photo of qwe dog", "a red cartoon"])
    with torch.no_grad():
        eps = models.unet(latents, torch.tensor([10, 900]), context).sample
    return eps, models.decode_latents(latents), context


def _assert_same_outputs(a, b):
    """Bit for bit: the same module classes with bitwise-equal weights run the same kernels in this process."""
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        assert torch.equal(x, y)


@pytest.mark.numerics
def test_single_file_equals_direct_build(tiny, ckpt):
    loaded = load_sd(ckpt).freeze()
    assert loaded.preset == "tiny"
    _assert_same_outputs(tiny, loaded)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(tiny, part).state_dict(), getattr(loaded, part).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_written_file_has_original_ldm_layout(ckpt):
    keys = read_single_file(ckpt)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # conv_in
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "model.diffusion_model.output_blocks.1.0.in_layers.0.weight" in keys  # ResBlock naming
    assert keys["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM attention is a 1x1 conv
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys


@pytest.mark.numerics
def test_safetensors_and_identity(tiny, tmp_path):
    path = save_single_file(tiny, tmp_path / "tiny.safetensors")
    loaded = load_sd(path)
    _assert_same_outputs(tiny, loaded.freeze())
    assert loaded.identity == load_sd(path).identity  # stable for the same file
    os.utime(path, ns=(1, 1))
    assert load_sd(path).identity == loaded.identity  # the content names the base, not the mtime


def test_recorded_architecture_must_match_the_preset(tiny, tmp_path, monkeypatch):
    # GroupNorm groups leave no trace in the weights' shapes: the file's record catches a changed preset
    path = save_single_file(tiny, tmp_path / "tiny.safetensors")
    vae = dict(PRESETS["tiny"]["vae"], norm_num_groups=1)
    monkeypatch.setitem(PRESETS["tiny"], "vae", vae)
    with pytest.raises(ValueError, match=r"older 'tiny' architecture \(vae.norm_num_groups 2 \(now 1\)\)"):
        load_sd(path)


def test_sd15_key_layout_matches_the_original_file():
    """The reverse conversion of the real architecture gives v1-5-pruned.ckpt's key set (686 + 248 + 197 keys)."""
    keys = to_ldm_state_dict(build_sd("sd15", device="meta"))
    assert sum(k.startswith("model.diffusion_model.") for k in keys) == 686
    assert sum(k.startswith("first_stage_model.") for k in keys) == 248
    assert sum(k.startswith("cond_stage_model.") for k in keys) == 197
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",  # first downsampler
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # upsampler of the attention-free up level
        "model.diffusion_model.output_blocks.5.2.conv.weight",  # upsampler after a transformer
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
        "first_stage_model.quant_conv.weight",
    ):
        assert key in keys, key
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in keys
    assert tuple(
        keys["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape
    ) == (
        320,
        768,
    )


def _write(state, path):
    torch.save({"state_dict": state}, path)
    return path


def test_missing_and_unexpected_keys_are_named(ckpt, tmp_path):
    state = dict(read_single_file(ckpt))
    del state["model.diffusion_model.out.2.bias"]
    del state["first_stage_model.encoder.conv_in.weight"]
    state["model.diffusion_model.extra_block.weight"] = torch.zeros(1)
    state["control_model.input_hint_block.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_sd(_write(state, tmp_path / "bad.ckpt"))
    msg = str(err.value)
    assert "2 missing key(s)" in msg and "model.diffusion_model.out.2.bias" in msg
    assert "first_stage_model.encoder.conv_in.weight" in msg
    assert "2 unexpected key(s)" in msg and "control_model.input_hint_block.0.weight" in msg
    assert "model.diffusion_model.extra_block.weight" in msg and "\n" not in msg


def test_misshaped_key_is_named(ckpt, tmp_path):
    state = dict(read_single_file(ckpt))
    state["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"mis-shaped key\(s\): model.diffusion_model.out.2.bias \(5,\)"):
        load_sd(_write(state, tmp_path / "bad.ckpt"), preset="tiny")


def test_ema_weights_and_ldm_extras(tiny, ckpt, tmp_path):
    """A file with EMA copies and schedule buffers (like v1-5-pruned.ckpt) loads the non-EMA UNet by default."""
    state = dict(read_single_file(ckpt))
    for key in [k for k in state if k.startswith("model.diffusion_model.")]:
        state["model_ema." + key[len("model.") :].replace(".", "")] = state[key] + 1.0
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["betas"] = torch.linspace(0.00085, 0.012, 1000)
    path = _write(state, tmp_path / "with_ema.ckpt")
    plain = load_sd(path)
    assert torch.equal(plain.unet.conv_in.weight, tiny.unet.conv_in.weight)
    ema = load_sd(path, ema=True)
    assert torch.equal(ema.unet.conv_in.weight, tiny.unet.conv_in.weight + 1.0)
    assert torch.equal(ema.vae.encoder.conv_in.weight, tiny.vae.encoder.conv_in.weight)
    with pytest.raises(ValueError, match="has no EMA weights"):
        load_sd(ckpt, ema=True)


@pytest.mark.numerics
def test_diffusers_folder(tiny, tmp_path):
    for part in ("unet", "vae", "text_encoder"):
        getattr(tiny, part).save_pretrained(tmp_path / part)
    loaded = load_sd(tmp_path)
    assert loaded.preset == "tiny"
    _assert_same_outputs(tiny, loaded.freeze())
    from safetensors.torch import load_file, save_file

    text_file = tmp_path / "text_encoder" / "model.safetensors"
    state = load_file(str(text_file))
    state.pop(next(k for k in state if k.endswith("final_layer_norm.bias")))
    state["text_model.extra.weight"] = torch.zeros(2)
    save_file(state, str(text_file))
    with pytest.raises(
        ValueError, match=r"\(text encoder\) does not fit .*1 missing key.*final_layer_norm.bias"
    ):
        load_sd(tmp_path)
    state = load_file(str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    state["conv_out.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"\(UNet\) does not fit .*conv_out.bias") as err:
        load_sd(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no vae/ weights"):
        load_sd(tmp_path)


def test_missing_file_is_one_line_pointing_to_the_download_script(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_sd(tmp_path / "v1-5-pruned.ckpt")
    msg = str(err.value)
    assert msg == missing_checkpoint_message(tmp_path / "v1-5-pruned.ckpt")
    assert "scripts/download_model.sh" in msg and "diffusers folder" in msg and "\n" not in msg


def test_dtype_and_trainability_after_loading(ckpt):
    loaded = load_sd(ckpt, dtype=torch.float64)
    assert loaded.unet.conv_in.weight.dtype == torch.float64
    assert all(p.requires_grad for p in loaded.unet.parameters())  # loading does not freeze: freeze() does
