"""What changes with the base, on the tiny SD2- and SDXL-shaped presets (random weights): the real architectures'
sizes, the tokenizers' padding, the UNet conditions (SDXL: penultimate layers of two encoders, the pooled
embedding, the size numbers), v-prediction's target, sampling, and the control trainer's loss on each base."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import oft_layers
from oft.common.seeds import step_generator
from oft.control.checkpoint import new_control_model
from oft.control.data import SyntheticDataset, collate
from oft.control.encodings import encode_dataset
from oft.control.model import ControlOFT
from oft.sd import add_to_conv_in, build_sd, sample
from oft.sd.conditioning import Conditioning, size_ids
from oft.sd.configs import BASES, EOS_TOKEN_ID
from oft.sd.sampling import unconditional
from tests.helpers.numerics import EFFECT, network_terms, tol

TINY = ("tiny", "tiny-sd2", "tiny-sdxl")


@pytest.mark.parametrize(
    "preset, unet, total",
    # the released models' parameter counts: UNet 859.52 M / 865.91 M / 2.567 B; SDXL with both encoders 3.47 B
    [
        ("sd15", 859_520_964, 1_066_235_307),
        ("sd21", 865_910_724, 1_289_952_427),
        ("sdxl", 2_567_463_684, 3_468_837_867),
    ],
)
def test_the_real_architectures_have_the_released_sizes(preset, unet, total):
    sd = build_sd(preset, device="meta")
    assert sum(p.numel() for p in sd.unet.parameters()) == unet
    assert sum(p.numel() for net in sd.networks for p in net.parameters()) == total
    assert (sd.text_encoder_2 is not None) == (preset == "sdxl")


def test_prompts_are_padded_as_each_encoder_was_trained():
    ids = {p: build_sd(p).tokenize(["a cat"])[0] for p in TINY}
    # <start> a cat <end>, then CLIP's end token (SD1) or OpenCLIP's "!" = 0 (SD2)
    assert ids["tiny"][:4].tolist() == [49406, 320, 2368, 49407] and (ids["tiny"][4:] == EOS_TOKEN_ID).all()
    assert torch.equal(ids["tiny-sd2"][:4], ids["tiny"][:4]) and (ids["tiny-sd2"][4:] == 0).all()
    xl = build_sd("tiny-sdxl")
    assert torch.equal(xl.tokenize(["a cat"])[0], ids["tiny"])  # SDXL's first encoder: CLIP's padding
    assert torch.equal(xl.tokenize(["a cat"], xl.tokenizer_2)[0], ids["tiny-sd2"])  # its second: OpenCLIP's


def test_sdxl_conditions_are_both_penultimate_layers_the_pooled_embedding_and_the_size():
    sd = build_sd("tiny-sdxl")
    cond = sd.condition(["a cat", "a dog"], 48, 64)
    first = sd.text_encoder(sd.tokenize(["a cat", "a dog"]), output_hidden_states=True)
    second = sd.text_encoder_2(sd.tokenize(["a cat", "a dog"], sd.tokenizer_2), output_hidden_states=True)
    assert torch.equal(cond.context, torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1))
    assert torch.equal(cond.pooled, second.text_embeds)
    assert cond.time_ids.tolist() == [[48, 64, 0, 0, 48, 64]] * 2
    assert cond.context.shape[-1] == sd.unet.config.cross_attention_dim
    kwargs = cond.unet_kwargs()
    assert kwargs["added_cond_kwargs"]["text_embeds"] is cond.pooled
    # the other bases: the last hidden state, nothing added
    sd2 = build_sd("tiny-sd2")
    plain = sd2.condition(["a cat"])
    assert plain.pooled is None and plain.unet_kwargs().keys() == {"encoder_hidden_states"}
    assert torch.equal(plain.context, sd2.text_encoder(sd2.tokenize(["a cat"])).last_hidden_state)


def test_conditions_concatenate_and_take_other_sizes():
    sd = build_sd("tiny-sdxl")
    a, b = sd.condition(["a"]), sd.condition(["b", "c"])
    both = Conditioning.cat([a, b])
    assert len(both) == 3 and torch.equal(both.index([1, 2]).pooled, b.pooled)
    ids = size_ids(3, (512, 384), (7, 0), (64, 64))
    assert torch.equal(both.with_time_ids(ids).time_ids, ids) and torch.equal(
        both.with_time_ids(ids).context, both.context
    )
    with pytest.raises(ValueError, match="without pooled"):
        Conditioning.cat([build_sd("tiny").condition(["a"]), a])


def test_v_prediction_learns_the_velocity():
    """SD2.1's target: v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (Salimans & Ho), the other bases' the noise."""
    x, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    sd2 = build_sd("tiny-sd2")
    a = sd2.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x
    torch.testing.assert_close(sd2.training_target(x, noise, t), v, **tol(torch.float32, 4))
    assert build_sd("tiny-sdxl").training_target(x, noise, t) is noise
    assert [BASES[p].prediction for p in ("sd15", "sd21", "sdxl")] == ["epsilon", "v_prediction", "epsilon"]


def test_an_empty_negative_prompt_is_zeros_on_sdxl_only():
    xl, sd2 = build_sd("tiny-sdxl"), build_sd("tiny-sd2")
    zeros = unconditional(xl, "", 2, 64, 64)
    assert (
        not zeros.context.any()
        and not zeros.pooled.any()
        and zeros.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    )
    assert unconditional(xl, "blurry", 1, 64, 64).context.abs().max() > 0
    assert torch.equal(unconditional(sd2, "", 1, 64, 64).context, sd2.condition([""]).context)


@pytest.mark.parametrize("preset", ["tiny-sd2", "tiny-sdxl"])
def test_sampling_runs_on_each_base_and_follows_the_prompt(preset):
    sd = build_sd(preset, seed=1)
    kwargs = dict(seeds=[0], height=64, width=64, steps=2, progress=False)
    cat, again, dog = (sample(sd, [p], **kwargs) for p in ("a cat", "a cat", "a dog"))
    assert cat.shape == (1, 3, 64, 64) and torch.equal(cat, again)
    assert (cat - dog).abs().max() > 0


@pytest.mark.numerics
@pytest.mark.parametrize("preset", ["tiny-sd2", "tiny-sdxl"])
def test_the_control_loss_on_each_base_is_the_mse_to_its_target(preset):
    cm = new_control_model(build_sd(preset, seed=2), r=4, eps=1e-3, coft=True, block_share=False)
    module = ControlOFT(cm)
    sd = module.cm.sd
    batch = collate([SyntheticDataset("train", 2, 32)[i] for i in range(2)])
    loss = module.loss(batch, step_generator(0, 3, 0))
    gen = step_generator(0, 3, 0)
    latents = sd.encode_images(batch["jpg"], generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    cond = sd.condition(batch["txt"], 32, 32)
    with torch.no_grad(), add_to_conv_in(module.unet, module.hint(batch["hint"])):
        pred = module.unet(sd.noise_scheduler.add_noise(latents, noise, t), t, **cond.unet_kwargs()).sample
    expected = F.mse_loss(pred, sd.training_target(latents, noise, t))
    terms = network_terms(module.unet) + pred.numel()
    torch.testing.assert_close(loss.detach(), expected, **tol(torch.float32, terms))
    loss.backward()
    assert module.hint.zero_conv.weight.grad.abs().max() > 0
    # the cache holds the same conditions (SDXL: with the size numbers of the 32 px items)
    module.encodings = encode_dataset(sd, SyntheticDataset("train", 2, 32), chunk=1)
    cached = module.loss(batch, step_generator(0, 3, 0))
    torch.testing.assert_close(cached, loss, **tol(torch.float32, terms + network_terms(sd.vae.encoder)))
    if preset == "tiny-sdxl":
        assert module.encodings.cond.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    if preset == "tiny-sd2":  # the velocity, not the noise
        assert (expected - F.mse_loss(pred, noise)).abs() > EFFECT * tol(torch.float32, terms)["rtol"]
    assert len(list(oft_layers.oft_modules(module.unet))) == (36 if preset == "tiny-sd2" else 72)


def test_class_images_come_from_each_base_stock_sampler(tmp_path):
    """--class_images reference is the base's own pipeline: SD1.5's PNDM, SD2.1's DDIM, SDXL's Euler at CFG 5."""
    from oft.db.class_images import class_recipe, ensure_class_images
    from oft.specs.sampling import SamplerPreset

    samplers = {f: class_recipe("reference", f).sampling for f in ("sd1", "sd2", "sdxl")}
    assert samplers == {
        "sd1": SamplerPreset("pndm", 50, 7.5),
        "sd2": SamplerPreset("ddim", 50, 7.5),
        "sdxl": SamplerPreset("euler", 50, 5.0),
    }
    assert class_recipe("ddim", "sdxl") == class_recipe("ddim", "sd1")
    sd = build_sd("tiny-sdxl", seed=3)
    recipe = class_recipe("reference", sd.base.family)
    quick = type(recipe)(type(recipe.sampling)("euler", 2, 5.0), recipe.suffix, recipe.half_on_gpu)
    made = ensure_class_images(
        sd, tmp_path / "dog", "a dog", 2, size=64, batch_size=2, recipe=quick, progress=False
    )
    assert made == 2 and sorted(p.name for p in (tmp_path / "dog").glob("*.jpg")) == ["0000.jpg", "0001.jpg"]
    with pytest.raises(ValueError, match="unknown class-image recipe"):
        class_recipe("pndm")


@pytest.mark.numerics
@pytest.mark.parametrize("preset", ["tiny-sd2", "tiny-sdxl"])
def test_our_sampler_equals_diffusers_pipeline_of_the_base(preset):
    """The conditions above are the ones diffusers' own pipelines build (SD2: StableDiffusionPipeline with
    v-prediction; SDXL: StableDiffusionXLPipeline, its pooled embedding, size numbers and zeroed empty negative
    prompt): the same seed gives the same image (measured equal to the last bit on one machine)."""
    from oft.db.export import to_pipeline

    sd = build_sd(preset, seed=4)
    ours = sample(
        sd, ["a dog"], seeds=[3], height=64, width=64, sampler="dpm", steps=4, guidance=7.5, progress=False
    )
    pipe = to_pipeline(sd)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a dog", num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                  generator=[torch.Generator().manual_seed(3)], output_type="pt").images  # fmt: skip
    terms = 4 * network_terms(sd.unet) + network_terms(sd.vae.decoder)
    torch.testing.assert_close(ours, theirs, **tol(torch.float32, terms))
    other = sample(
        sd, ["a dog"], seeds=[4], height=64, width=64, sampler="dpm", steps=4, guidance=7.5, progress=False
    )
    assert (other - ours).abs().max() > EFFECT * tol(torch.float32, terms)["atol"]


def test_what_is_sd1_only_says_so_for_sdxl():
    from oft.control.pipeline import OFTControlPipeline

    cm = new_control_model(build_sd("tiny-sdxl"), r=4, eps=None, coft=False, block_share=False)
    with pytest.raises(ValueError, match="sample an SDXL control model with test_oft_parallel.py"):
        OFTControlPipeline.from_control_model(cm)
