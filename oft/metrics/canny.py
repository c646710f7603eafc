"""C2I control consistency (paper Table 2): canny edges of the generated image against those of the target.

The reference (``oft-control/eval_canny.py``) ran ControlNet's ``CannyDetector``, i.e. ``cv2.Canny(img, 100,
200)`` on the uint8 **colour** image (OpenCV then takes, per pixel, the strongest channel gradient), on both
the ground truth and generated sample 0, and averaged per-image IoU and F1. ``gray=True`` runs Canny on the
grayscale image instead (a different, usually sparser edge map; not what produced the paper's numbers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from oft.common.images import read_rgb
from oft.metrics.folder import Pair, SampleFolder, open_sample_folder, report
from oft.specs.tasks import CANNY_THRESHOLDS

# Paper Table 2 (C2I): method -> (IoU, F1)
PAPER = {"SD": (0.049, 0.093), "ControlNet": (0.189, 0.317), "LoRA": (0.168, 0.286),
         "COFT": (0.195, 0.325), "OFT": (0.193, 0.323)}  # fmt: skip


def canny_edges(rgb: np.ndarray, gray: bool = False) -> np.ndarray:
    """(H, W) bool edge map of an (H, W, 3) uint8 RGB image: ``cv2.Canny`` with thresholds (100, 200)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"canny_edges expects an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray else np.ascontiguousarray(rgb)
    return cv2.Canny(image, *CANNY_THRESHOLDS) > 0


def edge_iou_f1(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """IoU ``|P∧T| / |P∨T|`` and F1 ``2TP / (2TP + FP + FN)`` of two (H, W) bool edge maps.

    Two empty maps agree perfectly: (1.0, 1.0) rather than 0/0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"edge maps differ in size: {pred.shape} vs {target.shape}")
    tp = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero(pred | target))
    if union == 0:
        return 1.0, 1.0
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(target)) - tp
    return tp / union, 2 * tp / (2 * tp + fp + fn)


def evaluate_canny(pairs: Sequence[Pair], gray: bool = False) -> dict:
    """Mean edge IoU and F1 over ``pairs`` (generated vs ground truth), with the per-image values.

    A generated image of another size than its target is resized to the target's size (bilinear) first.
    """
    ious, f1s = [], []
    for pair in tqdm(pairs, desc="canny", unit="img"):
        target = read_rgb(pair.source)
        result = read_rgb(pair.result)
        if result.shape != target.shape:
            result = cv2.resize(result, (target.shape[1], target.shape[0]), interpolation=cv2.INTER_LINEAR)
        iou, f1 = edge_iou_f1(canny_edges(result, gray), canny_edges(target, gray))
        ious.append(iou)
        f1s.append(f1)
    return {
        "iou": float(np.mean(ious)),
        "f1": float(np.mean(f1s)),
        "images": len(pairs),
        "per_image": [
            {"index": p.index, "sample": p.sample, "iou": i, "f1": f} for p, i, f in zip(pairs, ious, f1s)
        ],
    }


def canny_report(
    root: str | os.PathLike, sample: int | None = 0, gray: bool = False
) -> tuple[dict, SampleFolder]:
    """(report, folder) of a sampler output folder: ``evaluate_canny`` of sample ``sample`` of every item (None:
    every sample), with what was scored and which items the sampler excluded; eval_canny.py writes the report."""
    folder = open_sample_folder(root)
    metrics = evaluate_canny(folder.pairs(sample), gray=gray)
    return report("canny", folder, sample, metrics, edges_from="gray" if gray else "rgb"), folder
