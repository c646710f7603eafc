"""The demo's outputs: the results table, the proportions, energy and verdict lines, the image grid, the loss and
learning-curve plots."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from oft.common.images import read_rgb
from oft.control.config import CSV_LOGS, LOGS
from oft.demo.claims import COLLAPSE_FACTOR
from oft.metrics.folder import format_table
from oft.specs.layout import hint_path, result_path, source_path

METHODS = ("base", "lora", "oft", "coft")
TRAINED = ("lora", "oft", "coft")
LABELS = {"base": "base (no control)", "lora": "LoRA", "oft": "OFT", "coft": "COFT"}
PLOT_COLOURS = {"lora": (220, 40, 40), "oft": (30, 90, 220), "coft": (40, 160, 40)}  # RGB


def _mean_sd(s: dict, digits: int) -> str:
    return f"{s['mean']:.{digits}f}" + ("" if s["sd"] is None else f" ± {s['sd']:.{digits}f}")


def _interval(d: dict) -> str:
    shown = f"{d['mean']:+.3f}"
    return shown if d["lo"] is None else f"{shown} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def format_results(results: dict) -> str:
    """The demo's table (mean ± sd over the seeds: canny IoU/F1, prompt adherence; trainable parameters; mean
    training time per seed), then the paired differences to LoRA with their 95 % t-intervals."""
    rows, seeds = [], len(results["seeds"])
    for m, r in results["methods"].items():
        p, s = r["parameters"], r["summary"]
        times = [
            results["timings"][k]
            for k in (f"train {m} seed {i}" for i in results["seeds"])
            if k in results["timings"]
        ]
        adapter = f"{p['adapter']:,}" + (f" (rank {p['rank']})" if "rank" in p else "")
        took = (
            f"{sum(t['wall_s'] for t in times) / len(times):.0f} / {sum(t['cpu_s'] for t in times) / len(times):.0f}"
            if times
            else "-"
        )
        rows.append((LABELS[m], _mean_sd(s["iou"], 3), _mean_sd(s["f1"], 3), _mean_sd(s["shape_colour"], 2),
                     _mean_sd(s["background_colour"], 2), adapter, f"{p['hint']:,}", took))  # fmt: skip
    header = (f"method ({seeds} seed{'s' if seeds > 1 else ''})", "canny IoU", "canny F1", "shape colour",
              "bg colour", "adapter params", "hint params", "train wall / CPU s")  # fmt: skip
    lines = [format_table(header, rows), ""]
    for pair, scores in results["paired"].items():
        a, b = pair.split("-")
        shown = ", ".join(f"{k} {_interval(scores[k])}" for k in ("f1", "iou", "shape_colour"))
        lines.append(f"{LABELS[a]} − {LABELS[b]} (paired by seed, mean [95 % t-interval]): {shown}")
    return "\n".join(lines)


def format_proportions(props: dict[str, dict[str, float]]) -> str:
    """Two lines comparing the toy with SD1.5 on what the paper's claims depend on."""
    toy, sd = props["toy"], props["sd15"]
    return (
        f"adapter : hint encoder = {toy['adapter']:,} : {toy['hint_encoder']:,} ({toy['adapter_to_hint']:.1f} : 1) "
        f"at r={toy['r']}; SD1.5 at r={sd['r']}: {sd['adapter']:,} : {sd['hint_encoder']:,} "
        f"({sd['adapter_to_hint']:.1f} : 1)\n"
        f"COFT radius eps·b²/√r: SD1.5 eps={sd['eps']:g}, b={sd['block']}: {sd['radius']:.3g}, "
        f"{sd['per_entry_budget']:.3g} per entry; toy eps={toy['eps']:.3g} (the same per-entry budget: "
        f"eps = {sd['per_entry_budget']:.3g}·√{toy['r']}/{toy['block']}), b={toy['block']}: {toy['radius']:.3g}"
    )


def format_energy(changes: dict[str, dict[str, float]]) -> str:
    """One line: the largest relative change of an adapted layer's hyperspherical energy, per method."""
    shown = ", ".join(f"{LABELS[m]} {changes[m]['max']:.1e}" for m in TRAINED)
    first = changes[TRAINED[0]]
    return (f"hyperspherical energy, largest relative change over the {first['layers']} adapted layers and "
            f"{first['seeds']} seed{'s' if first['seeds'] > 1 else ''}: {shown} "
            f"(float32 rounding: up to {changes['tolerance']:.1e})")  # fmt: skip


def format_verdict(rows: list[dict], collapses: dict[str, int], seeds: int) -> str:
    """The four claims, one line per (claim, arm): verdict, measure, paired difference to LoRA [95 % interval]."""
    lines = [
        f"claims of the paper at this scale ({seeds} seed{'s' if seeds > 1 else ''}, arm − LoRA paired by seed):"
    ]
    for row in rows:
        shown = _interval(row["interval"]) if "interval" in row else f"largest change {row['value']:.1e}"
        lines.append(
            f"  {row['claim']:<12} {LABELS[row['arm']]:<5} {row['verdict']:<14} {row['measure']}: {shown}"
        )
    counts = ", ".join(f"{LABELS[m]} {n}/{seeds}" for m, n in collapses.items())
    lines.append(f"  collapsed runs (final training loss > {COLLAPSE_FACTOR:g}x its best): {counts}")
    return "\n".join(lines)


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every ``train/loss`` row in the run's CSV logs (all versions: resumed runs append one)."""
    points = {}
    for f in sorted((run_dir / LOGS / CSV_LOGS).glob("version_*/metrics.csv")):
        with f.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    points[int(row["step"])] = float(row["train/loss"])
    return sorted(points.items())


def image_grid(folders: dict[str, Path], size: int, indices) -> np.ndarray:
    """Rows: one validation item each; columns: hint | target | base | LoRA | OFT | COFT (uint8 RGB, labelled),
    from each method's sample folder in ``folders`` (hint and target from the base's)."""
    pad = 2
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
        files = [hint_path(folders["base"], i), source_path(folders["base"], i)]
        files += [result_path(folders[m], i, 0) for m in METHODS]
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


Band = tuple[np.ndarray, np.ndarray] | None  # (low, high) around a line


def line_plot(
    series: list[tuple[str, np.ndarray, np.ndarray, Band]], caption: str, width: int = 640, height: int = 360
) -> np.ndarray:
    """Lines ``(method, x, y, band)`` in the method's colour, each band shaded behind its line, with a y axis
    and ``caption`` under the x axis: an (H, W, 3) uint8 RGB plot."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 50, 15, 25, 30
    if not series:
        return img
    xmax = max(x.max() for _, x, _, _ in series) or 1
    ys = [y for _, _, y, band in series for y in (y, *(band or ()))]
    ymin, ymax = min(y.min() for y in ys), max(y.max() for y in ys)
    yr = (ymax - ymin) or 1.0

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(left + x / xmax * (width - left - right)), int(
            top + (ymax - y) / yr * (height - top - bottom)
        )

    def points(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([to_px(a, b) for a, b in zip(x, y)], np.int32)

    for m, x, _, band in series:  # one translucent layer per band, so that overlapping bands all show
        if band is not None:
            shade = img.copy()
            outline = np.concatenate([points(x, band[0]), points(x, band[1])[::-1]])
            cv2.fillPoly(shade, [outline], PLOT_COLOURS[m])
            img = cv2.addWeighted(shade, 0.25, img, 0.75, 0)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for v in (ymin, (ymin + ymax) / 2, ymax):
        cv2.putText(img, f"{v:.3f}", (2, to_px(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(img, caption, (left, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for m, x, y, _ in series:
        cv2.polylines(img, [points(x, y)], False, PLOT_COLOURS[m], 1, cv2.LINE_AA)
    for k, m in enumerate(dict.fromkeys(m for m, *_ in series)):
        cv2.putText(
            img, LABELS[m], (left + 10 + 70 * k, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, PLOT_COLOURS[m], 1
        )
    return img


def loss_plot(curves: dict[str, list[list[tuple[int, float]]]]) -> np.ndarray:
    """Training-loss curves, one per method and seed in the method's colour (moving average over 5 logged
    points), as an (H, W, 3) uint8 RGB plot."""
    series = [(m, np.array(c, float)) for m, runs in curves.items() for c in runs if c]
    smooth = [(m, *_moving_average(s[:, 0], s[:, 1], 5), None) for m, s in series]
    xmax = max((int(x.max()) for _, x, _, _ in smooth), default=0)
    return line_plot(smooth, f"step (0..{xmax})   training eps-MSE, smoothed")


def curve_plot(curves: dict[str, list[dict[str, float]]]) -> np.ndarray:
    """Learning curves: canny F1 against the training step per method, the mean over seeds as a line and
    mean ± sd as a band (step 0: the base), as an (H, W, 3) uint8 RGB plot."""
    series = []
    for m, runs in curves.items():
        steps = sorted({int(s) for run in runs for s in run})
        table = np.array([[run[str(s)] for s in steps] for run in runs], float)  # seeds x steps
        mean = table.mean(axis=0)
        sd = table.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        series.append((m, np.array(steps, float), mean, (mean - sd, mean + sd)))
    xmax = max((int(x.max()) for _, x, _, _ in series), default=0)
    return line_plot(series, f"step (0..{xmax})   canny F1, mean and ± sd over seeds")
