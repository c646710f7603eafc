"""DreamBooth training data: instance (and class) images, resized then randomly cropped, in a step-indexed order.

Every random choice of training step ``s`` (which images, where to crop) comes from a generator seeded with
``(seed, s, stream)`` (``oft.common.seeds``), so a run resumed at step ``s`` sees exactly the data an
uninterrupted run would have seen, with no RNG state to save.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from oft.common.images import list_images
from oft.common.seeds import step_generator
from oft.specs.benchmark import SETUP_HINT

# the random streams of one step, each its own generator (seed, step, stream): the same step always draws the
# same values in each, whatever the other streams drew
ORDER_STREAM = 1  # the shuffled item order of an epoch (keyed by the epoch)
CROP_STREAM = 2  # the crops of a step's batch
NOISE_STREAM = 3  # a micro-step's latents, noise and timesteps (the trainer's)


def check_decodes(paths: list[Path], what: str = "image") -> None:
    """Decode every image fully (a truncated file fails too); one line naming the first that does not."""
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot decode {what} {path} ({reason}): replace or remove it") from None


def instance_images(folder: str | os.PathLike) -> list[Path]:
    """The subject's photos, each checked to decode, or a clear error naming the folder or the bad file."""
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(f"no subject images in {folder}: {SETUP_HINT} or pass --instance_data_dir")
    check_decodes(images, "subject image")
    return images


def epoch_order(length: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch (a function of seed and epoch)."""
    return torch.randperm(length, generator=step_generator(seed, epoch, ORDER_STREAM)).tolist()


def load_crop(
    path: Path, size: int, generator: torch.Generator, center_crop: bool
) -> tuple[torch.Tensor, tuple[int, int, int, int, int, int]]:
    """Image file -> (3, size, size) in [-1, 1]: shorter side resized to ``size``, then a (random) square crop;
    and SDXL's size conditioning of that crop: original (h, w), crop (top, left) after resizing, target (size,
    size), as diffusers' SDXL DreamBooth records them."""
    with Image.open(path) as im:
        original = (im.height, im.width)
        image = TF.resize(TF.pil_to_tensor(im.convert("RGB")), size, antialias=True)  # (3, H', W') uint8
    h, w = image.shape[-2:]
    if center_crop:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    crop = image[:, top : top + size, left : left + size]
    return crop.float() / 127.5 - 1.0, (*original, top, left, size, size)


class DreamBoothSteps(Dataset):
    """Item ``s`` is the batch of training step ``s``: ``{"pixel_values": (B, 3, size, size), "time_ids": (B, 6)}``
    (the size conditioning of each crop, which only SDXL uses).

    The batch holds ``batch_size`` instance images and, with prior preservation, as many class images after
    them (diffusers' layout: instance half first). One epoch visits ``max(#instance, #class)`` item pairs, item
    ``k`` pairing instance image ``k % #instance`` with class image ``k % #class``, as in diffusers' DreamBooth;
    with 5 photos and 200 class images an epoch is 200 steps at batch 1 (SPEC §4).
    """

    def __init__(
        self,
        instance_paths: list[Path],
        class_paths: list[Path] | None,
        *,
        size: int,
        batch_size: int,
        seed: int,
        center_crop: bool = False,
    ) -> None:
        self.instance_paths, self.class_paths = instance_paths, class_paths or []
        self.size, self.batch_size, self.seed, self.center_crop = size, batch_size, seed, center_crop
        self.items_per_epoch = max(len(self.instance_paths), len(self.class_paths))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.items_per_epoch // self.batch_size)

    def items_of_step(self, step: int) -> list[int]:
        """The epoch item indices that make up step ``step``'s batch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.items_per_epoch, self.seed, epoch)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def __len__(self) -> int:  # steps are unbounded; the sampler decides which ones are drawn
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.seed, step, CROP_STREAM)
        items = self.items_of_step(step)
        paths = [self.instance_paths[k % len(self.instance_paths)] for k in items]
        if self.class_paths:
            paths += [self.class_paths[k % len(self.class_paths)] for k in items]
        crops = [load_crop(p, self.size, g, self.center_crop) for p in paths]
        return {
            "pixel_values": torch.stack([pixels for pixels, _ in crops]),
            "time_ids": torch.tensor([ids for _, ids in crops], dtype=torch.float32),
        }


class StepSampler(torch.utils.data.Sampler[int]):
    """Yields the step numbers ``start, start+1, ..., stop-1`` (the DataLoader fetches those batches)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
