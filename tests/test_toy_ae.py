"""The toy angle-vs-magnitude experiment: operators against their definitions, data sets, and the script."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from oft.cli import toy_exp_ae as script
from oft.toy.config import CPU_DEFAULTS
from oft.toy.data import load_images, resolve_dataset, skimage_images, texture_images
from oft.toy.model import MODES, ConvAutoEncoder, angle_scale
from oft.toy.operators import angle_only, bottleneck_decomposition, magnitude_only, patch_norm
from tests.helpers.numerics import approx, is_duration, network_terms, tol


def _loop_decomposition(x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """cos θ and ‖w‖‖p‖ by explicit loops over batch, filter and output position (the definition)."""
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    xp = F.pad(x, (pad, pad, pad, pad))
    h_out = (x.shape[2] + 2 * pad - k) // s + 1
    w_out = (x.shape[3] + 2 * pad - k) // s + 1
    cos = torch.zeros(x.shape[0], conv.out_channels, h_out, w_out, dtype=torch.float64)
    mag = torch.zeros_like(cos)
    for b in range(x.shape[0]):
        for j in range(conv.out_channels):
            w = conv.weight[j].flatten().double()
            for oy in range(h_out):
                for ox in range(w_out):
                    p = xp[b, :, oy * s : oy * s + k, ox * s : ox * s + k].flatten().double()
                    norm = w.norm() * p.norm()
                    mag[b, j, oy, ox] = norm
                    cos[b, j, oy, ox] = (w @ p) / norm if norm > 0 else 0.0
    return cos, mag


PATCH = 3 * 3 * 3  # terms of every dot product and patch norm of a 3x3 convolution of 3 channels


@pytest.mark.numerics
@pytest.mark.parametrize(("stride", "padding"), [(2, 1), (1, 0), (1, 1)])
def test_operators_match_explicit_loop(stride: int, padding: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    x[1, :, :3, :3] = 0.0  # a zero patch: cos defined as 0, magnitude 0, no NaN
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding)
    with torch.no_grad():
        cos, mag = bottleneck_decomposition(x, conv)
        ref_cos, ref_mag = _loop_decomposition(x, conv)
        bias = conv.bias.view(1, -1, 1, 1)
        # float32 against the float64 loop: <w, p>, ‖w‖ and ‖p‖ are 27-term sums, each within γ_27·‖w‖‖p‖
        # (Cauchy-Schwarz), so cos θ is off by ≲ 2γ_27 absolute and ‖w‖‖p‖ by ≲ γ_27 relative
        unit, big = tol(torch.float32, PATCH, worst_case=True), float(ref_mag.max())
        torch.testing.assert_close(cos.double(), ref_cos, **unit)
        torch.testing.assert_close(
            mag.double(), ref_mag, **tol(torch.float32, PATCH, worst_case=True, scale=big)
        )
        torch.testing.assert_close(
            angle_only(x, conv, 2.5).double(),
            2.5 * ref_cos + bias,
            **tol(torch.float32, PATCH, worst_case=True, scale=2.5),
        )
        torch.testing.assert_close(
            magnitude_only(x, conv).double(),
            ref_mag + bias,
            **tol(torch.float32, PATCH, worst_case=True, scale=big),
        )
        # The decomposition is exact: ‖w‖‖p‖ cos θ + b is the convolution itself (both float32 here).
        torch.testing.assert_close(
            mag * cos + bias, conv(x), **tol(torch.float32, 2 * PATCH, worst_case=True, scale=big)
        )
    assert torch.isfinite(cos).all()


@pytest.mark.numerics
def test_known_angles_on_hand_made_patch() -> None:
    """One 2×2×2 patch equal to 2·w0: parallel, antiparallel and orthogonal filters give cos 1, -1, 0."""
    w0 = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])  # ‖w0‖² = 8
    w2 = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # ⟂ w0, ‖w2‖ = 1
    conv = nn.Conv2d(2, 3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([w0, -w0, w2]).view(3, 2, 2, 2))
        conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = (2 * w0).view(1, 2, 2, 2)  # ‖p‖ = 2√8
    n = 8  # float32 sums of 8 terms (patch and filter norms, dot products)
    with torch.no_grad():
        cos, mag = bottleneck_decomposition(x, conv)
        assert cos.flatten().tolist() == approx([1.0, -1.0, 0.0], torch.float32, n, worst_case=True)
        assert mag.flatten().tolist() == approx(
            [16.0, 16.0, 4 * math.sqrt(2)], torch.float32, n, worst_case=True
        )
        assert angle_only(x, conv, 3.0).flatten().tolist() == approx(
            [3.5, -4.0, 2.0], torch.float32, n, worst_case=True, scale=3.0
        )
        assert magnitude_only(x, conv).flatten().tolist() == approx(
            [16.5, 15.0, 4 * math.sqrt(2) + 2], torch.float32, n, worst_case=True
        )


@pytest.mark.numerics
def test_patch_norm_equals_unfold() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 9, 7)
    got = patch_norm(x, 3, stride=2, padding=1)  # [2, 1, 5, 4]
    cols = F.unfold(x, 3, padding=1, stride=2)  # [2, 5·9, 20]
    # two float32 norms of the same 45 values, each within γ_45 relative (a sum of squares has no cancellation)
    torch.testing.assert_close(
        got.flatten(1), cols.norm(dim=1), **tol(torch.float32, 2 * 45, worst_case=True)
    )


@pytest.mark.numerics
def test_angle_scale_is_mean_training_magnitude() -> None:
    torch.manual_seed(2)
    model, images = ConvAutoEncoder(), torch.rand(10, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        _, mag = bottleneck_decomposition(model.features(images), model.bottleneck)
    # batches of 3 against one of 10 (other GEMM shapes), then means of the magnitudes in another order:
    # every magnitude passes through enc1, enc2 and the bottleneck's patch norm, and the mean sums them all
    n = mag.numel() + network_terms(model.enc1, model.enc2, model.bottleneck)
    assert angle_scale(model, images, batch_size=3) == approx(mag.mean().item(), torch.float32, n)


def test_offline_image_sets() -> None:
    tex = texture_images(4, 16, seed=3)
    assert tex.shape == (4, 3, 16, 16) and tex.min() >= -1 and tex.max() <= 1
    assert torch.equal(tex, texture_images(4, 16, seed=3))  # seeded: the same draws, bit for bit
    assert tex.std(dim=(2, 3)).mean() > 0.05  # structure, not flat colour
    train = skimage_images(3, 24, "train", seed=0)
    test = skimage_images(3, 24, "test", seed=0)
    assert train.shape == test.shape == (3, 3, 24, 24) and train.min() >= -1 and train.max() <= 1
    assert not torch.allclose(train, test)  # held-out photographs


def test_dataset_resolution(tmp_path: Path) -> None:
    assert resolve_dataset("auto", tmp_path, download=False) == "skimage"
    assert resolve_dataset("auto", tmp_path, download=True) == "flowers"
    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    (folder / "setid.mat").touch()
    (folder / "imagelabels.mat").touch()
    assert resolve_dataset("auto", tmp_path, download=False) == "flowers"


def test_flowers_loader_reads_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake Flowers-102 in torchvision's layout (the real .mat checksums cannot be faked offline)."""
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)], start=1):
        Image.new("RGB", (30, 20), colour).save(folder / "jpg" / f"image_{i:05d}.jpg")
    savemat(folder / "setid.mat", {"trnid": [1, 2], "valid": [3, 4], "tstid": [4, 1]})
    savemat(folder / "imagelabels.mat", {"labels": [1, 1, 2, 2]})
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    train = load_images("flowers", tmp_path, 5, 8, "train", seed=0, download=False)
    test = load_images("flowers", tmp_path, 1, 8, "test", seed=0, download=False)
    assert train.shape == (2, 3, 8, 8) and test.shape == (
        1,
        3,
        8,
        8,
    )  # train split; test from the first of "val"
    torch.testing.assert_close(train[0].mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(test[0].mean(dim=(1, 2)), torch.tensor([-1.0, -1.0, 1.0]), atol=0.05, rtol=0)


SMALL = ["--epochs", "2", "--image-size", "16", "--num-images", "24", "--batch-size", "8", "--num-test", "6"]


@pytest.mark.numerics
def test_script_runs_offline_and_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = script.parse_args(
        [*SMALL, "--grid-rows", "4", "--output-dir", str(out), "--data-root", str(tmp_path)]
    )
    result = script.main(args)
    printed = capsys.readouterr().out
    assert "scikit-image" in printed and result["verdict"] in printed  # says which data set, and the verdict
    saved = json.loads((out / "errors.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["dataset"] == "skimage" and saved["config"]["epochs"] == 2 and saved["num_test"] == 6
    for mode in (*MODES, "mean_colour_baseline"):
        mse = saved["mse"][mode]
        assert 0 < mse < 1
        assert saved["psnr_db"][mode] == pytest.approx(-10 * math.log10(mse))
    assert (
        saved["angle_scale"] > 0 and is_duration(saved["train_time_s"]) and is_duration(saved["wall_time_s"])
    )
    with Image.open(
        out / "toy_exp_ae.png"
    ) as grid:  # 4 columns × 4 rows of 16-px cells, 4-px gaps, 16-px header
        assert grid.size == (4 * 20 + 4, 16 + 4 * 20 + 4)
    assert (out / "checkpoint.pt").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


@pytest.mark.numerics
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    # exact: both runs train in this process with the same kernels and thread count, and a resumed run restores
    # the weights, optimizer and RNG state bit for bit
    common = [*SMALL, "--dataset", "textures"]
    straight = script.main(script.parse_args([*common, "--output-dir", str(tmp_path / "a")]))
    script.main(
        script.parse_args([*common, "--output-dir", str(tmp_path / "b"), "--epochs", "1"])
    )  # "killed"
    resumed = script.main(script.parse_args([*common, "--output-dir", str(tmp_path / "b")]))
    assert resumed["mse"] == straight["mse"] and resumed["final_train_loss"] == straight["final_train_loss"]
    with pytest.raises(SystemExit, match="other settings"):
        script.main(script.parse_args([*common, "--output-dir", str(tmp_path / "b"), "--lr", "0.01"]))


def test_paper_preset_and_overrides() -> None:
    args = script.parse_args(["--paper"])
    assert (args.epochs, args.image_size, args.num_images, args.batch_size) == (200, 64, 1000, 128)
    assert script.parse_args(["--paper", "--epochs", "3"]).epochs == 3
    cpu = script.parse_args([])
    assert (cpu.epochs, cpu.batch_size) == (CPU_DEFAULTS.epochs, CPU_DEFAULTS.batch_size)


def test_bad_input_gives_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        script.parse_args(["--image-size", "30"])
    assert "multiple of 8" in capsys.readouterr().err
    args = script.parse_args([*SMALL, "--dataset", "flowers", "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"Flowers-102 not found under .*--download"):
        script.main(args)
