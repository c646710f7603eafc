"""The tiny preset is SD-shaped and seeded; SDModels' helpers keep SD1.5's shapes and scale."""

import pytest
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward

from oft.sd import SDModels, build_sd
from oft.sd.configs import LATENT_SCALE, preset_config
from tests.helpers.numerics import approx, network_terms, tol


@pytest.fixture(scope="module")
def tiny() -> SDModels:
    return build_sd("tiny").freeze()


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = build_sd("tiny", seed=0), build_sd("tiny", seed=0), build_sd("tiny", seed=1)
    for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    assert a.identity == "tiny-seed0" and c.identity == "tiny-seed1"


def test_build_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_sd("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_is_sd_shaped(tiny):
    unet = tiny.unet
    assert unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    ffs = [m for n, m in unet.named_modules() if n.endswith(".ff") and isinstance(m, FeedForward)]
    assert ffs and all(isinstance(f.net[0], GEGLU) for f in ffs)
    assert 2 ** (len(tiny.vae.config.block_out_channels) - 1) == 8  # downsamples by 8 like SD's VAE
    assert tiny.text_encoder.config.vocab_size == 49408


@pytest.mark.numerics
def test_encode_decode_shapes_and_scale(tiny):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(0)
    lat = tiny.encode_images(images, generator=g)
    assert lat.shape == (2, 4, 8, 8)
    mean = tiny.vae.encode(images).latent_dist.mean
    lat_again = tiny.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lat, lat_again)  # sampling from the posterior is seeded
    assert not torch.allclose(lat, mean * LATENT_SCALE)  # ... and is a sample, not the mean
    out = tiny.decode_latents(mean * LATENT_SCALE)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    # (mean × scale) / scale is mean up to one rounding, carried through the decoder; images in [-1, 1]
    same = tol(torch.float32, network_terms(tiny.vae.post_quant_conv, tiny.vae.decoder))
    torch.testing.assert_close(out, tiny.vae.decode(mean).sample.clamp(-1, 1), **same)


def test_encode_prompts_shape_and_padding_matters(tiny):
    ctx = tiny.encode_prompts(["a photo of a dog", "a photo of a cat"])
    assert ctx.shape == (2, 77, 32)
    assert not torch.allclose(ctx[0], ctx[1])
    assert not ctx.requires_grad


def test_freeze_and_to(tiny):
    assert all(
        not p.requires_grad for net in (tiny.unet, tiny.vae, tiny.text_encoder) for p in net.parameters()
    )
    assert not tiny.unet.training
    m = build_sd("tiny").to(dtype=torch.float64)
    assert m.unet.conv_in.weight.dtype == torch.float64 and m.text_encoder.dtype == torch.float64


@pytest.mark.numerics
def test_schedule_is_sd15(tiny):
    s = tiny.noise_scheduler
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"
    # float32 betas = linspace(√β0, √β1)²: a few correctly rounded operations per value (linspace's product and
    # sum, the square; the sqrt below), so each √β is within a few eps·√β1 and each difference within twice that
    ops = 4
    assert s.betas[0].item() == approx(0.00085, torch.float32, ops, worst_case=True)
    assert s.betas[-1].item() == approx(0.012, torch.float32, ops, worst_case=True)
    # scaled-linear: sqrt of the betas is linear
    step = s.betas.sqrt().diff()
    linear = tol(torch.float32, 2 * ops, worst_case=True, scale=s.betas.max().sqrt())
    torch.testing.assert_close(step, step[0].expand(999), rtol=0, atol=linear["atol"])


def test_unknown_preset_message():
    with pytest.raises(ValueError, match="unknown SD preset 'sd3'"):
        build_sd("sd3")


def test_sd15_meta_architecture():
    m = build_sd("sd15", device="meta")
    assert sum(p.numel() for p in m.unet.parameters()) == 859_520_964
    assert m.unet.conv_in.weight.is_meta
    assert preset_config("sd15")["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
