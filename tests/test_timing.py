"""The benchmark machinery (oft.common.timing) and the layer benchmark's bookkeeping, without timing anything real.

No assertion here reads a clock: the statistics get known inputs, the interleaving is checked by the order of
calls, and the child runner by what a child prints, how it fails, and that a hung child is killed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench import bench_layers as bench_layers_cli
from oft.common import timing
from tests.helpers import REPO


def test_median_ratio_known_answers():
    assert timing.median_ratio([1.5] * 9) == (1.5, 1.5, 1.5)
    med, lo, hi = timing.median_ratio([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    assert med == 1.3 and 1.0 <= lo <= med <= hi <= 1.6
    # more rounds of the same spread: a narrower interval
    _, lo_wide, hi_wide = timing.median_ratio([1.0, 1.4] * 5, seed=1)
    _, lo_tight, hi_tight = timing.median_ratio([1.0, 1.4] * 200, seed=1)
    assert hi_tight - lo_tight <= hi_wide - lo_wide


def test_interleaved_times_every_variant_every_round_in_shuffled_order():
    calls: list[str] = []
    variants = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    res = timing.interleaved(variants, "a", torch.device("cpu"), min_rounds=6, max_rounds=6, warmup=1, seed=3)
    assert res["rounds"] == 6 and all(len(t) == 6 for t in res["times_s"].values())
    assert res["ratio"]["a"] == (1.0, 1.0, 1.0)  # the baseline against itself, round by round
    rounds = [tuple(calls[i : i + 4]) for i in range(4, len(calls), 4)]  # after the warm-up round
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 1  # shuffled each round
    assert res["others_cpu"] is None or res["others_cpu"] >= 0


def test_busy_warning_names_the_share_of_the_cpu():
    assert timing.busy_warning(0.01) is None and timing.busy_warning(None) is None
    assert "51%" in timing.busy_warning(0.51)


def test_run_child_reads_json_and_reports_crashes_and_hangs():
    ok, why = timing.run_child(["-c", "print('noise'); print('{\"x\": 1}')"], timeout_s=60)
    assert ok == {"x": 1} and why == ""
    failed, why = timing.run_child(["-c", "import sys; sys.exit('broken peer')"], timeout_s=60)
    assert failed is None and why == "exit 1: broken peer"
    hung, why = timing.run_child(["-c", "import time; time.sleep(60)"], timeout_s=1)
    assert hung is None and why == "timed out after 1 s"


def test_machine_info_names_the_kernels_in_use(monkeypatch):
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    info = timing.machine_info(torch.device("cpu"))
    assert info["mkl_enable_instructions"] == "AVX2"
    assert info["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads() and info["cpu"]
    assert "MKL_ENABLE_INSTRUCTIONS AVX2" in timing.describe(info)


# ---------------------------------------------------------------------------------------------------- layers bench
@pytest.fixture
def bench(monkeypatch):
    threads = torch.get_num_threads()  # the bench's child sets the thread count: restore it for other tests
    module = bench_layers_cli
    monkeypatch.setattr(module, "SHAPES", [("tiny 32 @ 48", 32, 32, 48)])
    yield module
    torch.set_num_threads(threads)


def test_layer_bench_child_times_every_variant_and_reports_the_auto_choice(bench):
    args = bench.parse_args(["--child", "0", "--min-rounds", "3", "--max-rounds", "3", "--threads", "1"])
    result = bench.child(args)
    names = [row["variant"] for row in result["rows"]]
    assert names[:2] == [bench.BASELINE, bench.CONTROL] and "OFT auto" in names and "PEFT LoRA r=4" in names
    rows = {row["variant"]: row for row in result["rows"]}
    assert rows[bench.BASELINE]["ratio"] == 1.0 and rows["OFT auto"]["resolves_to"] in ("weight", "input")
    assert result["rounds"] == 3 and result["machine"]["threads"] == 1
    assert all(row["saved_MiB"] > 0 for row in result["rows"])  # x is saved by every variant


def test_layer_bench_checks_flag_the_claims_that_fail(bench):
    def row(name, ratio, lo=None, hi=None):
        return {"variant": name, "ratio": ratio, "lo": lo or ratio, "hi": hi or ratio}

    good = {"rows": [row(bench.CONTROL, 1.01, 0.98, 1.03), row("OFT auto", 1.3), row(bench.OURS[0], 1.3),
                     row(bench.OURS[1], 1.6), row("reference-style dense", 1.7)]}  # fmt: skip
    assert bench.checks(good) == []
    bad = {"rows": [row(bench.CONTROL, 1.08, 1.05, 1.12), row("OFT auto", 1.6), row(bench.OURS[0], 1.3),
                    row(bench.OURS[1], 1.4), row("reference-style dense", 1.5)]}  # fmt: skip
    notes = bench.checks(bad)
    assert len(notes) == 3 and "control copy reads 1.080" in notes[0] and "10 %" in notes[1]


def test_layer_bench_reports_a_hung_peer_as_skipped(bench, monkeypatch, tmp_path):
    def fake_child(argv, timeout_s, env=None):
        if "peft-exact" in argv:
            return None, f"timed out after {timeout_s:.0f} s"
        return bench.child(bench.parse_args([*argv[1:], "--min-rounds", "2", "--max-rounds", "2"])), ""

    monkeypatch.setattr(bench, "run_child", fake_child)
    results = bench.main(bench.parse_args(["--threads", "1", "--out", str(tmp_path / "l.json")]))
    skipped = [r for r in results["shapes"][0]["rows"] if "skipped" in r]
    assert [r["skipped"] for r in skipped] == ["timed out after 60 s"]
    assert "skipped: timed out after 60 s" in (tmp_path / "l.md").read_text()


def test_layer_bench_help_runs():
    script = REPO / "bench" / "bench_layers.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "--mkl" in out.stdout and "PyTorch issue 142815" in out.stdout


def test_traffic_counts_matmul_flops_and_operand_bytes():
    a, b = torch.randn(6, 4), torch.randn(4, 5)
    with timing.Traffic() as t:
        a @ b  # 6x4 @ 4x5: 2*6*4*5 FLOPs; reads 24 + 20, writes 30 floats
        a.t().contiguous()  # a view (free), then a copy: reads and writes 24 floats
        torch.empty(1000)  # allocation is not traffic
    assert t.flops == 2 * 6 * 4 * 5
    assert t.bytes == 4 * (24 + 20 + 30) + 4 * (24 + 24)
    out = torch.empty(6, 5)
    with timing.Traffic() as t:
        torch.mm(a, b, out=out)  # the out= buffer is written, not read
    assert t.bytes == 4 * (24 + 20 + 30)


def test_saved_for_backward_counts_what_autograd_keeps():
    a = torch.randn(3, 4, requires_grad=True)
    with timing.SavedForBackward() as saved:
        a.exp()  # exp keeps its result (12 floats) for the backward
    assert saved.bytes == 12 * 4
    with timing.SavedForBackward() as saved, torch.no_grad():
        a.exp()  # nothing is kept without autograd
    assert saved.bytes == 0
