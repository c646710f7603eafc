"""The training module: step 0 is the base model, the loss is the eps-MSE of SPEC §3, options change what they
should (gradient checkpointing: nothing numerically; bf16: dtype only; magnitude: which tensors train), and COFT
holds after every optimizer step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import oft_layers
from oft.common.seeds import step_generator
from oft.control.config import Experiment, Training
from oft.control.data import SyntheticDataset, collate
from oft.control.encodings import encode_dataset
from oft.control.model import ControlOFT
from oft.control.training import fit
from oft.sd import add_to_conv_in, load_sd
from tests.helpers.control import initial_model, tiny_sd_file
from tests.helpers.numerics import network_terms, tol


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    base = tiny_sd_file(root)
    ini = initial_model(root, base, "--r=4", "--eps=1e-3", "--coft")
    return base, ini


@pytest.fixture(scope="module")
def batch():
    return collate([SyntheticDataset("train", 2, 32)[i] for i in range(2)])


@pytest.mark.numerics
def test_step_zero_is_the_base_model_and_the_loss_is_eps_mse(files, batch):
    base, ini = files
    module, plain = ControlOFT(ini), load_sd(base)
    sd = module.cm.sd
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 500])
    ctx = sd.encode_prompts(batch["txt"])
    with add_to_conv_in(module.unet, module.hint(batch["hint"])):
        out = module.unet(x, t, encoder_hidden_states=ctx).sample
    # R = 0 rotates by exactly I and the zero conv adds exact zeros, but the wrapped layers may reach the same
    # sums through other kernels: equal up to the UNet's rounding
    expected = plain.unet(x, t, encoder_hidden_states=ctx).sample
    unet_terms = network_terms(plain.unet)
    torch.testing.assert_close(out, expected, **tol(torch.float32, unet_terms, scale=expected.abs().max()))
    # the loss by hand, with the draws of the same generator
    gen = step_generator(0, 3, 0)
    loss = module.loss(batch, gen)
    gen = step_generator(0, 3, 0)
    latents = sd.encode_images(batch["jpg"], generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    pred = plain.unet(sd.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(loss, F.mse_loss(pred, noise), **tol(torch.float32, unet_terms + pred.numel()))
    loss.backward()
    assert module.hint.zero_conv.weight.grad.abs().max() > 0  # the zero conv learns first ...
    assert all(layer.R.grad.abs().max() > 0 for _, layer in oft_layers.oft_modules(module.unet))  # ... and R
    assert all(p.grad is None for p in module.vae.parameters())


def test_timestep_range_narrows_the_training_timesteps(files, batch, monkeypatch):
    module = ControlOFT(files[1], timestep_range=(400, 402))
    drawn = []
    add_noise = module.cm.sd.noise_scheduler.add_noise
    monkeypatch.setattr(
        module.cm.sd.noise_scheduler,
        "add_noise",
        lambda x, n, t: drawn.append(t.clone()) or add_noise(x, n, t),
    )
    for step in range(8):
        module.loss(batch, step_generator(0, step, 0))
    assert set(torch.cat(drawn).tolist()) == {400, 401}
    for bad in [(500, 500), (-1, 10), (0, 1001)]:
        with pytest.raises(ValueError, match="timestep range"):
            ControlOFT(files[1], timestep_range=bad)


@pytest.mark.numerics
def test_gradient_checkpointing_changes_nothing_but_memory(files, batch):
    grads = []
    for checkpointing in (False, True):
        module = ControlOFT(files[1], gradient_checkpointing=checkpointing)
        assert module.unet.is_gradient_checkpointing == checkpointing
        module.train()
        loss = module.loss(batch, step_generator(0, 0, 0))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in module.parameters() if p.requires_grad]))
    # exact: checkpointing recomputes the same forward with the same kernels in this process, and every
    # parameter gets its gradient from one use, so nothing is summed in another order
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.equal(a, b)


def test_bf16_autocast_keeps_rotations_float32(files, batch):
    module = ControlOFT(files[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.loss(batch, step_generator(0, 0, 0))
    loss.backward()
    layer = next(layer for _, layer in oft_layers.oft_modules(module.unet))
    assert torch.isfinite(loss) and layer.R.dtype == torch.float32 and layer.R.grad.dtype == torch.float32


@pytest.mark.numerics
def test_optimizer_projects_after_each_step_and_magnitude_stage_trains_only_scales(files, batch):
    module = ControlOFT(files[1], lr=1.0)  # a huge step: every block leaves the eps-ball before projection
    opt = module.configure_optimizers()
    module.loss(batch, step_generator(0, 0, 0)).backward()
    opt.step()
    for _, layer in oft_layers.oft_modules(module.unet):
        norms = torch.linalg.matrix_norm(layer.R, ord="fro")
        radius = torch.full_like(norms, layer.config.radius(layer.block_size))
        # on the sphere up to the rounding of a norm of b² entries (computed twice: to project, and here)
        torch.testing.assert_close(
            norms, radius, **tol(torch.float32, 2 * layer.block_size**2, worst_case=True)
        )
    names = ControlOFT(files[1], stage="magnitude").trainable_names()
    assert names and all(n.endswith(".s") for n in names)
    with pytest.raises(ValueError, match="stage must be one of"):
        ControlOFT(files[1], stage="lora")


def test_gradient_clipping_is_off_by_default_refuses_a_non_positive_bound_and_reaches_lightning(
    files, tmp_path
):
    """Off as in the reference; --max_grad_norm becomes the trainer's gradient_clip_val (global norm)."""
    assert Training().max_grad_norm is None
    with pytest.raises(ValueError, match="max_grad_norm must be positive"):
        Training(max_grad_norm=0.0)
    _, ini = files
    exp = Experiment(control="synthetic", resolution=32, synthetic_length=2, r=4, eps=1e-3, coft=True)
    cfg = Training(batch_size=2, epochs=1, max_steps=1, accelerator="cpu", num_workers=0, sample_every=0,
                   log_every=1, save_every=1, max_grad_norm=0.5)  # fmt: skip
    trainer = fit(ControlOFT(str(ini)), exp.dataset("train"), cfg.for_task(exp), tmp_path, 0)
    assert trainer.gradient_clip_val == 0.5 and trainer.global_step == 1


@pytest.mark.numerics
def test_cached_encodings_draw_the_same_latents_and_give_the_same_loss(files):
    _, ini = files
    data = SyntheticDataset("train", 6, 32)
    module = ControlOFT(ini)
    sd = module.cm.sd
    module.encodings = encode_dataset(sd, data, chunk=4)  # chunks of 4 and 2: other batchings than the step's
    assert module.encodings.mean.shape == (6, 4, 4, 4) and module.encodings.cond.context.shape[:2] == (6, 77)
    batch = collate([data[i] for i in (5, 1, 3)])  # a shuffled batch: looked up by its items' indices
    cached = module.loss(batch, step_generator(0, 7, 0))
    first = module.encodings.latents(batch["index"], step_generator(0, 7, 0), sd.latent_scale)
    module.encodings = None
    plain = module.loss(batch, step_generator(0, 7, 0))
    direct = sd.encode_images(batch["jpg"], generator=step_generator(0, 7, 0))
    # the same posterior draw; the encoders ran on other batches, so equal up to their rounding
    vae_terms = network_terms(sd.vae.encoder, sd.vae.quant_conv)
    torch.testing.assert_close(first, direct, **tol(torch.float32, vae_terms, scale=direct.abs().max()))
    terms = vae_terms + network_terms(sd.text_encoder, module.unet) + 3 * 4 * 4 * 4
    torch.testing.assert_close(cached, plain, **tol(torch.float32, terms))
    with pytest.raises(ValueError, match="index i"):
        encode_dataset(sd, [data[1], data[0]])
