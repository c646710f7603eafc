"""FID (paper Table 4) as pytorch-fid computes it: Inception pool features and the Fréchet distance.

Features: pytorch-fid's ``InceptionV3`` (the TensorFlow FID Inception ported to PyTorch) on images read as RGB
in [0, 1], resized bilinearly to 299 px inside the network; the 2048-d final average-pool output. Statistics:
mean and covariance (``np.cov``, float64). Distance: ``|mu1 - mu2|² + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` with
scipy's ``sqrtm``, adding ``eps`` to the diagonals when the product is singular, as pytorch-fid does.

The Inception weights are read from a local file; pytorch-fid would download them at run time.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

from oft.common.images import read_rgb
from oft.common.paths import models_root
from oft.common.safe_load import load_error_line

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
DIMS = 2048

# Paper Table 4 (FID on S2I)
PAPER = {"SD": 41.2, "ControlNet": 30.9, "T2I-Adapter": 33.1, "LoRA": 30.9, "COFT": 30.8,
         "re-scaled COFT": 30.2}  # fmt: skip


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of an (N, D) feature array, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance ``|mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics differ in size: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    with warnings.catch_warnings():  # with fewer images than dimensions the product is singular, as a rule
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise both covariances
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error can leave a tiny imaginary part
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def build_inception(state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` (pool3 block, 2048-d) with the given FID-Inception weights.

    pytorch-fid fetches the weights by URL inside its constructor; the fetch is answered with ``state_dict``.
    """
    from pytorch_fid import inception

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict):
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]]).eval()


def load_inception(path: str | os.PathLike | None = None, device: str = "cpu") -> torch.nn.Module:
    """The FID Inception from ``path``, else ``models/`` or torch's hub cache, where pytorch-fid keeps it.

    Missing -> one ``FileNotFoundError`` line naming the file and the URL pytorch-fid downloads it from.
    """
    candidates = [Path(path)] if path else [
        models_root() / INCEPTION_FILE, Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    ]  # fmt: skip
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"Inception weights {INCEPTION_FILE} not found (looked in {', '.join(map(str, candidates))}): "
            f"download {INCEPTION_URL} into {models_root()}/ or pass --model FILE"
        )
    try:
        return build_inception(torch.load(found, map_location="cpu", weights_only=True)).to(device)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # truncated, not a state dict, wrong keys
        raise ValueError(
            f"{found} is not pytorch-fid's {INCEPTION_FILE} ({load_error_line(exc)}); download {INCEPTION_URL}"
        ) from None


@torch.no_grad()
def inception_features(
    paths: Sequence[Path],
    model: torch.nn.Module,
    batch_size: int = 50,
    device: str = "cpu",
    desc: str = "fid",
) -> np.ndarray:
    """(N, 2048) pool features of the images at ``paths``; consecutive images of one size are batched."""
    out = []
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            images = [read_rgb(p) for p in paths[start : start + batch_size]]
            groups: list[list[np.ndarray]] = []
            for im in images:  # pytorch-fid batches need one image size; split where the size changes
                if groups and groups[-1][0].shape == im.shape:
                    groups[-1].append(im)
                else:
                    groups.append([im])
            for group in groups:
                x = torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2).float().div(255).to(device)
                out.append(model(x)[0].flatten(1).double().cpu().numpy())  # (B, 2048, 1, 1) -> (B, 2048)
            bar.update(len(images))
    return np.concatenate(out)


def evaluate_fid(
    generated: Sequence[Path],
    real: Sequence[Path],
    model: torch.nn.Module,
    batch_size: int = 50,
    device: str = "cpu",
) -> dict:
    """FID between the images ``generated`` and ``real`` (each at least 2 images)."""
    mu_g, sigma_g = feature_statistics(
        inception_features(generated, model, batch_size, device, "fid generated")
    )
    mu_r, sigma_r = feature_statistics(inception_features(real, model, batch_size, device, "fid real"))
    return {
        "fid": frechet_distance(mu_g, sigma_g, mu_r, sigma_r),
        "generated": len(generated),
        "real": len(real),
    }
