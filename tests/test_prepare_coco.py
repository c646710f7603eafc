"""COCO preparation (scripts/prepare_coco.py, oft.setup.coco) on a few synthetic COCO-shaped images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from oft.cli import prepare_coco as prepare_coco_cli
from oft.setup.coco import SUBSET_TASKS, canny_map, square_resize, write_subsets
from oft.setup.layout import check_control_dataset
from oft.specs.tasks import TASKS, get_task, read_captions
from tests.helpers.setup import Route, server, zip_bytes

__all__ = ["server"]  # the fixture, imported for pytest

prepare = prepare_coco_cli


def make_coco(root: Path, n_train: int = 10, n_val: int = 5) -> Path:
    """A COCO 2017-shaped folder: random rectangles on non-square JPEGs, two captions per image."""
    rng = np.random.default_rng(0)
    for split, n, offset in (("train2017", n_train, 0), ("val2017", n_val, 1000)):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            h, w = (40, 64) if i % 2 else (56, 36)
            img = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
                img[y : y + 8, x : x + 8] = rng.integers(0, 255, 3)
            name = f"{offset + i:012d}.jpg"
            cv2.imwrite(str(root / split / name), img)
            images.append({"id": offset + i, "file_name": name, "height": h, "width": w})
            # The later annotation id is listed first: the caption with the lowest id must win.
            annotations += [
                {"id": 2 * (offset + i) + 1, "image_id": offset + i, "caption": f"second {i}"},
                {"id": 2 * (offset + i), "image_id": offset + i, "caption": f"a  photo {i}\n"},
            ]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


def run(coco: Path | None, root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """prepare_coco's main() in-process on ``coco`` (None: let it download COCO); (status, stdout, stderr)."""
    argv = ["--data-root", str(root), "--size", "32", "--val-preview", "3", "--no-progress"]
    argv += ["--coco-dir", str(coco)] if coco is not None else []
    rc = prepare.main(prepare.parse_args([*argv, *extra]))
    out, err = capsys.readouterr()
    return rc, out, err


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_writes_the_reference_layout(coco, tmp_path, capsys):
    val_captions = tmp_path / "blip_val.json"
    val_captions.write_text(json.dumps({f"{1000 + i:012d}.jpg": f"blip caption {i}" for i in range(5)}))
    rc, out, err = run(coco, tmp_path, capsys, "--workers", "2", "--captions-val", str(val_captions))
    assert rc == 0, err
    out_dir = tmp_path / "COCO"
    train = read_captions(tmp_path / get_task("canny").caption_file("train"), "jsonl")
    assert [e["source"] for e in train] == [f"source/{i:012d}.png" for i in range(10)]
    assert [e["target"] for e in train] == [f"target/{i:012d}.png" for i in range(10)]
    assert [e["prompt"] for e in train] == [f"a photo {i}" for i in range(10)]  # lowest annotation id, tidied
    full = read_captions(tmp_path / get_task("canny").caption_file("val", full=True), "jsonl")
    assert [e["prompt"] for e in full] == [f"blip caption {i}" for i in range(5)]
    preview = read_captions(tmp_path / get_task("canny").caption_file("val"), "jsonl")
    assert len(preview) == 3 and all(e in full for e in preview)
    for entry in train + full:
        split = "train" if entry in train else "val"
        hint_rel, target_rel = get_task("canny").item_files(entry, split)
        color = cv2.imread(str(out_dir / target_rel))
        hint = cv2.imread(str(out_dir / hint_rel))
        assert color.shape == hint.shape == (32, 32, 3)
        np.testing.assert_array_equal(hint, canny_map(color))  # the metric's canny of the target is the hint
        assert set(np.unique(hint)) <= {0, 255}
    assert "canny1k: needs 1,000 training items, only 10 prepared: skipped" in err
    assert "depth: skipped" in err and "--depth-model" in err
    assert "COCO ready" in out and check_control_dataset(out_dir, "COCO", [TASKS["canny"]]).startswith(
        "COCO for canny"
    )


def test_without_coco_dir_the_official_archives_are_fetched(coco, server, tmp_path, capsys, monkeypatch):
    sources = {}
    for name, folder in (
        ("coco_train2017", "train2017"),
        ("coco_val2017", "val2017"),
        ("coco_annotations", "annotations"),
    ):
        server.routes[f"/{name}.zip"] = Route(
            zip_bytes({f"{folder}/{p.name}": p.read_bytes() for p in sorted((coco / folder).iterdir())})
        )
        # small stand-ins for the archives: without the published SHA-256 that oft.setup.sources pins
        sources[name] = dataclasses.replace(
            prepare.SOURCES[name], urls=(server.url(f"/{name}.zip"),), sha256=None, size_bytes=None
        )
    monkeypatch.setattr(prepare, "SOURCES", sources)
    rc, out, err = run(None, tmp_path, capsys, "--workers", "1")
    assert rc == 0, err
    assert "coco_train2017: ready" in out and "coco_annotations: ready" in out and "COCO ready" in out
    assert len(list((tmp_path / "coco2017/train2017").iterdir())) == 10
    assert len(read_captions(tmp_path / "COCO/train/prompt_train_blip.json", "jsonl")) == 10


def test_center_crop_keeps_the_middle():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20] = img[:, 60:] = (0, 0, 255)  # red sides, blue centre half
    img[:, 20:60] = (255, 0, 0)
    out = square_resize(img, 32)
    assert out.shape == (32, 32, 3)
    assert (out[:, 1:-1, 0] > 200).all() and (out[:, 1:-1, 2] < 55).all()


def test_deterministic_across_worker_counts_and_resumes(coco, tmp_path, capsys):
    assert run(coco, tmp_path / "a", capsys, "--workers", "1")[0] == 0
    assert run(coco, tmp_path / "b", capsys, "--workers", "2")[0] == 0
    a = files(tmp_path / "a/COCO")
    assert a == files(tmp_path / "b/COCO")

    canny = tmp_path / "a/COCO/train/canny/000000000003.png"
    color = tmp_path / "a/COCO/val/color/000000001002.png"
    kept = tmp_path / "a/COCO/train/color/000000000004.png"
    canny.unlink()
    color.unlink()
    kept_mtime = kept.stat().st_mtime_ns
    rc, _, err = run(coco, tmp_path / "a", capsys, "--workers", "1")
    assert rc == 0 and "train: 9 of 10 images already prepared" in err and "val: 4 of 5" in err
    assert files(tmp_path / "a/COCO") == a and kept.stat().st_mtime_ns == kept_mtime


def test_subsets_are_seeded_nested_and_named_by_the_task_table(tmp_path, capsys):
    assert [t.name for t in SUBSET_TASKS] == ["canny1k", "canny5k", "canny20k", "canny50k"]
    entries = [
        {"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": str(i)} for i in range(6_000)
    ]
    train = tmp_path / get_task("canny").caption_file("train")
    train.parent.mkdir(parents=True)
    train.write_text("".join(json.dumps(e) + "\n" for e in entries))

    def subsets(seed: int, tasks=SUBSET_TASKS) -> dict[str, list[int]]:
        written = write_subsets(tmp_path / "COCO", seed, tasks)
        return {
            t.name: [int(e["prompt"]) for e in read_captions(tmp_path / t.caption_file("train"), "jsonl")]
            for t in written
        }

    first = subsets(0)
    assert list(first) == ["canny1k", "canny5k"]  # 20k and 50k need more training items than 6,000
    assert "canny20k: needs 20,000 training items, only 6,000 prepared: skipped" in capsys.readouterr().err
    assert not (tmp_path / get_task("canny20k").caption_file("train")).exists()
    one_k = (get_task("canny1k"),)
    assert subsets(0, one_k) == {"canny1k": first["canny1k"]} and subsets(1, one_k) != {
        "canny1k": first["canny1k"]
    }
    for name, ids in first.items():
        assert len(ids) == len(set(ids)) == get_task(name).subset.value and ids == sorted(
            ids
        )  # file order kept
    assert set(first["canny1k"]) < set(first["canny5k"])  # nested: one seeded permutation, cut at N


@pytest.mark.slow  # imports transformers (most of this file's run time)
def test_depth_with_a_local_model(coco, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        backbone_out_indices=[0, 1, 2, 3],
    )
    model_dir = tmp_path / "dpt"
    DPTForDepthEstimation(config).save_pretrained(model_dir)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(model_dir)
    rc, out, err = run(coco, tmp_path, capsys, "--workers", "1", "--depth-model", str(model_dir))
    assert rc == 0, err
    assert "depth" in out.split("COCO for ")[1]  # the layout check covered the depth task
    for split, n in (("train", 10), ("val", 5)):
        maps = sorted((tmp_path / "COCO" / split / "depth").glob("*.png"))
        assert len(maps) == n
        depth = cv2.imread(str(maps[0]))
        assert (
            depth.shape == (32, 32, 3) and depth.min() == 0 and depth.max() == 255
        )  # per-image 0..255 scaling


@pytest.mark.parametrize("case", ["missing depth model", "no annotations"])
def test_failures_are_one_clear_line(coco, tmp_path, capsys, case):
    if case == "missing depth model":
        rc, _, err = run(coco, tmp_path, capsys, "--workers", "1", "--depth-model", str(tmp_path / "nope"))
        expected = "is not a folder"
    else:
        empty = tmp_path / "coco"
        (empty / "train2017").mkdir(parents=True)
        rc, _, err = run(empty, tmp_path, capsys, "--workers", "1")
        expected = "captions_train2017.json"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and expected in errors[0]
