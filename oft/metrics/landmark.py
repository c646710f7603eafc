"""L2F control consistency (paper Table 2): 68-point facial landmark error of generated faces.

Per image: detect 68 landmarks on the generated sample, take the mean ℓ2 distance to the item's ground-truth
landmarks (CelebA-HQ annotations are in 1024-px coordinates, scaled to the generated image's width: /2 for
512 px, as the reference did); the score is the mean over images with a detected face, and the number of
images without one is reported beside it. The reference compared every image with the *first* item's
landmarks (``val_data[n]``, SPEC §6); here item ``i`` is compared with item ``i``'s landmarks.

The detector is anything with ``detect(rgb uint8 (H, W, 3)) -> (68, 2) array or None``; the reference's is
the ``face_alignment`` package (``FaceAlignmentDetector``). ``face_alignment`` declares a dependency on
``opencv-python``, which shares its ``cv2/`` folder with this project's ``opencv-python-headless``, so it is
not a dependency of this project: it is imported when used and installed with ``--no-deps``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from oft.common.images import read_rgb
from oft.metrics.folder import Pair, item_names
from oft.specs.tasks import get_task

N_POINTS = 68
GT_SIZE = 1024  # CelebA-HQ images (and their landmark annotations) are 1024 px
GT_FOLDER = "celeba-hq-landmark2d"  # the reference's per-image <name>.txt folder inside celebhq-text/
FACE_ALIGNMENT_INSTALL = "pip install --no-deps face-alignment==1.5.0 && pip install numba"

# Paper Table 2 (L2F landmark error, pixels at 512 px)
PAPER = {"SD": 146.19, "ControlNet": 7.61, "T2I-Adapter": 23.75, "LoRA": 7.68, "COFT": 6.92, "OFT": 7.07}


class LandmarkDetector(Protocol):
    """Finds 68 facial landmarks (x, y in pixels) of the first face in an image, or None without a face."""

    def detect(self, image: np.ndarray) -> np.ndarray | None: ...


class FaceAlignmentDetector:
    """The reference's detector: ``face_alignment.FaceAlignment`` (S3FD face detector + 2D-FAN-4), 2D points.

    Its two weight files are looked up where ``face_alignment`` caches them, ``<hub_dir>/checkpoints/``
    (``hub_dir`` defaults to torch's hub folder, ``$TORCH_HOME/hub``); when absent it downloads them itself,
    and when that fails (offline) raises one ``RuntimeError`` line naming the files, URLs and folder.
    """

    def __init__(self, device: str = "cpu", hub_dir: str | os.PathLike | None = None) -> None:
        try:
            import face_alignment
            from face_alignment.detection.sfd import sfd_detector
        except ImportError as exc:
            raise RuntimeError(
                f"the landmark metric needs the face_alignment package ({exc}); install it without its "
                f"opencv-python dependency, which clashes with opencv-python-headless: {FACE_ALIGNMENT_INSTALL}"
            ) from None
        import torch

        if hub_dir is not None:
            torch.hub.set_dir(str(hub_dir))
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        urls = [face_alignment.api.models_urls["2DFAN-4"], sfd_detector.models_urls["s3fd"]]
        try:
            self.model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, flip_input=False, compile=False
            )
        except OSError as exc:  # URLError, HTTPError and socket errors are OSErrors
            files = ", ".join(f"{Path(urlparse(u).path).name} ({u})" for u in urls)
            raise RuntimeError(
                f"face_alignment weights are missing and could not be downloaded ({exc}); put {files} into "
                f"{folder}/ (or pass the folder above it as --model)"
            ) from None

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        faces = self.model.get_landmarks_from_image(image)
        if not faces:
            return None
        return np.asarray(faces[0], dtype=np.float64)[:, :2]  # the first face, as the reference took


def landmark_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean ℓ2 distance between two (68, 2) landmark sets, in pixels."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or gt.shape[-1] != 2:
        raise ValueError(f"landmark sets differ in shape: {pred.shape} vs {gt.shape}")
    return float(np.linalg.norm(pred - gt, axis=-1).mean())


def _checked(points: object, where: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape != (N_POINTS, 2):
        raise ValueError(f"{where}: expected {N_POINTS} (x, y) landmarks, got an array of shape {arr.shape}")
    return arr


def load_landmark_file(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Ground-truth landmarks by item index from one file.

    ``.json``: ``{"<index>": [[x, y] * 68], ...}``; ``.npy``: an (N, 68, 2) array whose row ``i`` is item ``i``.
    """
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path)
        if arr.ndim != 3 or arr.shape[1:] != (N_POINTS, 2):
            raise ValueError(f"{path}: expected an (N, {N_POINTS}, 2) array, got shape {arr.shape}")
        return {i: arr[i].astype(np.float64) for i in range(len(arr))}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {int(k): _checked(v, f"{path} item {k}") for k, v in data.items()}
    raise ValueError(
        f"{path}: ground-truth landmarks must be a .json or .npy file (or a folder of .txt files)"
    )


def load_landmark_folder(
    folder: str | os.PathLike, names: Sequence[str], indices: Sequence[int] | None = None
) -> dict[int, np.ndarray]:
    """The reference's layout: ``folder/<stem>.txt`` (68 lines ``x y``) for item ``i`` named ``names[i]``.

    Only ``indices`` are read (all items if None); items whose file is absent are left out (the evaluator
    reports them if they were sampled).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"landmark folder {folder} does not exist")
    gt = {}
    for i in range(len(names)) if indices is None else sorted(set(indices)):
        path = folder / f"{Path(names[i]).stem}.txt" if i < len(names) else None
        if path is not None and path.is_file():
            gt[i] = _checked(np.loadtxt(path), str(path))
    return gt


def load_ground_truth(
    gt: str | os.PathLike | None, data_root: Path, indices: Sequence[int] | None = None
) -> dict[int, np.ndarray]:
    """Ground-truth landmarks by item index from ``gt`` (a folder, .json or .npy), by default the reference's
    ``<data_root>/celebhq-text/celeba-hq-landmark2d/`` folder with items named by the val caption file."""
    path = Path(gt) if gt else data_root / get_task("landmark").dataset_dir / GT_FOLDER
    if path.is_dir():
        return load_landmark_folder(path, item_names("landmark", data_root), indices)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth landmarks {path} not found: pass --gt FOLDER|FILE.json|FILE.npy"
        )
    return load_landmark_file(path)


def evaluate_landmarks(
    pairs: Sequence[Pair],
    gt: Mapping[int, np.ndarray],
    detector: LandmarkDetector,
    gt_size: int = GT_SIZE,
) -> dict:
    """Mean landmark error over the images where ``detector`` finds a face, and which images had none.

    ``gt`` holds (68, 2) points in ``gt_size``-px coordinates; they are scaled by (generated width / gt_size).
    """
    if not pairs:
        raise ValueError("no images to score")
    missing = sorted({p.index for p in pairs} - set(gt))
    if missing:
        raise ValueError(
            f"{len(missing)} items have no ground-truth landmarks (e.g. items {missing[:5]}); check --gt"
        )
    errors, no_face, per_image = [], [], []
    for pair in tqdm(pairs, desc="landmarks", unit="img"):
        image = read_rgb(pair.result)
        points = detector.detect(image)
        if points is None:
            no_face.append(pair.index)
            per_image.append({"index": pair.index, "sample": pair.sample, "error": None})
            continue
        err = landmark_error(points, gt[pair.index] * (image.shape[1] / gt_size))
        errors.append(err)
        per_image.append({"index": pair.index, "sample": pair.sample, "error": err})
    return {
        "landmark_error": float(np.mean(errors)) if errors else float("nan"),
        "images": len(pairs),
        "detected": len(errors),
        "no_face": len(no_face),
        "no_face_indices": no_face,
        "per_image": per_image,
    }
