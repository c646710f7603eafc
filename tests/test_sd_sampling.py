"""Samplers: per-item seeds (batch-split invariant), CFG mixing, and the conv_in control hook on both branches."""

import inspect

import pytest
import torch

from oft.sd import build_sd
from oft.sd.hooks import add_to_conv_in, conv_in_channels
from oft.sd.sampling import make_scheduler, sample
from oft.specs.sampling import CONTROL_EVAL, DREAMBOOTH_VALIDATION
from tests.helpers.numerics import EFFECT, network_terms, tol

PROMPTS = ["a photo of qwe dog", "a photo of qwe dog", "a teapot on a table"]


@pytest.fixture(scope="module")
def tiny():
    return build_sd("tiny", seed=1).freeze()


def _sample(models, prompts, seeds, **kw):
    kw = {"steps": 3, "height": 32, "width": 32, "progress": False, **kw}
    return sample(models, prompts, seeds=seeds, **kw)


def _same(models, steps: int = 3) -> dict[str, float]:
    """Two samplings of the same items in other batches (other GEMM shapes): equal up to the rounding of the
    text encoder, ``steps`` UNet calls and the VAE decoder, on images in [0, 1]."""
    terms = network_terms(models.text_encoder, models.vae.decoder) + network_terms(models.unet, passes=steps)
    return tol(torch.float32, terms)


@pytest.mark.numerics
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_same_seed_same_image_for_any_batch_split(tiny, sampler):
    whole = _sample(tiny, PROMPTS, [11, 12, 13], sampler=sampler)
    assert whole.shape == (3, 3, 32, 32) and whole.min() >= 0 and whole.max() <= 1
    first = _sample(tiny, PROMPTS[:1], [11], sampler=sampler)
    rest = _sample(tiny, PROMPTS[1:], [12, 13], sampler=sampler)
    same = _same(tiny)
    torch.testing.assert_close(whole, torch.cat([first, rest]), **same)
    # same prompt, another seed: another image
    assert (whole[0] - whole[1]).abs().max() > EFFECT * same["atol"]
    if sampler == "ddim":  # a rerun of the same batch (same kernels, same process) is bit-identical
        assert torch.equal(rest, _sample(tiny, PROMPTS[1:], [12, 13], sampler=sampler))


@pytest.mark.numerics
def test_ddim_eta_noise_is_per_item_and_changes_the_result(tiny):
    a = _sample(tiny, PROMPTS[:2], [5, 6], eta=1.0)
    b = torch.cat([_sample(tiny, PROMPTS[:1], [5], eta=1.0), _sample(tiny, PROMPTS[1:2], [6], eta=1.0)])
    same = _same(tiny)
    torch.testing.assert_close(a, b, **same)
    assert (a - _sample(tiny, PROMPTS[:2], [5, 6])).abs().max() > EFFECT * same["atol"]


@pytest.mark.numerics
def test_guidance_mixes_conditional_and_unconditional(tiny):
    """w=1 is the conditional branch alone; w=0 is the negative prompt alone."""
    cond = _sample(tiny, ["a photo of a dog"], [3], guidance=1.0)
    w0 = _sample(tiny, ["a photo of a dog"], [3], guidance=0.0, negative_prompt="a blue car")
    uncond = _sample(tiny, ["a blue car"], [3], guidance=1.0)
    same = _same(tiny)
    torch.testing.assert_close(w0, uncond, **same)
    assert (cond - uncond).abs().max() > EFFECT * same["atol"]
    assert (cond - _sample(tiny, ["a photo of a dog"], [3], guidance=9.0)).abs().max() > EFFECT * same["atol"]


def test_schedulers_have_sd15_settings(tiny):
    ddim = make_scheduler("ddim", tiny.noise_scheduler.config)
    ddim.set_timesteps(50)
    assert ddim.timesteps[0].item() == 981 and ddim.timesteps[-1].item() == 1  # leading spacing, offset 1
    assert not ddim.config.set_alpha_to_one and ddim.config.beta_schedule == "scaled_linear"
    dpm = make_scheduler("dpm", tiny.noise_scheduler.config)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    # the paper's settings (SPEC §3, §4): control evaluation DDIM 50, CFG 9, eta 0; DreamBooth DPM-Solver++ 25, 7.5
    for preset, paper in (
        (CONTROL_EVAL, ("ddim", 50, 9.0, 0.0)),
        (DREAMBOOTH_VALIDATION, ("dpm", 25, 7.5, 0.0)),
    ):
        assert (preset.sampler, preset.steps, preset.guidance, preset.eta) == paper
    defaults = {k: p.default for k, p in inspect.signature(sample).parameters.items()}
    assert {k: defaults[k] for k in ("sampler", "steps", "guidance", "eta")} == CONTROL_EVAL.kwargs()


@pytest.mark.numerics
def test_conv_in_hook_equals_a_bias_shift(tiny):
    """Adding a spatially constant map after conv_in is adding it to conv_in's bias: a known answer."""
    c = conv_in_channels(tiny.unet)
    v = torch.linspace(-0.5, 0.5, c)
    feats = v[None, :, None, None].expand(2, c, 4, 4)
    x, t, ctx = torch.randn(2, 4, 4, 4), torch.tensor([50, 700]), tiny.encode_prompts(PROMPTS[:2])
    with torch.no_grad(), add_to_conv_in(tiny.unet, feats):
        hooked = tiny.unet(x, t, ctx).sample
    plain = tiny.unet(x, t, ctx).sample  # the hook is gone after the block
    shifted = build_sd("tiny", seed=1).freeze()
    shifted.unet.conv_in.bias += v
    expected = shifted.unet(x, t, ctx).sample
    # the shift is added after conv_in's sum instead of inside it: one rounding apart, carried through the UNet
    same = tol(torch.float32, network_terms(tiny.unet), scale=expected.abs().max())
    torch.testing.assert_close(hooked, expected, **same)
    assert (hooked - plain).abs().max() > EFFECT * same["atol"]


@pytest.mark.numerics
def test_control_reaches_both_cfg_branches(tiny):
    """Sampling under the hook equals sampling a UNet whose conv_in bias carries the control: so the
    unconditional branch sees it too (were it only in the conditional half, the results would differ)."""
    c = conv_in_channels(tiny.unet)
    v = torch.linspace(0.3, -0.3, c)
    feats = v[None, :, None, None].expand(2, c, 4, 4)
    with add_to_conv_in(tiny.unet, feats):
        hooked = _sample(tiny, PROMPTS[:2], [1, 2])
    shifted = build_sd("tiny", seed=1).freeze()
    with torch.no_grad():
        shifted.unet.conv_in.bias += v
    torch.testing.assert_close(hooked, _sample(shifted, PROMPTS[:2], [1, 2]), **_same(tiny))


def test_hook_passes_gradients_to_the_features(tiny):
    feats = torch.zeros(1, conv_in_channels(tiny.unet), 4, 4, requires_grad=True)
    with add_to_conv_in(tiny.unet, feats):
        out = tiny.unet(torch.randn(1, 4, 4, 4), torch.tensor([10]), tiny.encode_prompts(["x"])).sample
    out.square().mean().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_bad_inputs_are_explained(tiny):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        _sample(tiny, PROMPTS[:2], [1])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        _sample(tiny, PROMPTS[:1], [1], height=30)
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        _sample(tiny, PROMPTS[:1], [1], sampler="lms")
    with pytest.raises(ValueError, match="do not fit conv_in"):
        with add_to_conv_in(tiny.unet, torch.zeros(1, 3, 4, 4)):
            _sample(tiny, PROMPTS[:1], [1])
