"""The demo pipeline (``make demo``): OFT, COFT and a rank-matched LoRA teach the pretrained tiny base to follow
canny edges on the synthetic task; every stage is the library call behind the real command (tool_add_control_oft,
train.py, test_oft_parallel.py, eval_canny.py), given config objects.

Stages, each reused on re-run (its output file is its done-marker; trainings resume from ``last.ckpt``):

1. build: ``build_initial`` on the base: the initial OFT (r) and COFT (r, the toy's eps) control files, with the
   hint encoder scaled to the toy (``hint_scale``);
2. train: ``oft.control.jobs.train`` for OFT and COFT; ``LoRAControl`` through the same ``train_module`` for
   LoRA (same data, lr, steps, timesteps);
3. sample: ``oft.control.jobs.sample`` on the validation items for the uncontrolled base (the initial control
   file: R = 0 and a zero hint encoder are exactly the base), LoRA (merged, as a model object), OFT and COFT;
4. evaluate: ``canny_report`` per method and the prompt adherence (``oft.metrics.prompt``) against the
   synthetic ground truth; then the table, the image grid and the loss plot under the output folder.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from functools import cached_property, partial
from pathlib import Path

import torch

import oft_layers
from oft.common.files import atomic_write_bytes, atomic_write_json
from oft.common.images import read_rgb, write_png
from oft.control import jobs
from oft.control.checkpoint import ControlModel, build_initial, load_control, new_control_model
from oft.control.config import FINAL_MODEL, Experiment, Sampling, Training
from oft.control.hint import scaled_widths
from oft.control.params import Proportions, budget_matched_eps, paper_proportions, proportions
from oft.control.training import snapshot_path
from oft.demo.claims import ARMS, claims, collapse_counts, collapsed, curve_scores, energy_tolerance
from oft.demo.config import DemoConfig
from oft.demo.lora import LoRAControl, load_lora_control, matched_rank, read_lora
from oft.demo.report import (
    METHODS,
    TRAINED,
    curve_plot,
    format_energy,
    format_proportions,
    format_results,
    format_verdict,
    image_grid,
    loss_plot,
    read_losses,
)
from oft.metrics.canny import canny_report
from oft.metrics.energy import effective_weights, energy_changes, summarize
from oft.metrics.folder import write_json
from oft.metrics.prompt import masked_adherence
from oft.metrics.stats import mean_sd, paired_interval
from oft.sd import load_sd
from oft.specs import synthetic
from oft.specs.layout import result_path

LORA_MODEL = "lora_final.safetensors"  # the LoRA run's trained adapter + hint encoder
PAPER_R = next(f.default for f in fields(Experiment) if f.name == "r")  # the paper's SD1.5 setting, r = 4


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

    def init_file(self, method: str, seed: int) -> Path:
        return (
            self.out / "models" / f"seed{seed}" / f"init_{'coft' if method == 'coft' else 'oft'}.safetensors"
        )

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / "runs" / method / f"seed{seed}"

    def final_file(self, method: str, seed: int) -> Path:
        """The trained model of ``method``: a control file (OFT, COFT) or the LoRA file."""
        return self.run_dir(method, seed) / (LORA_MODEL if method == "lora" else FINAL_MODEL)

    def samples_dir(self, method: str, seed: int) -> Path:
        return self.out / "samples" / method / f"seed{seed}"

    def curve_dir(self, method: str, seed: int, step: int) -> Path:
        return self.out / "curves" / method / f"seed{seed}" / f"step_{step:07d}"

    @property
    def curve_steps(self) -> list[int]:
        """The steps of the learning curves' snapshots before the end: a quarter, half, three quarters."""
        every = self.training().snapshot_every
        return list(range(every, self.cfg.steps, every))

    @property
    def seeds(self) -> list[int]:
        return list(range(self.cfg.seed, self.cfg.seed + self.cfg.seeds))

    def experiment(self, method: str, split: str, seed: int) -> Experiment:
        """The run of ``method`` on the synthetic task (``split``: how many items the data has)."""
        c = self.cfg
        return Experiment(
            r=c.r,
            eps=self.toy_eps,
            coft=method == "coft",
            resolution=c.resolution,
            seed=seed,
            control="synthetic",
            synthetic_length=c.train_items if split == "train" else c.val_items,
            base=None if split == "train" else str(c.base),
            output_dir=str(self.run_dir(method, seed)),
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
            snapshot_every=max(1, c.steps // 4),
            cache_encodings=True,  # 512 fixed items seen ~9 times: encode them once
            timestep_range=c.timestep_range,
            max_grad_norm=c.max_grad_norm,
        )

    # ------------------------------------------------------------------------------------------------ stages
    def build(self, seed: int) -> None:
        """The initial OFT and COFT files of ``seed``: one hint-encoder draw (seeded), shared by every method."""
        c = self.cfg
        for method in ("oft", "coft"):
            path, coft = self.init_file(method, seed), method == "coft"

            def work(path: Path = path, coft: bool = coft) -> None:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)  # the hint encoder's initial weights
                    build_initial(c.base, path, r=c.r, eps=self.toy_eps if coft else None, coft=coft,
                                  adapter_only=True, hint_widths=scaled_widths(c.hint_scale))  # fmt: skip

            self.stage(f"build {method} seed {seed}", path, work)

    def train(self, method: str, seed: int) -> None:
        if method == "lora":
            work = partial(self._train_lora, seed)
        else:
            exp = self.experiment(method, "train", seed)
            work = partial(jobs.train, exp, self.training(), self.init_file(method, seed))
        self.stage(f"train {method} seed {seed}", self.final_file(method, seed), work)

    def _train_lora(self, seed: int) -> None:
        c = self.cfg
        rank = matched_rank(self._toy.sd.unet, self._proportions["toy"].adapter)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # LoRA's A matrices
            module = LoRAControl(
                str(self.init_file("oft", seed)),
                rank=rank,
                lr=c.lr,
                seed=seed,
                timestep_range=c.timestep_range,
                cache_encodings=self.training().cache_encodings,
            )
        exp = self.experiment("lora", "train", seed)
        trainer = jobs.train_module(module, exp, self.training(), self.run_dir("lora", seed))
        if trainer.is_global_zero:
            module.export(self.final_file("lora", seed))

    def sample(self, method: str, seed: int, step: int | None = None) -> Path:
        """Sample the validation items with ``method``'s trained model (``step``: its snapshot at that step)."""
        c = self.cfg
        # bare captions: the tiny base was pretrained and the methods trained on them (no reference job to match)
        sampling = Sampling(steps=c.sample_steps, guidance=c.guidance, num_samples=1, batch=c.val_items,
                            full=False, workers=c.devices, threads=c.threads, bare_prompt=True)  # fmt: skip
        exp = self.experiment("oft" if method in ("base", "lora") else method, "val", seed)
        trained = (
            self.final_file(method, seed) if step is None else snapshot_path(self.run_dir(method, seed), step)
        )
        out = self.samples_dir(method, seed) if step is None else self.curve_dir(method, seed, step)

        def work() -> None:
            if method == "lora":  # a merged model object: loaded only when there is sampling to do
                model = load_lora_control(trained, str(c.base))
            else:  # the base is the initial control file: R = 0 and a zero hint encoder are exactly the base
                model = self.init_file("oft", seed) if method == "base" else trained
            jobs.sample(exp, sampling, model, out_dir=out)

        at = "" if step is None else f" step {step}"
        self.stage(f"sample {method} seed {seed}{at}", result_path(out, c.val_items - 1, 0), work)
        return out

    def canny(self, folder: Path, name: str) -> dict:
        """The canny report of the samples in ``folder`` (stage ``name``, reused when it exists)."""
        report = folder / "eval_canny.json"
        self.stage(name, report, lambda: write_json(report, canny_report(folder)[0]))
        return json.loads(report.read_text())

    def curve(self, method: str, seed: int, base_f1: float) -> dict[int, float]:
        """Canny F1 of ``method`` against its training step: 0 (the base), every snapshot, the end."""
        points = {0: base_f1}
        for step in self.curve_steps:
            folder = self.sample(method, seed, step)
            points[step] = self.canny(folder, f"eval {method} seed {seed} step {step}")["f1"]
        return points

    def evaluate(self, method: str, seed: int) -> dict:
        """Canny IoU/F1 and prompt adherence of ``method``'s final samples."""
        folder = self.samples_dir(method, seed)
        canny = self.canny(folder, f"eval {method} seed {seed}")
        images, masks, truths = [], [], []
        stream = 2 * seed + 1  # SyntheticDataset's validation stream
        for i in range(self.cfg.val_items):
            _, _, controls, truth = synthetic.make_item(i, stream, self.cfg.resolution)
            images.append(read_rgb(result_path(folder, i, 0)))
            masks.append(controls["segm"].any(axis=2))
            truths.append(truth)
        prompt = masked_adherence(images, masks, truths)
        atomic_write_json(folder / "eval_prompt.json", prompt)
        return {"iou": canny["iou"], "f1": canny["f1"], "shape_colour": prompt["shape_colour"],
                "background_colour": prompt["background_colour"], "prompt": prompt}  # fmt: skip

    # ----------------------------------------------------------------------------------------------- results
    def parameters(self) -> dict[str, dict[str, int]]:
        """Trainable parameters per method: adapter and hint encoder (the base trains nothing)."""
        hint = self._proportions["toy"].hint_encoder
        _, lora_meta = read_lora(self.final_file("lora", self.cfg.seed))
        oft_dof = self.proportions["toy"]["adapter"]
        return {
            "base": {"adapter": 0, "hint": 0},
            "lora": {
                "adapter": int(lora_meta["lora_parameters"]),
                "hint": hint,
                "rank": int(lora_meta["rank"]),
            },
            "oft": {"adapter": oft_dof, "hint": hint},
            "coft": {"adapter": oft_dof, "hint": hint},
        }

    @cached_property
    def _toy(self) -> ControlModel:
        """The toy's step-0 COFT model on the base (r, scaled hint encoder): its shapes, for counting."""
        c = self.cfg
        return new_control_model(load_sd(c.base), r=c.r, eps=c.eps, coft=True, block_share=False,
                                 hint_widths=scaled_widths(c.hint_scale))  # fmt: skip

    @cached_property
    def _proportions(self) -> dict[str, Proportions]:
        """The toy's (at its budget-matched eps) and SD1.5's (at the paper's r and ``eps``) ``Proportions``."""
        sd15 = paper_proportions(PAPER_R, self.cfg.eps)
        toy = proportions(self._toy.sd.unet, self._toy.hint, self.cfg.eps)
        return {"toy": replace(toy, eps=budget_matched_eps(toy, sd15)), "sd15": sd15}

    @property
    def toy_eps(self) -> float:
        """COFT's eps on the toy: the per-entry rotation budget of SD1.5's narrowest blocks at the paper's eps."""
        return self._proportions["toy"].eps

    @property
    def proportions(self) -> dict[str, dict[str, float]]:
        """``_proportions`` as plain numbers: adapter (OFT's rotation DOF) vs hint encoder, COFT's budget."""
        return {where: {**asdict(p), "adapter_to_hint": p.adapter_to_hint, "radius": p.radius,
                        "per_entry_budget": p.per_entry_budget}
                for where, p in self._proportions.items()}  # fmt: skip

    @property
    def widest_block(self) -> int:
        """The largest OFT block of the toy: its rotated entries are the longest float32 dot products."""
        return max(layer.block_size for _, layer in oft_layers.oft_modules(self._toy.sd.unet))

    def energy(self, seed: int) -> dict[str, dict[str, float]]:
        """Per trained method, how much every adapted layer's hyperspherical energy moved from the base's
        (relative; ``oft.metrics.energy``): rounding for OFT and COFT, LoRA's for comparison."""
        init = load_control(self.init_file("oft", seed))  # R = 0: exactly the base weights
        names = [name for name, _ in oft_layers.oft_modules(init.sd.unet)]
        base = effective_weights(init.sd.unet, names)
        trained = {
            "lora": load_lora_control(self.final_file("lora", seed), str(self.cfg.base)),
            "oft": load_control(self.final_file("oft", seed)),
            "coft": load_control(self.final_file("coft", seed)),
        }
        return {
            m: summarize(energy_changes(base, effective_weights(cm.sd.unet, names)))
            for m, cm in trained.items()
        }

    def run_seed(self, seed: int) -> dict[str, dict]:
        """Every stage of one seed; the metrics per method (trained ones: with their F1 curve and collapse)."""
        self.build(seed)
        for method in TRAINED:
            self.train(method, seed)
        metrics = {}
        for method in METHODS:
            self.sample(method, seed)
            metrics[method] = self.evaluate(method, seed)
        for method in TRAINED:
            curve = {**self.curve(method, seed, metrics["base"]["f1"]), self.cfg.steps: metrics[method]["f1"]}
            metrics[method].update(curve_scores(curve, self.curve_steps))
            metrics[method]["collapsed"] = collapsed(read_losses(self.run_dir(method, seed)))
        return metrics

    def run(self) -> dict:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        per_seed = {seed: self.run_seed(seed) for seed in self.seeds}
        energy = [self.energy(seed) for seed in self.seeds]
        results = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
            "seeds": self.seeds,
            **summarize_seeds(per_seed, self.parameters()),
            "proportions": self.proportions,
            "energy_change": {
                **{
                    m: {
                        "max": max(e[m]["max"] for e in energy),
                        "layers": energy[0][m]["layers"],
                        "seeds": len(energy),
                    }
                    for m in TRAINED
                },
                "tolerance": energy_tolerance(self.widest_block),
            },  # fmt: skip
            "timings": self.timings,
            "this_invocation": {
                "wall_s": time.perf_counter() - start_wall,
                "cpu_s": cpu_seconds() - start_cpu,
            },
        }
        results["claims"] = claims(results)
        results["collapsed"] = collapse_counts(results)
        atomic_write_json(self.out / "results.json", results)
        table = format_results(results)
        verdict = format_verdict(results["claims"], results["collapsed"], len(self.seeds))
        atomic_write_bytes(self.out / "results.md", (f"{table}\n\n{verdict}\n").encode())
        first = self.cfg.seed
        folders = {m: self.samples_dir(m, first) for m in METHODS}
        items = range(min(6, self.cfg.val_items))
        write_png(self.out / "grid.png", image_grid(folders, self.cfg.resolution, items))
        losses = {m: [read_losses(self.run_dir(m, s)) for s in self.seeds] for m in TRAINED}
        write_png(self.out / "loss.png", loss_plot(losses))
        f1 = {m: [results["methods"][m]["per_seed"][str(s)]["curve"] for s in self.seeds] for m in TRAINED}
        write_png(self.out / "curves.png", curve_plot(f1))
        print(table)
        print(format_proportions(results["proportions"]))
        print(format_energy(results["energy_change"]))
        print(verdict)
        print(f"[demo] wrote {self.out}/{{results.json,results.md,grid.png,loss.png,curves.png}}")
        return results


SCORES = ("iou", "f1", "shape_colour", "background_colour")
CURVE_SCORES = ("early_f1", "degradation")  # trained methods only


def summarize_seeds(per_seed: dict[int, dict[str, dict]], parameters: dict[str, dict]) -> dict[str, dict]:
    """``methods``: per method its scores per seed, their mean and sd, its parameters; ``paired``: OFT − LoRA
    and COFT − LoRA per score, the mean difference over seeds with its 95 % t-interval."""
    methods = {}
    for m in METHODS:
        runs = {str(s): per_seed[s][m] for s in per_seed}
        keys = SCORES + (CURVE_SCORES if m in TRAINED else ())
        summary = {k: mean_sd([r[k] for r in runs.values()]) for k in keys}
        methods[m] = {"per_seed": runs, "summary": summary, "parameters": parameters[m]}
    paired = {
        f"{m}-lora": {k: paired_interval([per_seed[s][m][k] for s in per_seed], [per_seed[s]["lora"][k] for s in per_seed])
                      for k in SCORES + CURVE_SCORES}
        for m in ARMS
    }  # fmt: skip
    return {"methods": methods, "paired": paired}
