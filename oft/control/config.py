"""The oft-control configs: what names a run (``Experiment``), how it trains (``Training``, ``PostFit``) and how it
samples (``Sampling``). Their fields are the paper's settings (SPEC §3) with their --help text; the command lines
generate their flags from them (``oft.cli.flags``), so this module is the one home of every oft-control default.

Per-task values (epochs, batch size per GPU, sample-grid frequency, data folders; each with its source) live in
``oft.specs.tasks.TASKS``; the samplers in ``oft.specs.sampling``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch.utils.data import Dataset

from oft.common.options import option
from oft.common.paths import DATA_ROOT_FLAGS
from oft.control.data import SYNTHETIC, build_dataset, check_n_samples
from oft.sd.targets import CONTROL_TARGET_SET, CONV_LAYOUT_HELP, TARGET_SETS
from oft.specs.sampling import CONTROL_EVAL, CONTROL_GRID, CONTROL_PROMPT_SUFFIX, CONTROL_SAMPLING_CHUNK
from oft.specs.synthetic import HINT_KINDS
from oft.specs.tasks import SHARED, TASKS, get_task
from oft_layers.config import CONV_LAYOUTS

# The run folder (<RUNS_ROOT>/<Experiment.name>): checkpoints/last.ckpt, logs/{tensorboard,csv}/, samples/
# (the grids) and snapshots/step_<N>.safetensors (--snapshot_every) of train.py, then
RUNS_ROOT = Path("outputs/control")
CHECKPOINTS, LOGS, CSV_LOGS, SAMPLES, SNAPSHOTS = "checkpoints", "logs", "csv", "samples", "snapshots"
FINAL_MODEL = "control_final.safetensors"  # train.py's trained model
NORM_MODEL = "control_norm.safetensors"  # train_with_norm.py's magnitude-fitted model
NORM_DIR = "norm"  # post-fitting's checkpoints/ and logs/
GENERATED_DIR = "generated"  # the sampler's default output folder
# The Training fields a task's entry in TASKS sets. The synthetic task (tests, CPU demo) is not a paper task;
# these values stand in for its entry.
SYNTHETIC_DEFAULTS = {"epochs": 10, "batch_size": 4, "sample_every": 1000}


def _per_task(name: str) -> str:
    """--help text of a per-task default: every task's value, then the other source's where they disagree."""
    values = ", ".join(f"{t.name} {getattr(t, name).value}" for t in TASKS.values())
    others = [(t.name, getattr(t, name)) for t in TASKS.values() if getattr(t, name).other is not None]
    other = "".join(f"; {task}: {s.other} ({s.other_source})" for task, s in others)
    return f"[default: the task's ({values}){other}; sources: oft.specs.tasks.settings_markdown]"


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be positive, got {value}")


@dataclass(frozen=True)
class Experiment:
    """What names a run and its data: the adapter (reference flags --r --eps --coft --block_share), the task,
    the base and the run folder. Every oft-control command after the tool takes these."""

    r: int = option(4, "number of OFT blocks per layer (not the block size); paper: 4 (Table 3: 2/4/8/16)")
    eps: float = option(
        1e-3, "COFT deviation; block radius eps*b^2/sqrt(r); paper: 1e-3 (used only with --coft)"
    )
    coft: bool = option(False, "constrained OFT: project R onto the eps-ball after every step (paper's COFT)")
    block_share: bool = option(False, "one rotation block shared by all r blocks of a layer")
    targets: str = option(
        CONTROL_TARGET_SET,
        "where OFT goes (oft.sd.targets.TARGET_SETS; paper appendix ablation): attn+ff = the paper's 144 "
        "attention and GEGLU linears; conv = the ResBlock convolutions; extended = both plus the ResBlock "
        "time-embedding linears; attn = attention only",
        choices=tuple(TARGET_SETS),
    )
    conv_layout: str = option(CONV_LAYOUTS[0], CONV_LAYOUT_HELP, choices=CONV_LAYOUTS)
    resolution: int = option(512, "image and control size in pixels (multiple of 8)")
    seed: int = option(0, "seed of shuffling, noise and timesteps (resumes reproduce an uninterrupted run)")
    control: str = option("segm", "task: which data and which per-task defaults", choices=(*TASKS, SYNTHETIC))
    synthetic_hint: str = option("canny", "control image of --control synthetic", choices=HINT_KINDS)
    synthetic_length: int | None = option(None, "number of synthetic items [default: 64 train, 16 val]")
    n_samples: int | None = option(
        None,
        "--control ablation_segm only (Fig. 1; required there): train on the first N items of ADE20K's training "
        f"list, each repeated {TASKS['ablation_segm'].repeats.value} times (as the reference), one epoch; sampled and evaluated on segm's validation set",
    )
    data_root: str | None = option(
        None,
        "folder holding ADE20K/, COCO/, ... [default: $OFT_DATA_ROOT or ./data]",
        names=DATA_ROOT_FLAGS,
    )
    base: str | None = option(
        None, "base SD checkpoint or diffusers folder [default: the one recorded in the model file]"
    )
    output_dir: str | None = option(
        None,
        "run folder (checkpoints/, logs/, samples/, control_final.safetensors, generated/) "
        f"[default: {RUNS_ROOT}/<task>_r<r>_<coft_eps|oft>]",
    )

    def __post_init__(self) -> None:
        _positive(self, "r", "resolution", "synthetic_length")
        check_n_samples(self.control, self.n_samples)
        if self.conv_layout != "flat" and self.targets not in ("conv", "extended"):
            raise ValueError(
                f"--conv_layout {self.conv_layout} needs convolutions: --targets conv or extended"
            )
        if self.resolution % 8:
            raise ValueError(
                f"--resolution must be a multiple of 8 (hint encoder and VAE downsample by 8), got {self.resolution}"
            )

    @property
    def name(self) -> str:
        """The one name of an experiment, its default folder: ``segm_r4_coft_eps0.001``, ``ablation_segm_n10_r4_oft``."""
        kind = f"coft_eps{self.eps:g}" if self.coft else "oft"
        where = "" if self.targets == CONTROL_TARGET_SET else f"_{self.targets.replace('+', '_')}"
        layout = "" if self.conv_layout == "flat" else f"_{self.conv_layout}"
        n = f"_n{self.n_samples}" if self.n_samples else ""
        return f"{self.control}{n}_r{self.r}_{kind}{'_share' if self.block_share else ''}{where}{layout}"

    @property
    def run_dir(self) -> Path:
        """The run folder: ``output_dir``, else ``outputs/control/<name>`` (one rule for every command)."""
        return Path(self.output_dir or RUNS_ROOT / self.name)

    def adapter_flags(self) -> dict[str, object]:
        """The adapter as the control-model file records it (``check_flags_match``)."""
        return {
            "r": self.r,
            "eps": self.eps,
            "coft": self.coft,
            "block_share": self.block_share,
            "targets": self.targets,
            "conv_layout": self.conv_layout,
        }

    def dataset(self, split: str, **options: object) -> Dataset:
        """The task's dataset of ``split`` (``options``: e.g. ``full`` for the validation list)."""
        return build_dataset(
            self.control,
            split,
            root=self.data_root,
            resolution=self.resolution,
            synthetic_hint=self.synthetic_hint,
            synthetic_length=self.synthetic_length,
            n_samples=self.n_samples,
            seed=self.seed,
            **options,
        )

    def task_defaults(self) -> dict[str, int]:
        """The task's epochs, batch size per GPU and sample-grid frequency (``TASKS``; see its sources)."""
        if self.control == SYNTHETIC:
            return dict(SYNTHETIC_DEFAULTS)
        task = get_task(self.control)
        return {name: getattr(task, name).value for name in SYNTHETIC_DEFAULTS}


@dataclass(frozen=True)
class Training:
    """How a run trains (train.py): optimizer, length, precision, scale-out, checkpoints, logs, sample grids."""

    lr: float = option(SHARED["lr"].value, "AdamW learning rate (every task's, the reference's)")
    weight_decay: float = option(0.01, "AdamW weight decay (torch's AdamW default, as the reference)")
    batch_size: int | None = option(None, f"images per GPU per step {_per_task('batch_size')}")
    epochs: int | None = option(None, f"training epochs {_per_task('epochs')}")
    precision: str = option(
        "32",
        "Lightning precision; the paper trained in fp32 (rotations are always float32)",
        choices=("32", "bf16-mixed", "16-mixed"),
    )
    max_steps: int = option(-1, "stop after this many optimizer steps in total (-1: all epochs)")
    accelerator: str = option("auto", "cpu, gpu, ... (Lightning)")
    devices: str = option("auto", "GPUs per node, e.g. 4")
    num_nodes: int = option(1, "nodes (multi-node DDP)")
    strategy: str = option("auto", "Lightning strategy, e.g. ddp")
    num_workers: int = option(4, "data-loading processes per GPU")
    resume: str = option(
        "auto", "auto (continue from <run folder>/checkpoints/last.ckpt if present), none, or a .ckpt path"
    )
    log_every: int = option(SHARED["log_every"].value, "log the loss every N steps")
    save_every: int = option(500, "rewrite checkpoints/last.ckpt every N steps")
    sample_every: int | None = option(
        None, f"write a sample grid every N steps, 0 = never {_per_task('sample_every')}"
    )
    snapshot_every: int = option(
        0,
        "also export the model every N steps to <run folder>/snapshots/step_<N>.safetensors, for learning "
        "curves (0 = never)",
    )
    sample_steps: int = option(CONTROL_GRID.steps, "DDIM steps of the sample grids")
    timestep_range: tuple[int, int] | None = option(
        None,
        "draw training timesteps from [LO, HI) only [default: all of [0, 1000), as the reference]; a mid range "
        "makes the zero-initialised hint encoder learn in hundreds of steps instead of thousands",
        metavar=("LO", "HI"),
    )
    gradient_checkpointing: bool = option(
        False, "recompute UNet activations in the backward pass (less memory, slower)"
    )
    cache_encodings: bool = option(
        False,
        "encode every training image (VAE posterior) and caption (CLIP) once before training and reuse them: "
        "for small fixed training sets (the demo's); the same losses up to float rounding, memory per item",
    )
    max_grad_norm: float | None = option(
        None,
        "clip the global gradient norm to this value (Lightning's gradient_clip_val) [default: off, as the reference]",
    )

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "epochs", "save_every", "log_every", "num_nodes")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"--max_grad_norm must be positive, got {self.max_grad_norm}")
        for name in ("sample_every", "snapshot_every"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name} must be >= 0, got {value}")

    def for_task(self, experiment: Experiment) -> Training:
        """This config with epochs, batch size and sample-grid frequency filled in from the task where not given."""
        defaults = experiment.task_defaults()
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


@dataclass(frozen=True)
class PostFit(Training):
    """Magnitude post-fitting (train_with_norm.py): as ``Training``, one epoch by default (the paper's)."""

    epochs: int | None = option(1, "magnitude post-fitting epochs (paper: 1; the reference code ran 5)")


@dataclass(frozen=True)
class Sampling:
    """How test_oft_parallel.py samples the validation set (paper §3): DDIM 50, CFG 9, 6 samples per item."""

    steps: int = option(CONTROL_EVAL.steps, "DDIM steps")
    guidance: float = option(
        CONTROL_EVAL.guidance,
        "classifier-free guidance scale (the control stays in the unconditional branch)",
    )
    eta: float = option(CONTROL_EVAL.eta, "DDIM eta")
    num_samples: int = option(6, "samples per condition")
    batch: int = option(
        CONTROL_SAMPLING_CHUNK,
        "items per chunk, as the reference's --batch; --img_ID N processes items N*batch .. N*batch+batch-1",
    )
    bare_prompt: bool = option(
        False,
        f"condition on the bare caption; default: caption + {CONTROL_PROMPT_SUFFIX!r} as the reference sampled "
        "(its empty added prompt, one more token)",
    )
    full: bool = option(
        True, "the full validation list prompt_val_blip_full.json, as the paper evaluated [default: on]"
    )
    skip_unreadable: bool = option(
        False,
        "record validation items whose files are missing or undecodable in <out>/excluded/item_<i>.json (the "
        "evaluators report them) and sample the others; default: stop, naming the item and file",
    )
    workers: int | None = option(None, "local mode: worker processes [default: one per visible GPU, else 1]")
    threads: int | None = option(
        None,
        "threads per CPU worker [default: cores / workers]; outputs are byte-identical across runs and "
        "chunkings only at the same value",
    )

    def __post_init__(self) -> None:
        _positive(self, "steps", "num_samples", "batch", "workers", "threads")

    def prompt(self, caption: str) -> str:
        """The text an item with ``caption`` is sampled with: ``caption + ", "`` (the reference's), or bare."""
        return caption if self.bare_prompt else caption + CONTROL_PROMPT_SUFFIX
