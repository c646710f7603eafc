"""The paper's toy experiment (Fig. 2): angles between neurons carry the semantics, magnitudes do not.

A small convolutional autoencoder is trained to reconstruct images. At test time its bottleneck, the last
encoder convolution ``z_j = <w_j, p> + b_j`` (filter ``w_j`` and input patch ``p``, both flattened to
``in·k·k``), is rebuilt from one factor of ``<w_j, p> = ‖w_j‖ ‖p‖ cos θ_j`` only:

* angle-only:     ``z_j = s · cos θ_j + b_j`` with one fixed scalar ``s`` (see :func:`angle_scale`);
* magnitude-only: ``z_j = ‖w_j‖ ‖p‖ + b_j`` (the angle dropped, i.e. ``cos θ_j = 1``).

The bias is a per-filter constant that carries no information about the input, so it is kept in all three
variants; the normal bottleneck is then exactly ``‖w_j‖ ‖p‖ cos θ_j + b_j``. If the decoder still
reconstructs the image from the angles alone but not from the magnitudes, the angular information is what
matters, which is why OFT rotates neurons (keeping their pairwise angles) instead of rescaling them.

The bottleneck has no activation (as in the reference), so the rebuilt code goes straight to the decoder.

Differences from the reference ``examples/toy_exp_ae.py``: it took the patch norm of the bottleneck's own
*output* (3×3, stride 1, bias included) instead of the input patch that the filter sees, and rescaled the
angle-only code by a hand-picked 60; here ``‖p‖`` is the norm of the conv's real input patch (same stride and
padding) and the rescale is measured on the training set. It trained on the first 1,000 files of 102flowers
and showed reconstructions of those same images; here training uses Flowers-102's "train" split and the
errors are measured on held-out images.

Offline image sets: the reference needed Flowers-102 by hand. Here Flowers-102 is used when present under
``<data_root>/flowers-102`` (torchvision's layout, downloaded with ``--download``); otherwise random crops of
the real photographs shipped inside scikit-image, or procedurally generated textured images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from oft.data.files import atomic_torch_save, atomic_write
from oft.safe_load import load_error_line

DATASETS = ("auto", "flowers", "skimage", "textures")
MODES = ("normal", "angle_only", "magnitude_only")
GRID_LABELS = ("input", "normal", "angle only", "mag. only")  # short: a 64-px column fits ~10 characters
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


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one run; the two tables below are the only place their defaults live."""

    epochs: int
    image_size: int
    num_images: int
    batch_size: int
    lr: float = 1e-3  # Adam, as in the reference


# A few minutes on 2 CPU cores; enough training for the angle/magnitude gap to be unambiguous.
CPU_DEFAULTS = ToyConfig(epochs=20, image_size=64, num_images=1000, batch_size=64)
# The reference / paper setting (GPU): 64×64, the first 1,000 images, batch 128, 200 epochs.
PAPER_DEFAULTS = ToyConfig(epochs=200, image_size=64, num_images=1000, batch_size=128)


class ToyDataError(RuntimeError):
    """A dataset is missing or cannot be fetched; the message says what to do."""


# --------------------------------------------------------------------------------------------- operators


def patch_norm(x: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Euclidean norm of every input patch a convolution sees.

    :param x: [B x C x H x W] input of the convolution.
    :return: [B x 1 x H' x W'] ``‖p‖`` over the C·k·k values of each patch (zero padding included, as the
        convolution sees it), on the convolution's output grid.
    """
    ones = x.new_ones(1, x.shape[1], kernel_size, kernel_size)
    # Summing squares with a ones kernel equals ‖unfold(x)‖² per column without materialising the patches.
    return F.conv2d(x * x, ones, stride=stride, padding=padding).clamp_min(0).sqrt()


def filter_norm(weight: torch.Tensor) -> torch.Tensor:
    """Norm of each flattened filter: [out x in x k x k] -> [out]."""
    return weight.flatten(1).norm(dim=1)


def bottleneck_decomposition(x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a convolution's bias-free response ``<w_j, p> = ‖w_j‖ ‖p‖ cos θ_j`` into angle and magnitude.

    :param x: [B x C x H x W] input of ``conv`` (square kernel, no groups or dilation).
    :return: ``(cos, magnitude)``, both [B x out x H' x W']: ``cos θ_j`` between filter j and the patch, and
        ``‖w_j‖ ‖p‖``. A zero patch has no direction; its cosine is defined as 0 (its response is 0 too).
    """
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError("bottleneck_decomposition needs a square, ungrouped, undilated Conv2d")
    inner = F.conv2d(x, conv.weight, stride=conv.stride, padding=conv.padding)
    p_norm = patch_norm(x, conv.kernel_size[0], conv.stride[0], conv.padding[0])  # [B, 1, H', W']
    magnitude = p_norm * filter_norm(conv.weight).view(1, -1, 1, 1)  # [B, out, H', W']
    cos = inner / magnitude.clamp_min(torch.finfo(x.dtype).tiny)
    return cos.clamp(-1.0, 1.0), magnitude


def _bias(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    """The conv's bias shaped [1 x out x 1 x 1] (zeros when it has none)."""
    if conv.bias is None:
        return like.new_zeros(1, like.shape[1], 1, 1)
    return conv.bias.view(1, -1, 1, 1)


def angle_only(x: torch.Tensor, conv: nn.Conv2d, scale: float) -> torch.Tensor:
    """Bottleneck rebuilt from angles alone: ``scale · cos θ_j + b_j``, [B x out x H' x W']."""
    cos, _ = bottleneck_decomposition(x, conv)
    return scale * cos + _bias(conv, cos)


def magnitude_only(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Bottleneck rebuilt from magnitudes alone: ``‖w_j‖ ‖p‖ + b_j`` (angle dropped), [B x out x H' x W']."""
    _, magnitude = bottleneck_decomposition(x, conv)
    return magnitude + _bias(conv, magnitude)


# ------------------------------------------------------------------------------------------------- model


class ConvAutoEncoder(nn.Module):
    """The reference's autoencoder: encoder 3→32→64→128 (3×3, stride 2, ReLU between), linear bottleneck,
    decoder of transposed convolutions 128→64→32→3 (ReLU between, tanh out). Images in [-1, 1], side % 8 == 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.bottleneck = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1)
        self.dec3 = nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B x 3 x S x S] image -> [B x 64 x S/4 x S/4], the input of the bottleneck convolution."""
        return F.relu(self.enc2(F.relu(self.enc1(x))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B x 128 x S/8 x S/8] code -> [B x 3 x S x S] image in [-1, 1]."""
        return torch.tanh(self.dec3(F.relu(self.dec2(F.relu(self.dec1(z))))))

    def forward(self, x: torch.Tensor, mode: str = "normal", scale: float | None = None) -> torch.Tensor:
        """Reconstruct ``x`` with the normal, angle-only (needs ``scale``) or magnitude-only bottleneck."""
        h = self.features(x)
        if mode == "normal":
            z = self.bottleneck(h)
        elif mode == "angle_only":
            if scale is None:
                raise ValueError("angle_only needs the rescale factor (see angle_scale)")
            z = angle_only(h, self.bottleneck, scale)
        elif mode == "magnitude_only":
            z = magnitude_only(h, self.bottleneck)
        else:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        return self.decode(z)


@torch.no_grad()
def angle_scale(model: ConvAutoEncoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """The angle-only rescale ``s``: mean of ``‖w_j‖ ‖p‖`` over the training images, filters and positions.

    One scalar measured once, so the angle-only code has the magnitude the decoder was trained on while no
    per-input (or per-filter) magnitude leaks into it; the reference hand-picked a constant (60) instead.
    """
    total, count = 0.0, 0
    for batch in images.split(batch_size):
        _, magnitude = bottleneck_decomposition(model.features(batch), model.bottleneck)
        total += magnitude.sum().item()
        count += magnitude.numel()
    return total / count


# -------------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------- train / evaluate


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss per epoch, and training seconds summed over every (resumed) session."""

    losses: list[float]
    seconds: float


def train_autoencoder(
    model: ConvAutoEncoder,
    images: torch.Tensor,
    config: ToyConfig,
    seed: int,
    checkpoint: Path | None = None,
    run_key: dict | None = None,
) -> TrainResult:
    """Train with MSE and Adam; returns every epoch's mean loss and the training time summed over resumes.

    Each epoch's shuffle comes from ``seed`` and the epoch number, so a run resumed from ``checkpoint`` (saved
    atomically after every epoch, with model, optimizer and losses) ends with exactly the weights of an
    uninterrupted run. ``run_key`` identifies the run; a checkpoint with another key is refused.
    """
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses: list[float] = []
    seconds = 0.0
    if checkpoint is not None and checkpoint.is_file():
        try:  # tensors and plain values only: no code in the file can run
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickled objects, truncated or foreign files: one line for all
            raise ToyDataError(
                f"cannot resume from {checkpoint} ({load_error_line(err)}); use another --output-dir or delete it"
            ) from None
        if state["run_key"] != run_key:
            raise ToyDataError(
                f"{checkpoint} belongs to a run with other settings ({state['run_key']}); "
                "use another --output-dir or delete it"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        losses, seconds = list(state["losses"]), float(state["seconds"])
    bar = tqdm(range(len(losses), config.epochs), desc="train", initial=len(losses), total=config.epochs)
    for epoch in bar:
        epoch_start = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        total = 0.0
        for idx in torch.randperm(len(images), generator=gen).split(config.batch_size):
            batch = images[idx]
            loss = F.mse_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
        seconds += time.perf_counter() - epoch_start
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if checkpoint is not None:
            state = {
                "run_key": run_key,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "losses": losses,
                "seconds": seconds,
            }
            atomic_torch_save(checkpoint, state)
    return TrainResult(losses, seconds)


@torch.no_grad()
def reconstruct(model: ConvAutoEncoder, images: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """The three reconstructions of ``images`` ([N x 3 x S x S] in [-1, 1]), keyed by :data:`MODES`."""
    model.eval()
    return {mode: model(images, mode, scale) for mode in MODES}


def mse_01(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error on pixels in [0, 1] (inputs in [-1, 1], hence the factor ¼)."""
    return F.mse_loss(pred, target).item() / 4.0


def psnr_01(mse: float) -> float:
    """PSNR in dB for a mean squared error on [0, 1] pixels."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def save_grid(path: Path, columns: Sequence[torch.Tensor], labels: Sequence[str], upscale: int = 1) -> None:
    """Atomically write a PNG with one row per image and one labelled column per tensor.

    :param columns: tensors [N x 3 x S x S] in [-1, 1], e.g. input | normal | angle-only | magnitude-only.
    """
    from PIL import Image, ImageDraw

    n, _, side, _ = columns[0].shape
    cell, gap, header = side * upscale, 4, 16
    grid = Image.new("RGB", (len(columns) * (cell + gap) + gap, header + n * (cell + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for c, (col, label) in enumerate(zip(columns, labels, strict=True)):
        x0 = gap + c * (cell + gap)
        draw.text((x0 + 2, 2), label, fill="black")
        pixels = (
            ((col.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )  # [N,S,S,3]
        for r in range(n):
            tile = Image.fromarray(pixels[r]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (x0, header + gap + r * (cell + gap)))
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG", optimize=True))


def error_report(
    recons: dict[str, torch.Tensor], target: torch.Tensor, train_images: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Reconstruction errors of every mode on [0, 1] pixels (MSE and PSNR), next to a trivial baseline that
    predicts the training set's mean colour everywhere, which tells how much of the image a mode recovered."""
    mse = {mode: mse_01(rec, target) for mode, rec in recons.items()}
    mean_colour = train_images.mean(dim=(0, 2, 3), keepdim=True).expand_as(target)  # [N, 3, S, S]
    mse["mean_colour_baseline"] = mse_01(mean_colour, target)
    return {"mse": mse, "psnr_db": {k: psnr_01(v) for k, v in mse.items()}}


def verdict(mse: dict[str, float]) -> str:
    """One line: does the angle-only code reconstruct better than the magnitude-only one, and by how much."""
    a, m = mse["angle_only"], mse["magnitude_only"]
    ratio = m / a if a > 0 else float("inf")
    if a < m:
        return (
            f"angle-only MSE {a:.4f} is {ratio:.1f}x lower than magnitude-only {m:.4f} (normal {mse['normal']:.4f}): "
            "the angles between neurons carry the image, as in the paper's Fig. 2"
        )
    return f"NOT reproduced: angle-only MSE {a:.4f} >= magnitude-only {m:.4f} (normal {mse['normal']:.4f})"
