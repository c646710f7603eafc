"""Model-level cost of OFT on an SD UNet: one training step and merged sampling, side by side in one run.

Training step = forward + backward of the UNet of ``--base`` (SD1.5 by default; SD2.1, SDXL or a tiny preset;
random weights, frozen) at batch 1 and the base's latent size (SD1.5: 64x64, the paper's 512-px training; SD2.1:
96, SDXL: 128), in float32 or ``--dtype bf16`` (frozen weights in bf16, rotations float32), optionally with
``--gradient-checkpointing``, with trainable adapters on the control targets only: OFT r=4 (our
automatic path), the same with the reference-style dense rebuild, PEFT's rank-4 LoRA (the baseline of the
ratios), a control copy of that baseline, and PEFT's OFT with its default Cayley-Neumann series (its exact
solve can hang on CPU: PyTorch issue 142815, SPEC §8; ``bench_layers.py`` measures it in a child process).
Sampling = DDIM steps (``oft.sd.sampling.denoise``) of the OFT model after ``merge`` against the plain UNet.
One UNet is shared: each variant is injected, timed and stripped in turn; the order is shuffled every round
and ratios are paired within rounds with bootstrap intervals (``oft.common.timing``). Run: ``make bench`` or
``python bench/bench_sd_step.py --help``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time
from collections.abc import Callable

import peft
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from oft.common.files import atomic_write_json
from oft.common.timing import SavedForBackward, busy_warning, describe, interleaved, machine_info
from oft.sd.conditioning import Conditioning, size_ids
from oft.sd.configs import PRESETS, VAE_DOWNSAMPLE, base_of, preset_config, scheduler_config
from oft.sd.sampling import denoise, make_scheduler
from oft.sd.targets import CONTROL_TARGETS
from oft_layers import inject, merge, oft_modules, strip

ADAPTER_RANK = 4  # OFT blocks and LoRA rank alike


def _inject_peft(unet: nn.Module, config) -> None:
    peft.inject_adapter_in_model(config, unet)


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


BASELINE, CONTROL = "LoRA rank 4 (PEFT)", "LoRA rank 4 (PEFT), control copy"


def training_variants() -> dict[str, tuple[Callable[[nn.Module], None], Callable[[nn.Module], None]]]:
    """name -> (inject, strip) on a frozen UNet; every variant trains only its adapter on the control targets."""
    regex = "|".join(f"(?:{p})" for p in CONTROL_TARGETS)  # PEFT full-matches a string target_modules
    lora = peft.LoraConfig(
        r=ADAPTER_RANK, lora_alpha=ADAPTER_RANK, target_modules=regex, init_lora_weights=False
    )
    oft = peft.OFTConfig(r=ADAPTER_RANK, oft_block_size=0, target_modules=regex)  # PEFT's default: Neumann
    return {
        "OFT r=4 (ours, auto path)": (lambda u: _inject_oft(u, "auto"), strip),
        "OFT r=4 reference-style dense": (lambda u: _inject_oft(u, "dense"), strip),
        BASELINE: (lambda u: _inject_peft(u, lora), _strip_peft),
        CONTROL: (lambda u: _inject_peft(u, lora), _strip_peft),
        "PEFT OFT r=4 (Cayley-Neumann)": (lambda u: _inject_peft(u, oft), _strip_peft),
    }


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


def train_step(unet: nn.Module, latents, t, cond: Conditioning, noise) -> tuple[float, int]:
    """Seconds for one forward+backward (ε-MSE) with gradients for the adapter only, and the bytes autograd saved
    for the backward (the activation memory the step holds at its peak, independent of the allocator)."""
    start = time.perf_counter()
    with SavedForBackward() as saved:
        out = unet(latents, t, **cond.unet_kwargs()).sample
        loss = nn.functional.mse_loss(out.float(), noise.float())
    loss.backward()
    elapsed = time.perf_counter() - start
    for p in unet.parameters():
        p.grad = None
    return elapsed, saved.bytes


def bench_training(unet, inputs, args) -> dict:
    """Shuffled rounds: each variant is injected, one step is timed, the variant is stripped."""
    variants = {k: v for k, v in training_variants().items() if args.variants is None or k in args.variants}
    extra: dict[str, dict] = {name: {"peak_mib": 0.0} for name in variants}

    def timed(name: str) -> Callable[[], float]:
        add, remove = variants[name]

        def run() -> float:
            add(unet)
            extra[name]["trainable"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
            with PeakRSS() as mem:
                seconds, saved = train_step(unet, *inputs)
            remove(unet)
            extra[name]["saved_mib"] = saved / 2**20
            extra[name]["peak_mib"] = max(extra[name]["peak_mib"], mem.delta_mib)
            # every measurement is logged as it comes, so a run stopped early still leaves its numbers
            print(f"  {name}: {seconds:.2f} s, peak RSS +{mem.delta_mib:.0f} MiB, saved {saved / 2**20:.0f} MiB",
                  flush=True)  # fmt: skip
            return seconds

        return run

    baseline = BASELINE if BASELINE in variants else next(iter(variants))  # --variants may leave LoRA out
    res = interleaved({name: timed(name) for name in variants}, baseline, torch.device("cpu"),
                      min_rounds=args.repeats, max_rounds=args.max_repeats, rel_halfwidth=0.03,
                      budget_s=args.budget_s, warmup=args.warmup, seed=args.seed)  # fmt: skip
    assert not any(p.requires_grad for p in unet.parameters()), "a variant was not stripped"
    return {
        "rounds": res["rounds"],
        "others_cpu": res["others_cpu"],
        "baseline": baseline,
        "variants": {
            name: {"ratio": res["ratio"][name], "times_s": res["times_s"][name], **extra[name]}
            for name in variants
        },
    }


def bench_sampling(unet, cond: Conditioning, noise, args) -> dict:
    """``sample_steps``-step DDIM (no CFG: batch 1) of the plain UNet and of the OFT UNet after merge."""
    scheduler = make_scheduler("ddim", scheduler_config(args.base))

    def timed(merged: bool) -> Callable[[], float]:
        def run() -> float:
            if merged:
                _inject_oft(unet, "auto")
                merge(unet)
            scheduler.set_timesteps(args.sample_steps)
            start = time.perf_counter()
            denoise(unet, scheduler, noise, cond, guidance=1.0)
            seconds = time.perf_counter() - start
            strip(unet)
            print(f"  sampling {'OFT merged' if merged else 'plain'}: {seconds:.2f} s", flush=True)
            return seconds

        return run

    variants = {
        "plain UNet": timed(False),
        "plain UNet, control copy": timed(False),
        "OFT r=4 merged": timed(True),
    }
    res = interleaved(variants, "plain UNet", torch.device("cpu"), min_rounds=args.sample_repeats,
                      max_rounds=args.sample_repeats, warmup=1, seed=args.seed)  # fmt: skip
    return {
        "rounds": res["rounds"],
        "others_cpu": res["others_cpu"],
        "variants": {
            name: {"ratio": res["ratio"][name], "times_s": res["times_s"][name]} for name in variants
        },
    }


def _cell(ratio) -> str:
    med, lo, hi = ratio
    return f"{med:.2f}x [{lo:.2f}, {hi:.2f}]"


def _short(baseline: str) -> str:
    return "LoRA" if baseline == BASELINE else baseline


def format_results(results: dict) -> str:
    """Markdown tables: median seconds and the ratio (paired by round) with its 95 % interval."""
    options = results.get("dtype", "fp32") + (
        ", gradient checkpointing" if results.get("checkpointing") else ""
    )
    lines = [f"Machine: {results['machine']}.", f"Base {results['preset']}, batch 1, "
             f"{results['latent']}x{results['latent']} latents, {options}, adapters on the control targets."]  # fmt: skip
    if "training" in results:
        train = results["training"]
        lines += [
            "",
            f"{train['rounds']} timed rounds (order shuffled each round) after {results['warmup']} warm-up round(s).",
            "",
            f"| training step (fwd+bwd) | median s | vs {_short(train.get('baseline', BASELINE))} [95 % CI] "
            "| peak RSS above base, MiB "
            "| saved for backward, MiB | trainable numel |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in train["variants"].items():
            median = sorted(v["times_s"])[len(v["times_s"]) // 2]
            lines.append(f"| {name} | {median:.2f} | {_cell(v['ratio'])} | {v['peak_mib']:.0f} | "
                         f"{v['saved_mib']:.0f} | {v['trainable']:,} |")  # fmt: skip
    if "sampling" in results:
        sample = results["sampling"]
        lines += [
            "",
            f"| {results['sample_steps']}-step DDIM sampling | median s | vs plain [95 % CI] |",
            "|---|---|---|",
        ]
        for name, v in sample["variants"].items():
            median = sorted(v["times_s"])[len(v["times_s"]) // 2]
            lines.append(f"| {name} | {median:.2f} | {_cell(v['ratio'])} |")
    notes = [w for part in ("training", "sampling") if part in results
             for w in [busy_warning(results[part]["others_cpu"])] if w]  # fmt: skip
    return "\n".join(lines + [f"\nWarning: {n}" for n in notes])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--base",
        "--preset",
        dest="base",
        default="sd15",
        choices=sorted(PRESETS),
        help="UNet architecture (sd15, sd21, sdxl; the tiny presets: smoke tests) [default: %(default)s]",
    )
    p.add_argument(
        "--latent",
        type=int,
        default=None,
        help="latent side [default: the base's resolution / 8: 64 for SD1.5]",
    )
    p.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="frozen weights' and activations' dtype"
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the UNet's blocks in backward"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="training variants to time (default: all; names as printed)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of training steps")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of training steps (at least)")
    p.add_argument(
        "--max-repeats", type=int, default=8, help="more rounds until the ratios are known to +-3 %%"
    )
    p.add_argument(
        "--budget-s", type=float, default=900.0, help="no new training round after this many seconds"
    )
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps per sampling run")
    p.add_argument("--sample-repeats", type=int, default=2, help="timed sampling runs per variant")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
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
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = preset_config(args.base)["unet"]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    latent = args.latent or base_of(args.base).resolution // VAE_DOWNSAMPLE
    args.latent = latent
    print(f"building the {args.base} UNet with random weights ...", flush=True)
    unet = UNet2DConditionModel(**cfg).requires_grad_(False).to(dtype)
    unet.train()  # dropout is 0 in SD; train mode as in fine-tuning
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    g = torch.Generator().manual_seed(args.seed)
    shape = (1, cfg["in_channels"], latent, latent)
    cond = Conditioning(torch.randn(1, 77, cfg["cross_attention_dim"], generator=g))
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled embedding and size numbers
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        side = latent * VAE_DOWNSAMPLE
        cond = Conditioning(
            cond.context, torch.randn(1, pooled, generator=g), size_ids(1, (side, side), (0, 0), (side, side))
        )
    cond = cond.to(dtype=dtype)
    inputs = (
        torch.randn(shape, generator=g).to(dtype),
        torch.tensor([500]),
        cond,
        torch.randn(shape, generator=g).to(dtype),
    )
    info = machine_info(torch.device("cpu"))
    results = {"machine": describe(info), "machine_info": info, "preset": args.base, "latent": latent,
               "dtype": args.dtype, "checkpointing": args.gradient_checkpointing,
               "warmup": args.warmup, "sample_steps": args.sample_steps}  # fmt: skip
    if "training" in args.parts:
        print("training steps:", flush=True)
        results["training"] = bench_training(unet, inputs, args)
    if "sampling" in args.parts:
        unet.eval()
        print("sampling:", flush=True)
        results["sampling"] = bench_sampling(unet, cond, inputs[0], args)
    table = format_results(results)
    results["table"] = table
    atomic_write_json(args.out, results)
    print(table)
    return results


if __name__ == "__main__":
    main(parse_args())
