"""Measuring speed so that it holds on another machine (used by bench/): the machine's description,
randomised interleaved timing with bootstrap intervals on paired ratios, children with a timeout for code
that may hang.

Why paired ratios: on a shared VM the speed of the whole machine drifts by tens of percent within seconds.
Timing every variant once per round, in a fresh random order, and dividing each variant's time by the
baseline's time *of the same round* cancels that drift; the median over rounds and a bootstrap interval over
rounds say how well the ratio is known. A duplicate of the baseline is timed as a control: its ratio must
come out at 1.00 within its interval, otherwise the run is too noisy to read.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Everything that decides a timing: CPU or GPU model, kernels, threads, library versions, date."""
    info = {
        "date": str(date.today()),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "(best available)"),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    """One line for tables: the machine and its kernel settings."""
    where = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads"
    return (
        f"{where}; ATen CPU capability {info['aten_cpu_capability']}, MKL_ENABLE_INSTRUCTIONS "
        f"{info['mkl_enable_instructions']}; torch {info['torch']}; {info['date']}"
    )


class OtherLoad:
    """The share of the machine's CPU time that *other* processes used while the block ran (Linux: from
    /proc/stat minus this process's own CPU time; None elsewhere). A control ratio cannot show that every
    variant slowed down; this can (spin-waiting threads on a shared core slow small-kernel code most)."""

    fraction: float | None = None

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> OtherLoad:
        self._busy, self._own, self._wall = self._busy_s(), sum(os.times()[:2]), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy = self._busy_s()
        if busy is None or self._busy is None:
            return
        others = (busy - self._busy) - (sum(os.times()[:2]) - self._own)
        wall = (time.perf_counter() - self._wall) * (os.cpu_count() or 1)
        self.fraction = max(0.0, others / wall) if wall > 0 else None


def busy_warning(fraction: float | None, limit: float = 0.05) -> str | None:
    """A warning when other processes used more than ``limit`` of the machine's CPU during a measurement."""
    if fraction is not None and fraction > limit:
        return f"other processes used {fraction:.0%} of the CPU during the run: every ratio is suspect"
    return None


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A call that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cpu":
        return lambda: None
    return lambda: torch.accelerator.synchronize(device)


def median_ratio(ratios: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of per-round ratios and its 95 % percentile-bootstrap interval (rounds resampled)."""
    rng = random.Random(seed)
    med = statistics.median(ratios)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n_boot))
    return med, boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def interleaved(
    variants: dict[str, Callable[[], object]],
    baseline: str,
    device: torch.device,
    min_rounds: int = 10,
    max_rounds: int = 60,
    rel_halfwidth: float = 0.02,
    budget_s: float = 120.0,
    warmup: int = 2,
    seed: int = 0,
) -> dict:
    """Time each variant once per round, in a fresh random order, until every ratio to ``baseline`` is known
    to ``rel_halfwidth`` (half the 95 % interval over the median) or ``max_rounds``/``budget_s`` is reached.

    A variant that returns a float has timed itself (seconds): that excludes set-up it does around the timed
    part (e.g. injecting adapters into a shared model); otherwise the whole call is timed.

    Returns {"rounds", "times_s": name -> [s per round], "ratio": name -> (median, lo, hi),
    "others_cpu": share of the CPU other processes used meanwhile (``OtherLoad``)}.
    """
    sync = synchronizer(device)
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(warmup):
        for name in order:
            variants[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in order}
    start = time.perf_counter()
    with OtherLoad() as load:
        for rounds in range(1, max_rounds + 1):
            rng.shuffle(order)
            for name in order:
                sync()
                t0 = time.perf_counter()
                own = variants[name]()
                sync()
                times[name].append(own if isinstance(own, float) else time.perf_counter() - t0)
            if rounds < min_rounds:
                continue
            stats = {n: median_ratio(paired(times, n, baseline), seed=seed) for n in times}
            if time.perf_counter() - start > budget_s or all(
                (hi - lo) / 2 <= rel_halfwidth * med for med, lo, hi in stats.values()
            ):
                break
    stats = {n: median_ratio(paired(times, n, baseline), seed=seed) for n in times}
    return {"rounds": rounds, "times_s": times, "ratio": stats, "others_cpu": load.fraction}


def paired(times: dict[str, list[float]], name: str, baseline: str) -> list[float]:
    """Per-round ratios ``times[name][i] / times[baseline][i]``."""
    return [a / b for a, b in zip(times[name], times[baseline])]


class SavedForBackward:
    """Bytes autograd saves for the backward while the block runs: the activation memory a forward adds,
    independent of the allocator."""

    bytes: int = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self) -> SavedForBackward:
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class Traffic(TorchDispatchMode):
    """Multiply-add FLOPs and bytes read + written by every ATen op run inside (forward and backward alike).

    A machine-independent account of a call, to set beside its time: the FLOPs of matmuls (``FlopCounterMode``;
    LAPACK calls such as inverses are not counted) and the bytes of every operand and result of every op that
    touches memory (views cost nothing; allocation is not traffic; an ``out=`` buffer counts as written once).
    """

    FREE = ("view", "transpose", "t.default", "expand", "as_strided", "unsqueeze", "squeeze", "select", "slice",
            "detach", "alias", "permute", "unbind", "diagonal", "empty", "split", "lift_fresh")  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self._flops = FlopCounterMode(display=False)

    @property
    def flops(self) -> int:
        return self._flops.get_total_flops()

    def __enter__(self) -> Traffic:
        self._flops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._flops.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not any(tag in str(func) for tag in self.FREE):
            ins = [t for t in tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]
                   if isinstance(t, torch.Tensor)]  # fmt: skip
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(t.numel() * t.element_size() for t in ins + outs)
        return out


def run_child(argv: list[str], timeout_s: float, env: dict | None = None) -> tuple[dict | None, str]:
    """Run ``python argv...`` that prints one JSON object as its last stdout line; (result, "") or
    (None, reason) when it timed out, crashed or printed no result. A hung child is killed, never waited on."""
    try:
        proc = subprocess.run(
            [sys.executable, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {last[:160]}"
    try:
        return json.loads(lines[-1]), ""
    except json.JSONDecodeError:
        return None, f"no JSON result: {lines[-1][:160]}"
