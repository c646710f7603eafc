"""The DreamBooth training loop with OFT/COFT on the UNet's attention projections (SPEC §2, §4).

Read top to bottom like diffusers' ``train_dreambooth_lora.py``: load the frozen base, make the class images,
inject OFT, build data/optimizer, (resume), loop, validate, checkpoint, save the adapter, and finally reload the
saved file into the plain base model and sample with it (proof that the file is usable). Only the R blocks train.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import oft_layers
from oft.data.files import atomic_write_bytes, create_output_folder
from oft.db.class_images import ensure_class_images, save_png
from oft.db.data import DreamBoothSteps, StepSampler, instance_images, list_images, step_generator
from oft.paths import models_root
from oft.safe_load import load_error_line

logger = logging.getLogger(__name__)

ADAPTER_NAME = "adapter.safetensors"  # the run's result; its presence marks the run finished
RUN_INFO = "run.json"
CHECKPOINT_PREFIX = "checkpoint-"
VALIDATION_DIR = "validation"
LOG_FILE = "log.jsonl"


def _f(default, help: str, **kw):
    """A config field with its --help text (the entry point builds its flags from these)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Every option of a DreamBooth-OFT run; the defaults are the paper's/reference's settings (SPEC §4)."""

    # what to train on
    pretrained_model: str = _f(
        str(models_root() / "v1-5-pruned.ckpt"), "SD1.5: single-file .ckpt/.safetensors or diffusers folder"
    )
    instance_data_dir: str = _f("", "folder of the subject's photos")
    instance_prompt: str = _f("", "prompt of the subject photos, e.g. 'a photo of qwe dog'")
    class_prompt: str = _f("", "prior-preservation prompt, e.g. 'a photo of dog'")
    class_data_dir: str = _f("", "class-image cache (generated there when fewer than --num_class_images)")
    validation_prompt: str = _f("", "prompt of the validation images")
    output_dir: str = _f("", "run folder: checkpoints, validation images, the adapter")
    # OFT
    r: int = _f(4, "number of diagonal blocks of each rotation (block size = width / r)")
    eps: float = _f(6e-5, "COFT deviation: Frobenius radius eps*b^2/sqrt(r) per block")
    coft: bool = _f(True, "constrained OFT (project R after every step); --no-coft trains plain OFT")
    block_share: bool = _f(False, "one rotation block shared by all r blocks of a layer")
    # prior preservation
    with_prior_preservation: bool = _f(True, "add the class-image loss (DreamBooth's prior preservation)")
    prior_loss_weight: float = _f(1.0, "weight of the class-image loss")
    num_class_images: int = _f(200, "class images to generate/keep per class")
    sample_batch_size: int = _f(4, "batch size when generating class images")
    class_inference_steps: int = _f(50, "DDIM steps (CFG 7.5) of each generated class image")
    # optimisation
    resolution: int = _f(512, "training image size (shorter side resized, then a random square crop)")
    center_crop: bool = _f(False, "center crop instead of a random crop")
    train_batch_size: int = _f(1, "subject images per step (as many class images are added)")
    max_train_steps: int = _f(2005, "optimizer steps (an epoch is 200 steps; the paper evaluates step 1000)")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float = _f(6e-5, "AdamW learning rate")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    weight_decay: float = _f(1e-2, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping (global norm)")
    lr_scheduler: str = _f("constant", "diffusers scheduler name: constant, linear, cosine, ...")
    lr_warmup_steps: int = _f(0, "warm-up steps of the learning-rate schedule")
    seed: int = _f(0, "seed of data order, crops, noise, class and validation images")
    mixed_precision: str = _f("no", "no, fp16 or bf16 (frozen weights in that dtype, R in float32)")
    gradient_checkpointing: bool = _f(False, "recompute UNet activations in the backward pass (less memory)")
    num_workers: int = _f(0, "data-loading worker processes")
    # validation, checkpoints
    validation_steps: int = _f(0, "validate every N steps (0: every epoch, as the reference)")
    num_validation_images: int = _f(8, "validation images per validation (seeds seed..seed+N-1)")
    validation_sampler: str = _f("dpm", "ddim or dpm (DPM-Solver multistep, the reference's)")
    validation_inference_steps: int = _f(25, "sampler steps of validation images")
    guidance_scale: float = _f(7.5, "classifier-free guidance of validation images")
    checkpointing_steps: int = _f(200, "save a resumable checkpoint every N steps (0: never)")
    checkpoints_total_limit: int = _f(2, "keep at most this many checkpoints (0: all)")
    keep_checkpoints: bool = _f(
        False, "keep the checkpoints after the run finished (they only serve resuming)"
    )
    resume_from_checkpoint: str = _f(
        "latest",
        "'latest': continue from the newest checkpoint in --output_dir (none yet: start at step 0); 'none': "
        "start over at step 0, deleting the run's checkpoints, adapter, log and validation images; or a "
        "checkpoint folder",
    )
    progress: bool = _f(True, "progress bars")

    def validate(self) -> None:
        """Check the options before any model loads; one clear message per problem."""
        for name in ("instance_data_dir", "instance_prompt", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required (or pick a benchmark run with --run i)")
        if self.with_prior_preservation and not (self.class_prompt and self.class_data_dir):
            raise ValueError(
                "prior preservation needs --class_prompt and --class_data_dir (or --no-with_prior_preservation)"
            )
        if self.num_validation_images > 0 and not self.validation_prompt:
            raise ValueError(
                "--validation_prompt is required (or --num_validation_images 0 to skip validation)"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.resolution % 8:
            raise ValueError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.coft and not self.eps > 0:
            raise ValueError(f"COFT needs --eps > 0, got {self.eps}")
        for name in ("r", "train_batch_size", "max_train_steps", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.validation_sampler not in ("ddim", "dpm"):
            raise ValueError(f"--validation_sampler must be ddim or dpm, got {self.validation_sampler!r}")
        if self.checkpointing_steps < 0 or self.checkpoints_total_limit < 0:
            raise ValueError("--checkpointing_steps and --checkpoints_total_limit must be >= 0")

    @property
    def starts_over(self) -> bool:
        """``--resume_from_checkpoint none`` (or empty): train from step 0 whatever the output folder holds."""
        return self.resume_from_checkpoint.strip().lower() in ("", "none")

    def oft_options(self) -> dict:
        return {
            "r": self.r,
            "eps": self.eps if self.coft else None,
            "coft": self.coft,
            "block_share": self.block_share,
        }


def config_fields() -> list:
    """The dataclass fields of ``TrainConfig`` (name, default, help), for building command-line flags."""
    return list(fields(TrainConfig))


# --- checkpoints ---------------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int:
    """The step of ``checkpoint-NNNNNN``."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(output_dir: Path, complete: bool = True) -> list[Path]:
    """Checkpoint folders, oldest first: complete ones (state and adapter), or all (``complete=False``, e.g.
    one that a kill left half deleted, for removal). Unfinished writes (``.tmp-checkpoint-*``) never count."""
    found = [
        p
        for p in output_dir.glob(CHECKPOINT_PREFIX + "*")
        if p.is_dir()
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (not complete or ((p / "state.pt").is_file() and (p / ADAPTER_NAME).is_file()))
    ]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(output_dir: Path, spec: str) -> Path | None:
    """``"latest"`` -> newest complete checkpoint (None if none yet); ``"none"``/``""`` -> None; a path -> that
    folder (error if it holds no checkpoint)."""
    if spec.strip().lower() in ("", "none"):
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not ((path / "state.pt").is_file() and (path / ADAPTER_NAME).is_file()):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {spec}: no checkpoint there (expected {path}/state.pt and "
            f"{path}/{ADAPTER_NAME}); use 'latest', 'none' or a checkpoint-NNNNNN folder"
        )
    return path


def read_state(checkpoint: Path) -> dict:
    """``checkpoint/state.pt`` (step, optimizer and scheduler state, meta, path cache) as tensors and plain
    values only: ``weights_only=True`` never runs code from the file; anything else is one clear error."""
    path = checkpoint / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled objects, truncated or foreign files: one line for all
        raise ValueError(
            f"cannot resume from {path}: {load_error_line(err)}; delete {checkpoint} or pass "
            "--resume_from_checkpoint none to start over"
        ) from None
    keys = ("step", "optimizer", "lr_scheduler", "meta")
    if (
        not isinstance(state, dict)
        or any(k not in state for k in keys)
        or not isinstance(state["meta"], dict)
    ):
        raise ValueError(
            f"cannot resume from {path}: not a DreamBooth-OFT checkpoint (expected the keys {keys}); "
            f"delete {checkpoint} or pass --resume_from_checkpoint none to start over"
        )
    return state


def save_checkpoint(
    output_dir: Path, step: int, unet, optimizer, lr_scheduler, meta: dict, limit: int
) -> Path:
    """Write ``checkpoint-{step}/`` (adapter, optimizer + scheduler state, config) atomically; rotate old ones."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = output_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    oft_layers.save_adapter(unet, tmp / ADAPTER_NAME, {k: str(v) for k, v in meta.items()})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "meta": meta,
        "oft_path_cache": oft_layers.path_cache(),  # a resumed run computes (and rounds) the same way
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if limit > 0:
        for old in list_checkpoints(output_dir, complete=False)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def check_block_sizes(unet: torch.nn.Module, options: dict, model: str) -> None:
    """Raise ``oft_layers``' one-line ``ValueError`` unless r divides the input width of every DreamBooth target
    layer of ``unet`` (the 128 attention projections; SD1.5: widths 320, 640, 768, 1280)."""
    from oft.sd.targets import DB_TARGETS, match_targets

    config = oft_layers.OFTConfig(**options)
    modules = dict(unet.named_modules())
    widths = {name: modules[name].in_features for name in match_targets(modules, DB_TARGETS)}
    for name, width in widths.items():
        try:
            config.block_size(width, where=f"--r {config.r}: {model} layer {name}")
        except ValueError as err:
            # that layer's divisors alone could send the user to an r that another layer refuses
            common = math.gcd(*widths.values())
            fits = [d for d in range(1, common + 1) if common % d == 0]
            raise ValueError(
                f"{err}; all {len(widths)} target layers (widths {sorted(set(widths.values()))}) "
                f"take r among {fits}"
            ) from None


def sd15_unet_without_weights() -> torch.nn.Module:
    """SD1.5's UNet on the meta device: every layer's shape from the architecture config, no weights, ~0.1 s."""
    from diffusers import UNet2DConditionModel

    from oft.sd.configs import preset_config

    with torch.device("meta"):
        return UNet2DConditionModel(**preset_config("sd15")["unet"])


def rewrite_log(path: Path, through_step: int) -> int:
    """Keep the records of steps ``1..through_step`` of ``log.jsonl`` (the last one of each step, in step order),
    atomically: a resumed run re-trains the later steps and logs them again, so each step appears once. A line
    cut short by a kill is dropped. Returns how many records were kept."""
    records: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(step, int) and 1 <= step <= through_step:
                records[step] = line
    atomic_write_bytes(path, "".join(records[k] + "\n" for k in sorted(records)).encode())
    return len(records)


def discard_previous_run(out: Path) -> list[str]:
    """Delete what an earlier run left in ``out`` (checkpoints, adapter, validation images; the log is rewritten
    by the caller) so that nothing of it can be resumed or mistaken for the new run's. Returns what it deleted."""
    checkpoints = list_checkpoints(out, complete=False)
    gone = [p.name for p in checkpoints]
    for p in [*checkpoints, *out.glob(f".tmp-{CHECKPOINT_PREFIX}*")]:
        shutil.rmtree(p, ignore_errors=True)
    for name in (ADAPTER_NAME, VALIDATION_DIR):
        if (out / name).exists():
            gone.append(name)
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
    return gone


# --- inference with the rotations folded in --------------------------------------------------------------------
@contextmanager
def merged_for_inference(model: torch.nn.Module):
    """Fold every rotation into its weight for the block (sampling at the base model's cost), then restore the
    original weights exactly (from a copy, so repeated validations never drift the frozen weights)."""
    layers = [layer for _, layer in oft_layers.oft_modules(model)]
    saved = [layer.base.weight.detach().clone() for layer in layers]
    oft_layers.merge(model)
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved, strict=True):
                layer.base.weight.copy_(weight)
                layer.merged = False


def validation_images(models, cfg: TrainConfig, folder: Path) -> torch.Tensor:
    """Sample the validation prompt with seeds ``seed..seed+N-1`` and save ``folder/00.png, 01.png, ...``."""
    from oft.sd.sampling import sample

    n = cfg.num_validation_images
    images = sample(
        models,
        [cfg.validation_prompt] * n,
        sampler=cfg.validation_sampler,
        steps=cfg.validation_inference_steps,
        guidance=cfg.guidance_scale,
        seeds=[cfg.seed + i for i in range(n)],
        height=cfg.resolution,
        width=cfg.resolution,
        progress=False,
    )
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, image in enumerate(images):
        save_png(image, tmp / f"{i:02d}.png")
    (tmp / "prompt.txt").write_text(cfg.validation_prompt + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return images


def dreambooth_loss(
    models,
    unet,
    pixels: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator,
    prior_weight: float | None,
) -> torch.Tensor:
    """ε-prediction MSE of one batch (pixels (B', 3, H, W) in [-1, 1], context (B', 77, hidden)).

    Latents, noise and timesteps come from ``generator``. With prior preservation (``prior_weight`` not None) the
    second half of the batch are class images, whose loss is added with that weight (DreamBooth).
    """
    scheduler = models.noise_scheduler
    latents = models.encode_images(pixels, generator=generator)  # (B', 4, H/8, W/8)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    pred = unet(
        scheduler.add_noise(latents, noise, t.to(latents.device)), t.to(latents.device), context
    ).sample
    if prior_weight is None:
        return F.mse_loss(pred.float(), noise.float())
    pred, pred_prior = pred.float().chunk(2)
    noise, noise_prior = noise.float().chunk(2)
    return F.mse_loss(pred, noise) + prior_weight * F.mse_loss(pred_prior, noise_prior)


# --- the loop ----------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, extra_info: dict | None = None) -> Path:
    """Train one DreamBooth-OFT run; returns the path of the saved adapter. By default it resumes from the newest
    checkpoint in ``output_dir`` and returns at once when the run already finished (``resume_from_checkpoint``).

    ``extra_info`` (e.g. the benchmark run's subject and evaluation prompt) is stored in ``run.json`` and in the
    adapter's metadata.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from oft.sd import load_sd
    from oft.sd.targets import DB_TARGETS

    cfg.validate()
    out = Path(cfg.output_dir)
    if not cfg.starts_over and (out / ADAPTER_NAME).is_file():
        done = int(oft_layers.read_adapter(out / ADAPTER_NAME)[1].get("steps", 0))
        if done >= cfg.max_train_steps:  # a re-submitted job-array task: nothing left to do
            if not cfg.keep_checkpoints:  # a kill right after the adapter appeared may have left them
                for old in list_checkpoints(out, complete=False):
                    shutil.rmtree(old, ignore_errors=True)
            logger.info("%s already holds the adapter of %d steps: nothing to do", out, done)
            return out / ADAPTER_NAME

    # 0. every input is checked before any model loads or class image is made: one line per problem
    create_output_folder(out, f"--output_dir {out}")  # or one WriteError line (run_main prints it)
    if cfg.with_prior_preservation:
        create_output_folder(cfg.class_data_dir, f"--class_data_dir {cfg.class_data_dir}")
    instance_paths = instance_images(cfg.instance_data_dir)  # present, and every photo decodes
    # r against SD1.5's layer widths from its config (no weights); the tiny test preset's widths (32, 64) allow
    # fewer r, which the check on the loaded model below catches, still before any class image is made
    check_block_sizes(sd15_unet_without_weights(), cfg.oft_options(), "SD1.5")
    checkpoint = find_checkpoint(out, cfg.resume_from_checkpoint)
    state = read_state(checkpoint) if checkpoint is not None else None  # tensors and plain values only
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    if accelerator.num_processes > 1:
        raise RuntimeError("one GPU per run (batch 1): launch one process per run, e.g. oft-db/run_queue.py")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    # 1. the frozen base model
    models = load_sd(cfg.pretrained_model).freeze().to(accelerator.device, weight_dtype)
    check_block_sizes(models.unet, cfg.oft_options(), "base model")
    if state is not None and not models.same_base(state["meta"].get("base_model")):
        raise ValueError(
            f"{checkpoint} was trained from base {state['meta'].get('base_model')}, this run loads "
            f"{models.identity}: resume with the same --pretrained_model (or --resume_from_checkpoint none)"
        )

    # 2. class images, made by the base model before any adapter exists (cached, shared by subjects of a class)
    class_paths = None
    generated = 0
    if cfg.with_prior_preservation:
        generated = ensure_class_images(
            models,
            cfg.class_data_dir,
            cfg.class_prompt,
            cfg.num_class_images,
            size=cfg.resolution,
            seed=cfg.seed,
            batch_size=cfg.sample_batch_size,
            sampling={"steps": cfg.class_inference_steps},
            progress=cfg.progress,
        )
        class_paths = list_images(cfg.class_data_dir)[: cfg.num_class_images]

    # 3. OFT on the 128 attention projections; only R trains (float32 even under mixed precision)
    unet = models.unet
    oft_layers.inject(unet, DB_TARGETS, **cfg.oft_options())
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    logger.info(
        "OFT layers: %d, trainable (skew DOF): %s",
        len(list(oft_layers.oft_modules(unet))),
        f"{oft_layers.count_trainable(unet):,}",
    )

    # 4. data, optimizer, schedule
    data = DreamBoothSteps(
        instance_paths,
        class_paths,
        size=cfg.resolution,
        batch_size=cfg.train_batch_size,
        seed=cfg.seed,
        center_crop=cfg.center_crop,
    )
    steps_per_epoch = math.ceil(data.steps_per_epoch / cfg.gradient_accumulation_steps)
    validate_every = cfg.validation_steps or steps_per_epoch
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

    # 5. resume: the adapter, the optimizer and the schedule; data and noise are functions of the step alone
    meta = {
        "base_model": models.identity,
        "instance_prompt": cfg.instance_prompt,
        "class_prompt": cfg.class_prompt,
        "validation_prompt": cfg.validation_prompt,
        **(extra_info or {}),
    }
    start = 0
    if state is not None:
        oft_layers.load_adapter(unet, checkpoint / ADAPTER_NAME)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        oft_layers.load_path_cache(state.get("oft_path_cache", {}))
        start = int(state["step"])
        # checkpoints after the resumed step (an explicit older --resume_from_checkpoint) are another history
        later = [p for p in list_checkpoints(out, complete=False) if checkpoint_step(p) > start]
        for p in later:
            shutil.rmtree(p, ignore_errors=True)
        logger.info(
            "resumed from %s at step %d%s",
            checkpoint,
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
    info = {"config": asdict(cfg), **meta, "class_images_generated": generated, "resumed_from_step": start}
    atomic_write_bytes(out / RUN_INFO, json.dumps(info, indent=1, sort_keys=True).encode())

    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    micro = cfg.gradient_accumulation_steps
    loader = torch.utils.data.DataLoader(
        data,
        sampler=StepSampler(start * micro, cfg.max_train_steps * micro),
        batch_size=None,
        num_workers=cfg.num_workers,
    )
    context = models.encode_prompts(
        [cfg.instance_prompt] * cfg.train_batch_size
        + ([cfg.class_prompt] * cfg.train_batch_size if class_paths else [])
    )
    step, t0 = start, time.time()
    bar = tqdm(total=cfg.max_train_steps, initial=start, desc="train", disable=not cfg.progress)
    with bar, open(out / LOG_FILE, "a") as log:
        # 6. the loop: one DataLoader item per micro-step
        for micro_step, batch in enumerate(loader, start=start * micro):
            g = step_generator(cfg.seed, micro_step, stream=3)
            with accelerator.accumulate(unet):
                loss = dreambooth_loss(
                    models,
                    unet,
                    batch["pixel_values"],
                    context,
                    g,
                    cfg.prior_loss_weight if class_paths else None,
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            record = {
                "step": step,
                "loss": loss.item(),
                "lr": lr_scheduler.get_last_lr()[0],
                "time": time.time() - t0,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            if cfg.num_validation_images and (step % validate_every == 0 or step == cfg.max_train_steps):
                with merged_for_inference(unet):
                    validation_images(models, cfg, out / VALIDATION_DIR / f"step-{step:06d}")
            if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                save_checkpoint(out, step, unet, optimizer, lr_scheduler, meta, cfg.checkpoints_total_limit)

    # 7. the result: a small adapter file; then reload it into the plain base model and sample with it
    # (the adapter gets its final name last: its presence marks the run finished, final validation included)
    unet = accelerator.unwrap_model(unet)
    meta["steps"] = step
    pending = out / f".pending-{ADAPTER_NAME}"
    oft_layers.save_adapter(unet, pending, {k: str(v) for k, v in meta.items()})
    oft_layers.strip(unet)  # back to the exact base weights
    oft_layers.load_adapter(unet, pending)
    oft_layers.merge(unet)
    if cfg.num_validation_images:
        validation_images(models, cfg, out / VALIDATION_DIR / "final")
    adapter = out / ADAPTER_NAME
    os.replace(pending, adapter)
    if not cfg.keep_checkpoints:  # SD1.5: ~0.4 GB each with the optimizer state, x 750 runs
        for old in [*list_checkpoints(out, complete=False), *out.glob(f".tmp-{CHECKPOINT_PREFIX}*")]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %s (%d steps)", adapter, step)
    return adapter
