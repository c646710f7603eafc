"""What the UNet is conditioned on besides the noisy latents and the timestep, for every base: the text context,
and for SDXL the pooled text embedding and the six size/crop numbers (``added_cond_kwargs``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Conditioning:
    """A batch of UNet conditions: ``context`` (B, 77, d); SDXL also ``pooled`` (B, p) and ``time_ids`` (B, 6),
    (original height, width, crop top, left, target height, width) per item."""

    context: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None

    def __len__(self) -> int:
        return self.context.shape[0]

    def unet_kwargs(self) -> dict:
        """The UNet's keyword arguments: ``encoder_hidden_states`` (and ``added_cond_kwargs`` for SDXL)."""
        kwargs: dict = {"encoder_hidden_states": self.context}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs

    def _map(self, fn) -> Conditioning:
        return Conditioning(
            *(None if x is None else fn(x) for x in (self.context, self.pooled, self.time_ids))
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """On ``device`` in ``dtype`` (the UNet's); the size numbers keep their values."""
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def index(self, rows: Tensor | slice | Sequence[int]) -> Conditioning:
        """The items ``rows``."""
        return self._map(lambda x: x[rows])

    def with_time_ids(self, time_ids: Tensor) -> Conditioning:
        """The same text conditions with other size/crop numbers (SDXL; ignored by other bases)."""
        return self if self.pooled is None else replace(self, time_ids=time_ids.to(self.context))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """The items of ``parts`` in order (e.g. ``cat([uncond, cond])`` for classifier-free guidance)."""
        columns = {name: [getattr(p, name) for p in parts] for name in ("context", "pooled", "time_ids")}
        for name, values in columns.items():
            if len({v is None for v in values}) > 1:
                raise ValueError(f"cannot concatenate conditions with and without {name} (different bases?)")
        return Conditioning(*(None if v[0] is None else torch.cat(v) for v in columns.values()))


def size_ids(batch: int, original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """SDXL's (batch, 6) size/crop conditioning: original (h, w), crop (top, left), target (h, w), float32."""
    return torch.tensor([[*original, *crop, *target]], dtype=torch.float32).expand(batch, -1).clone()
