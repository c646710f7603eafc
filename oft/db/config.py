"""The options of a DreamBooth-OFT run: one dataclass whose fields carry their --help text, and their checks.

The defaults are the paper's/reference's settings (SPEC §4); the sampler settings come from
``oft.specs.sampling`` (``DREAMBOOTH_VALIDATION``, ``DREAMBOOTH_CLASS``), their one home.

Length: 2,005 steps by default (the reference's script from 2023-06-22 to 2023-08-29, commits 680b671 and
5f024e5: ten epochs, evaluated at step 1,000); ``--reference_schedule`` trains the 10,005 steps its script ran at
df2b263 (``oft-db/train_dreambooth_oft.sh`` line 178, from commit c881e89), which the paper's long-run stability
figure and appendix runs need.
"""

from __future__ import annotations

from dataclasses import dataclass

from oft.common.options import option
from oft.common.paths import models_root
from oft.sd.targets import CONV_LAYOUT_HELP, DB_TARGET_SET, TARGET_SETS
from oft.specs.sampling import DREAMBOOTH_CLASS, DREAMBOOTH_VALIDATION
from oft_layers.config import CONV_LAYOUTS

SAMPLERS = ("ddim", "dpm")
MIXED_PRECISION = ("no", "fp16", "bf16")
AT_LEAST_ONE = ("r", "train_batch_size", "max_train_steps", "gradient_accumulation_steps")
CLASS_IMAGES = ("reference", "ddim")  # oft.db.class_images.class_recipe
DEFAULT_STEPS = 2005
REFERENCE_STEPS = 10005  # the reference's oft-db/train_dreambooth_oft.sh at df2b263, line 178


@dataclass
class DreamBoothConfig:
    """Every option of a DreamBooth-OFT run; the defaults are the paper's/reference's settings (SPEC §4)."""

    # what to train on
    pretrained_model: str = option(
        str(models_root() / "v1-5-pruned.ckpt"), "SD1.5: single-file .ckpt/.safetensors or diffusers folder"
    )
    instance_data_dir: str = option("", "folder of the subject's photos")
    instance_prompt: str = option("", "prompt of the subject photos, e.g. 'a photo of qwe dog'")
    class_prompt: str = option("", "prior-preservation prompt, e.g. 'a photo of dog'")
    class_data_dir: str = option("", "class-image cache (generated there when fewer than --num_class_images)")
    validation_prompt: str = option("", "prompt of the validation images")
    output_dir: str = option("", "run folder: checkpoints, validation images, the adapter")
    # OFT
    r: int = option(4, "number of diagonal blocks of each rotation (block size = width / r)")
    eps: float = option(6e-5, "COFT deviation: Frobenius radius eps*b^2/sqrt(r) per block")
    coft: bool = option(True, "constrained OFT (project R after every step); --no-coft trains plain OFT")
    block_share: bool = option(False, "one rotation block shared by all r blocks of a layer")
    targets: str = option(
        DB_TARGET_SET,
        "where OFT goes (oft.sd.targets.TARGET_SETS; paper appendix ablation): attn = the paper's 128 attention "
        "projections; attn+ff adds the GEGLU input projections; conv = the ResBlock convolutions; extended = "
        "attn+ff, conv and the ResBlock time-embedding linears",
        choices=tuple(TARGET_SETS),
    )
    conv_layout: str = option(CONV_LAYOUTS[0], CONV_LAYOUT_HELP, choices=CONV_LAYOUTS)
    # prior preservation
    with_prior_preservation: bool = option(True, "add the class-image loss (DreamBooth's prior preservation)")
    prior_loss_weight: float = option(1.0, "weight of the class-image loss")
    num_class_images: int = option(200, "class images to generate/keep per class")
    sample_batch_size: int = option(4, "batch size when generating class images")
    class_images: str = option(
        "reference",
        f"how class images are made: 'reference' ({DREAMBOOTH_CLASS.sampler.upper()} {DREAMBOOTH_CLASS.steps} "
        f"steps, CFG {DREAMBOOTH_CLASS.guidance}, float16 on a GPU (float32 on a CPU, which lacks float16 "
        "kernels), JPEG: diffusers' stock pipeline, as the reference) or 'ddim' (DDIM, same steps and CFG, the "
        "run's dtype, PNG)",
        choices=CLASS_IMAGES,
    )
    class_inference_steps: int = option(
        DREAMBOOTH_CLASS.steps, "sampler steps of each generated class image (either --class_images)"
    )
    # optimisation
    resolution: int = option(512, "training image size (shorter side resized, then a random square crop)")
    center_crop: bool = option(False, "center crop instead of a random crop")
    train_batch_size: int = option(1, "subject images per step (as many class images are added)")
    max_train_steps: int = option(
        DEFAULT_STEPS,
        "optimizer steps (an epoch is 200 steps; the paper evaluates step 1000; --reference_schedule: "
        f"{REFERENCE_STEPS:,})",
    )
    reference_schedule: bool = option(
        False,
        f"train {REFERENCE_STEPS:,} steps, as the reference's train_dreambooth_oft.sh ran (the paper's long-run "
        f"stability figure and appendix runs need them); off: --max_train_steps (default {DEFAULT_STEPS:,})",
    )
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(6e-5, "AdamW learning rate")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping (global norm)")
    lr_scheduler: str = option("constant", "diffusers scheduler name: constant, linear, cosine, ...")
    lr_warmup_steps: int = option(0, "warm-up steps of the learning-rate schedule")
    seed: int = option(0, "seed (>= 0) of data order, crops, noise, class and validation images")
    mixed_precision: str = option("no", "no, fp16 or bf16 (frozen weights in that dtype, R in float32)")
    gradient_checkpointing: bool = option(
        False, "recompute UNet activations in the backward pass (less memory)"
    )
    num_workers: int = option(0, "data-loading worker processes")
    # validation, checkpoints
    validation_steps: int = option(0, "validate every N steps (0: every epoch, as the reference)")
    num_validation_images: int = option(8, "validation images per validation (seeds seed..seed+N-1)")
    validation_sampler: str = option(
        DREAMBOOTH_VALIDATION.sampler, "ddim or dpm (DPM-Solver multistep, the reference's)"
    )
    validation_inference_steps: int = option(
        DREAMBOOTH_VALIDATION.steps, "sampler steps of validation images"
    )
    guidance_scale: float = option(
        DREAMBOOTH_VALIDATION.guidance, "classifier-free guidance of validation images"
    )
    checkpointing_steps: int = option(200, "save a resumable checkpoint every N steps (0: never)")
    checkpoints_total_limit: int = option(2, "keep at most this many checkpoints (0: all)")
    keep_checkpoints: bool = option(
        False, "keep the checkpoints after the run finished (they only serve resuming)"
    )
    resume_from_checkpoint: str = option(
        "latest",
        "'latest': continue from the newest checkpoint in --output_dir (none yet: start at step 0); 'none': "
        "start over at step 0, deleting the run's checkpoints, adapter, log and validation images; or a "
        "checkpoint folder",
    )
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        """``reference_schedule`` sets ``max_train_steps``; another explicit step count contradicts it."""
        if self.reference_schedule:
            if self.max_train_steps not in (DEFAULT_STEPS, REFERENCE_STEPS):
                raise ValueError(
                    f"--reference_schedule trains {REFERENCE_STEPS} steps: drop --max_train_steps "
                    f"{self.max_train_steps} (or --reference_schedule)"
                )
            self.max_train_steps = REFERENCE_STEPS

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
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.resolution % 8:
            raise ValueError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.targets not in TARGET_SETS:
            raise ValueError(f"--targets must be one of {list(TARGET_SETS)}, got {self.targets!r}")
        if self.conv_layout != "flat" and self.targets not in ("conv", "extended"):
            raise ValueError(
                f"--conv_layout {self.conv_layout} needs convolutions: --targets conv or extended"
            )
        if self.coft and not self.eps > 0:
            raise ValueError(f"COFT needs --eps > 0, got {self.eps}")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:  # the step seeds are derived from it by numpy's SeedSequence (oft.common.seeds)
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.class_images not in CLASS_IMAGES:
            raise ValueError(f"--class_images must be reference or ddim, got {self.class_images!r}")
        if self.validation_sampler not in SAMPLERS:
            raise ValueError(f"--validation_sampler must be ddim or dpm, got {self.validation_sampler!r}")
        if self.checkpointing_steps < 0 or self.checkpoints_total_limit < 0:
            raise ValueError("--checkpointing_steps and --checkpoints_total_limit must be >= 0")

    @property
    def starts_over(self) -> bool:
        """``--resume_from_checkpoint none`` (or empty): train from step 0 whatever the output folder holds."""
        return self.resume_from_checkpoint.strip().lower() in ("", "none")

    def oft_options(self) -> dict:
        """The keyword arguments of ``oft_layers.inject`` / ``OFTConfig`` (plain OFT: no radius)."""
        return {
            "r": self.r,
            "eps": self.eps if self.coft else None,
            "coft": self.coft,
            "block_share": self.block_share,
            "conv_layout": self.conv_layout,
        }
