"""Canny IoU/F1 on hand-drawn edge maps, the colour/gray option, the output-folder reader and eval_canny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oft.cli.control import eval_canny as eval_canny_cli
from oft.metrics.canny import canny_edges, edge_iou_f1
from oft.metrics.folder import (
    MissingResultsError,
    format_table,
    item_names,
    open_sample_folder,
    write_json,
)
from tests.helpers.metrics import save


def step_image(size: int = 32, col: int = 16) -> np.ndarray:
    """Black left of ``col``, white from it on: one vertical edge."""
    im = np.zeros((size, size, 3), np.uint8)
    im[:, col:] = 255
    return im


def test_iou_f1_of_hand_drawn_maps():
    target = np.zeros((3, 3), bool)
    target[0, :] = True  # 4 target pixels: the top row and the centre
    target[1, 1] = True
    pred = np.zeros((3, 3), bool)
    pred[0, 1:] = True  # 2 true positives, 1 false positive at (2, 2)
    pred[2, 2] = True
    iou, f1 = edge_iou_f1(pred, target)
    assert iou == pytest.approx(2 / 5)  # TP 2, union 5
    assert f1 == pytest.approx(4 / 7)  # 2TP / (2TP + FP 1 + FN 2)
    assert edge_iou_f1(target, target) == (1.0, 1.0)
    assert edge_iou_f1(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == (1.0, 1.0)
    assert edge_iou_f1(np.zeros((3, 3), bool), target) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in size"):
        edge_iou_f1(pred, np.zeros((4, 4), bool))


def test_canny_finds_a_step_edge_and_the_gray_option_changes_the_input():
    edges = canny_edges(step_image())
    cols = np.nonzero(edges.any(axis=0))[0]
    assert set(cols) <= {15, 16} and edges.any(axis=1).all()  # one vertical line, every row
    # red | green of equal luminance (0.299 * 255 = 0.587 * 130 = 76): an edge in colour, none in gray
    im = np.zeros((32, 32, 3), np.uint8)
    im[:, :16] = (255, 0, 0)
    im[:, 16:] = (0, 130, 0)
    assert canny_edges(im).any()
    assert not canny_edges(im, gray=True).any()
    with pytest.raises(ValueError, match="uint8"):
        canny_edges(im.astype(np.float32))


def make_folder(root: Path) -> None:
    """Item 0: sample 0 = its target (IoU 1), sample 1 blank; item 3: both samples blank (IoU 0)."""
    blank = np.zeros((32, 32, 3), np.uint8)
    save(root / "source" / "image_0.png", step_image())
    save(root / "source" / "image_3.png", step_image(col=8))
    save(root / "hints" / "hint_0.png", blank)
    save(root / "results" / "result_0_0.png", step_image())
    save(root / "results" / "result_0_1.png", blank)
    save(root / "results" / "result_3_0.png", blank)
    save(root / "results" / "result_3_1.png", blank)


def test_folder_pairs_items_by_index_and_counts_missing_results(tmp_path):
    make_folder(tmp_path)
    folder = open_sample_folder(tmp_path)
    assert folder.indices == (0, 3)
    assert [(p.index, p.sample) for p in folder.pairs()] == [(0, 0), (3, 0)]
    assert [(p.index, p.sample) for p in folder.pairs(None)] == [(0, 0), (0, 1), (3, 0), (3, 1)]
    (tmp_path / "results" / "result_3_1.png").unlink()
    with pytest.raises(MissingResultsError, match="1 of 2 items .* sample 1: 1 files missing"):
        folder.pairs(1)
    with pytest.raises(MissingResultsError, match=r"1 of 2 items .* some of samples \[0, 1\]: 1 files"):
        folder.pairs(None)  # every item must have every sample index seen in results/
    with pytest.raises(MissingResultsError, match="2 of 2 items"):
        folder.pairs(5)
    with pytest.raises(FileNotFoundError, match="not a sampling output folder"):
        open_sample_folder(tmp_path / "results")
    with pytest.raises(FileNotFoundError, match="prompt_val_blip_full.json is missing.*control_ade20k.sh"):
        item_names("segm", tmp_path)


def test_write_json_is_atomic_and_nan_free(tmp_path):
    out = write_json(tmp_path / "a" / "r.json", {"x": float("nan"), "y": [1.5, float("nan")]})
    assert json.loads(out.read_text()) == {"x": None, "y": [1.5, None]}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary file left
    assert format_table(("a", "b"), [("m", 0.5), ("n", None)]).splitlines()[2:] == ["m  0.5000", "n  -"]


def test_eval_canny_script(tmp_path, capsys):
    make_folder(tmp_path)
    script = eval_canny_cli
    report = script.main(script.parse_args([str(tmp_path)]))
    assert (report["iou"], report["f1"], report["images"]) == (0.5, 0.5, 2)  # mean of 1 and 0
    saved = json.loads((tmp_path / "eval_canny.json").read_text())
    assert saved["iou"] == 0.5 and saved["per_image"][1] == {"index": 3, "sample": 0, "iou": 0.0, "f1": 0.0}
    assert "paper OFT" in capsys.readouterr().out
    every = script.main(
        script.parse_args([str(tmp_path), "--all-samples", "--out", str(tmp_path / "all.json")])
    )
    assert every["iou"] == pytest.approx(1 / 4) and every["images"] == 4
    assert script.main(script.parse_args([str(tmp_path), "--sample-index", "1"]))["iou"] == 0.0
    with pytest.raises(SystemExit):
        script.parse_args([str(tmp_path), "--all-samples", "--sample-index", "1"])
