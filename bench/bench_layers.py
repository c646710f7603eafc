"""Layer-level cost of OFT at Stable Diffusion 1.5 shapes: forward+backward time and saved activation memory.

Every variant of one shape is timed in the same process, round-robin, so the ratios to the frozen layer are
comparable even on a noisy machine. Run: ``make bench`` or ``python bench/bench_layers.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from oft_layers import OFTLinear

# (name, in, out, tokens): SD1.5 at 512 px, batch 2 (64x64, 32x32, 16x16 latents; 77 text tokens)
SHAPES = [
    ("attn 320 @ 2x4096", 320, 320, 2 * 4096),
    ("attn 640 @ 2x1024", 640, 640, 2 * 1024),
    ("attn 1280 @ 2x256", 1280, 1280, 2 * 256),
    ("text k/v 768->320 @ 2x77", 768, 320, 2 * 77),
    ("text k/v 768->1280 @ 2x77", 768, 1280, 2 * 77),
    ("GEGLU 320->2560 @ 2x4096", 320, 2560, 2 * 4096),
]


class LoRALinear(nn.Module):
    """Rank-r LoRA of a frozen Linear (``y = base(x) + B A x``), the usual baseline; used when peft is absent."""

    def __init__(self, base: nn.Linear, rank: int = 4) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T) @ self.B.T


def variants(base: nn.Linear, r: int) -> dict[str, nn.Module]:
    """The layers compared for one shape, each with its own trainable parameters and a frozen copy of W."""
    frozen = copy.deepcopy(base).requires_grad_(False)
    out: dict[str, nn.Module] = {"frozen Linear": frozen}
    for path, label in [("auto", "OFT auto"), ("weight", "OFT weight-centric"), ("input", "OFT input-centric"),
                        ("dense", "reference-style dense")]:
        layer = OFTLinear(copy.deepcopy(base), r=r, path=path)
        with torch.no_grad():
            layer.R.normal_(0, 1e-3)  # a trained-looking rotation, not the identity
        out[label] = layer
    try:
        import peft

        seq = nn.Sequential(copy.deepcopy(base))
        out["PEFT LoRA r=4"] = peft.get_peft_model(seq, peft.LoraConfig(r=4, target_modules=["0"]))
        seq = nn.Sequential(copy.deepcopy(base))
        oft = peft.OFTConfig(r=r, oft_block_size=0, target_modules=["0"], use_cayley_neumann=False)
        out[f"PEFT OFT r={r}"] = peft.get_peft_model(seq, oft)
    except ImportError:
        out["LoRA r=4"] = LoRALinear(copy.deepcopy(base))
    return out


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward (activation memory added by the layer)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


def step(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).backward(gy)


def bench_shape(name, d_in, d_out, tokens, r, repeats, device) -> list[dict]:
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out).to(device)
    layers = {k: v.to(device) for k, v in variants(base, r).items()}
    x = torch.randn(tokens, d_in, device=device, requires_grad=True)  # the input of a layer deep in a network
    gy = torch.randn(tokens, d_out, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in layers}
    for _ in range(2):  # warm-up
        for layer in layers.values():
            step(layer, x, gy)
    for _ in range(repeats):
        for key, layer in layers.items():
            sync()
            t0 = time.perf_counter()
            step(layer, x, gy)
            sync()
            times[key].append(time.perf_counter() - t0)
    frozen = statistics.median(times["frozen Linear"])
    rows = []
    for key, layer in layers.items():
        med = statistics.median(times[key])
        rows.append({"shape": name, "variant": key, "median_ms": med * 1e3, "ratio_to_frozen": med / frozen,
                     "saved_MiB": saved_bytes(layer, x) / 2**20})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--r", type=int, default=4, help="number of OFT blocks (paper default 4)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per variant (median reported)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="*", type=int, help="indices into the shape list (default: all)")
    p.add_argument("--out", default="bench/results/layers.json", help="where the JSON results go")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    rows = []
    print(f"OFT r={args.r}, fp32, forward+backward, median of {args.repeats}; machine: {machine}; {date.today()}")
    print(f"{'shape':28} {'variant':24} {'ms':>9} {'x frozen':>9} {'saved MiB':>10}")
    for shape in shapes:
        for row in bench_shape(*shape, args.r, args.repeats, device):
            rows.append(row)
            print(f"{row['shape']:28} {row['variant']:24} {row['median_ms']:9.2f} {row['ratio_to_frozen']:9.2f} "
                  f"{row['saved_MiB']:10.1f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "date": str(date.today()), "torch": torch.__version__,
                               "r": args.r, "rows": rows}, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
