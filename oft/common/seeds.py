"""Derived seeds: every random stream here is a function of (seed, position) only, so resumed, chunked and
parallel runs draw exactly what one uninterrupted run would."""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a function of ``keys`` only (numpy's ``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def step_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded by ``derived_seed(*keys)``, e.g. (seed, step, rank) of a training step."""
    return torch.Generator(device=device).manual_seed(derived_seed(*keys))
