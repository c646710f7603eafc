"""Fig. 1's data-efficiency ablation: ablation_segm's training set (the first N ADE20K items, 100 times over), the
refusals of --n_samples, and the sweep train -> sample -> evaluate per N on the tiny preset, resumed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from oft.cli.control import ablation_segm as sweep
from oft.cli.control import test_oft_parallel as sampler
from oft.cli.control import train
from oft.cli.flags import flags_of
from oft.control.checkpoint import load_control
from oft.control.config import Experiment, Sampling, Training
from oft.control.data import ControlDataset, build_dataset
from oft.specs.tasks import TASKS
from tests.helpers.control import initial_model, make_task_tree, tiny_sd_file
from tests.helpers.metrics import save

ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]


def test_the_training_set_is_the_first_n_items_repeated_and_validation_is_segms(tmp_path):
    captions = make_task_tree(tmp_path, "segm", 5, size=16)
    val = make_task_tree(tmp_path, "segm", 2, size=16, split="val", full=True)
    run = Experiment(control="ablation_segm", n_samples=3, data_root=str(tmp_path), resolution=16)
    train_set = run.dataset("train")
    assert TASKS["ablation_segm"].repeats.value == 100  # datasets/ade20k_dataset.py:68
    assert len(train_set) == 300  # an epoch: 3 items x 100
    assert [train_set[i]["txt"] for i in (0, 1, 2, 3, 100, 299)] == captions[:3] * 2  # item i: entry i % 3
    assert {train_set[i]["index"] for i in range(0, 300, 7)} == {0, 1, 2}
    assert torch.equal(train_set[202]["jpg"], ControlDataset("segm", "train", tmp_path, 16)[1]["jpg"])
    assert run.name == "ablation_segm_n3_r4_oft"  # one run folder per N
    full = run.dataset("val", full=True)  # what the sampler reads: segm's full validation list
    assert [full[i]["txt"] for i in range(len(full))] == val
    with pytest.raises(
        ValueError, match=r"--n_samples 6 is more than the 5 items of .*prompt_train_blip\.json"
    ):
        Experiment(control="ablation_segm", n_samples=6, data_root=str(tmp_path)).dataset("train")


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--control", "segm", "--n_samples", "3"],
            "--n_samples sets the training-set size of --control ablation_segm only",
        ),
        (["--control", "synthetic", "--n_samples", "3"], "not --control synthetic"),
        (["--control", "ablation_segm"], r"--control ablation_segm needs --n_samples N >= 1 \(got None\)"),
        (["--control", "ablation_segm", "--n_samples", "0"], r"needs --n_samples N >= 1 \(got 0\)"),
    ],
)
def test_n_samples_is_refused_where_it_does_not_belong_and_required_where_it_does(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if ": error: " in line]  # after argparse's usage lines
    assert exit_.value.code == 2 and errors == [err[-1]] and re.search(message, err[-1]), err[-1]


def test_the_dataset_refuses_n_samples_too():
    with pytest.raises(ValueError, match="ablation_segm only"):
        build_dataset("segm", "train", n_samples=2)
    with pytest.raises(ValueError, match="needs --n_samples"):
        build_dataset("ablation_segm", "train")


def test_the_printed_flags_rebuild_the_configs():
    """--dry-run prints commands from ``flags_of``: parsed again, they give the same configs."""
    run = Experiment(control="ablation_segm", n_samples=5, r=8, coft=True, data_root="/d", output_dir="/o/n5")
    training = Training(batch_size=2, timestep_range=(400, 900), gradient_checkpointing=True, sample_every=0)
    sampling = Sampling(full=False, steps=3, bare_prompt=True)
    assert flags_of(Training()) == [] and flags_of(sampling) == ["--steps", "3", "--bare_prompt", "--no-full"]
    args = train.parse_args([*flags_of(run), *flags_of(training)])
    assert (args.experiment, args.training) == (run, training)
    args = sampler.parse_args([*flags_of(run), *flags_of(sampling)])
    assert (args.experiment, args.sampling) == (run, sampling)


class ZeroSegmenter:
    """Predicts class 0 everywhere; ``calls`` counts the images it segmented."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
        self.calls += 1
        return np.zeros(out_size, np.int64)


def test_the_sweep_trains_samples_and_scores_each_n_then_reuses_finished_ones(tmp_path, capsys):
    data = tmp_path / "data"
    make_task_tree(data, "segm", 3, size=32)
    make_task_tree(data, "segm", 2, size=32, split="val", full=True)
    for i in range(2):  # ADE20K annotations of the 2 validation items: half 1 (class 0), half 2 (class 1)
        save(data / f"ADE20K/val/annotations/{i}.png", np.array([[1, 1], [2, 2]], np.uint8))
    ini = initial_model(tmp_path, tiny_sd_file(tmp_path), *ADAPTER)
    out = tmp_path / "sweep"
    flags = [
        *ADAPTER,
        "--model",
        str(ini),
        "--data-root",
        str(data),
        "--resolution",
        "32",
        "--n_samples",
        "2",
        "1",
    ]
    flags += ["--output_dir", str(out), "--batch_size", "2", "--num_workers", "0", "--accelerator", "cpu"]
    flags += ["--max_steps", "2", "--save_every", "1", "--steps", "2", "--num_samples", "1", "--batch", "2"]
    flags += ["--workers", "1", "--threads", "1"]

    segmenter = ZeroSegmenter()
    paths = sweep.main(sweep.parse_args(flags), segmenter=segmenter)
    assert paths == [str(out / "fig1.json"), str(out / "fig1.md")] and segmenter.calls == 4  # 2 N x 2 images
    table = json.loads((out / "fig1.json").read_text())
    assert [(r["n_samples"], r["items"], r["images"]) for r in table["rows"]] == [(1, 100, 2), (2, 200, 2)]
    assert all(r["mIoU"] == pytest.approx(25.0) and r["aAcc"] == pytest.approx(50.0) for r in table["rows"])
    assert table["adapter"]["coft"] is True
    assert (
        "| 1 | 100 | 25.00 | 50.00 | 50.00 | 2 |" in (out / "fig1.md").read_text()
        and "paper Table 2" in (out / "fig1.md").read_text()
    )
    for n in (1, 2):
        trained = load_control(out / f"n{n}/control_final.safetensors")
        assert trained.meta["task"] == "ablation_segm" and trained.meta["global_step"] == "2"
        report = json.loads((out / f"n{n}/generated/eval_segm.json").read_text())
        assert report["n_samples"] == n and report["images"] == 2
    assert not (out / "n1/samples").exists()  # sample_every 0: no grids (the reference's logger_freq 1e11)

    # --- rerun: every N finished, nothing trains, samples or scores
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name != out.name}
    assert sweep.main(sweep.parse_args([*flags, "--dry-run"])) == []
    assert "every N is finished" in capsys.readouterr().out
    sweep.main(sweep.parse_args(flags), segmenter=segmenter)
    assert segmenter.calls == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --- N = 2 lost its report: it is scored again, neither retrained nor resampled
    (out / "n2/generated/eval_segm.json").unlink()
    commands = sweep.main(sweep.parse_args([*flags, "--dry-run"]))
    assert [c.split()[1] for c in commands] == [
        "oft-control/test_oft_parallel.py",
        "oft-control/eval_segm.py",
    ]
    assert "--n_samples 2" in commands[0] and f"--output_dir {out / 'n2'}" in commands[0]
    sweep.main(sweep.parse_args(flags), segmenter=segmenter)
    assert segmenter.calls == 6 and (out / "n2/generated/eval_segm.json").is_file()
    model, result = out / "n2/control_final.safetensors", out / "n2/generated/results/result_1_0.png"
    assert model.stat().st_mtime_ns == stamps[model] and result.stat().st_mtime_ns == stamps[result]

    with pytest.raises(ValueError, match="one device: for DDP run the per-N commands that --dry-run prints"):
        sweep.main(sweep.parse_args([*flags, "--n_samples", "3", "--devices", "2"]), segmenter=segmenter)
    with pytest.raises(ValueError, match=r"n1/control_final\.safetensors was built with --r=4, not 2"):
        sweep.main(
            sweep.parse_args([*flags, "--r", "2"]), segmenter=segmenter
        )  # another adapter, same folder
