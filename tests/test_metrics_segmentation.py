"""mmseg-style mIoU/mAcc/aAcc on a hand-made set, ADE20K label reduction, SegFormer wiring, eval_segm."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from oft.cli.control import eval_segm as eval_segm_cli
from oft.metrics.segmentation import (
    intersect_and_union,
    load_segformer,
    mmseg_resize,
    reduce_zero_label,
    segmentation_metrics,
)
from tests.helpers.metrics import save

# Two images as ADE20K annotations (0 = other; k = class k - 1 after reduce_zero_label) and predictions.
LABEL_A = np.array([[1, 1, 2, 0], [2, 2, 3, 3]], np.uint8)
PRED_A = np.array([[0, 1, 1, 3], [1, 1, 2, 0]])
LABEL_B = np.array([[4, 4]], np.uint8)
PRED_B = np.array([[4, 3]])
# By hand (pixel (0, 3) of A is ignored), classes 0..4:
#   intersect (1, 3, 1, 1, 0), union (3, 4, 2, 2, 1), label (2, 3, 2, 2, 0); class 4 is predicted only.
#   aAcc = 6 / 9; IoU (1/3, 3/4, 1/2, 1/2, 0) -> mean over 5; Acc (1/2, 1, 1/2, 1/2, NaN) -> mean over 4.
#   Classes 5..149 are absent from both: NaN, skipped.
EXPECTED = {
    "aAcc": 100 * 6 / 9,
    "mIoU": 100 * (1 / 3 + 3 / 4 + 1 / 2 + 1 / 2 + 0) / 5,
    "mAcc": 100 * (1 / 2 + 1 + 1 / 2 + 1 / 2) / 4,
}


def test_reduce_zero_label_ignores_other():
    assert reduce_zero_label(np.array([0, 1, 150, 255])).tolist() == [255, 0, 149, 255]


def test_metrics_accumulate_areas_over_the_set():
    areas = intersect_and_union(PRED_A, reduce_zero_label(LABEL_A)) + intersect_and_union(
        PRED_B, reduce_zero_label(LABEL_B)
    )
    assert areas[:, :5].tolist() == [[1, 3, 1, 1, 0], [3, 4, 2, 2, 1], [2, 4, 1, 1, 1], [2, 3, 2, 2, 0]]
    assert not areas[:, 5:].any()
    m = segmentation_metrics(areas)
    for key, value in EXPECTED.items():
        assert m[key] == pytest.approx(value)
    assert m["per_class"]["IoU"][4] == 0.0 and math.isnan(m["per_class"]["Acc"][4])
    assert all(math.isnan(v) for v in m["per_class"]["IoU"][5:])
    # per-image averaging would give another answer: image B alone has mIoU (1/2 + 0) / 2
    assert segmentation_metrics(intersect_and_union(PRED_B, reduce_zero_label(LABEL_B)))["mIoU"] == 25.0
    with pytest.raises(ValueError, match="differ in size"):
        intersect_and_union(PRED_B, LABEL_A)


def test_mmseg_resize_fits_2048_by_512_keeping_the_aspect_ratio_then_aligns_to_32():
    assert mmseg_resize(np.zeros((256, 1024, 3), np.uint8)).shape == (512, 2048, 3)
    assert mmseg_resize(np.zeros((48, 64, 3), np.uint8)).shape == (512, 704, 3)  # 683 -> 704
    assert mmseg_resize(np.zeros((100, 300, 3), np.uint8)).shape == (512, 1536, 3)
    assert mmseg_resize(np.zeros((64, 64, 3), np.uint8)).shape == (512, 512, 3)


def tiny_segformer() -> SegformerForSemanticSegmentation:
    torch.manual_seed(0)
    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 16, 16],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16,
        num_labels=150,
    )
    return SegformerForSemanticSegmentation(config).eval()


def test_segformer_loads_from_a_folder_and_predicts_at_the_label_size(tmp_path, monkeypatch):
    model = tiny_segformer()
    model.save_pretrained(tmp_path / "segformer")
    segmenter = load_segformer(tmp_path / "segformer")
    image = np.random.default_rng(0).integers(0, 256, (8, 512, 3), dtype=np.uint8)
    pred = segmenter(image, (6, 300))
    assert pred.shape == (6, 300) and pred.min() >= 0 and pred.max() < 150
    # the same as running the model by hand: resize by 4 to 32 x 2048, ImageNet normalisation, two upsamplings
    x = torch.from_numpy(mmseg_resize(image)).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]
    ).view(1, 3, 1, 1)
    assert x.shape[2:] == (32, 2048)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(
            model(pixel_values=x).logits, size=(32, 2048), mode="bilinear"
        )
        logits = torch.nn.functional.interpolate(logits, size=(6, 300), mode="bilinear")
    assert np.array_equal(pred, logits.argmax(1)[0].numpy())

    monkeypatch.setenv("OFT_MODELS_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download nvidia/segformer-b4-finetuned-ade-512-512"):
        load_segformer(None)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_segformer(tmp_path / "nothing")


class FakeSegmenter:
    """Returns the hand-made prediction of the item whose image it is given (pixel value = item index)."""

    def __call__(self, image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
        pred = {0: PRED_A, 1: PRED_B}[int(image[0, 0, 0])]
        assert pred.shape == out_size
        return pred


def make_dataset(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data" / "ADE20K" / "val"
    names = ["ADE_val_00000007.jpg", "ADE_val_00000002.jpg"]
    data.mkdir(parents=True)
    lines = [
        json.dumps({"source": f"source/{n}", "target": f"target/{n}", "prompt": "a room"}) for n in names
    ]
    (data / "prompt_val_blip_full.json").write_text("\n".join(lines) + "\n")
    for i, (name, label) in enumerate(zip(names, (LABEL_A, LABEL_B))):
        save(data / "annotations" / name.replace(".jpg", ".png"), label)
        image = np.full((8, 16 - 8 * i, 3), i, np.uint8)  # item 0 has its label's aspect ratio, item 1 not
        save(out / "source" / f"image_{i}.png", image)
        save(out / "results" / f"result_{i}_0.png", image)
    return out, tmp_path / "data"


def test_eval_segm_script_matches_the_hand_computed_scores(tmp_path, capsys):
    out, data = make_dataset(tmp_path)
    script = eval_segm_cli
    report = script.main(script.parse_args([str(out), "--data-root", str(data)]), segmenter=FakeSegmenter())
    for key, value in EXPECTED.items():
        assert report[key] == pytest.approx(value)
    saved = json.loads((out / "eval_segm.json").read_text())
    assert saved["mIoU"] == pytest.approx(EXPECTED["mIoU"]) and saved["per_class"]["IoU"][5] is None
    assert saved["aspect_mismatch"] == 1  # item 0: 8x16 image for a 2x4 label; item 1: 8x8 for 1x2
    assert "mIoU" in capsys.readouterr().out
    real = script.main(
        script.parse_args([str(out), "--data-root", str(data), "--real"]), segmenter=FakeSegmenter()
    )
    assert real["samples"] == "real" and (out / "eval_segm_real.json").is_file()

    (data / "ADE20K" / "val" / "annotations" / "ADE_val_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 label maps are missing"):
        script.main(script.parse_args([str(out), "--data-root", str(data)]), segmenter=FakeSegmenter())
    save(data / "ADE20K" / "val" / "annotations" / "ADE_val_00000002.png", np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="colour-coded"):
        script.main(script.parse_args([str(out), "--data-root", str(data)]), segmenter=FakeSegmenter())
