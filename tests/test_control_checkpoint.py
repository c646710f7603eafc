"""The control-model file: the initial model equals the base, both storage modes round-trip, and a missing,
foreign or mismatched file is refused with one line saying what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import oft_layers
from oft.cli.control import tool_add_control_oft as tool_add_control_oft_cli
from oft.control.checkpoint import (
    ControlCheckpointError,
    build_initial,
    load_control,
    read_control,
    save_control,
)
from oft.control.hint import HINT_WIDTHS, scaled_widths
from oft.sd import load_sd
from oft.sd.targets import CONTROL_TARGETS, match_targets
from tests.helpers.control import random_skew_rotations_, tiny_sd_file

tool = tool_add_control_oft_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_sd_file(tmp_path_factory.mktemp("base"))


def test_reference_command_builds_a_full_initial_model(base, tmp_path):
    out = tmp_path / "control_sd15_ini_oft.ckpt"
    tool.main(
        tool.parse_args([f"--input_path={base}", f"--output_path={out}", "--eps=1e-3", "--r=4", "--coft"])
    )
    cm = load_control(out)
    layers = dict(oft_layers.oft_modules(cm.sd.unet))
    names = [n for n, _ in load_sd(base).unet.named_modules()]
    assert (
        sorted(layers) == sorted(match_targets(names, CONTROL_TARGETS)) and len(layers) == 9 * 4
    )  # tiny: 4 transformer blocks
    assert all(
        torch.count_nonzero(layer.R) == 0 and layer.config.coft and layer.config.r == 4
        for layer in layers.values()
    )
    assert (
        cm.meta["r"] == "4"
        and cm.meta["eps"] == "0.001"
        and cm.meta["base_identity"] == load_sd(base).identity
    )
    assert torch.count_nonzero(cm.hint.zero_conv.weight) == 0
    assert cm.hint.out_channels == cm.sd.unet.config.block_out_channels[0]
    # the full file is also a plain SD checkpoint with the base weights
    plain, original = load_sd(out), load_sd(base)
    for (k, v), w in zip(plain.unet.state_dict().items(), original.unet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert not any(p.requires_grad for p in cm.sd.vae.parameters())


def test_adapter_only_references_the_base_and_round_trips_trained_values(base, tmp_path):
    out = tmp_path / "ini.safetensors"
    tool.main(
        tool.parse_args(
            [
                "--input-path",
                str(base),
                "--output-path",
                str(out),
                "--r",
                "2",
                "--adapter-only",
                "--block-share",
            ]
        )
    )
    assert out.stat().st_size < base.stat().st_size / 5
    cm = load_control(out)  # the base comes from the recorded path
    assert cm.meta["block_share"] == "true" and cm.meta["coft"] == "false"
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(cm.sd.unet):
            layer.R.normal_(0, 0.01, generator=gen)
        cm.hint.zero_conv.weight.normal_(0, 0.01, generator=gen)
    save_control(cm, tmp_path / "trained.safetensors", extra={"task": "synthetic"})
    again = load_control(tmp_path / "trained.safetensors", base)
    assert again.meta["task"] == "synthetic"
    for (name, a), (_, b) in zip(
        oft_layers.oft_modules(cm.sd.unet), oft_layers.oft_modules(again.sd.unet), strict=True
    ):
        assert torch.equal(a.R, b.R), name
    assert torch.equal(cm.hint.zero_conv.weight, again.hint.zero_conv.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_skew_trained_control_model_stores_packed_rotations(base, tmp_path, suffix):
    ini = build_initial(base, tmp_path / "ini.safetensors", r=2, eps=None, coft=False, adapter_only=True)
    cm = load_control(ini)
    random_skew_rotations_(cm.sd.unet, 0.01, torch.Generator().manual_seed(0))
    path = save_control(cm, tmp_path / f"trained{suffix}")
    tensors, meta, _ = read_control(path)
    assert meta["format_version"] == "2"
    R = {k: v for k, v in tensors.items() if k.startswith("oft.") and k.endswith(".R")}
    assert R and all(v.dim() == 2 for v in R.values())  # (r, b(b-1)/2)
    again = load_control(path, base)
    for (name, a), (_, b) in zip(
        oft_layers.oft_modules(cm.sd.unet), oft_layers.oft_modules(again.sd.unet), strict=True
    ):
        assert torch.equal(a.R.view(torch.int32), b.R.view(torch.int32)), name


def test_a_scaled_hint_encoder_round_trips_and_files_without_widths_load_controlnets(base, tmp_path):
    narrow = build_initial(base, tmp_path / "narrow.safetensors", r=1, eps=None, coft=False, adapter_only=True,
                           hint_widths=scaled_widths(0.1))  # fmt: skip
    cm = load_control(narrow)
    assert cm.hint.widths == (2, 2, 3, 3, 10, 10, 26) and json.loads(cm.meta["hint_widths"]) == list(
        cm.hint.widths
    )
    assert cm.hint(torch.zeros(1, 3, 16, 16)).shape == (1, 32, 2, 2)
    # a file written before the widths were recorded: ControlNet's channels, as it was built with
    wide = build_initial(base, tmp_path / "wide.safetensors", r=1, eps=None, coft=False, adapter_only=True)
    tensors, meta, _ = read_control(wide)
    del meta["hint_widths"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    assert load_control(tmp_path / "old.safetensors").hint.widths == HINT_WIDTHS


def test_missing_foreign_and_mismatched_files_are_refused(base, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"control model not found: .*nope\.ckpt; build one with .*tool_add_control_oft\.py",
    ):
        load_control(tmp_path / "nope.ckpt")
    with pytest.raises(
        ControlCheckpointError, match=r"is not an oft-control model file .*tool_add_control_oft\.py"
    ):
        load_control(base)  # a plain SD checkpoint
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(ControlCheckpointError, match=r"cannot read .*junk\.ckpt"):
        load_control(tmp_path / "junk.ckpt")
    out = tool.main(
        tool.parse_args(
            ["--input_path", str(base), "--output_path", str(tmp_path / "a.safetensors"), "--adapter-only"]
        )
    )
    other = tiny_sd_file(tmp_path, seed=1, name="other.ckpt")
    with pytest.raises(
        ControlCheckpointError, match=r"was built on base SD .* not on .*pass the same SD checkpoint"
    ):
        load_control(out, other)
    with pytest.raises(ControlCheckpointError, match=r"holds only the new weights; use a \.ckpt name"):
        cm = load_control(out)
        save_control(cm, tmp_path / "x.safetensors", base_state={"a": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"Stable Diffusion weights not found at .*missing\.ckpt"):
        tool.main(
            tool.parse_args(
                ["--input_path", str(tmp_path / "missing.ckpt"), "--output_path", str(tmp_path / "b.ckpt")]
            )
        )
