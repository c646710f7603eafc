"""Model-level cost of OFT on the SD1.5 UNet: one training step and merged sampling, side by side in one run.

Training step = forward + backward of the SD1.5-architecture UNet (random weights, frozen) at batch 1 and 64x64
latents (the paper's 512-px training), with trainable adapters on the 144 control targets only:
OFT r=4 (our automatic path), the same with the reference-style dense rebuild, a rank-4 LoRA and, when ``peft`` is
installed, PEFT's OFT. Sampling = 20 DDIM steps (``oft.sd.sampling.denoise``) of the OFT model after ``merge``
against the plain UNet. One UNet is shared: each variant is injected, timed and stripped in turn, round-robin, so
the ratios are comparable on a noisy machine. Run: ``make bench`` or ``python bench/bench_sd_step.py --help``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from oft.sd.configs import SCHEDULER, preset_config
from oft.sd.sampling import denoise, make_scheduler
from oft.sd.targets import CONTROL_TARGETS
from oft_layers import inject, merge, oft_modules, strip

ADAPTER_RANK = 4  # OFT blocks and LoRA rank alike


def _peft():
    try:
        import peft

        return peft
    except ImportError:
        return None


def _inject_peft(unet: nn.Module, config) -> None:
    _peft().inject_adapter_in_model(config, unet)


def _strip_peft(unet: nn.Module) -> None:
    """Put every PEFT-wrapped layer's ``base_layer`` back in place and forget PEFT's config."""
    for name, module in list(unet.named_modules()):
        if hasattr(module, "base_layer") and name:
            parent, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, child, module.base_layer)
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def _inject_oft(unet: nn.Module, path: str) -> None:
    inject(unet, CONTROL_TARGETS, r=ADAPTER_RANK, path=path)
    with torch.no_grad():
        for _, layer in oft_modules(unet):
            layer.R.normal_(0, 1e-3)  # a trained-looking rotation, not the identity


def training_variants() -> dict[str, tuple[Callable[[nn.Module], None], Callable[[nn.Module], None]]]:
    """name -> (inject, strip) on a frozen UNet; every variant trains only its adapter on the control targets."""
    out = {
        "OFT r=4 (ours, auto path)": (lambda u: _inject_oft(u, "auto"), strip),
        "OFT r=4 reference-style dense": (lambda u: _inject_oft(u, "dense"), strip),
    }
    peft = _peft()
    regex = "|".join(f"(?:{p})" for p in CONTROL_TARGETS)  # PEFT full-matches a string target_modules
    if peft is not None:
        lora = peft.LoraConfig(
            r=ADAPTER_RANK, lora_alpha=ADAPTER_RANK, target_modules=regex, init_lora_weights=False
        )
        oft = peft.OFTConfig(r=ADAPTER_RANK, oft_block_size=0, target_modules=regex, use_cayley_neumann=False)
        out["LoRA rank 4 (PEFT)"] = (lambda u: _inject_peft(u, lora), _strip_peft)
        out["PEFT OFT r=4"] = (lambda u: _inject_peft(u, oft), _strip_peft)
    else:
        from bench_layers import LoRALinear  # the sibling benchmark's hand-written LoRA (run as a script)

        def inject_lora(u: nn.Module) -> None:
            for name in [
                n for n, m in u.named_modules() if re.fullmatch(regex, n) and isinstance(m, nn.Linear)
            ]:
                parent, _, child = name.rpartition(".")
                setattr(u.get_submodule(parent), child, LoRALinear(u.get_submodule(name), ADAPTER_RANK))

        def strip_lora(u: nn.Module) -> None:
            for name, module in list(u.named_modules()):
                if isinstance(module, LoRALinear):
                    parent, _, child = name.rpartition(".")
                    setattr(u.get_submodule(parent), child, module.base)

        out["LoRA rank 4"] = (inject_lora, strip_lora)
    return out


def _release_free_memory() -> None:
    """Hand memory freed by earlier steps back to the OS (glibc keeps it otherwise, hiding the next step's peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the peak is then measured above whatever the allocator holds
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, polled every 2 ms in a thread (CPU has no allocator stats)."""

    def __enter__(self) -> PeakRSS:
        _release_free_memory()
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def train_step(unet: nn.Module, latents, t, context, noise) -> tuple[float, int]:
    """Seconds for one forward+backward (ε-MSE) with gradients for the adapter only, and the bytes autograd saved
    for the backward (the activation memory the step holds at its peak, independent of the allocator)."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.mse_loss(unet(latents, t, encoder_hidden_states=context).sample, noise)
    loss.backward()
    elapsed = time.perf_counter() - start
    for p in unet.parameters():
        p.grad = None
    return elapsed, saved


def bench_training(unet, inputs, warmup: int, repeats: int) -> dict[str, dict]:
    """Round-robin: each round injects, times one step, strips, for every variant."""
    variants = training_variants()
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = {}
    saved_mib: dict[str, float] = {}
    trainable: dict[str, int] = {}
    for round_ in range(warmup + repeats):
        for name, (add, remove) in variants.items():
            add(unet)
            trainable[name] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
            with PeakRSS() as mem:
                seconds, saved = train_step(unet, *inputs)
            saved_mib[name] = saved / 2**20
            remove(unet)
            if round_ >= warmup:
                times[name].append(seconds)
                peaks[name] = max(peaks.get(name, 0.0), mem.delta_mib)
            # every measurement is logged as it comes, so a run stopped early still leaves its numbers
            print(
                f"  round {round_ + 1}/{warmup + repeats} {name}: {seconds:.2f} s, peak RSS +{mem.delta_mib:.0f} MiB, "
                f"saved for backward {saved_mib[name]:.0f} MiB",
                flush=True,
            )
    assert not any(p.requires_grad for p in unet.parameters()), "a variant was not stripped"
    return {
        name: {
            "median_s": statistics.median(ts),
            "times_s": ts,
            "peak_mib": peaks[name],
            "saved_mib": saved_mib[name],
            "trainable": trainable[name],
        }
        for name, ts in times.items()
    }


def bench_sampling(unet, context, noise, steps: int, repeats: int) -> dict[str, dict]:
    """``steps``-step DDIM (no CFG: batch 1) of the plain UNet and of the OFT UNet after merge, alternating."""
    scheduler = make_scheduler("ddim", SCHEDULER)
    times: dict[str, list[float]] = {"plain UNet": [], "OFT r=4 merged": []}
    for round_ in range(repeats + 1):  # round 0 warms up with a single step
        for name in times:
            if name != "plain UNet":
                _inject_oft(unet, "auto")
                merge(unet)
            scheduler.set_timesteps(steps if round_ else 1)
            start = time.perf_counter()
            denoise(unet, scheduler, noise, context, guidance=1.0)
            seconds = time.perf_counter() - start
            strip(unet)
            if round_:
                times[name].append(seconds)
            print(f"  sampling round {round_}/{repeats} {name}: {seconds:.2f} s", flush=True)
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


def format_results(results: dict) -> str:
    """Markdown tables of medians and ratios (training to the LoRA step; sampling to the plain UNet)."""
    lines = [
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} threads; {results['date']}.",
        f"Preset {results['preset']}, batch 1, {results['latent']}x{results['latent']} latents.",
    ]
    if "training" in results:
        train = results["training"]
        lora = next(v["median_s"] for k, v in train.items() if k.startswith("LoRA"))
        oft = train["OFT r=4 (ours, auto path)"]["median_s"]
        lines += [
            "",
            f"{results['repeats']} timed rounds after {results['warmup']} warm-up round(s), round-robin (median).",
            "",
            "| training step (fwd+bwd) | median s | vs LoRA | vs OFT (ours) | peak RSS above base, MiB "
            "| saved for backward, MiB | trainable numel |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in train.items():
            lines.append(
                f"| {name} | {v['median_s']:.2f} | {v['median_s'] / lora:.2f}x | {v['median_s'] / oft:.2f}x | "
                f"{v['peak_mib']:.0f} | {v['saved_mib']:.0f} | {v['trainable']:,} |"
            )
    if "sampling" in results:
        sample = results["sampling"]
        plain = sample["plain UNet"]["median_s"]
        lines += [
            "",
            f"| {results['sample_steps']}-step DDIM sampling | median s | vs plain |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {v['median_s']:.2f} | {v['median_s'] / plain:.3f}x |" for name, v in sample.items()
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset", default="sd15", choices=["sd15", "tiny"], help="UNet architecture (tiny: smoke test)"
    )
    p.add_argument("--latent", type=int, default=64, help="latent side (64 = 512-px images)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds of training steps")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of training steps")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per sampling run")
    p.add_argument("--sample-repeats", type=int, default=3, help="timed sampling runs per variant")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["training", "sampling"],
        default=["training", "sampling"],
        help="what to time (both by default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/sd_step.json", help="where the JSON results go")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    cfg = preset_config(args.preset)["unet"]
    print(f"building the {args.preset} UNet with random weights ...", flush=True)
    unet = UNet2DConditionModel(**cfg).requires_grad_(False)
    unet.train()  # dropout is 0 in SD; train mode as in fine-tuning
    g = torch.Generator().manual_seed(args.seed)
    shape = (1, cfg["in_channels"], args.latent, args.latent)
    context = torch.randn(1, 77, cfg["cross_attention_dim"], generator=g)
    inputs = (torch.randn(shape, generator=g), torch.tensor([500]), context, torch.randn(shape, generator=g))
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({platform.platform()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": str(date.today()),
        "preset": args.preset,
        "latent": args.latent,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "sample_steps": args.sample_steps,
    }
    if "training" in args.parts:
        print("training steps:", flush=True)
        results["training"] = bench_training(unet, inputs, args.warmup, args.repeats)
    if "sampling" in args.parts:
        unet.eval()
        print("sampling:", flush=True)
        results["sampling"] = bench_sampling(unet, context, inputs[0], args.sample_steps, args.sample_repeats)
    table = format_results(results)
    results["table"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(table)
    return results


if __name__ == "__main__":
    main(parse_args())
