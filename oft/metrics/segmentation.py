"""S2I control consistency (paper Tables 2, 3): SegFormer-B4 segments the generated image; mIoU/mAcc/aAcc.

The reference ran the SegFormer repository's ``tools/test.py`` (mmsegmentation) with
``segformer.b4.512x512.ade.160k``; here the same network comes through transformers
(``nvidia/segformer-b4-finetuned-ade-512-512``) and the preprocessing and scoring follow mmsegmentation:

- test pipeline: resize keeping the aspect ratio to fit (2048, 512), then to sides that are multiples of 32
  (SegFormer's ``AlignedResize``; bilinear), normalise with the ImageNet mean/std in RGB, whole-image
  inference, logits resized bilinearly to the input size and then to the label map's size, argmax;
- ADE20K labels: 0 is "other", so ``reduce_zero_label`` maps 0 -> 255 (ignored) and k -> k - 1 (150 classes);
- per-class intersection, union, predicted and label areas are summed over the whole set before dividing:
  ``aAcc = Σ intersect / Σ label``; per class ``IoU = intersect / union`` and ``Acc = intersect / label``;
  classes with a zero denominator are NaN and ``nanmean`` skips them (a class predicted but absent from every
  label map has IoU 0 and counts).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from oft.common.images import read_rgb
from oft.common.paths import models_root
from oft.metrics.folder import SampleFolder, item_names
from oft.specs.tasks import get_task

NUM_CLASSES = 150
IGNORE_INDEX = 255
SEGFORMER_ID = "nvidia/segformer-b4-finetuned-ade-512-512"
LABELS_DIR = "val/annotations"  # default place of the annotation PNGs, inside the ADE20K dataset folder
# SegFormer's ADE20K test pipeline (local_configs/_base_/datasets/ade20k_repeat.py):
# AlignedResize(img_scale=(2048, 512), keep_ratio=True, size_divisor=32)
TEST_SCALE = (2048, 512)
SIZE_DIVISOR = 32
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

# Paper Table 2 (S2I): method -> (mIoU, mAcc, aAcc), in percent
PAPER = {"SD": (7.72, 14.40, 33.61), "ControlNet": (20.88, 30.91, 61.42), "LoRA": (22.98, 35.52, 58.03),
         "COFT": (26.92, 40.08, 62.96), "OFT": (27.06, 40.09, 62.42)}  # fmt: skip

Segmenter = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
"""(H, W, 3) uint8 RGB image, (height, width) of the label map -> (height, width) int64 class ids."""


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: class 0 ("other") -> 255 (ignored), class k -> k - 1; 255 stays 255."""
    label = label.astype(np.int64)
    return np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1)


def intersect_and_union(
    pred: np.ndarray, label: np.ndarray, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Per-class (intersect, union, pred, label) pixel areas of one image, a (4, num_classes) int64 array.

    Pixels whose label is ``ignore_index`` are dropped; class ids outside [0, num_classes) are not counted.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in size")
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)

    def area(x: np.ndarray) -> np.ndarray:
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes)

    inter = area(pred[pred == label])
    area_pred, area_label = area(pred), area(label)
    return np.stack([inter, area_pred + area_label - inter, area_pred, area_label])


def segmentation_metrics(areas: np.ndarray) -> dict:
    """aAcc, mIoU, mAcc (in percent) and per-class IoU/Acc from summed ``intersect_and_union`` areas."""
    inter, union, _, label = (a.astype(np.float64) for a in areas)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
    return {
        "aAcc": float(100 * inter.sum() / label.sum()) if label.sum() else float("nan"),
        "mIoU": float(100 * np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
        "mAcc": float(100 * np.nanmean(acc)) if not np.isnan(acc).all() else float("nan"),
        "per_class": {"IoU": (100 * iou).tolist(), "Acc": (100 * acc).tolist()},
    }


def mmseg_resize(
    image: np.ndarray, scale: tuple[int, int] = TEST_SCALE, divisor: int = SIZE_DIVISOR
) -> np.ndarray:
    """SegFormer's test ``AlignedResize``: mmcv ``imrescale`` then both sides rounded up to a multiple of 32.

    ``imrescale`` scales by min(long_max / long_side, short_max / short_side); both resizes are bilinear.
    """
    h, w = image.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    image = cv2.resize(image, (int(w * factor + 0.5), int(h * factor + 0.5)), interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    aligned = (-(-w // divisor) * divisor, -(-h // divisor) * divisor)
    if aligned != (w, h):
        image = cv2.resize(image, aligned, interpolation=cv2.INTER_LINEAR)
    return image


class SegformerSegmenter:
    """A transformers ``SegformerForSemanticSegmentation`` run as mmseg's whole-image test mode."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
        resized = mmseg_resize(image)
        x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
        x = ((x - self.mean) / self.std).to(self.device)
        logits = self.model(pixel_values=x).logits  # (1, classes, h/4, w/4)
        logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy()


def load_segformer(model: str | os.PathLike | None = None, device: str = "cpu") -> SegformerSegmenter:
    """SegFormer-B4 (ADE20K, 512x512) from a local transformers folder, else from the local hub cache.

    ``model`` None tries ``models/segformer-b4-finetuned-ade-512-512`` and then the hub cache; nothing is
    downloaded. Missing -> one ``FileNotFoundError`` line saying what to download and where to put it.
    """
    from transformers import SegformerForSemanticSegmentation  # ~2 s: only when the real model is loaded

    default = models_root() / SEGFORMER_ID.split("/")[1]
    source = str(model) if model is not None else str(default) if default.is_dir() else SEGFORMER_ID
    try:
        net = SegformerForSemanticSegmentation.from_pretrained(source, local_files_only=True)
    except OSError:
        raise FileNotFoundError(
            f"SegFormer-B4 not found at {source!r}: download it with `hf download {SEGFORMER_ID} "
            f"--local-dir {default}` (or into the hub cache) and pass --model {default}"
        ) from None
    if net.config.num_labels != NUM_CLASSES:
        raise ValueError(f"{source} predicts {net.config.num_labels} classes, not ADE20K's {NUM_CLASSES}")
    return SegformerSegmenter(net, device)


def read_label(path: Path, reduce_zero: bool = True) -> np.ndarray:
    """An ADE20K annotation PNG (class ids, 0 = other) as an (H, W) int64 map with 255 = ignore."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"{path} is a {im.mode} image: expected a single-channel map of class ids "
                "(ADEChallengeData2016/annotations), not a colour-coded visualisation"
            )
        label = np.asarray(im).astype(np.int64)
    return reduce_zero_label(label) if reduce_zero else label


def evaluate_segmentation(
    images: Sequence[Path], labels: Sequence[Path], segmenter: Segmenter, reduce_zero: bool = True
) -> dict:
    """mIoU/mAcc/aAcc (percent) of ``segmenter`` on ``images`` against the annotations ``labels``.

    ``labels[k]`` annotates ``images[k]``; areas are accumulated over the whole set (mmseg). Predictions are
    resized to the label's size, which is right when the image is a resized (not cropped) copy of the
    annotated one: ``aspect_mismatch`` counts the images whose aspect ratio differs from their label's by
    more than 1%, a sign that the labels need the crop the images had.
    """
    if not images:
        raise ValueError("no images to score")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label maps")
    areas = np.zeros((4, NUM_CLASSES), dtype=np.int64)
    mismatch = 0
    for image_path, label_path in tqdm(list(zip(images, labels)), desc="segmentation", unit="img"):
        label, image = read_label(label_path, reduce_zero), read_rgb(image_path)
        (h, w), (lh, lw) = image.shape[:2], label.shape
        mismatch += abs((w / h) / (lw / lh) - 1) > 0.01
        areas += intersect_and_union(segmenter(image, label.shape), label)
    metrics = segmentation_metrics(areas)
    metrics["images"] = len(images)
    metrics["aspect_mismatch"] = int(mismatch)
    return metrics


def label_paths(
    folder: str | os.PathLike,
    names: Sequence[str],
    indices: Sequence[int],
    captions: str | os.PathLike = "the caption file",
) -> list[Path]:
    """The annotation ``folder/<stem>.png`` of each item ``i`` in ``indices`` (item ``i`` is ``names[i]``,
    line ``i`` of ``captions``).

    Raises one error (``ValueError``: index past the caption file; ``FileNotFoundError``: no label map) that
    counts the items concerned and names the fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"label folder {folder} does not exist: put the ADE20K validation annotations "
            "(ADEChallengeData2016/annotations/validation/*.png) there or pass --labels"
        )
    beyond = [i for i in indices if i >= len(names)]
    if beyond:
        raise ValueError(
            f"{len(beyond)} of {len(indices)} sampled items (e.g. {beyond[:3]}) are past the {len(names)} entries "
            f"of {captions}: the folder was sampled from another caption list; evaluate it against the caption "
            "file the sampler read (--data-root)"
        )
    paths = [folder / f"{Path(names[i]).stem}.png" for i in indices]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} of {len(paths)} label maps are missing in {folder} (e.g. {absent[:3]})"
        )
    return paths


def folder_inputs(
    folder: SampleFolder,
    root: Path,
    sample: int | None = 0,
    *,
    real: bool = False,
    labels: str | os.PathLike | None = None,
) -> tuple[list[Path], list[Path]]:
    """(images, label maps) that eval_segm scores in a sampler ``folder``: generated sample ``sample`` of every
    item (None: every sample; ``real``: the ground-truth targets), each with the annotation of its item (item
    ``i`` = line ``i`` of ``root``/ADE20K/val/prompt_val_blip_full.json, the file the sampler read) in
    ``labels`` [default: ``root``/ADE20K/val/annotations]."""
    if real:
        indices, images = list(folder.indices), [folder.source(i) for i in folder.indices]
    else:
        pairs = folder.pairs(sample)
        indices, images = [p.index for p in pairs], [p.result for p in pairs]
    task = get_task("segm")
    paths = label_paths(
        labels or root / task.dataset_dir / LABELS_DIR,
        item_names(task.name, root),
        indices,
        root / task.caption_file("val", full=True),  # the file item_names reads
    )
    return images, paths
