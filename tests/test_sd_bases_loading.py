"""SD2.1 and SDXL weights: exact round trips of the tiny presets through the original single-file layout and
through diffusers folders; the strict key check on the real architectures, from weight-free builds (no memory,
no real weights); the one-line refusal of another base's file."""

import pytest
import torch

from oft.sd import build_sd, load_sd
from oft.sd.checks import check_ldm_keys, recognise_family, resolve_preset
from oft.sd.loading import expected_ldm_keys, save_single_file, to_ldm_state_dict
from oft.sd.weightfiles import read_single_file

TINY = ["tiny-sd2", "tiny-sdxl"]
UNET = "model.diffusion_model."
SD2_TEXT = "cond_stage_model.model."
BIGG = "conditioner.embedders.1.model."


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return build_sd(request.param, seed=11).freeze()


def _indices(keys, prefix: str) -> set[int]:
    """The numbers N of the keys ``<prefix>N.…``: the blocks present."""
    return {int(k[len(prefix) :].split(".")[0]) for k in keys if k.startswith(prefix)}


def _outputs(models):
    """The UNet's prediction under the base's own conditioning, and a VAE decode, for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond = models.condition(["a photo of qwe dog", "a red cartoon"])
    with torch.no_grad():
        pred = models.unet(latents, torch.tensor([10, 900]), **cond.unet_kwargs()).sample
    return pred, models.decode_latents(latents), cond.context


def _assert_same(a, b):
    """Same preset, bitwise-equal weights in every network and the same outputs."""
    assert b.preset == a.preset and len(b.networks) == len(a.networks)
    for net_a, net_b in zip(a.networks, b.networks, strict=True):
        sa, sb = net_a.state_dict(), net_b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for x, y in zip(_outputs(a), _outputs(b.freeze()), strict=True):
        assert torch.equal(x, y)


@pytest.mark.numerics
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip(tiny, tmp_path, suffix):
    path = save_single_file(tiny, tmp_path / f"{tiny.preset}{suffix}")
    _assert_same(tiny, load_sd(path))  # recognised from the keys
    _assert_same(tiny, load_sd(path, preset=tiny.preset))
    assert read_single_file(path).keys() == to_ldm_state_dict(tiny).keys()


@pytest.mark.numerics
def test_diffusers_folder_round_trip(tiny, tmp_path):
    for net, part in zip(tiny.networks, ("unet", "vae", "text_encoder", "text_encoder_2"), strict=False):
        net.save_pretrained(tmp_path / part)
    _assert_same(tiny, load_sd(tmp_path))
    if tiny.text_encoder_2 is not None:
        for f in (tmp_path / "text_encoder_2").iterdir():
            f.unlink()
        with pytest.raises(FileNotFoundError, match="has no text_encoder_2/ weights"):
            load_sd(tmp_path)


def test_written_files_have_the_original_layouts():
    sd2 = to_ldm_state_dict(build_sd("tiny-sd2", seed=0))
    assert sd2[UNET + "input_blocks.1.1.proj_in.weight"].ndim == 2  # SD2's projections are linears
    w = sd2[SD2_TEXT + "positional_embedding"].shape[1]
    assert sd2[SD2_TEXT + "transformer.resblocks.0.attn.in_proj_weight"].shape == (
        3 * w,
        w,
    )  # q, k, v stacked
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd2)
    xl = build_sd("tiny-sdxl", seed=0)
    keys = to_ldm_state_dict(xl)
    assert torch.equal(keys[BIGG + "text_projection"], xl.text_encoder_2.text_projection.weight.T)
    q = xl.text_encoder_2.text_model.encoder.layers[1].self_attn.q_proj.bias
    assert torch.equal(keys[BIGG + "transformer.resblocks.1.attn.in_proj_bias"][: q.shape[0]], q)
    assert UNET + "label_emb.0.0.weight" in keys and UNET + "label_emb.0.2.bias" in keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert UNET + "input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight" in keys  # depth 2 at level 1


def test_sd21_key_layout_matches_the_original_file():
    """v2-1_768's layout: SD1.5's UNet and VAE key names (SD2's projections 2-D), OpenCLIP ViT-H with 24 resblocks
    of 12 tensors, of which the 24th, ``text_projection`` and ``logit_scale`` are accepted and not kept."""
    keys, unused = expected_ldm_keys("sd21")
    sd15 = to_ldm_state_dict(build_sd("sd15", device="meta"))
    for prefix in (UNET, "first_stage_model."):
        assert {k for k in keys if k.startswith(prefix)} == {k for k in sd15 if k.startswith(prefix)}
    assert tuple(keys[UNET + "input_blocks.1.1.proj_in.weight"].shape) == (320, 320)
    assert tuple(keys[UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"].shape) == (320, 1024)
    text = {**{k: v for k, v in keys.items() if k.startswith("cond_stage_model.")}, **unused}
    assert all(k.startswith(SD2_TEXT) for k in text)
    assert _indices(text, SD2_TEXT + "transformer.resblocks.") == set(range(24)) and len(text) == 24 * 12 + 6
    assert tuple(text[SD2_TEXT + "transformer.resblocks.23.attn.in_proj_weight"].shape) == (3072, 1024)
    assert set(unused) == {k for k in text if ".resblocks.23." in k} | {
        SD2_TEXT + "text_projection",
        SD2_TEXT + "logit_scale",
    }


def test_sdxl_key_layout_matches_the_original_file():
    """sd_xl_base_1.0's layout: ``label_emb``, transformer depths 1/2/10 (none at the first level), CLIP ViT-L
    (12 layers) and OpenCLIP bigG (32 resblocks, ``text_projection``)."""
    keys, unused = expected_ldm_keys("sdxl")
    assert tuple(keys[UNET + "label_emb.0.0.weight"].shape) == (1280, 2816)
    assert not any(k.startswith(UNET + "input_blocks.1.1.") for k in keys)
    for block, depth in (("input_blocks.4.1", 2), ("input_blocks.7.1", 10), ("middle_block.1", 10)):
        assert _indices(keys, f"{UNET}{block}.transformer_blocks.") == set(range(depth)), block
    for upsampler in ("output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight"):
        assert UNET + upsampler in keys
    assert tuple(keys[UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape) == (640, 2048)
    clip = [k for k in keys if k.startswith("conditioner.embedders.0.transformer.text_model.")]
    assert len(clip) == 197  # SD1.5's CLIP ViT-L key set (196 weights + position ids) under another prefix
    bigg = {k for k in keys if k.startswith(BIGG)} | set(unused)
    assert _indices(bigg, BIGG + "transformer.resblocks.") == set(range(32))
    assert len(bigg) == 32 * 12 + 6 and set(unused) == {BIGG + "logit_scale"}
    assert tuple(keys[BIGG + "text_projection"].shape) == (1280, 1280)
    assert all(k.startswith((UNET, "first_stage_model.", "conditioner.embedders.")) for k in keys)


def _refusal(checkpoint, expected, unused, family) -> str:
    with pytest.raises(ValueError) as err:
        check_ldm_keys(checkpoint, expected, "f.safetensors", optional=unused, family=family)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("preset", ["sd21", "sdxl"])
def test_strict_check_of_the_real_architectures(preset):
    """Hand-made key sets of meta tensors (no memory): one key removed, one extra, one mis-shaped are named."""
    expected, unused = expected_ldm_keys(preset)
    family = "sd2" if preset == "sd21" else "sdxl"
    check_ldm_keys(expected, expected, "f", optional=unused, family=family)  # the export itself
    check_ldm_keys({**expected, **unused}, expected, "f", optional=unused, family=family)  # the real file's
    gone = next(k for k in expected if "resblocks.5.attn.in_proj_weight" in k)
    assert f"1 missing key(s): {gone}" in _refusal(
        {k: v for k, v in expected.items() if k != gone}, expected, unused, family
    )
    extra = gone.replace("resblocks.5.", "resblocks.40.")
    assert f"1 unexpected key(s): {extra}" in _refusal(
        {**expected, extra: expected[gone]}, expected, unused, family
    )
    bad = UNET + "out.2.bias"
    msg = _refusal({**expected, bad: torch.empty(5, device="meta")}, expected, unused, family)
    assert f"1 mis-shaped key(s): {bad} (5,) (expected (4,))" in msg
    logit = next(k for k in unused if k.endswith("logit_scale"))
    msg = _refusal({**expected, logit: torch.empty(2, device="meta")}, expected, unused, family)
    assert f"mis-shaped key(s): {logit} (2,) (expected ())" in msg  # optional keys keep their shapes


def test_sd2_file_with_the_dropped_resblock_loads_and_a_foreign_one_is_refused(tmp_path):
    """An original-layout tiny SD2 file (one resblock more than diffusers keeps, text_projection, logit_scale)."""
    models = build_sd("tiny-sd2", seed=4).freeze()
    state = to_ldm_state_dict(models)
    last = {k: v for k, v in state.items() if ".resblocks.1." in k}
    full = {**state, **{k.replace(".resblocks.1.", ".resblocks.2."): v + 1 for k, v in last.items()}}
    full[SD2_TEXT + "text_projection"] = torch.randn(32, 32)
    full[SD2_TEXT + "logit_scale"] = torch.tensor(4.6052)
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": full}, path)
    _assert_same(models, load_sd(path))
    foreign = {**full, **{k.replace(".resblocks.1.", ".resblocks.3."): v for k, v in last.items()}}
    torch.save({"state_dict": foreign}, path)
    with pytest.raises(
        ValueError, match=r"12 unexpected key\(s\): cond_stage_model\.model\.transformer\.resblocks\.3\."
    ):
        load_sd(path)


def test_a_file_of_another_base_is_refused_in_one_line(tmp_path):
    path = save_single_file(build_sd("tiny-sdxl", seed=0), tmp_path / "xl.safetensors")
    with pytest.raises(ValueError) as err:
        load_sd(path, preset="tiny-sd2")
    assert str(err.value) == (
        f"{path} is a tiny-sdxl (SDXL family) checkpoint, not tiny-sd2 (SD2 family): load it with "
        "preset='tiny-sdxl'"
    )
    for part, net in (("unet", "unet"), ("vae", "vae"), ("text_encoder", "text_encoder")):
        getattr(build_sd("tiny-sd2", seed=0), net).save_pretrained(tmp_path / "folder" / part)
    with pytest.raises(
        ValueError, match=r"folder is a tiny-sd2 \(SD2 family\) diffusers folder, not tiny \(SD1"
    ):
        load_sd(tmp_path / "folder", preset="tiny")
    # the real architectures, from key sets alone
    sd15 = to_ldm_state_dict(build_sd("sd15", device="meta"))
    width = sd15[UNET + "input_blocks.0.0.weight"].shape[0]
    assert recognise_family(sd15) == "sd1" and resolve_preset("sd1", width, None, "f", "checkpoint") == "sd15"
    with pytest.raises(ValueError, match=r"^f is an SD1.5 checkpoint, not SDXL: load it with preset='sd15'$"):
        resolve_preset(recognise_family(sd15), width, "sdxl", "f", "checkpoint")
    xl, _ = expected_ldm_keys("sdxl")
    with pytest.raises(ValueError, match=r"^f is an SDXL checkpoint, not SD2.1: load it with preset='sdxl'$"):
        resolve_preset(recognise_family(xl), 320, "sd21", "f", "checkpoint")
    assert recognise_family(expected_ldm_keys("sd21")[0]) == "sd2"
    assert resolve_preset("sd2", 320, None, "f", "checkpoint") == "sd21"
    assert resolve_preset("sdxl", 32, None, "f", "checkpoint") == "tiny-sdxl"
    assert (
        resolve_preset("sd2", 48, None, "f", "checkpoint") == "sd21"
    )  # unknown width: the key check names it


@pytest.mark.parametrize("preset", ["sd21", "sdxl"])
def test_the_real_architectures_round_trip_through_the_file_layout_without_memory(preset):
    """Weight-free (meta) networks of the real base -> their original file layout -> back through the loader's
    converters (diffusers' for UNet, VAE and OpenCLIP): every network gets exactly its own names and shapes."""
    from oft.sd.configs import base_of, preset_config
    from oft.sd.keymaps import TEXT_LAYOUTS, text_from_ldm, unet_vae_from_ldm

    sd = build_sd(preset, device="meta")
    ldm = to_ldm_state_dict(sd)
    cfg = preset_config(preset)

    def shapes(state: dict) -> dict:
        return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}

    unet, vae = unet_vae_from_ldm(ldm, cfg["unet"], cfg["vae"])
    assert shapes(unet) == shapes(sd.unet.state_dict()) and shapes(vae) == shapes(sd.vae.state_dict())
    for part, layout in TEXT_LAYOUTS[base_of(preset).family].items():
        net = getattr(sd, part)
        assert shapes(text_from_ldm(ldm, layout, net)) == shapes(net.state_dict()), part
