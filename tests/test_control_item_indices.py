"""Validation items keep their indices: item i is line i of the caption file from the reader through the sampler
to every evaluator. An unreadable item stops the sampler with its index and file, or (--skip-unreadable) is
recorded in excluded/ and reported by every evaluator; it never lets another item take its place. Also the
evaluators' one-line errors when the folder and the caption file disagree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from oft.cli.control import eval_canny, eval_landmark
from oft.cli.control import test_oft_parallel as sampler
from oft.common.images import read_rgb
from oft.control.data import ControlDataset, UnreadableItemError
from oft.metrics.folder import excluded_note, open_sample_folder
from oft.specs import synthetic
from oft.specs.tasks import TASKS
from tests.helpers.control import REPO, initial_model, tiny_sd_file

ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]
SIZE = 32


def write_val_tree(root: Path, n: int, task_name: str = "segm") -> list[tuple[Path, Path]]:
    """``n`` distinct synthetic items as the task's full validation list; returns (hint, target) paths."""
    task = TASKS[task_name]
    entries, paths = [], []
    for i in range(n):
        target, caption, controls, _ = synthetic.make_item(i, 0, SIZE)
        entry = {"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": caption}
        hint_rel, target_rel = task.item_files(entry, "val")
        for rel, rgb in ((hint_rel, controls["segm"]), (target_rel, target)):
            path = root / task.dataset_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        entries.append(entry)
        paths.append((root / task.dataset_dir / hint_rel, root / task.dataset_dir / target_rel))
    captions = root / task.caption_file("val", full=True)
    captions.parent.mkdir(parents=True, exist_ok=True)
    captions.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return paths


def test_validation_items_keep_their_index_when_a_file_is_bad(tmp_path):
    paths = write_val_tree(tmp_path, 3)
    paths[0][0].write_bytes(b"not a png")  # segm/0.png undecodable
    paths[2][1].unlink()  # target of item 2 missing
    ds = ControlDataset("segm", "val", tmp_path, resolution=SIZE, full=True)
    assert len(ds) == 3  # nothing dropped: item i stays caption line i
    with pytest.raises(
        UnreadableItemError, match=r"item 0 of .*prompt_val_blip_full\.json: cannot decode .*0\.png"
    ):
        ds[0]
    with pytest.raises(UnreadableItemError, match=r"item 2 of .*: missing file .*2\.png") as err:
        ds[2]
    assert err.value.index == 2 and err.value.path == paths[2][1]
    expected = cv2.cvtColor(cv2.imread(str(paths[1][1])), cv2.COLOR_BGR2RGB)
    got = ((ds[1]["jpg"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert ds[1]["index"] == 1 and np.array_equal(got, expected)  # item 1 is item 1's files


@pytest.fixture(scope="module")
def control_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    return initial_model(root, tiny_sd_file(root), *ADAPTER)


def sample_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *ADAPTER,
        "--control",
        "segm",
        "--data_root",
        str(data),
        "--resolution",
        str(SIZE),
        "--model",
        str(model),
        "--output_dir",
        str(out.parent / "run"),
        "--out_dir",
        str(out),
        "--steps",
        "1",
        "--num_samples",
        "1",
        "--batch",
        "2",
        "--threads",
        "1",
        *extra,
    ]


def test_sampler_stops_on_an_unreadable_item_and_can_skip_and_record_it(control_model, tmp_path):
    paths = write_val_tree(tmp_path / "data", 3)
    paths[0][0].write_bytes(b"not a png")  # the case: segm/0.png cannot be decoded
    out = tmp_path / "generated"
    with pytest.raises(
        UnreadableItemError, match=r"1 of 3 items to sample cannot be read, first item 0 .*--skip-unreadable"
    ):
        sampler.main(sampler.parse_args(sample_args(control_model, tmp_path / "data", out)))
    assert not list(out.rglob("*.png"))  # stopped before sampling anything

    sampler.main(sampler.parse_args(sample_args(control_model, tmp_path / "data", out, "--skip-unreadable")))
    assert not (out / "source/image_0.png").exists() and not (out / "hints/hint_0.png").exists()
    for i in (1, 2):  # every other item under its own index, with its own target
        target = cv2.cvtColor(cv2.imread(str(paths[i][1])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(read_rgb(out / f"source/image_{i}.png"), target)
    record = json.loads((out / "excluded/item_0.json").read_text())
    assert record["index"] == 0 and "cannot decode" in record["reason"] and "0.png" in record["reason"]

    # every evaluator reads the record: the report lists it, the printout says so, the scores skip it
    report = eval_canny.main(eval_canny.parse_args([str(out)]))
    assert report["excluded"] == [0] and report["images"] == 2
    folder = open_sample_folder(out)
    assert folder.indices == (1, 2) and set(folder.excluded) == {0}
    assert "1 items were excluded by the sampler as unreadable (items 0;" in excluded_note(folder)

    # the file restored: a rerun samples item 0 and drops its record
    target, _, controls, _ = synthetic.make_item(0, 0, SIZE)
    cv2.imwrite(str(paths[0][0]), cv2.cvtColor(controls["segm"], cv2.COLOR_RGB2BGR))
    sampler.main(sampler.parse_args(sample_args(control_model, tmp_path / "data", out)))
    assert np.array_equal(read_rgb(out / "source/image_0.png"), target)
    assert not (out / "excluded/item_0.json").exists()
    assert eval_canny.main(eval_canny.parse_args([str(out)]))["excluded"] == []


def test_evaluators_refuse_an_item_both_sampled_and_excluded(tmp_path):
    for rel in ("source/image_0.png", "results/result_0_0.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "excluded").mkdir()
    (tmp_path / "excluded/item_0.json").write_text(json.dumps({"index": 0, "reason": "x"}))
    with pytest.raises(
        ValueError, match=r"items \[0\] have outputs and an exclusion record.*re-run the sampler"
    ):
        eval_canny.main(eval_canny.parse_args([str(tmp_path)]))


def _sampled_folder(root: Path, n: int) -> Path:
    for i in range(n):
        for rel in (f"source/image_{i}.png", f"results/result_{i}_0.png"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), np.zeros((16, 16, 3), np.uint8))
    return root


def test_eval_segm_with_fewer_captions_than_items_is_one_line(tmp_path):
    folder = _sampled_folder(tmp_path / "generated", 3)
    write_val_tree(tmp_path / "data", 2)  # a caption list of 2 entries for a folder of 3 items
    labels = tmp_path / "labels"
    labels.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "oft-control/eval_segm.py"),
        str(folder),
        "--data-root",
        str(tmp_path / "data"),
    ]
    run = subprocess.run(
        [*cmd, "--labels", str(labels)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert run.stderr.startswith("eval_segm: 1 of 3 sampled items (e.g. [2]) are past the 2 entries of ")
    assert "prompt_val_blip_full.json" in run.stderr and "--data-root" in run.stderr


def test_eval_landmark_with_fewer_captions_than_items_names_the_items(tmp_path):
    folder = _sampled_folder(tmp_path / "generated", 3)
    task = TASKS["landmark"]
    captions = tmp_path / "data" / task.caption_file("val", full=True)
    captions.parent.mkdir(parents=True)
    captions.write_text(json.dumps([{"image": f"{i}.jpg", "prompt": "a face"} for i in range(2)]))
    gt = tmp_path / "gt"
    gt.mkdir()
    for i in range(3):
        np.savetxt(gt / f"{i}.txt", np.zeros((68, 2)))
    args = eval_landmark.parse_args([str(folder), "--gt", str(gt), "--data-root", str(tmp_path / "data")])
    with pytest.raises(ValueError, match=r"1 items have no ground-truth landmarks \(e\.g\. items \[2\]\)"):
        eval_landmark.main(args, detector=object())
