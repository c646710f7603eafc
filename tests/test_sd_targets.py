"""The OFT target lists select exactly SPEC §2's layers on the real SD1.5 architecture (weight-free)."""

import re

import pytest
import torch.nn as nn

from oft.sd import CONTROL_TARGETS, DB_TARGETS, build_sd
from oft.sd.targets import match_targets


@pytest.fixture(scope="module")
def sd15_unet():
    return build_sd("sd15", device="meta").unet


def _matched(unet, patterns):
    modules = dict(unet.named_modules())
    names = match_targets(modules, patterns)
    return names, modules


def test_control_targets_144_linears(sd15_unet):
    names, modules = _matched(sd15_unet, CONTROL_TARGETS)
    assert len(names) == 144
    assert all(isinstance(modules[n], nn.Linear) for n in names)
    blocks = {n.split(".attn")[0].split(".ff")[0] for n in names}
    assert len(blocks) == 16  # every transformer block, 9 linears each
    suffixes = sorted({n[len(b) + 1 :] for n in names for b in blocks if n.startswith(b + ".")})
    assert suffixes == sorted(
        [f"attn{i}.to_{p}" for i in (1, 2) for p in ("q", "k", "v", "out.0")] + ["ff.net.0.proj"]
    )
    # attn2 keys/values read the 768-wide text context; everything else is as wide as its block
    assert {modules[n].in_features for n in names if re.search(r"attn2\.to_[kv]$", n)} == {768}
    assert sum(modules[n].in_features == 768 for n in names) == 32


def test_db_targets_128_attention_linears(sd15_unet):
    names, modules = _matched(sd15_unet, DB_TARGETS)
    assert len(names) == 128
    assert len({n.rsplit(".to_", 1)[0] for n in names}) == 32  # attention modules
    assert not any(".ff." in n for n in names)
    assert set(names) < set(_matched(sd15_unet, CONTROL_TARGETS)[0])


def test_targets_avoid_resnets_projections_and_vae(sd15_unet):
    names, _ = _matched(sd15_unet, CONTROL_TARGETS)
    assert not any(k in n for n in names for k in ("resnets", "proj_in", "proj_out", "ff.net.2", "time_emb"))


def test_tiny_preset_has_the_same_layer_kinds():
    unet = build_sd("tiny").unet
    names, modules = _matched(unet, CONTROL_TARGETS)
    assert len(names) == 9 * 4  # four transformer blocks: down, mid and two up
    assert len(match_targets(modules, DB_TARGETS)) == 8 * 4
