"""The DreamBooth training loop with OFT/COFT on the UNet's attention projections (SPEC §2, §4).

Read ``train`` top to bottom like diffusers' ``train_dreambooth_lora.py``: check the inputs, load the frozen
base, make the class images, inject OFT, build data/optimizer, (resume), loop, validate, checkpoint, save the
adapter, and finally reload the saved file into the plain base model and sample with it (proof that the file is
usable). Only the R blocks train. The options are ``oft.db.config``, the checkpoints ``oft.db.checkpoints``, the
validation images ``oft.db.validation``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

import oft_layers
from oft.common.files import atomic_write_bytes, publish
from oft.common.images import list_images
from oft.common.seeds import step_generator
from oft.db.checkpoints import (
    discard_previous_run,
    remove_checkpoints,
    remove_later_checkpoints,
    restore_checkpoint,
    rewrite_log,
    save_adapter,
    save_checkpoint,
)
from oft.db.checks import Inputs, check_block_sizes, check_inputs
from oft.db.class_images import class_recipe, ensure_class_images
from oft.db.config import DreamBoothConfig
from oft.db.data import NOISE_STREAM, DreamBoothSteps, StepSampler
from oft.db.layout import ADAPTER_NAME, LOG_FILE, RUN_INFO, VALIDATION_DIR
from oft.db.validation import merged_for_inference, validation_images
from oft.sd import load_sd
from oft.sd.conditioning import Conditioning
from oft.sd.configs import REAL_BASES, base_of
from oft.sd.models import SDModels
from oft.sd.targets import target_set

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # frozen weights; "no": float32


@dataclass
class Session:
    """What the steps of one run share: its options and folder, the models, the trained UNet (as prepared by
    ``accelerator``), its parameters, optimizer, schedule, and the metadata its files carry."""

    cfg: DreamBoothConfig
    out: Path
    accelerator: Accelerator
    models: SDModels
    unet: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    meta: dict
    prior: bool  # class images in every batch (prior preservation)


def dreambooth_loss(
    models,
    unet,
    pixels: torch.Tensor,
    cond: Conditioning,
    generator: torch.Generator,
    prior_weight: float | None,
) -> torch.Tensor:
    """The base's MSE (ε-prediction; SD2.1: v-prediction) of one batch (pixels (B', 3, H, W) in [-1, 1], its
    text conditions ``cond`` of B' items).

    Latents, noise and timesteps come from ``generator``. With prior preservation (``prior_weight`` not None) the
    second half of the batch are class images, whose loss is added with that weight (DreamBooth).
    """
    scheduler = models.noise_scheduler
    latents = models.encode_images(pixels, generator=generator)  # (B', 4, H/8, W/8)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    t = t.to(latents.device)
    kwargs = cond.to(latents.device, latents.dtype).unet_kwargs()
    pred = unet(scheduler.add_noise(latents, noise, t), t, **kwargs).sample
    target = models.training_target(latents, noise, t)
    if prior_weight is None:
        return F.mse_loss(pred.float(), target.float())
    pred, pred_prior = pred.float().chunk(2)
    target, target_prior = target.float().chunk(2)
    return F.mse_loss(pred, target) + prior_weight * F.mse_loss(pred_prior, target_prior)


def train(cfg: DreamBoothConfig, extra_info: dict | None = None) -> Path:
    """Train one DreamBooth-OFT run; returns the path of the saved adapter. By default it resumes from the newest
    checkpoint in ``output_dir`` and returns at once when the run already finished (``resume_from_checkpoint``).

    ``extra_info`` (e.g. the benchmark run's subject and evaluation prompt) is stored in ``run.json`` and in the
    adapter's metadata.
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    finished = finished_adapter(cfg, out)
    if finished is not None:
        return finished
    # 0. every input is checked before any model loads or class image is made: one line per problem
    inputs = check_inputs(cfg, out)
    accelerator = make_accelerator(cfg)
    # 1. the frozen base model; 2. class images, made by it before any adapter exists (cached, shared)
    models = load_base(cfg, inputs, accelerator.device)
    class_paths, generated = make_class_images(cfg, models)
    # 3. OFT on the 128 attention projections; only R trains (float32 even under mixed precision)
    params = add_oft(cfg, models.unet)
    # 4. data, optimizer, schedule
    data = DreamBoothSteps(
        inputs.instance_paths,
        class_paths,
        size=cfg.resolution,
        batch_size=cfg.train_batch_size,
        seed=cfg.seed,
        center_crop=cfg.center_crop,
    )
    optimizer, lr_scheduler = make_optimizer(cfg, models.unet, params)
    # 5. resume: the adapter, the optimizer and the schedule; data and noise are functions of the step alone
    meta = {
        "base_model": models.identity,
        "instance_prompt": cfg.instance_prompt,
        "class_prompt": cfg.class_prompt,
        "validation_prompt": cfg.validation_prompt,
        **(extra_info or {}),
    }
    start = resume_or_start(cfg, out, inputs, models.unet, optimizer, lr_scheduler)
    info = {"config": asdict(cfg), **meta, "class_images_generated": generated, "resumed_from_step": start}
    atomic_write_bytes(out / RUN_INFO, json.dumps(info, indent=1, sort_keys=True).encode())
    unet, optimizer, lr_scheduler = accelerator.prepare(models.unet, optimizer, lr_scheduler)
    session = Session(
        cfg, out, accelerator, models, unet, params, optimizer, lr_scheduler, meta, prior=bool(class_paths)
    )
    # 6. the loop; 7. the adapter, reloaded into the plain base model for the final validation
    step = train_steps(session, data, start)
    return save_result(session, step)


def finished_adapter(cfg: DreamBoothConfig, out: Path) -> Path | None:
    """The adapter of a run that already trained ``max_train_steps`` (a re-submitted job-array task: nothing left
    to do; checkpoints a kill right after the adapter appeared left are removed), else None."""
    adapter = out / ADAPTER_NAME
    if cfg.starts_over or not adapter.is_file():
        return None
    done = int(oft_layers.read_adapter(adapter)[1].get("steps", 0))
    if done < cfg.max_train_steps:
        return None
    if not cfg.keep_checkpoints:
        remove_checkpoints(out)
    logger.info("%s already holds the adapter of %d steps: nothing to do", out, done)
    return adapter


def make_accelerator(cfg: DreamBoothConfig) -> Accelerator:
    """The device and mixed precision of the run: one process (one GPU) per run."""
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    if accelerator.num_processes > 1:
        raise RuntimeError("one GPU per run (batch 1): launch one process per run, e.g. oft-db/run_queue.py")
    return accelerator


def load_base(cfg: DreamBoothConfig, inputs: Inputs, device: torch.device) -> SDModels:
    """The frozen base model on ``device`` in the run's weight dtype; r is checked against its layer widths and
    a checkpoint to resume must come from the same base."""
    weight_dtype = WEIGHT_DTYPES.get(cfg.mixed_precision, torch.float32)
    models = load_sd(cfg.pretrained_model).freeze().to(device, weight_dtype)
    check_block_sizes(models.unet, cfg.oft_options(), cfg.targets, "base model")
    if inputs.state is not None and not models.same_base(inputs.state["meta"].get("base_model")):
        raise ValueError(
            f"{inputs.checkpoint} was trained from base {inputs.state['meta'].get('base_model')}, this run "
            f"loads {models.identity}: resume with the same --pretrained_model (or --resume_from_checkpoint none)"
        )
    warning = size_warning(models.preset, cfg.resolution)
    if warning:
        logger.warning(warning)
    return models


def size_warning(preset: str, resolution: int) -> str | None:
    """What to say when a real base trains at another size than its own (SDXL at the default 512 px)."""
    native = base_of(preset).resolution
    if preset not in REAL_BASES or resolution == native:
        return None
    return f"training {preset} at {resolution} px; it was trained at {native} px (--resolution {native})"


def make_class_images(cfg: DreamBoothConfig, models: SDModels) -> tuple[list[Path] | None, int]:
    """(the class images of the run, how many were generated now); (None, 0) without prior preservation."""
    if not cfg.with_prior_preservation:
        return None, 0
    recipe = class_recipe(cfg.class_images, models.base.family)
    generated = ensure_class_images(
        models,
        cfg.class_data_dir,
        cfg.class_prompt,
        cfg.num_class_images,
        size=cfg.resolution,
        seed=cfg.seed,
        batch_size=cfg.sample_batch_size,
        recipe=replace(recipe, sampling=replace(recipe.sampling, steps=cfg.class_inference_steps)),
        progress=cfg.progress,
    )
    return list_images(cfg.class_data_dir)[: cfg.num_class_images], generated


def add_oft(cfg: DreamBoothConfig, unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Inject OFT into the target set ``cfg.targets`` of ``unet``; returns the trainable parameters (the R blocks)."""
    oft_layers.inject(unet, target_set(cfg.targets), **cfg.oft_options())
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    logger.info(
        "OFT layers: %d, trainable (skew DOF): %s",
        len(list(oft_layers.oft_modules(unet))),
        f"{oft_layers.count_trainable(unet):,}",
    )
    return [p for p in unet.parameters() if p.requires_grad]


def make_optimizer(cfg: DreamBoothConfig, unet: torch.nn.Module, params: list) -> tuple:
    """AdamW over ``params`` (with COFT's projection after every step) and the learning-rate schedule."""
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    if cfg.coft:
        oft_layers.project_after_step(optimizer, unet)  # checkpoints always hold projected R
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.max_train_steps,
    )
    return optimizer, lr_scheduler


def resume_or_start(
    cfg: DreamBoothConfig, out: Path, inputs: Inputs, unet: torch.nn.Module, optimizer, lr_scheduler
) -> int:
    """Restore the checkpoint of ``inputs`` (deleting later ones: another history), or start over (deleting the
    earlier run's files with ``--resume_from_checkpoint none``), or start at step 0; the log keeps the steps up to
    the start. Returns the step the run continues from."""
    start = 0
    if inputs.state is not None:
        start = restore_checkpoint(inputs.checkpoint, inputs.state, unet, optimizer, lr_scheduler)
        later = remove_later_checkpoints(out, start)
        logger.info(
            "resumed from %s at step %d%s",
            inputs.checkpoint,
            start,
            f" (deleted the later {', '.join(p.name for p in later)})" if later else "",
        )
    elif cfg.starts_over:
        deleted = discard_previous_run(out)
        if deleted:
            logger.info(
                "starting over at step 0 because --resume_from_checkpoint none was given: deleted the earlier "
                "run's %s in %s",
                ", ".join(deleted),
                out,
            )
    else:
        logger.info("no checkpoint in %s yet: starting at step 0", out)
    rewrite_log(out / LOG_FILE, start)  # each step appears once: the steps after `start` are trained again
    return start


def train_steps(s: Session, data: DreamBoothSteps, start: int) -> int:
    """Optimizer steps ``start+1 .. max_train_steps`` (one DataLoader item per micro-step), each logged, with
    validations and checkpoints on their schedule; returns the last step."""
    cfg, micro = s.cfg, s.cfg.gradient_accumulation_steps
    loader = torch.utils.data.DataLoader(
        data,
        sampler=StepSampler(start * micro, cfg.max_train_steps * micro),
        batch_size=None,
        num_workers=cfg.num_workers,
    )
    cond = s.models.condition(
        [cfg.instance_prompt] * cfg.train_batch_size
        + ([cfg.class_prompt] * cfg.train_batch_size if s.prior else [])
    )
    validate_every = cfg.validation_steps or math.ceil(data.steps_per_epoch / micro)  # default: every epoch
    step, t0 = start, time.time()
    bar = tqdm(total=cfg.max_train_steps, initial=start, desc="train", disable=not cfg.progress)
    with bar, open(s.out / LOG_FILE, "a") as log:
        for micro_step, batch in enumerate(loader, start=start * micro):
            loss = micro_step_loss(
                s, batch["pixel_values"], cond.with_time_ids(batch["time_ids"]), micro_step
            )
            if not s.accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            record = {"step": step, "loss": loss.item(), "lr": s.lr_scheduler.get_last_lr()[0]}
            log.write(json.dumps({**record, "time": time.time() - t0}) + "\n")
            log.flush()
            after_step(s, step, validate_every)
    return step


def micro_step_loss(s: Session, pixels: torch.Tensor, cond: Conditioning, micro_step: int) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps when the accumulation is complete."""
    generator = step_generator(s.cfg.seed, micro_step, NOISE_STREAM)
    prior_weight = s.cfg.prior_loss_weight if s.prior else None
    with s.accelerator.accumulate(s.unet):
        loss = dreambooth_loss(s.models, s.unet, pixels, cond, generator, prior_weight)
        s.accelerator.backward(loss)
        if s.accelerator.sync_gradients:
            s.accelerator.clip_grad_norm_(s.params, s.cfg.max_grad_norm)
        s.optimizer.step()
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
    return loss


def after_step(s: Session, step: int, validate_every: int) -> None:
    """Validation images (every ``validate_every`` steps and at the last) and a checkpoint, when due."""
    cfg = s.cfg
    if cfg.num_validation_images and (step % validate_every == 0 or step == cfg.max_train_steps):
        with merged_for_inference(s.unet):
            validation_images(s.models, cfg, s.out / VALIDATION_DIR / f"step-{step:06d}")
    if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
        save_checkpoint(s.out, step, s.unet, s.optimizer, s.lr_scheduler, s.meta, cfg.checkpoints_total_limit)


def save_result(s: Session, step: int) -> Path:
    """Save the adapter, reload it into the plain base model and sample the final validation images with it;
    the adapter gets its final name last (its presence marks the run finished, final validation included)."""
    unet = s.accelerator.unwrap_model(s.unet)
    s.meta["steps"] = step
    pending = s.out / f".pending-{ADAPTER_NAME}"
    save_adapter(unet, pending, s.meta)
    oft_layers.strip(unet)  # back to the exact base weights
    oft_layers.load_adapter(unet, pending)
    oft_layers.merge(unet)
    if s.cfg.num_validation_images:
        validation_images(s.models, s.cfg, s.out / VALIDATION_DIR / "final")
    adapter = s.out / ADAPTER_NAME
    publish(pending, adapter)
    if not s.cfg.keep_checkpoints:  # SD1.5: ~0.4 GB each with the optimizer state, x 750 runs
        remove_checkpoints(s.out)
    logger.info("saved %s (%d steps)", adapter, step)
    return adapter
