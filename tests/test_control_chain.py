"""The oft-control chain end to end on the tiny preset and the synthetic task, through the scripts' main():
build -> train (and as 2 DDP processes) -> kill and resume -> magnitude post-fitting -> parallel sampling.

Later stages (evaluation) extend ``chain`` : each step leaves its files in the run folder it returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import oft_layers
from oft.cli.control import eval_canny as evaluate_canny
from oft.cli.control import test_oft_parallel as sampler
from oft.cli.control import train
from oft.cli.control import train_with_norm as norm
from oft.common.images import read_rgb
from oft.control.checkpoint import load_control
from oft.control.inference import output_paths
from tests.helpers.control import REPO, initial_model, tiny_sd_file
from tests.helpers.numerics import tol

ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]
DATA = ["--control", "synthetic", "--resolution", "32", "--synthetic_length", "2"]  # one batch per epoch
TRAIN = [
    *ADAPTER,
    *DATA,
    "--batch_size",
    "2",
    "--num_workers",
    "0",
    "--accelerator",
    "cpu",
    "--lr",
    "1e-3",
    "--sample_every",
    "0",
    "--log_every",
    "1",
    "--save_every",
    "1",
]
SAMPLE = [
    *ADAPTER,
    *DATA,
    "--synthetic_length",
    "3",
    "--steps",
    "2",
    "--num_samples",
    "2",
    "--batch",
    "2",
    "--threads",
    "1",
]


def rotations(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in oft_layers.adapter_state_dict(load_control(path).sd.unet).items()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chain")
    base = tiny_sd_file(root)
    ini = initial_model(root, base, *ADAPTER)
    return {"root": root, "base": base, "ini": ini}


@pytest.fixture
def flop_rule_paths(monkeypatch):
    """OFT forwards chosen by the FLOP rule, here and in spawned workers: timing could pick the other (equally
    exact) forward in one process and not in another, and so another rounding."""
    monkeypatch.setenv("OFT_PATH_POLICY", "flops")
    previous = oft_layers.get_path_policy()
    oft_layers.set_path_policy("flops")
    yield
    oft_layers.set_path_policy(previous)


def run_train(chain, out: str, *extra: str) -> Path:
    return train.main(
        train.parse_args(
            [*TRAIN, "--model", str(chain["ini"]), "--output_dir", str(chain["root"] / out), *extra]
        )
    )


@pytest.mark.slow
@pytest.mark.numerics
def test_train_resume_postfit_and_sample(chain, flop_rule_paths):
    root = chain["root"]
    # --- uninterrupted: 2 steps (2 epochs of 1 batch), last.ckpt every step
    final = run_train(chain, "a", "--max_steps", "2", "--sample_every", "2", "--sample_steps", "1")
    grid = read_rgb(root / "a/samples/step_0000002.png")
    assert grid.shape == (
        3 * 34 + 2,
        2 * 34 + 2,
        3,
    )  # rows control/target/sample x 2 val items of 32 px, padding 2
    ckpt = torch.load(root / "a/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert set(ckpt["state_dict"]) == {f"unet.{k}" for k in rotations(chain["ini"])} | {
        f"hint.{k}" for k in load_control(chain["ini"]).hint.state_dict()
    }  # only what trains
    assert ckpt["oft_control"]["base_identity"] == load_control(chain["ini"]).sd.identity
    trained = load_control(final)
    assert trained.meta["task"] == "synthetic" and trained.meta["global_step"] == "2"
    for name, layer in oft_layers.oft_modules(trained.sd.unet):
        norms = torch.linalg.matrix_norm(layer.R, ord="fro")
        # inside the ball up to the rounding of a norm of b² entries (computed to project, and here)
        slack = 1 + tol(torch.float32, 2 * layer.block_size**2, worst_case=True)["rtol"]
        assert norms.max() > 0 and (norms <= layer.config.radius(layer.block_size) * slack).all(), name
    assert torch.count_nonzero(trained.hint.zero_conv.weight) > 0
    assert (root / "a/logs/csv/version_0/metrics.csv").is_file()

    # --- "killed" after 1 step, then resumed to 2: continues from the saved step and matches the uninterrupted run
    run_train(chain, "b", "--max_steps", "1")
    assert torch.load(root / "b/checkpoints/last.ckpt", weights_only=False)["global_step"] == 1
    resumed = run_train(chain, "b", "--max_steps", "2", "--resume", "auto")
    assert torch.load(root / "b/checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    expected = rotations(final)
    for key, value in rotations(resumed).items():  # exact: one process, the same kernels and thread count
        assert torch.equal(value, expected[key]), key

    # --- magnitude post-fitting: R frozen, only the scales move
    fitted = norm.main(norm.parse_args([*TRAIN, "--output_dir", str(root / "a"), "--max_steps", "1"]))
    post = load_control(fitted)
    scales = [layer.s for _, layer in oft_layers.oft_modules(post.sd.unet)]
    assert all(s is not None for s in scales) and any((s - 1).abs().max() > 0 for s in scales)
    for (name, a), (_, b) in zip(
        oft_layers.oft_modules(post.sd.unet), oft_layers.oft_modules(trained.sd.unet)
    ):
        assert torch.equal(a.R, b.R), name
    assert torch.equal(post.hint.zero_conv.weight, trained.hint.zero_conv.weight)

    # --- sampling: 2 CPU workers over all chunks == the two chunks run one by one (--img_ID 0, 1), byte for
    # byte: every process runs the same kernels with --threads 1 and the FLOP rule's OFT forwards
    parallel = sampler.main(
        sampler.parse_args(
            [*SAMPLE, "--output_dir", str(root / "a"), "--workers", "2", "--out_dir", str(root / "par")]
        )
    )
    for img_id in ("0", "1"):  # 3 items in chunks of 2: the last chunk is short
        sampler.main(
            sampler.parse_args(
                [*SAMPLE, "--output_dir", str(root / "a"), "--img_ID", img_id, "--out_dir", str(root / "one")]
            )
        )
    files = sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*.png"))
    assert files == sorted(
        p.relative_to(parallel).as_posix() for i in range(3) for p in output_paths(parallel, i, 2)
    )
    for rel in files:
        assert (parallel / rel).read_bytes() == (root / "one" / rel).read_bytes(), rel
    assert (parallel / "results/result_0_0.png").read_bytes() != (
        parallel / "results/result_0_1.png"
    ).read_bytes()
    stamp = (parallel / "results/result_2_1.png").stat().st_mtime_ns
    sampler.main(sampler.parse_args([*SAMPLE, "--output_dir", str(root / "a"), "--out_dir", str(parallel)]))
    assert (parallel / "results/result_2_1.png").stat().st_mtime_ns == stamp  # finished items are skipped
    with pytest.raises(
        ValueError, match=r"--img_ID 2 is out of range: 3 items in chunks of --batch 2 give ids 0\.\.1"
    ):
        sampler.main(sampler.parse_args([*SAMPLE, "--output_dir", str(root / "a"), "--img_ID", "2"]))

    # --- evaluation reads the sampler's layout (C2I here; the synthetic hint is the target's canny map)
    report = evaluate_canny.main(evaluate_canny.parse_args([str(parallel)]))
    assert report["images"] == 3 and 0 <= report["iou"] <= 1 and 0 <= report["f1"] <= 1
    assert (parallel / "eval_canny.json").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(chain):
    """Lightning DDP (gloo) with 2 processes, launched as the README does (the launcher re-runs the script)."""
    out = chain["root"] / "ddp"
    cmd = [
        sys.executable,
        str(REPO / "oft-control/train.py"),
        *TRAIN,
        "--model",
        str(chain["ini"]),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--devices",
        "2",
        "--strategy",
        "ddp",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    model = load_control(out / "control_final.safetensors")
    assert any(layer.R.abs().max() > 0 for _, layer in oft_layers.oft_modules(model.sd.unet))


def test_resume_refuses_another_base_and_missing_files_are_named(chain, tmp_path):
    run_train(chain, "c", "--max_steps", "1")
    other = initial_model(tmp_path, tiny_sd_file(tmp_path, seed=1), *ADAPTER)
    with pytest.raises(ValueError, match=r"last\.ckpt was trained with another base SD .*--resume none"):
        train.main(
            train.parse_args(
                [*TRAIN, "--model", str(other), "--output_dir", str(chain["root"] / "c"), "--max_steps", "2"]
            )
        )
    with pytest.raises(ValueError, match=r"was built with --r=4, not 2"):
        train.main(train.parse_args([*TRAIN, "--r", "2", "--model", str(chain["ini"])]))
    with pytest.raises(FileNotFoundError, match=r"control model not found: .*nope\.ckpt; build one with"):
        train.main(train.parse_args([*TRAIN, "--model", str(tmp_path / "nope.ckpt")]))
    with pytest.raises(FileNotFoundError, match=r"--resume .*x\.ckpt: no such checkpoint"):
        run_train(chain, "d", "--resume", str(tmp_path / "x.ckpt"))
