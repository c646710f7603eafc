"""The toy's image sets, all [N x 3 x S x S] in [-1, 1]: Flowers-102, scikit-image's photographs, or textures.

The reference needed Flowers-102 by hand. Here Flowers-102 is used when present under
``<data_root>/flowers-102`` (torchvision's layout, downloaded with ``--download``); otherwise random crops of
the real photographs shipped inside scikit-image, or procedurally generated textured images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from oft.toy.config import ToyDataError

DATASETS = ("auto", "flowers", "skimage", "textures")
FLOWERS_FOLDER = "flowers-102"  # torchvision's folder name under the data root

# scikit-image ships these photographs in its wheel (no download). The test photos are held out from training
# so that the reconstructions are of images the autoencoder has never seen.
SKIMAGE_TRAIN_PHOTOS = (
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "stereo_motorcycle",
    "camera",
    "brick",
    "grass",
    "gravel",
)
SKIMAGE_TEST_PHOTOS = ("astronaut", "chelsea")


def _to_model_range(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the reference's Normalize(0.5, 0.5))."""
    return img * 2.0 - 1.0


def _resize_crop(img: torch.Tensor, top: int, left: int, side: int, size: int) -> torch.Tensor:
    """Square crop of a [3 x H x W] float image, resized with antialiasing to [3 x size x size]."""
    crop = img[:, top : top + side, left : left + side].unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _skimage_photo(name: str) -> torch.Tensor:
    """A photograph shipped with scikit-image as a [3 x H x W] float tensor in [0, 1] (grey -> RGB)."""
    import numpy as np
    from skimage import data

    arr = getattr(data, name)()
    if name == "stereo_motorcycle":  # (left, right, disparity): the left view is a photograph
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255.0


def skimage_images(n: int, size: int, split: str, seed: int) -> torch.Tensor:
    """``n`` random square crops (¼ to all of the short side, random flips) of scikit-image's photographs.

    :param split: "train" crops :data:`SKIMAGE_TRAIN_PHOTOS`, "test" the held-out :data:`SKIMAGE_TEST_PHOTOS`.
    :return: [n x 3 x size x size] in [-1, 1].
    """
    try:
        photos = [
            _skimage_photo(name)
            for name in (SKIMAGE_TRAIN_PHOTOS if split == "train" else SKIMAGE_TEST_PHOTOS)
        ]
    except ImportError as err:
        raise ToyDataError(
            "scikit-image is not installed: pip install scikit-image, or use --dataset textures"
        ) from err
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        short = min(img.shape[1:])
        side = int(short * (0.25 + 0.75 * torch.rand(1, generator=gen).item()))
        top = int(torch.randint(img.shape[1] - side + 1, (1,), generator=gen))
        left = int(torch.randint(img.shape[2] - side + 1, (1,), generator=gen))
        crop = _resize_crop(img, top, left, side, size)
        out[i] = crop.flip(-1) if torch.rand(1, generator=gen).item() < 0.5 else crop
    return _to_model_range(out.clamp(0, 1))


def texture_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` procedurally generated images: a colour gradient, an oriented sinusoidal grating and 2–6 discs or
    rectangles of random colours, so there are edges, textures and flat regions to reconstruct.

    :return: [n x 3 x size x size] in [-1, 1].
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")  # [S, S]
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        angle = rand(1) * math.pi
        ramp = (xs * torch.cos(angle) + ys * torch.sin(angle)).clamp(0, 1)  # [S, S] in [0, 1]
        c0, c1 = rand(3, 1, 1), rand(3, 1, 1)
        img = c0 + (c1 - c0) * ramp  # [3, S, S]
        freq, theta, phase = 2 + 10 * rand(1), rand(1) * math.pi, rand(1) * 2 * math.pi
        grating = torch.sin(2 * math.pi * freq * (xs * torch.cos(theta) + ys * torch.sin(theta)) + phase)
        img = img + 0.25 * (rand(3, 1, 1) - 0.5) * 2 * grating
        for _ in range(int(2 + 5 * rand(1).item())):
            cy, cx, r = rand(1), rand(1), 0.08 + 0.25 * rand(1)
            if rand(1).item() < 0.5:
                mask = (ys - cy) ** 2 + (xs - cx) ** 2 < r**2
            else:
                mask = ((ys - cy).abs() < r) & ((xs - cx).abs() < r * (0.4 + rand(1)))
            img = torch.where(mask, rand(3, 1, 1), img)
        out[i] = img
    return _to_model_range(out.clamp(0, 1))


def flowers_present(data_root: Path) -> bool:
    """Whether Flowers-102 sits under ``<data_root>/flowers-102`` in torchvision's layout."""
    folder = data_root / FLOWERS_FOLDER
    return (
        (folder / "jpg").is_dir()
        and (folder / "setid.mat").is_file()
        and (folder / "imagelabels.mat").is_file()
    )


def flowers_images(data_root: Path, n: int, size: int, split: str, download: bool) -> torch.Tensor:
    """The first ``n`` images of a Flowers-102 split, short side resized to ``size`` then centre-cropped.

    :param download: fetch the dataset with torchvision when it is missing (needs the internet).
    :return: [n x 3 x size x size] in [-1, 1].
    """
    from torchvision import datasets, transforms

    # Resize + centre crop keeps the aspect ratio (the reference squashed every image to a square).
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    try:
        ds = datasets.Flowers102(str(data_root), split=split, transform=tf, download=download)
    # A failed download raises URLError (an OSError); a missing dataset raises RuntimeError.
    except (OSError, RuntimeError) as err:
        where = data_root / FLOWERS_FOLDER
        if download:
            raise ToyDataError(
                f"could not download Flowers-102 into {where} ({err}); check the connection or use --dataset skimage"
            ) from err
        raise ToyDataError(
            f"Flowers-102 not found under {where}; add --download (needs the internet) or use --dataset skimage"
        ) from err
    n = min(n, len(ds))
    return _to_model_range(
        torch.stack([ds[i][0] for i in tqdm(range(n), desc=f"flowers-102 {split}", leave=False)])
    )


def _skimage_available() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_dataset(name: str, data_root: Path, download: bool) -> str:
    """Pick the image set: "auto" means Flowers-102 if present (or ``download``), else scikit-image, else textures."""
    if name not in DATASETS:
        raise ToyDataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name != "auto":
        return name
    if download or flowers_present(data_root):
        return "flowers"
    return "skimage" if _skimage_available() else "textures"


def load_images(
    name: str, data_root: Path, n: int, size: int, split: str, seed: int, download: bool
) -> torch.Tensor:
    """[n x 3 x size x size] images in [-1, 1] of a resolved dataset name; ``split`` is "train" or "test"."""
    if name == "flowers":
        # Flowers-102's own splits: train on "train" (1,020 images), test on held-out "val" images.
        return flowers_images(data_root, n, size, "train" if split == "train" else "val", download)
    if name == "skimage":
        return skimage_images(n, size, split, seed)
    return texture_images(n, size, seed)


DATASET_DESCRIPTIONS = {
    "flowers": "Flowers-102 (train split; test images from the val split)",
    "skimage": "random crops of scikit-image's photographs (test crops from held-out astronaut and chelsea)",
    "textures": "procedurally generated textured images (gradients, gratings, discs and rectangles)",
}
