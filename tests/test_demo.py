"""The CPU demo: pretraining pieces, the LoRA baseline, the whole pipeline at reduced scale, the committed base."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import pytest
import torch

from oft.cli import demo as demo_cli
from oft.cli import pretrain_tiny_base as pretrain_tiny_base_cli
from oft.control.checkpoint import build_initial
from oft.control.training import snapshot_path
from oft.demo.base import PretrainConfig, calibrate_latent_scale, train_unet, validation_images
from oft.demo.claims import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, energy_tolerance
from oft.demo.config import DEFAULT_BASE, DemoConfig
from oft.demo.lora import LoRAControl, load_lora_control, lora_modules, lora_parameters_per_rank, matched_rank
from oft.demo.pipeline import Demo
from oft.demo.report import METHODS, read_losses
from oft.sd import build_sd, load_sd
from tests.helpers import REPO
from tests.helpers.control import tiny_sd_file
from tests.helpers.numerics import EFFECT, approx, is_duration, network_terms, tol


@pytest.mark.numerics
@torch.no_grad()
def test_latent_calibration_gives_unit_scaled_latents_and_keeps_the_autoencoder():
    vae = build_sd("tiny", seed=1).vae.eval()
    images = validation_images(PretrainConfig(size=32), 16)
    before = vae.decode(vae.encode(images).latent_dist.mean).sample
    c = calibrate_latent_scale(vae, images, 0.18215)
    posterior = vae.encode(images).latent_dist
    # the rescaled quant_conv weights are rounded once; std sums every latent
    std_terms = posterior.mean.numel() + network_terms(vae.quant_conv)
    assert float(posterior.mean.std() * 0.18215) == approx(1.0, torch.float32, std_terms)
    assert c != pytest.approx(1.0)
    # weights × c and ÷ c are rounded: the decoded images move by the autoencoder's rounding only
    terms = network_terms(vae.encoder, vae.quant_conv, vae.post_quant_conv, vae.decoder)
    torch.testing.assert_close(
        vae.decode(posterior.mean).sample, before, **tol(torch.float32, terms, scale=before.abs().max())
    )


def _unet_out(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample


@pytest.mark.numerics
def test_lora_baseline_starts_at_the_base_counts_its_parameters_and_merges_exactly(tmp_path):
    base = tiny_sd_file(tmp_path)
    init = build_initial(base, tmp_path / "init.safetensors", r=4, eps=None, coft=False, adapter_only=True)
    reference = _unet_out(load_sd(base).unet)
    module = LoRAControl(str(init), rank=2)
    # B = 0: exactly the base (each LoRA layer runs its base layer's kernel and adds exact zeros)
    assert torch.equal(_unet_out(module.unet), reference)
    per_rank = lora_parameters_per_rank(module.unet)
    # tiny UNet: 4 transformer blocks (widths 32, 32, 32 at level 0, 64 in the middle), GEGLU inner 4 * 2 * width
    assert per_rank == 3 * (8 * 64 + 32 + 256) + (6 * 128 + 2 * (32 + 64) + 64 + 512)
    assert module.adapter_parameters() == 2 * per_rank
    assert matched_rank(module.unet, 3 * per_rank + 10) == 3 and matched_rank(module.unet, 1) == 1
    with torch.no_grad():  # a non-zero adapter, so merging is actually tested
        for _, layer in lora_modules(module.unet):
            layer.lora_B["default"].weight.normal_(0, 0.05)
    trained = _unet_out(module.unet)
    # merged W + s·B·A is rounded once, the LoRA layers round on the fly: equal up to the UNet's rounding
    same = tol(torch.float32, network_terms(module.unet), scale=trained.abs().max())
    assert (trained - reference).abs().max() > EFFECT * same["atol"]
    cm = load_lora_control(module.export(tmp_path / "lora.safetensors"))  # a file round trip, LoRA merged
    assert not lora_modules(cm.sd.unet)  # plain layers: sampling costs exactly the base's
    torch.testing.assert_close(_unet_out(cm.sd.unet), trained, **same)
    assert torch.equal(cm.hint.zero_conv.weight, module.hint.zero_conv.weight)


DEMO_ARGV = ["--steps", "3", "--val_items", "3", "--sample_steps", "2", "--resolution", "32", "--train_items", "8",
             "--batch_size", "2", "--threads", "1", "--timestep_range", "100", "200", "--seeds", "2"]  # fmt: skip


def installed_copy(tmp_path: Path) -> Path:
    """A fresh venv outside the checkout with the project installed from its wheel (``pip install .``, not
    editable) as a user gets it: console commands in ``<venv>/bin``, the tiny base as package data. Its
    dependencies come from the running environment through one .pth line (installing torch again would take
    minutes); the project itself only from the wheel."""
    skip = shutil.ignore_patterns(".*", "outputs", "data", "models", "build", "*.egg-info", "__pycache__")
    source, wheels, venv = (
        shutil.copytree(REPO, tmp_path / "source", ignore=skip),
        tmp_path / "wheels",
        tmp_path / "venv",
    )
    pip = [sys.executable, "-m", "pip"]
    for cmd in ([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                [sys.executable, "-m", "venv", "--without-pip", str(venv)]):  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_installed_demo_command_writes_every_artefact_and_a_rerun_reuses_its_stages(tmp_path, capsys):
    venv, elsewhere, out = installed_copy(tmp_path), tmp_path / "elsewhere", tmp_path / "demo"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import oft; print(oft.__file__)"], env=env,
                           cwd=elsewhere, capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed package, not the checkout
    # the default base: the tiny base shipped as package data
    run = subprocess.run([str(venv / "bin" / "oft-demo"), *DEMO_ARGV, "--out_dir", str(out)], env=env,
                         cwd=elsewhere, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(label in run.stdout for label in ("base (no control)", "LoRA", "OFT", "COFT", "canny F1"))

    saved = json.loads((out / "results.json").read_text())
    assert Path(saved["config"]["base"]).is_relative_to(venv)
    assert set(saved["methods"]) == set(METHODS)
    assert saved["config"]["timestep_range"] == [100, 200]
    toy, sd15 = saved["proportions"]["toy"], saved["proportions"]["sd15"]
    assert (sd15["adapter"], sd15["hint_encoder"], sd15["block"]) == (13_144_928, 1_086_480, 80)
    # the toy's proportions (r = 1, hint channels x 0.1): rotations outweigh the hint encoder, as on SD1.5, and
    # COFT's eps is the one that gives its 32-wide blocks SD1.5's per-entry budget
    assert toy["adapter"] == saved["methods"]["coft"]["parameters"]["adapter"] and toy["block"] == 32
    assert toy["hint_encoder"] == saved["methods"]["coft"]["parameters"]["hint"] == 11_311
    assert toy["adapter_to_hint"] > 1 and toy["r"] == 1
    assert (
        toy["per_entry_budget"] == pytest.approx(sd15["per_entry_budget"]) == pytest.approx(toy["eps"] * 32)
    )
    assert "per entry" in run.stdout
    energy = saved["energy_change"]
    assert set(energy) == {"lora", "oft", "coft", "tolerance"}
    assert all(energy[m]["layers"] == 36 for m in ("lora", "oft", "coft"))
    assert energy["tolerance"] == energy_tolerance(64)  # the widest block: the 64-wide middle level
    assert energy["oft"]["max"] <= energy["tolerance"] and energy["coft"]["max"] <= energy["tolerance"]
    assert energy["lora"]["max"] > energy["tolerance"]
    assert "hyperspherical energy" in run.stdout
    demo = Demo(demo_cli.parse_args([*DEMO_ARGV, "--out_dir", str(out)]).config)
    assert saved["seeds"] == demo.seeds == [0, 1]
    for m, s in itertools.product(("lora", "oft", "coft"), demo.seeds):  # every run on the same timesteps
        hparams = (demo.run_dir(m, s) / "logs" / "csv" / "version_0" / "hparams.yaml").read_text()
        assert "timestep_range" in hparams and "100" in hparams and "200" in hparams
        assert demo.final_file(m, s).is_file()
        assert [step for step, _ in read_losses(demo.run_dir(m, s))][-1] >= 1  # a logged loss per run
        assert is_duration(saved["timings"][f"train {m} seed {s}"]["cpu_s"])
        # the learning curve: a snapshot every step (3 steps // 4, at least 1), sampled and scored before the end
        assert [snapshot_path(demo.run_dir(m, s), k).is_file() for k in (1, 2, 3)] == [True] * 3
        assert demo.curve_steps == [1, 2]
        run_s, base = saved["methods"][m]["per_seed"][str(s)], saved["methods"]["base"]["per_seed"][str(s)]
        curve = run_s["curve"]
        assert list(curve) == ["0", "1", "2", "3"] and curve["0"] == base["f1"] and curve["3"] == run_s["f1"]
        assert run_s["early_f1"] == pytest.approx((curve["1"] + curve["2"]) / 2)
        assert (
            run_s["degradation"] == pytest.approx(run_s["f1"] - max(curve.values()))
            and run_s["degradation"] <= 0
        )
        assert (demo.curve_dir(m, s, 1) / "eval_canny.json").is_file() and isinstance(
            run_s["collapsed"], bool
        )
    for m, r in saved["methods"].items():
        for s in demo.seeds:
            run_s = r["per_seed"][str(s)]
            assert 0 <= run_s["iou"] <= run_s["f1"] <= 1  # F1 = 2 IoU / (1 + IoU) >= IoU per image
            assert run_s["prompt"]["images"] == 3 and 0 <= run_s["prompt"]["both"] <= 1
            assert (demo.samples_dir(m, s) / "eval_canny.json").is_file()
            assert len(list((demo.samples_dir(m, s) / "results").glob("result_*_0.png"))) == 3
        f1 = [r["per_seed"][str(s)]["f1"] for s in demo.seeds]
        assert r["summary"]["f1"]["mean"] == pytest.approx(sum(f1) / 2) and r["summary"]["f1"]["n"] == 2
    for pair in ("oft-lora", "coft-lora"):
        d = saved["paired"][pair]["f1"]
        method = pair.split("-")[0]
        diffs = [saved["methods"][method]["per_seed"][str(s)]["f1"] - saved["methods"]["lora"]["per_seed"][str(s)]["f1"]
                 for s in demo.seeds]  # fmt: skip
        assert d["mean"] == pytest.approx(sum(diffs) / 2) and d["lo"] <= d["mean"] <= d["hi"] and d["n"] == 2
    assert "paired by seed" in run.stdout
    params = saved["methods"]
    assert params["base"]["parameters"] == {"adapter": 0, "hint": 0}
    assert params["oft"]["parameters"] == params["coft"]["parameters"]
    oft, lora = params["oft"]["parameters"]["adapter"], params["lora"]["parameters"]
    per_rank = lora["adapter"] // lora["rank"]
    assert abs(lora["adapter"] - oft) <= per_rank / 2  # rank-matched
    assert lora["hint"] == params["oft"]["parameters"]["hint"] > 0
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape == (16 + 3 * (96 + 2), 6 * (96 + 2), 3)  # 3 items x (hint, target, 4 methods), 32 px x3
    assert cv2.imread(str(out / "loss.png")).shape == (360, 640, 3)
    assert cv2.imread(str(out / "curves.png")).shape == (360, 640, 3)
    # table: header, rule, four methods, blank, two pairs; blank; verdict: title, 10 claim rows, collapses
    assert (out / "results.md").read_text().count("\n") == 9 + 1 + 12
    assert len(saved["claims"]) == 10 and {c["verdict"] for c in saved["claims"]} <= {
        SUPPORTED,
        NOT_SUPPORTED,
        INCONCLUSIVE,
    }
    assert set(saved["collapsed"]) == {"lora", "oft", "coft"} and "claims of the paper" in run.stdout

    # the same command in-process (the checkout's package) trains and samples nothing again, same numbers
    finals = {
        (m, s): os.stat(demo.final_file(m, s)).st_mtime_ns
        for m in ("lora", "oft", "coft")
        for s in demo.seeds
    }
    again = demo_cli.main(demo_cli.parse_args([*DEMO_ARGV, "--out_dir", str(out)]))
    assert "reusing" in capsys.readouterr().out
    assert {k: os.stat(demo.final_file(*k)).st_mtime_ns for k in finals} == finals
    assert again["methods"] == saved["methods"] and again["timings"] == saved["timings"]
    # and a fresh folder with the first seed only repeats that seed's numbers exactly (same machine, 1 thread)
    alone = demo_cli.main(
        demo_cli.parse_args([*DEMO_ARGV, "--seeds", "1", "--out_dir", str(tmp_path / "alone")])
    )
    for m in METHODS:
        assert alone["methods"][m]["per_seed"]["0"] == saved["methods"][m]["per_seed"]["0"], m


def test_demo_refuses_a_missing_base_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_tiny_base.py"):
        Demo(DemoConfig(base=tmp_path / "nope.safetensors"))
    with pytest.raises(SystemExit):
        demo_cli.parse_args(["--resolution", "30"])


def test_pretrain_script_reduced_writes_a_loadable_base_and_reuses_stages(tmp_path):
    script = pretrain_tiny_base_cli
    out = tmp_path / "base" / "tiny.safetensors"
    argv = ["--out", str(out), "--work_dir", str(tmp_path / "work"), "--size", "32", "--vae_steps", "2",
            "--vae_batch", "2", "--unet_steps", "2", "--unet_batch", "2", "--eval_items", "2"]  # fmt: skip
    report = script.main(script.parse_args(argv))
    sd = load_sd(out)
    assert sd.preset == "tiny"
    assert set(report["colour_accuracy"]) == {"shape_colour", "background_colour", "both", "images"}
    assert report["colour_accuracy"]["images"] == 2
    assert json.loads(out.with_suffix(".json").read_text())["config"]["unet_steps"] == 2
    vae_stamp, out_stamp = (tmp_path / "work" / "vae.safetensors").stat().st_mtime_ns, out.stat().st_mtime_ns
    script.main(script.parse_args(argv))
    assert (tmp_path / "work" / "vae.safetensors").stat().st_mtime_ns == vae_stamp
    assert out.stat().st_mtime_ns == out_stamp


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_pretraining_updates_the_text_encoder_only_when_asked(train_text_encoder):
    sd = build_sd("tiny", seed=0).freeze()
    before = {
        n: {k: v.clone() for k, v in getattr(sd, n).state_dict().items()} for n in ("unet", "text_encoder")
    }
    cfg = PretrainConfig(size=32, unet_steps=1, unet_batch=2, train_text_encoder=train_text_encoder)
    train_unet(sd, cfg)
    changed = {
        n: any(not torch.equal(v, getattr(sd, n).state_dict()[k]) for k, v in before[n].items())
        for n in before
    }
    assert changed == {"unet": True, "text_encoder": train_text_encoder}
    assert not any(p.requires_grad for p in sd.text_encoder.parameters())  # frozen again afterwards


@pytest.mark.skipif(not DEFAULT_BASE.is_file(), reason="the committed tiny base is not in this checkout")
def test_committed_base_is_small_loads_as_sd_and_records_its_recipe():
    assert DEFAULT_BASE.stat().st_size < 20 * 2**20
    sd = load_sd(DEFAULT_BASE)
    assert sd.preset == "tiny"
    report = json.loads(DEFAULT_BASE.with_suffix(".json").read_text())
    assert report["config"] == json.loads(json.dumps(PretrainConfig().__dict__))
    assert 0 <= report["colour_accuracy"]["both"] <= 1
