"""What the frozen parts of SD compute for each training item, computed once (``train.py --cache_encodings``).

The VAE posterior (mean and std of the latent) and the text conditions of a caption do not change while only the
rotations and the hint encoder train. For a small, fixed training set (the demo's: 512 items, seen ~9 times)
encoding them once, in index order, saves most of a step's frozen work. Latents are still *sampled* every step,
with the step's generator as the VAE's own ``latent_dist.sample`` does, so a cached run draws the same noise as
an uncached one and differs only by the rounding of batching the encoders differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from oft.control.data import collate
from oft.sd import SDModels
from oft.sd.conditioning import Conditioning


@dataclass(frozen=True)
class Encodings:
    """Per training item (indexed by its ``index``): latent mean and std (N, 4, h, w) and the UNet's text
    conditions (context (N, 77, d); SDXL's pooled embedding and size numbers)."""

    mean: torch.Tensor
    std: torch.Tensor
    cond: Conditioning

    def to(self, device: torch.device | str) -> Encodings:
        return Encodings(self.mean.to(device), self.std.to(device), self.cond.to(device))

    def latents(self, index: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Latents of items ``index`` sampled from their posteriors (one ``randn`` of the batch's shape, as
        ``DiagonalGaussianDistribution.sample``), times the latent scale."""
        mean, std = self.mean[index], self.std[index]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * scale


@torch.no_grad()
def encode_dataset(sd: SDModels, dataset: Dataset, chunk: int = 32) -> Encodings:
    """``Encodings`` of every item of ``dataset`` (whose item ``i`` has ``index == i``), in chunks of ``chunk``."""
    means, stds, conds = [], [], []
    for start in tqdm(range(0, len(dataset), chunk), desc="encoding the training set", unit="chunk"):
        batch = collate([dataset[i] for i in range(start, min(start + chunk, len(dataset)))])
        if batch["index"].tolist() != list(range(start, start + len(batch["txt"]))):
            raise ValueError("caching encodings needs a dataset whose item i has index i")
        posterior = sd.vae.encode(batch["jpg"].to(sd.vae.device, sd.vae.dtype)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        conds.append(sd.condition(batch["txt"], *batch["jpg"].shape[-2:]))
    return Encodings(torch.cat(means), torch.cat(stds), Conditioning.cat(conds))
