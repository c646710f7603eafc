"""Layer-level cost of OFT at Stable Diffusion 1.5 shapes: forward+backward time as a ratio to the frozen layer.

Each shape runs in a child process with a timeout. Inside it every variant is timed once per round, in a fresh
random order, and divided by the frozen layer's time of the same round; rounds go on until every ratio's 95 %
bootstrap interval is within +-2 % (or a round/time budget is spent). A duplicate of the frozen layer is the
control: its ratio must read 1.00. PEFT's OFT with its exact Cayley solve runs in a child of its own, because
batched LU on CPU can hang (PyTorch issue 142815, SPEC §8); if it does, its row says "skipped".

Run: ``make bench`` or ``python bench/bench_layers.py --help``; ``MKL_ENABLE_INSTRUCTIONS=AVX2 ...`` (or ``--mkl
AVX2``) measures with GEMM kernels one level below an AVX-512 machine's best.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from torch import nn

from oft.common.files import atomic_write_bytes, atomic_write_json
from oft.common.timing import (
    SavedForBackward,
    Traffic,
    busy_warning,
    describe,
    interleaved,
    machine_info,
    run_child,
)
from oft_layers import OFTLinear, use_path_policy

# (name, in, out, tokens): SD1.5 at 512 px, batch 2 (64x64, 32x32, 16x16 latents; 77 text tokens)
SHAPES = [
    ("attn 320 @ 2x4096", 320, 320, 2 * 4096),
    ("attn 640 @ 2x1024", 640, 640, 2 * 1024),
    ("attn 1280 @ 2x256", 1280, 1280, 2 * 256),
    ("text k/v 768->320 @ 2x77", 768, 320, 2 * 77),
    ("text k/v 768->1280 @ 2x77", 768, 1280, 2 * 77),
    ("GEGLU 320->2560 @ 2x4096", 320, 2560, 2 * 4096),
]
BASELINE, CONTROL = "frozen Linear", "frozen Linear (control copy)"
OURS = ("OFT weight-centric", "OFT input-centric")
MEASURED = "OFT auto, policy measure"  # the same layer, its way timed where the FLOP rule is unsure
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _perturb(module: nn.Module, std: float = 1e-3) -> nn.Module:
    """Trained-looking adapter parameters (not the identity); timing does not depend on them otherwise."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return module


def _peft_layer(base: nn.Linear, config) -> nn.Module:
    import peft

    seq = nn.Sequential(copy.deepcopy(base))
    peft.inject_adapter_in_model(config, seq)
    return _perturb(seq[0])  # the adapted layer itself, without a PeftModel wrapper's Python overhead


def variants(base: nn.Linear, r: int, group: str) -> dict[str, nn.Module]:
    """The layers timed together: ``group`` "main" (ours, the reference-style rebuild, PEFT's safe settings)
    or "peft-exact" (PEFT's OFT with its exact, batched Cayley solve, which may hang on CPU)."""
    frozen = copy.deepcopy(base).requires_grad_(False)
    out: dict[str, nn.Module] = {BASELINE: frozen}
    if group == "peft-exact":
        import peft

        cfg = peft.OFTConfig(r=r, oft_block_size=0, target_modules=["0"], use_cayley_neumann=False)
        out[f"PEFT OFT r={r} exact Cayley"] = _peft_layer(base, cfg)
        return out
    out[CONTROL] = copy.deepcopy(frozen)
    for path, label in [("auto", "OFT auto"), ("auto", MEASURED), ("weight", OURS[0]), ("input", OURS[1]),
                        ("dense", "reference-style dense")]:  # fmt: skip
        out[label] = _perturb(OFTLinear(copy.deepcopy(base), r=r, path=path))
    try:
        import peft
    except ImportError:
        return out
    out["PEFT LoRA r=4"] = _peft_layer(base, peft.LoraConfig(r=4, target_modules=["0"]))
    cfg = peft.OFTConfig(r=r, oft_block_size=0, target_modules=["0"])  # PEFT's default: Cayley-Neumann
    out[f"PEFT OFT r={r} Neumann"] = _peft_layer(base, cfg)
    return out


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward (activation memory added by the layer)."""
    with SavedForBackward() as saved:
        module(x)
    return saved.bytes


def child(args: argparse.Namespace) -> dict:
    """Time one shape's group of variants in this process; the JSON result the parent reads."""
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    name, d_in, d_out, tokens = SHAPES[args.child]
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out).to(device, dtype)
    layers = {k: v.to(device) for k, v in variants(base, args.r, args.group).items()}
    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)  # deep in a network
    gy = torch.randn(tokens, d_out, device=device, dtype=dtype)

    def step(layer: nn.Module, policy: str = "flops"):
        def run():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            with use_path_policy(policy):
                layer(x).backward(gy)

        return run

    steps = {k: step(m, "measure" if k == MEASURED else "flops") for k, m in layers.items()}
    res = interleaved(steps, BASELINE, device, min_rounds=args.min_rounds,
                      max_rounds=args.max_rounds, budget_s=args.budget_s, seed=args.child)  # fmt: skip
    rows = []
    for key, layer in layers.items():
        med, lo, hi = res["ratio"][key]
        times = sorted(res["times_s"][key])
        with Traffic() as traffic:  # one more call, untimed: what it computes and moves, on any machine
            steps[key]()
        row = {"variant": key, "ratio": med, "lo": lo, "hi": hi, "median_ms": times[len(times) // 2] * 1e3,
               "saved_MiB": saved_bytes(layer, x) / 2**20, "gflop": traffic.flops / 1e9,
               "moved_MiB": traffic.bytes / 2**20}  # fmt: skip
        if key in ("OFT auto", MEASURED):
            with use_path_policy("measure" if key == MEASURED else "flops"):
                row["resolves_to"] = layer.choose_path(x)
        rows.append(row)
    return {"shape": name, "rounds": res["rounds"], "others_cpu": res["others_cpu"], "machine": machine_info(device),
            "rows": rows}  # fmt: skip


def checks(shape: dict) -> list[str]:
    """The claims this benchmark exists to test, read off one shape's rows (empty when all hold)."""
    by = {row["variant"]: row for row in shape["rows"]}
    notes = []
    control = by.get(CONTROL)
    if control and not control["lo"] <= 1.0 <= control["hi"] and abs(control["ratio"] - 1) > 0.02:
        notes.append(f"control copy reads {control['ratio']:.3f}: too noisy to read differences of that size")
    if "OFT auto" in by and all(k in by for k in OURS):
        best = min(by[k]["ratio"] for k in OURS)
        if by["OFT auto"]["ratio"] > 1.10 * best:
            notes.append(
                f"OFT auto {by['OFT auto']['ratio']:.2f}x is more than 10 % above our best {best:.2f}x"
            )
        if "reference-style dense" in by and by["OFT auto"]["ratio"] >= by["reference-style dense"]["ratio"]:
            notes.append("OFT auto is not faster than the reference-style dense rebuild")
    return notes


def format_table(results: dict) -> str:
    """A Markdown table: median ratio to the frozen layer with its 95 % interval, time, FLOPs and bytes moved per
    call (``Traffic``: machine-independent), activation memory saved for backward."""
    lines = [
        f"Machine: {results['machine']}. OFT r={results['r']}, {results['dtype']}, forward+backward with the "
        "input requiring grad. Ratio = median over rounds of (variant / frozen layer, same round) [95 % "
        "bootstrap interval]; order randomised each round.",
        "",
        "| shape | variant | x frozen [95 % CI] | median ms | GFLOP | MiB moved | saved MiB | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in results["shapes"]:
        others = shape.get("others_cpu")
        busy = "" if others is None else f" (others {others:.1%} CPU)"
        for row in shape["rows"]:
            if "skipped" in row:
                lines.append(f"| {shape['shape']} | {row['variant']} | skipped: {row['skipped']} | | | | | |")
                continue
            label = row["variant"] + (f" (→ {row['resolves_to']})" if "resolves_to" in row else "")
            lines.append(
                f"| {shape['shape']} | {label} | {row['ratio']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}] | "
                f"{row['median_ms']:.2f} | {row['gflop']:.2f} | {row['moved_MiB']:.1f} | {row['saved_MiB']:.1f} | "
                f"{row.get('rounds', shape['rounds'])}"
                f"{busy if row['variant'] == BASELINE else ''} |"
            )
    notes = [f"- {s['shape']}: {n}" for s in results["shapes"] for n in s.get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else ["", "All checks hold (see `checks`)."]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--r", type=int, default=4, help="number of OFT blocks (paper default 4)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="model and activation dtype")
    p.add_argument("--shapes", nargs="*", type=int, help="indices into the shape list (default: all)")
    p.add_argument("--min-rounds", type=int, default=15, help="rounds before the interval may stop the run")
    p.add_argument("--max-rounds", type=int, default=80, help="at most this many rounds per shape")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop adding rounds to a shape after this")
    p.add_argument("--timeout-s", type=float, default=300.0, help="a shape's child is killed after this")
    p.add_argument("--peft-exact-timeout-s", type=float, default=60.0, help="the same for PEFT's exact OFT")
    p.add_argument("--mkl", help="set MKL_ENABLE_INSTRUCTIONS in the children (e.g. AVX2)")
    p.add_argument("--out", default="bench/results/layers.json", help="JSON results (a .md table beside it)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--group", default="main", choices=["main", "peft-exact"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    if args.child is not None:
        print(json.dumps(child(args)))
        return {}
    env = {"MKL_ENABLE_INSTRUCTIONS": args.mkl} if args.mkl else {}
    common = ["--r", str(args.r), "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
              "--min-rounds", str(args.min_rounds), "--max-rounds", str(args.max_rounds),
              "--budget-s", str(args.budget_s)]  # fmt: skip
    shapes, machine = [], None
    indices = args.shapes if args.shapes else range(len(SHAPES))
    for i in indices:
        print(f"{SHAPES[i][0]} ...", flush=True)
        result, why = run_child([__file__, "--child", str(i), *common], args.timeout_s, env)
        if result is None:
            shapes.append({"shape": SHAPES[i][0], "rounds": 0, "rows": [{"variant": "all", "skipped": why}]})
            continue
        machine = machine or result["machine"]
        peer, why = run_child([__file__, "--child", str(i), "--group", "peft-exact", *common],
                              args.peft_exact_timeout_s, env)  # fmt: skip
        if peer is None:
            result["rows"].append({"variant": f"PEFT OFT r={args.r} exact Cayley", "skipped": why})
        else:  # measured against the frozen layer of its own child
            row = next(r for r in peer["rows"] if r["variant"] != BASELINE)
            result["rows"].append({**row, "rounds": peer["rounds"]})
        result["notes"] = checks(result) + [w for w in [busy_warning(result["others_cpu"])] if w]
        shapes.append(result)
        for row in result["rows"]:
            ratio = (
                f"skipped: {row['skipped']}"
                if "skipped" in row
                else (f"{row['ratio']:.2f}x [{row['lo']:.2f}, {row['hi']:.2f}]  {row['median_ms']:.2f} ms")
            )
            print(f"  {row['variant']:34} {ratio}", flush=True)
        for note in result["notes"]:
            print(f"  ! {note}", flush=True)
    results = {"machine": describe(machine) if machine else "unknown (every shape failed)",
               "machine_info": machine, "r": args.r, "dtype": args.dtype, "shapes": shapes}  # fmt: skip
    table = format_table(results)
    out = atomic_write_json(args.out, results)
    atomic_write_bytes(out.with_suffix(".md"), (table + "\n").encode())
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main(parse_args())
