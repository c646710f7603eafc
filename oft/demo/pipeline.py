"""The demo pipeline (``make demo``): OFT, COFT and a rank-matched LoRA teach the pretrained tiny base to follow
canny edges on the synthetic task; every stage is the real one (tool, train.py, test_oft_parallel.py, eval_canny).

Stages, each reused on re-run (its output file is its done-marker; trainings resume from ``last.ckpt``):

1. build: ``tool_add_control_oft.py`` on the base: the initial OFT (r) and COFT (r, eps) control files;
2. train: ``train.py`` for OFT and COFT; ``LoRAControl`` + the same ``fit`` for LoRA (same data, lr, steps);
3. sample: ``test_oft_parallel.py`` on the validation items for the uncontrolled base (the initial control file:
   R = 0 and a zero hint encoder are exactly the base), LoRA, OFT and COFT;
4. evaluate: ``eval_canny.py`` per method and the prompt adherence (``oft.metrics.prompt``) against the
   synthetic ground truth; then the table, the image grid and the loss plot under the output folder.
"""

from __future__ import annotations

import csv
import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from oft.control.checkpoint import FINAL_MODEL, read_control
from oft.control.data import build_dataset
from oft.control.images import read_png, write_png
from oft.control.training import TrainConfig, fit
from oft.data import synthetic
from oft.data.files import atomic_write_bytes, atomic_write_json
from oft.demo.lora import LoRAControl, matched_rank
from oft.entry_points import REPO, load_script
from oft.metrics.folder import format_table
from oft.metrics.prompt import masked_adherence
from oft.sd import load_sd

DEFAULT_BASE = REPO / "models" / "tiny-base" / "tiny-base.safetensors"
METHODS = ("base", "lora", "oft", "coft")
LABELS = {"base": "base (no control)", "lora": "LoRA", "oft": "OFT", "coft": "COFT"}
PLOT_COLOURS = {"lora": (220, 40, 40), "oft": (30, 90, 220), "coft": (40, 160, 40)}  # RGB


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo runs with; the defaults take about 10 minutes on an idle 2-core CPU."""

    out_dir: Path = Path("outputs/demo")
    base: Path = DEFAULT_BASE
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    # Training timesteps drawn from [400, 900) instead of all 1000: with all of them the zero-initialised hint
    # encoder barely moves in a CPU budget (its features stay at std 0.02 after 1,000 steps), since at low t
    # the noisy latents already show the layout and at high t the ε-loss hardly depends on it.
    timestep_range: tuple[int, int] = (400, 900)
    r: int = 4
    eps: float = 1e-3
    resolution: int = 64
    train_items: int = 512
    val_items: int = 32
    sample_steps: int = 20
    guidance: float = 5.0
    devices: int = 1
    threads: int | None = None
    seed: int = 0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Demo:
    """One demo run in ``cfg.out_dir``: ``run()`` executes (or reuses) every stage and returns the results."""

    def __init__(self, cfg: DemoConfig) -> None:
        if not Path(cfg.base).is_file():
            raise FileNotFoundError(
                f"demo base checkpoint not found: {cfg.base}; restore it with `git checkout -- models/tiny-base` "
                "or rebuild it with `python scripts/pretrain_tiny_base.py`"
            )
        if cfg.steps < 1 or cfg.val_items < 1 or cfg.resolution % 8:
            raise ValueError("--steps and --val_items must be positive and --resolution a multiple of 8")
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.timings_file = self.out / "timings.json"
        self.timings: dict[str, dict] = (
            json.loads(self.timings_file.read_text()) if self.timings_file.is_file() else {}
        )

    # ----------------------------------------------------------------------------------------------- helpers
    def stage(self, name: str, done: Path, work: Callable[[], object]) -> None:
        """Run ``work`` unless ``done`` exists; record its wall and CPU seconds under ``name``."""
        if done.exists():
            print(f"[demo] {name}: reusing {done}")
            return
        print(f"[demo] {name} ...")
        wall, cpu = time.perf_counter(), cpu_seconds()
        work()
        self.timings[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
        atomic_write_json(self.timings_file, self.timings)

    def init_file(self, method: str) -> Path:
        return self.out / "models" / f"init_{'coft' if method == 'coft' else 'oft'}.safetensors"

    def run_dir(self, method: str) -> Path:
        return self.out / "runs" / method

    def samples_dir(self, method: str) -> Path:
        return self.out / "samples" / method

    def adapter_flags(self, method: str) -> list[str]:
        flags = ["--r", str(self.cfg.r)]
        return flags + (["--coft", "--eps", str(self.cfg.eps)] if method == "coft" else [])

    def data_flags(self) -> list[str]:
        c = self.cfg
        return ["--control", "synthetic", "--resolution", str(c.resolution), "--seed", str(c.seed)]

    # ------------------------------------------------------------------------------------------------ stages
    def build(self) -> None:
        tool = load_script("tool_add_control_oft")
        for method in ("oft", "coft"):
            path = self.init_file(method)
            argv = ["--input_path", str(self.cfg.base), "--output_path", str(path), "--adapter-only"]
            self.stage(
                f"build {method}",
                path,
                lambda argv=argv, m=method: tool.main(tool.parse_args(argv + self.adapter_flags(m))),
            )

    def train_config(self, method: str) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            out_dir=self.run_dir(method),
            epochs=10_000,  # the step budget ends training
            batch_size=c.batch_size,
            max_steps=c.steps,
            accelerator="auto",
            devices=str(c.devices),
            num_workers=0,
            seed=c.seed,
            log_every=max(1, c.steps // 100),
            save_every=max(1, c.steps // 3),
            sample_every=0,
        )

    def train(self, method: str) -> None:
        c, out = self.cfg, self.run_dir(method)
        if method == "lora":
            self.stage("train lora", out / FINAL_MODEL, self._train_lora)
            return
        script = load_script("train")
        cfg = self.train_config(method)
        argv = ["--model", str(self.init_file(method)), "--output_dir", str(out), *self.data_flags()]
        argv += [
            "--synthetic_length",
            str(c.train_items),
            "--batch_size",
            str(c.batch_size),
            "--lr",
            str(c.lr),
        ]
        argv += ["--max_steps", str(c.steps), "--epochs", str(cfg.epochs), "--num_workers", "0"]
        argv += [
            "--devices",
            str(c.devices),
            "--log_every",
            str(cfg.log_every),
            "--save_every",
            str(cfg.save_every),
        ]
        argv += ["--timestep_range", *map(str, c.timestep_range)]
        argv += ["--sample_every", "0", *self.adapter_flags(method)]
        self.stage(f"train {method}", out / FINAL_MODEL, lambda: script.main(script.parse_args(argv)))

    def oft_parameters(self) -> int:
        """OFT's trainable rotation parameters (skew degrees of freedom) on the base, from the initial file."""
        tensors, meta, _ = read_control(self.init_file("oft"))
        r = int(meta["r"])
        return sum(
            r * b * (b - 1) // 2 for k, t in tensors.items() if k.endswith(".R") for b in [t.shape[-1]]
        )

    def _train_lora(self) -> None:
        c = self.cfg
        rank = matched_rank(load_sd(c.base).unet, self.oft_parameters())
        module = LoRAControl(
            str(self.init_file("oft")), rank=rank, lr=c.lr, seed=c.seed, timestep_range=c.timestep_range
        )
        data = build_dataset(
            "synthetic", "train", resolution=c.resolution, synthetic_length=c.train_items, seed=c.seed
        )
        trainer = fit(module, data, self.train_config("lora"))
        if trainer.is_global_zero:
            out = self.run_dir("lora")
            atomic_write_json(
                out / "lora.json", {"rank": rank, "lora_parameters": module.adapter_parameters()}
            )
            module.export_merged(out / "lora_merged_base.safetensors", out / FINAL_MODEL)

    def sample(self, method: str) -> None:
        c = self.cfg
        script = load_script("test_oft_parallel")
        if method == "base":
            model, base, flags = self.init_file("oft"), c.base, self.adapter_flags("oft")
        elif method == "lora":
            run = self.run_dir("lora")
            model, base, flags = (
                run / FINAL_MODEL,
                run / "lora_merged_base.safetensors",
                self.adapter_flags("oft"),
            )
        else:
            model, base, flags = self.run_dir(method) / FINAL_MODEL, c.base, self.adapter_flags(method)
        out = self.samples_dir(method)
        argv = ["--model", str(model), "--base", str(base), "--out_dir", str(out), *self.data_flags(), *flags]
        argv += ["--synthetic_length", str(c.val_items), "--no-full", "--num_samples", "1"]
        argv += ["--steps", str(c.sample_steps), "--guidance", str(c.guidance), "--batch", str(c.val_items)]
        argv += ["--workers", str(c.devices)] + (["--threads", str(c.threads)] if c.threads else [])
        done = out / "results" / f"result_{c.val_items - 1}_0.png"
        self.stage(f"sample {method}", done, lambda: script.main(script.parse_args(argv)))

    def evaluate(self, method: str) -> dict:
        folder = self.samples_dir(method)
        script = load_script("eval_canny")
        report = folder / "eval_canny.json"
        self.stage(f"eval {method}", report, lambda: script.main(script.parse_args([str(folder)])))
        canny = json.loads(report.read_text())
        images, masks, truths = [], [], []
        seed = 2 * self.cfg.seed + 1  # SyntheticDataset's validation stream
        for i in range(self.cfg.val_items):
            _, _, controls, truth = synthetic.make_item(i, seed, self.cfg.resolution)
            images.append(read_png(folder / "results" / f"result_{i}_0.png"))
            masks.append(controls["segm"].any(axis=2))
            truths.append(truth)
        prompt = masked_adherence(images, masks, truths)
        atomic_write_json(folder / "eval_prompt.json", prompt)
        return {"iou": canny["iou"], "f1": canny["f1"], "prompt": prompt}

    # ----------------------------------------------------------------------------------------------- results
    def parameters(self) -> dict[str, dict[str, int]]:
        """Trainable parameters per method: adapter and hint encoder (the base trains nothing)."""
        tensors, _, _ = read_control(self.init_file("oft"))
        hint = sum(t.numel() for k, t in tensors.items() if k.startswith("hint."))
        lora = json.loads((self.run_dir("lora") / "lora.json").read_text())
        oft_dof = self.oft_parameters()
        return {
            "base": {"adapter": 0, "hint": 0},
            "lora": {"adapter": lora["lora_parameters"], "hint": hint, "rank": lora["rank"]},
            "oft": {"adapter": oft_dof, "hint": hint},
            "coft": {"adapter": oft_dof, "hint": hint},
        }

    def run(self) -> dict:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        self.build()
        for method in ("lora", "oft", "coft"):
            self.train(method)
        metrics = {}
        for method in METHODS:
            self.sample(method)
            metrics[method] = self.evaluate(method)
        params = self.parameters()
        results = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
            "methods": {m: {**metrics[m], "parameters": params[m]} for m in METHODS},
            "timings": self.timings,
            "this_invocation": {
                "wall_s": time.perf_counter() - start_wall,
                "cpu_s": cpu_seconds() - start_cpu,
            },
        }
        atomic_write_json(self.out / "results.json", results)
        table = format_results(results)
        atomic_write_bytes(self.out / "results.md", (table + "\n").encode())
        write_png(self.out / "grid.png", image_grid(self, range(min(6, self.cfg.val_items))))
        write_png(
            self.out / "loss.png",
            loss_plot({m: read_losses(self.run_dir(m)) for m in ("lora", "oft", "coft")}),
        )
        print(table)
        print(f"[demo] wrote {self.out / 'results.json'}, {self.out / 'grid.png'}, {self.out / 'loss.png'}")
        return results


def format_results(results: dict) -> str:
    """The demo's table: canny IoU/F1, prompt adherence, trainable parameters and training time per method."""
    rows = []
    for m, r in results["methods"].items():
        p = r["parameters"]
        t = results["timings"].get(f"train {m}")
        adapter = f"{p['adapter']:,}" + (f" (rank {p['rank']})" if "rank" in p else "")
        rows.append((LABELS[m], f"{r['iou']:.3f}", f"{r['f1']:.3f}", f"{r['prompt']['shape_colour']:.2f}",
                     f"{r['prompt']['background_colour']:.2f}", adapter, f"{p['hint']:,}",
                     "-" if t is None else f"{t['wall_s']:.0f} / {t['cpu_s']:.0f}"))  # fmt: skip
    header = ("method", "canny IoU", "canny F1", "shape colour", "bg colour", "adapter params", "hint params",
              "train wall / CPU s")  # fmt: skip
    return format_table(header, rows)


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every ``train/loss`` row in the run's CSV logs (all versions: resumed runs append one)."""
    points = {}
    for f in sorted((run_dir / "logs" / "csv").glob("version_*/metrics.csv")):
        with f.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    points[int(row["step"])] = float(row["train/loss"])
    return sorted(points.items())


def image_grid(demo: Demo, indices) -> np.ndarray:
    """Rows: one validation item each; columns: hint | target | base | LoRA | OFT | COFT (uint8 RGB, labelled)."""
    size, pad = demo.cfg.resolution, 2
    cols = ["hint", "target", *METHODS]
    scale = max(1, 96 // size)
    cell = size * scale
    header = 16
    grid = np.full((header + len(indices) * (cell + pad), len(cols) * (cell + pad), 3), 255, np.uint8)
    for c, name in enumerate(cols):
        cv2.putText(
            grid,
            LABELS.get(name, name).split(" ")[0],
            (c * (cell + pad) + 2, 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
        )
    for r, i in enumerate(indices):
        files = [
            demo.samples_dir("base") / "hints" / f"hint_{i}.png",
            demo.samples_dir("base") / "source" / f"image_{i}.png",
        ]
        files += [demo.samples_dir(m) / "results" / f"result_{i}_0.png" for m in METHODS]
        for c, f in enumerate(files):
            img = cv2.resize(read_png(f), (cell, cell), interpolation=cv2.INTER_NEAREST)
            y, x = header + r * (cell + pad), c * (cell + pad)
            grid[y : y + cell, x : x + cell] = img
    return grid


def _moving_average(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each ``k`` consecutive points (no padding, so the ends are not pulled towards zero)."""
    if len(y) < k:
        return x, y
    return x[k // 2 : len(x) - (k - 1) // 2], np.convolve(y, np.ones(k) / k, mode="valid")


def loss_plot(curves: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 360) -> np.ndarray:
    """Training-loss curves (moving average over 5 logged points) as an (H, W, 3) uint8 RGB plot."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 50, 15, 25, 30
    series = {m: np.array(c, float) for m, c in curves.items() if c}
    if not series:
        return img
    smooth = {m: _moving_average(s[:, 0], s[:, 1], 5) for m, s in series.items()}
    xmax = max(x.max() for x, _ in smooth.values()) or 1
    ymin = min(y.min() for _, y in smooth.values())
    ymax = max(y.max() for _, y in smooth.values())
    yr = (ymax - ymin) or 1.0

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(left + x / xmax * (width - left - right)), int(
            top + (ymax - y) / yr * (height - top - bottom)
        )

    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for v in (ymin, (ymin + ymax) / 2, ymax):
        cv2.putText(img, f"{v:.3f}", (2, to_px(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(
        img,
        f"step (0..{int(xmax)})   training eps-MSE, smoothed",
        (left, height - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.4,
        (0, 0, 0),
        1,
    )
    for k, (m, (x, y)) in enumerate(smooth.items()):
        rgb = PLOT_COLOURS[m]
        pts = np.array([to_px(a, b) for a, b in zip(x, y)], np.int32)
        cv2.polylines(img, [pts], False, rgb, 1, cv2.LINE_AA)
        cv2.putText(img, LABELS[m], (left + 10 + 70 * k, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, rgb, 1)
    return img
