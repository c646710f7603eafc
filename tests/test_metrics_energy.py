"""Preservation: rotations leave every adapted layer's hyperspherical energy as it was; an additive update does not."""

from __future__ import annotations

import pytest
import torch

import oft_layers
from oft.metrics.energy import effective_weights, energy_changes, summarize
from oft.sd import CONTROL_TARGETS, build_sd
from tests.helpers.numerics import EFFECT, tol


@pytest.mark.numerics
def test_rotations_keep_the_energy_of_every_layer_and_a_low_rank_update_changes_it():
    unet = build_sd("tiny", seed=0).unet.requires_grad_(False)
    names = oft_layers.inject(unet, CONTROL_TARGETS, r=4)
    base = effective_weights(unet, names)  # R = 0: the pretrained weights, exactly
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(unet):
            layer.R.copy_(0.2 * torch.randn(layer.R.shape, generator=g))  # far from the identity
    rotated = effective_weights(unet, names)
    assert all(not torch.equal(rotated[n], base[n]) for n in names)
    changes = energy_changes(base, rotated)
    # each rotated entry is a b-term float32 sum (b <= 16 here); normalised rows, and so every pairwise
    # distance, move by that relative rounding at most
    bound = tol(torch.float32, 16, worst_case=True)["rtol"]
    assert summarize(changes)["max"] <= bound and summarize(changes)["layers"] == len(names) == 36
    low_rank = {n: w + 0.05 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
                for n, w in base.items()}  # fmt: skip
    assert min(energy_changes(base, low_rank).values()) > EFFECT * bound


def test_energy_changes_need_the_same_layers():
    w = torch.eye(3)
    assert energy_changes({"a": w}, {"a": w}) == {"a": 0.0}
    with pytest.raises(ValueError, match="the layers differ"):
        energy_changes({"a": w}, {"b": w})
