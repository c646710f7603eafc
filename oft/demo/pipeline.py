"""The demo pipeline (``make demo``): OFT, COFT and a rank-matched LoRA teach the pretrained tiny base to follow
canny edges on the synthetic task; every stage is the library call behind the real command (tool_add_control_oft,
train.py, test_oft_parallel.py, eval_canny.py), given config objects.

Stages, each reused on re-run (its output file is its done-marker; trainings resume from ``last.ckpt``):

1. build: ``build_initial`` on the base: the initial OFT (r) and COFT (r, eps) control files;
2. train: ``oft.control.jobs.train`` for OFT and COFT; ``LoRAControl`` through the same ``train_module`` for
   LoRA (same data, lr, steps, timesteps);
3. sample: ``oft.control.jobs.sample`` on the validation items for the uncontrolled base (the initial control
   file: R = 0 and a zero hint encoder are exactly the base), LoRA (merged, as a model object), OFT and COFT;
4. evaluate: ``canny_report`` per method and the prompt adherence (``oft.metrics.prompt``) against the
   synthetic ground truth; then the table, the image grid and the loss plot under the output folder.
"""

from __future__ import annotations

import csv
import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from oft.common.files import atomic_write_bytes, atomic_write_json
from oft.common.images import read_rgb, write_png
from oft.control import jobs
from oft.control.checkpoint import build_initial, load_control, read_control
from oft.control.config import FINAL_MODEL, Experiment, Sampling, Training
from oft.control.params import paper_proportions, proportions
from oft.control.training import CSV_LOGS, LOGS
from oft.demo.config import DemoConfig
from oft.demo.lora import LoRAControl, load_lora_control, matched_rank, read_lora
from oft.metrics.canny import canny_report
from oft.metrics.folder import format_table, write_json
from oft.metrics.prompt import masked_adherence
from oft.sd import load_sd
from oft.specs import synthetic
from oft.specs.layout import hint_path, result_path, source_path

LORA_MODEL = "lora_final.safetensors"  # the LoRA run's trained adapter + hint encoder
METHODS = ("base", "lora", "oft", "coft")
LABELS = {"base": "base (no control)", "lora": "LoRA", "oft": "OFT", "coft": "COFT"}
PLOT_COLOURS = {"lora": (220, 40, 40), "oft": (30, 90, 220), "coft": (40, 160, 40)}  # RGB


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Demo:
    """One demo run in ``cfg.out_dir``: ``run()`` executes (or reuses) every stage and returns the results."""

    def __init__(self, cfg: DemoConfig) -> None:
        if not Path(cfg.base).is_file():
            raise FileNotFoundError(
                f"demo base checkpoint not found: {cfg.base}; restore it with `git checkout -- oft/demo/tiny_base` "
                "or rebuild it with `python scripts/pretrain_tiny_base.py`"
            )
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

    def final_file(self, method: str) -> Path:
        """The trained model of ``method``: a control file (OFT, COFT) or the LoRA file."""
        return self.run_dir(method) / (LORA_MODEL if method == "lora" else FINAL_MODEL)

    def samples_dir(self, method: str) -> Path:
        return self.out / "samples" / method

    def experiment(self, method: str, split: str) -> Experiment:
        """The run of ``method`` on the synthetic task (``split``: how many items the data has)."""
        c = self.cfg
        return Experiment(
            r=c.r,
            eps=c.eps,
            coft=method == "coft",
            resolution=c.resolution,
            seed=c.seed,
            control="synthetic",
            synthetic_length=c.train_items if split == "train" else c.val_items,
            base=None if split == "train" else str(c.base),
            output_dir=str(self.run_dir(method)),
        )

    def training(self) -> Training:
        """The same optimisation for every method: the step budget ends training."""
        c = self.cfg
        return Training(
            lr=c.lr,
            batch_size=c.batch_size,
            epochs=10_000,
            max_steps=c.steps,
            devices=str(c.devices),
            num_workers=0,
            log_every=max(1, c.steps // 100),
            save_every=max(1, c.steps // 3),
            sample_every=0,
            timestep_range=c.timestep_range,
        )

    # ------------------------------------------------------------------------------------------------ stages
    def build(self) -> None:
        c = self.cfg
        for method in ("oft", "coft"):
            path, coft = self.init_file(method), method == "coft"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.stage(
                f"build {method}",
                path,
                lambda p=path, coft=coft: build_initial(
                    c.base, p, r=c.r, eps=c.eps if coft else None, coft=coft, adapter_only=True
                ),
            )

    def train(self, method: str) -> None:
        if method == "lora":
            self.stage("train lora", self.final_file("lora"), self._train_lora)
            return
        work = partial(jobs.train, self.experiment(method, "train"), self.training(), self.init_file(method))
        self.stage(f"train {method}", self.final_file(method), work)

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
        run = self.experiment("lora", "train")
        trainer = jobs.train_module(module, run, self.training(), self.run_dir("lora"))
        if trainer.is_global_zero:
            module.save(self.final_file("lora"))

    def sample(self, method: str) -> None:
        c = self.cfg
        if method == "base":
            model = self.init_file("oft")
        elif method == "lora":
            model = None  # loaded only when there is sampling to do
        else:
            model = self.final_file(method)
        sampling = Sampling(steps=c.sample_steps, guidance=c.guidance, num_samples=1, batch=c.val_items,
                            full=False, workers=c.devices, threads=c.threads)  # fmt: skip
        exp = self.experiment("oft" if method in ("base", "lora") else method, "val")
        out = self.samples_dir(method)

        def work() -> None:
            given = load_lora_control(self.final_file("lora"), str(c.base)) if model is None else model
            jobs.sample(exp, sampling, given, out_dir=out)

        self.stage(f"sample {method}", result_path(out, c.val_items - 1, 0), work)

    def evaluate(self, method: str) -> dict:
        folder = self.samples_dir(method)
        report = folder / "eval_canny.json"
        self.stage(f"eval {method}", report, lambda: write_json(report, canny_report(folder)[0]))
        canny = json.loads(report.read_text())
        images, masks, truths = [], [], []
        seed = 2 * self.cfg.seed + 1  # SyntheticDataset's validation stream
        for i in range(self.cfg.val_items):
            _, _, controls, truth = synthetic.make_item(i, seed, self.cfg.resolution)
            images.append(read_rgb(result_path(folder, i, 0)))
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
        _, lora_meta = read_lora(self.final_file("lora"))
        lora = {"lora_parameters": int(lora_meta["lora_parameters"]), "rank": int(lora_meta["rank"])}
        oft_dof = self.oft_parameters()
        return {
            "base": {"adapter": 0, "hint": 0},
            "lora": {"adapter": lora["lora_parameters"], "hint": hint, "rank": lora["rank"]},
            "oft": {"adapter": oft_dof, "hint": hint},
            "coft": {"adapter": oft_dof, "hint": hint},
        }

    def proportions(self) -> dict[str, dict[str, float]]:
        """The toy's and SD1.5's ``Proportions`` at this r and eps: adapter vs hint encoder, COFT's budget."""
        cm = load_control(self.init_file("coft"))
        out = {}
        for where, p in (("toy", proportions(cm.sd.unet, cm.hint, self.cfg.eps)),
                         ("sd15", paper_proportions(self.cfg.r, self.cfg.eps))):  # fmt: skip
            out[where] = {**asdict(p), "adapter_to_hint": p.adapter_to_hint, "radius": p.radius,
                          "per_entry_budget": p.per_entry_budget}  # fmt: skip
        return out

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
            "proportions": self.proportions(),
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
        print(format_proportions(results["proportions"]))
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


def format_proportions(props: dict[str, dict[str, float]]) -> str:
    """Two lines comparing the toy with SD1.5 on what the paper's claims depend on."""
    toy, sd = props["toy"], props["sd15"]
    return (
        f"adapter : hint encoder = {toy['adapter']:,} : {toy['hint_encoder']:,} ({toy['adapter_to_hint']:.3f}); "
        f"SD1.5 at r={sd['r']}: {sd['adapter']:,} : {sd['hint_encoder']:,} ({sd['adapter_to_hint']:.1f})\n"
        f"COFT at eps={toy['eps']:g}: narrowest block b={toy['block']}, radius {toy['radius']:.3g}, "
        f"{toy['per_entry_budget']:.3g} per entry; SD1.5: b={sd['block']}, radius {sd['radius']:.3g}, "
        f"{sd['per_entry_budget']:.3g} per entry"
    )


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every ``train/loss`` row in the run's CSV logs (all versions: resumed runs append one)."""
    points = {}
    for f in sorted((run_dir / LOGS / CSV_LOGS).glob("version_*/metrics.csv")):
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
        files = [hint_path(demo.samples_dir("base"), i), source_path(demo.samples_dir("base"), i)]
        files += [result_path(demo.samples_dir(m), i, 0) for m in METHODS]
        for c, f in enumerate(files):
            img = cv2.resize(read_rgb(f), (cell, cell), interpolation=cv2.INTER_NEAREST)
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
