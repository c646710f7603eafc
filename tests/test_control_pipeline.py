"""The diffusers pipeline of a control file draws, seed for seed, the images our sampler (``generate``) draws; it
takes the control image as PIL, array or tensor, and both the control image and the seed change the result."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from oft.control.checkpoint import load_control
from oft.control.inference import generate, sample_seed
from oft.control.pipeline import OFTControlPipeline
from oft.specs.sampling import CONTROL_EVAL
from tests.helpers.numerics import EFFECT, network_terms, tol
from tests.helpers.pipeline import SIZE, random_control_file, random_control_image

STEPS = 3
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def control_file(tmp_path_factory):
    return random_control_file(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def pipe(control_file):
    pipe = OFTControlPipeline.from_control_file(control_file)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_tol(cm, steps: int, guidance: float) -> dict[str, float]:
    """Float32 rounding of text encoder + hint encoder + ``steps`` UNet passes + VAE decoder, amplified by CFG:
    ε_u + w (ε_c − ε_u) carries the rounding of each branch times at most 2w − 1."""
    terms = network_terms(cm.sd.text_encoder, cm.hint, cm.sd.vae.decoder) + network_terms(
        cm.sd.unet, passes=steps
    )
    return tol(torch.float32, terms, c=4 * (2 * guidance - 1))


def test_the_pipeline_draws_the_samplers_images_for_the_same_seeds(control_file, pipe):
    """Two prompts, two images each, one control image per prompt: image n of prompt p is the sampler's with
    seed ``sample_seed(seed, p, n)``, on the control evaluation's DDIM (CFG 9, eta 0) in both."""
    cm = load_control(control_file)  # rotations applied in the forward pass; the pipeline's are merged
    hints = torch.stack([random_control_image(1), random_control_image(2)])
    seed, per_prompt = 7, 2
    ref = generate(
        cm,
        hints.repeat_interleave(per_prompt, dim=0),
        [p for p in PROMPTS for _ in range(per_prompt)],
        seeds=[sample_seed(seed, p, n) for p in range(len(PROMPTS)) for n in range(per_prompt)],
        steps=STEPS,
        guidance=CONTROL_EVAL.guidance,
        eta=CONTROL_EVAL.eta,
        progress=False,
    )
    out = pipe(
        PROMPTS,
        list(hints),
        num_inference_steps=STEPS,
        seed=seed,
        num_images_per_prompt=per_prompt,
        output_type="pt",
    ).images
    assert out.shape == (4, 3, SIZE, SIZE) and pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    t = sampling_tol(cm, STEPS, CONTROL_EVAL.guidance)
    torch.testing.assert_close(out, ref, **t)
    # what the comparison would catch: another seed, another control image
    other_seed = pipe(
        PROMPTS,
        list(hints),
        num_inference_steps=STEPS,
        seed=8,
        num_images_per_prompt=per_prompt,
        output_type="pt",
    ).images
    other_hint = pipe(
        PROMPTS,
        list(hints.flip(0)),
        num_inference_steps=STEPS,
        seed=seed,
        num_images_per_prompt=per_prompt,
        output_type="pt",
    ).images
    for other in (other_seed, other_hint):
        assert (other - out).abs().amax(dim=(1, 2, 3)).min() > EFFECT * t["atol"]


def test_explicit_seeds_and_eta_match_the_sampler(control_file, pipe):
    """A list of seeds is one per image; DDIM's η-noise comes from the same per-image generators as ours."""
    cm = load_control(control_file)
    hint = random_control_image(3)
    ref = generate(
        cm,
        hint.expand(2, -1, -1, -1),
        [PROMPTS[0]] * 2,
        seeds=[11, 12],
        steps=STEPS,
        guidance=5.0,
        eta=1.0,
        progress=False,
    )
    out = pipe(
        PROMPTS[0],
        hint,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        eta=1.0,
        seed=[11, 12],
        num_images_per_prompt=2,
        output_type="pt",
    ).images
    torch.testing.assert_close(out, ref, **sampling_tol(cm, STEPS, 5.0))


def test_pil_arrays_and_tensors_are_one_control_image(pipe):
    hint = random_control_image(4)
    uint8 = (hint.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    forms = [PIL.Image.fromarray(uint8), uint8, uint8.astype(np.float32) / 255, hint, hint[None], [hint]]
    expected = pipe.control_tensor(hint)
    assert expected.shape == (1, 3, SIZE, SIZE)
    for form in forms:
        assert torch.equal(pipe.control_tensor(form), expected), type(form)
    gray = uint8[:, :, 0]  # (H, W): one grey level per pixel, repeated to RGB
    assert torch.equal(pipe.control_tensor(gray), torch.from_numpy(gray / 255).float().expand(1, 3, -1, -1))
    resized = pipe.control_tensor(PIL.Image.fromarray(uint8), height=16, width=24)
    assert resized.shape == (1, 3, 16, 24)


def test_pil_images_are_the_tensors_rounded(pipe):
    hint = random_control_image(5)
    kwargs = {"num_inference_steps": 2, "seed": 3, "num_images_per_prompt": 2}
    pil = pipe(PROMPTS[0], hint, **kwargs).images
    pt = pipe(PROMPTS[0], hint, output_type="pt", **kwargs).images
    assert [im.size for im in pil] == [(SIZE, SIZE)] * 2
    # the same call twice in one process runs the same kernels: exactly the same pixels
    for im, t in zip(pil, pt, strict=True):
        assert np.array_equal(np.asarray(im), (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": [1, 2, 3]}, "got 3 seeds for 2 images"),
        ({"seed": 1, "generator": torch.Generator()}, "either seed or generator"),
        ({"image": [random_control_image(1)] * 3}, "got 3 control images for 1 prompts"),
    ],
)
def test_bad_calls_are_one_clear_error(pipe, kwargs, message):
    kwargs = {"image": random_control_image(1), **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(PROMPTS[0], num_inference_steps=1, num_images_per_prompt=2, **kwargs)
