"""Landmark error: shifted points, item i against item i, no-face count, ground-truth formats, detector wiring."""

from __future__ import annotations

import json
import sys
import urllib.error

import numpy as np
import pytest
import torch

from oft.cli.control import eval_landmark as eval_landmark_cli
from oft.metrics.folder import open_sample_folder
from oft.metrics.landmark import FaceAlignmentDetector, evaluate_landmarks, landmark_error, load_landmark_file
from tests.helpers.metrics import save

SHIFT = np.array([3.0, 4.0])  # a 5-pixel shift


def gt_points(i: int) -> np.ndarray:
    """Distinct (68, 2) landmarks per item, in 128-px coordinates."""
    rng = np.random.default_rng(i)
    return rng.uniform(10, 110, size=(68, 2))


class FakeDetector:
    """Reads the item index from the image (all pixels = i) and returns its landmarks at 64 px, shifted.

    Item 2 has "no face"; item 5's detection is off by 3 shifts (15 px).
    """

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        i = int(image[0, 0, 0])
        if i == 2:
            return None
        return gt_points(i) * 0.5 + SHIFT * (3 if i == 5 else 1)


def make_folder(root, items=(0, 1, 2, 5)):
    for i in items:
        image = np.full((64, 64, 3), i, np.uint8)
        save(root / "source" / f"image_{i}.png", image)
        save(root / "results" / f"result_{i}_0.png", image)


def test_error_of_shifted_points_is_the_shift():
    points = gt_points(0)
    assert landmark_error(points + SHIFT, points) == pytest.approx(5.0)
    assert landmark_error(points, points) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        landmark_error(points[:5], points)


def test_each_item_is_compared_with_its_own_landmarks(tmp_path):
    make_folder(tmp_path)
    gt = {i: gt_points(i) for i in range(6)}
    result = evaluate_landmarks(open_sample_folder(tmp_path).pairs(), gt, FakeDetector(), gt_size=128)
    # items 0 and 1: 5 px; item 5: 15 px; item 2: no face, counted, not averaged
    assert result["landmark_error"] == pytest.approx((5 + 5 + 15) / 3)
    assert (result["images"], result["detected"], result["no_face"]) == (4, 3, 1)
    assert result["no_face_indices"] == [2]
    assert [r["error"] for r in result["per_image"]] == pytest.approx([5, 5, None, 15])
    with pytest.raises(ValueError, match="2 items have no ground-truth"):
        evaluate_landmarks(open_sample_folder(tmp_path).pairs(), {0: gt[0], 2: gt[2]}, FakeDetector(), 128)


def test_ground_truth_files_json_npy_and_reference_folder(tmp_path, capsys):
    make_folder(tmp_path / "out")
    script = eval_landmark_cli
    expected = (5 + 5 + 15) / 3

    (tmp_path / "gt.json").write_text(json.dumps({str(i): gt_points(i).tolist() for i in range(6)}))
    args = script.parse_args([str(tmp_path / "out"), "--gt", str(tmp_path / "gt.json"), "--gt-size", "128"])
    assert script.main(args, detector=FakeDetector())["landmark_error"] == pytest.approx(expected)
    assert json.loads((tmp_path / "out" / "eval_landmark.json").read_text())["no_face"] == 1
    assert "images without a face" in capsys.readouterr().out

    np.save(tmp_path / "gt.npy", np.stack([gt_points(i) for i in range(6)]))
    args = script.parse_args([str(tmp_path / "out"), "--gt", str(tmp_path / "gt.npy"), "--gt-size", "128"])
    assert script.main(args, detector=FakeDetector())["landmark_error"] == pytest.approx(expected)

    # the reference's layout: celebhq-text/celeba-hq-landmark2d/<name>.txt, item i = caption entry i
    data = tmp_path / "data" / "celebhq-text"
    names = [f"{1000 + i}.jpg" for i in range(6)]
    data.mkdir(parents=True)
    (data / "prompt_val_blip_full.json").write_text(
        json.dumps([{"image": n, "prompt": "a face"} for n in names])
    )
    (data / "celeba-hq-landmark2d").mkdir()
    for i, name in enumerate(names):
        np.savetxt(data / "celeba-hq-landmark2d" / f"{name[:-4]}.txt", gt_points(i))
    args = script.parse_args(
        [str(tmp_path / "out"), "--data-root", str(tmp_path / "data"), "--gt-size", "128"]
    )
    assert script.main(args, detector=FakeDetector())["landmark_error"] == pytest.approx(expected)

    np.save(tmp_path / "bad.npy", np.zeros((6, 5, 2)))
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        load_landmark_file(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="pass --gt"):
        script.main(
            script.parse_args([str(tmp_path / "out"), "--gt", str(tmp_path / "none.json")]), FakeDetector()
        )


def test_face_alignment_missing_package_gives_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import face_alignment -> ImportError
    with pytest.raises(RuntimeError, match="--no-deps face-alignment"):
        FaceAlignmentDetector()


def test_face_alignment_offline_without_weights_names_the_files(tmp_path, monkeypatch):
    utils = pytest.importorskip("face_alignment.utils")

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(utils, "download_url_to_file", offline)
    old = torch.hub.get_dir()
    try:
        with pytest.raises(RuntimeError, match=r"s3fd-619a316812\.pth .*into .*checkpoints"):
            FaceAlignmentDetector(hub_dir=tmp_path)
    finally:
        torch.hub.set_dir(old)
