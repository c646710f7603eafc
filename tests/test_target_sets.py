"""The appendix ablation of where OFT goes: target sets by name, the two conv block layouts, end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import oft_layers
from oft.cli.control import eval_canny, train
from oft.cli.control import test_oft_parallel as sampler
from oft.control.checkpoint import load_control
from oft.sd import build_sd
from oft.sd.targets import TARGET_SETS, target_set
from oft_layers import OFTConv2d
from tests.helpers.control import initial_model, tiny_sd_file
from tests.helpers.numerics import tol

CONV = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2)


def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(**CONV).double()


def _expected(conv: nn.Conv2d, Q: torch.Tensor, layout: str, x: torch.Tensor) -> torch.Tensor:
    """conv2d with every filter rotated by hand: flat = W_flat @ blockdiag(Q)^T; channel = Q_c on each
    input channel's k*k patch (written per channel, independently of any flattening)."""
    W = conv.weight
    if layout == "flat":
        rotated = (W.reshape(W.shape[0], -1) @ torch.block_diag(*Q.unbind(0)).T).reshape(W.shape)
    else:
        patches = W.reshape(W.shape[0], W.shape[1], -1)  # (out, in, k*k)
        rotated = torch.einsum("ocp,cqp->ocq", patches, Q).reshape(W.shape)
    return F.conv2d(x, rotated, conv.bias, conv.stride, conv.padding, conv.dilation)


@pytest.mark.parametrize("layout, blocks, b", [("flat", 4, 9), ("channel", 4, 9)])
def test_both_conv_layouts_are_the_rotated_convolution(layout, blocks, b):
    conv = _conv()
    layer = OFTConv2d(conv, r=blocks if layout == "flat" else 2, conv_layout=layout)
    assert (layer.blocks, layer.block_size, tuple(layer.R.shape)) == (blocks, b, (blocks, b, b))
    with torch.no_grad():
        layer.R.normal_(0, 0.3)  # non-identity
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    Q = layer.rotation().detach()
    terms = CONV["in_channels"] * 9
    torch.testing.assert_close(layer(x), _expected(conv, Q, layout, x), **tol(torch.float64, terms))
    # angles and norms between filters are unchanged
    flat = conv.weight.reshape(6, -1)
    rotated = layer.rotated_weight().reshape(6, -1)
    torch.testing.assert_close(rotated @ rotated.T, flat @ flat.T, **tol(torch.float64, terms, scale=10))
    # merge, then unmerge, gives the same output and the original weight back
    before = layer(x)
    original = conv.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), before, **tol(torch.float64, terms))
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, **tol(torch.float64, terms))


def test_the_layouts_differ_and_channel_ignores_r():
    conv = _conv()
    flat, channel = OFTConv2d(conv, r=4), OFTConv2d(nn.Conv2d(**CONV).double(), r=2, conv_layout="channel")
    assert flat.blocks == 4 and flat.block_size == 9 and channel.blocks == 4 and channel.block_size == 9
    flat8 = OFTConv2d(nn.Conv2d(**CONV).double(), r=2)
    assert flat8.block_size == 18  # flat: r blocks over in*k*k; channel: one k*k block per input channel
    assert oft_layers.rotation_dof(channel) == 4 * 9 * 8 // 2
    eps = 1e-3
    coft = OFTConv2d(nn.Conv2d(**CONV).double(), r=2, eps=eps, coft=True, conv_layout="channel")
    assert coft.radius() == pytest.approx(
        eps * 81 / 4**0.5
    )  # eps b^2 / sqrt(number of blocks), as the reference


def test_channel_layout_saves_loads_and_old_files_load_as_flat(tmp_path):
    model = nn.Sequential(_conv(1), nn.Conv2d(6, 6, 3).double())
    oft_layers.inject(model, ["0"], r=2, conv_layout="channel")
    oft_layers.inject(model, ["1"], r=2)
    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(model):
            layer.R.normal_(0, 0.1)
    path = oft_layers.save_adapter(model, tmp_path / "a.safetensors")
    fresh = nn.Sequential(_conv(1), nn.Conv2d(6, 6, 3).double())
    fresh[1].load_state_dict(model[1].base.state_dict())
    meta = oft_layers.load_adapter(fresh, path)
    assert fresh[0].config.conv_layout == "channel" and fresh[0].blocks == 4 and "conv_layout" not in meta
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), model(x), **tol(torch.float64, 54))

    # a file written before the option: no conv_layout anywhere, read as the flat layout
    sd, meta = oft_layers.read_adapter(path)
    layers = {
        k: {o: v for o, v in opts.items() if o != "conv_layout"}
        for k, opts in json.loads(meta["layers"]).items()
    }
    layers["0"]["r"] = 4
    old = tmp_path / "old.safetensors"
    sd["0.R"] = torch.zeros(4, 9, 9, dtype=torch.float64)
    save_file(sd, str(old), metadata={**meta, "layers": json.dumps(layers)})
    legacy = nn.Sequential(_conv(1), nn.Conv2d(6, 6, 3).double())
    oft_layers.load_adapter(legacy, old)
    assert legacy[0].config.conv_layout == "flat" and legacy[0].blocks == 4 and legacy[0].block_size == 9


@pytest.fixture(scope="module")
def tiny():
    return build_sd("tiny")


@pytest.mark.parametrize("name, layers", [("attn", 32), ("attn+ff", 36), ("conv", 21), ("extended", 65)])
@pytest.mark.parametrize("layout", ["flat", "channel"])
def test_each_target_set_on_the_tiny_unet_starts_at_the_base(tiny, name, layers, layout):
    unet = tiny.unet
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 32)
    with torch.no_grad():
        base = unet(x, t, ctx).sample
    try:
        names = oft_layers.inject(unet, target_set(name), r=2, conv_layout=layout)
        assert len(names) == layers
        kinds = {type(layer).__name__ for _, layer in oft_layers.oft_modules(unet)}
        assert ("OFTConv2d" in kinds) == (name in ("conv", "extended"))
        with torch.no_grad():
            torch.testing.assert_close(unet(x, t, ctx).sample, base, rtol=0, atol=1e-5)
    finally:
        oft_layers.strip(unet)


def test_default_sets_are_unchanged_and_unknown_names_refused():
    from oft.sd import CONTROL_TARGETS, DB_TARGETS

    assert TARGET_SETS["attn+ff"] == CONTROL_TARGETS and TARGET_SETS["attn"] == DB_TARGETS
    with pytest.raises(ValueError, match="unknown target set 'ff'"):
        target_set("ff")


DATA = ["--control", "synthetic", "--resolution", "32", "--synthetic_length", "2"]
TRAIN = [*DATA, "--batch_size", "2", "--num_workers", "0", "--accelerator", "cpu", "--lr", "1e-3",
         "--sample_every", "0", "--save_every", "1", "--max_steps", "2"]  # fmt: skip
SAMPLE = [*DATA, "--steps", "2", "--num_samples", "1", "--batch", "2", "--threads", "1"]


@pytest.mark.parametrize("name, layout", [("conv", "channel"), ("extended", "flat")])
def test_build_train_sample_evaluate(tmp_path, name, layout):
    adapter = ["--r=2", "--eps=1e-3", "--coft", "--targets", name, "--conv_layout", layout]
    ini = initial_model(tmp_path, tiny_sd_file(tmp_path), *adapter)
    run = tmp_path / "run"
    final = train.main(train.parse_args([*adapter, *TRAIN, "--model", str(ini), "--output_dir", str(run)]))
    trained = load_control(final)
    assert trained.meta["target_set"] == name
    convs = [layer for _, layer in oft_layers.oft_modules(trained.sd.unet) if isinstance(layer, OFTConv2d)]
    assert convs and all(layer.config.conv_layout == layout for layer in convs)
    assert any(torch.count_nonzero(layer.R) for layer in convs)  # the convolutions trained
    with pytest.raises(ValueError, match="--targets"):  # the file's flags are checked
        sampler.main(sampler.parse_args([*DATA, "--output_dir", str(run), "--r=2", "--eps=1e-3", "--coft"]))
    out = sampler.main(
        sampler.parse_args([*adapter, *SAMPLE, "--output_dir", str(run), "--out_dir", str(run / "gen")])
    )
    report = eval_canny.main(eval_canny.parse_args([str(out)]))
    assert report["images"] == 2
