"""Both trainers on the tiny SD2- and SDXL-shaped presets, through the same commands as SD1.5: the base is an
original-layout single file, whose architecture every command reads from it. oft-control: build, train, a
run stopped after its first step and resumed equals an uninterrupted one, parallel sampling. oft-db: prior
preservation with the base's own class-image sampler, a kill and a resume equal to an uninterrupted run, the
adapter in PEFT and merged into one file; the SD1.x-only web-UI file is refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oft.db.train as train_mod
import oft_layers
from oft.cli.control import test_oft_parallel as sampler
from oft.cli.control import train
from oft.cli.db import generate as generate_cli
from oft.cli.db import merge_adapter as merge_cli
from oft.cli.db import train_dreambooth_oft as db_cli
from oft.control.checkpoint import load_control
from oft.control.inference import output_paths
from oft.db.export import load_with_adapter
from oft.sd import build_sd, load_sd
from oft.sd.loading import peek_preset, save_single_file
from oft.specs.benchmark import BUILTIN
from tests.helpers.control import initial_model
from tests.helpers.db import write_prompts_file
from tests.helpers.numerics import EFFECT, network_terms, tol

PRESETS = ["tiny-sd2", "tiny-sdxl"]
ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]
DATA = ["--control", "synthetic", "--resolution", "32", "--synthetic_length", "2"]
TRAIN = [*ADAPTER, *DATA, "--batch_size", "2", "--num_workers", "0", "--accelerator", "cpu", "--lr", "1e-3",
         "--sample_every", "0", "--log_every", "1", "--save_every", "1"]  # fmt: skip
DB = ["--resolution", "64", "--num_class_images", "2", "--class_inference_steps", "2", "--sample_batch_size", "2",
      "--num_validation_images", "1", "--validation_inference_steps", "2", "--validation_steps", "2",
      "--checkpointing_steps", "1", "--learning_rate", "2e-3", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module", params=PRESETS)
def base(request, tmp_path_factory) -> tuple[str, Path]:
    """A tiny random SD of the family as its original single file."""
    root = tmp_path_factory.mktemp(request.param)
    return request.param, save_single_file(build_sd(request.param, seed=0), root / "sd.safetensors")


def rotations(path: Path) -> dict[str, torch.Tensor]:
    return oft_layers.adapter_state_dict(load_control(path).sd.unet)


def test_the_base_is_read_from_the_file_header(base, tmp_path):
    preset, path = base
    assert peek_preset(path) == preset and load_sd(path).preset == preset
    ckpt = save_single_file(load_sd(path), tmp_path / "sd.ckpt")
    assert peek_preset(ckpt) is None and load_sd(ckpt).preset == preset  # a .ckpt must be unpickled


@pytest.mark.slow
def test_control_trains_resumes_and_samples_on_the_base(base, tmp_path):
    preset, path = base
    ini = initial_model(tmp_path, path, *ADAPTER)
    assert load_control(ini).sd.preset == preset

    def run(out: str, *extra: str) -> Path:
        argv = [*TRAIN, "--model", str(ini), "--output_dir", str(tmp_path / out), *extra]
        return train.main(train.parse_args(argv))

    final = run("a", "--max_steps", "2")
    run("b", "--max_steps", "1")  # stopped after its first step (a checkpoint every step) ...
    resumed = run("b", "--max_steps", "2", "--resume", "auto")  # ... and resumed to 2
    expected = rotations(final)
    assert any(v.abs().max() > 0 for v in expected.values())
    for key, value in rotations(resumed).items():  # exact: one process, the same kernels and thread count
        assert torch.equal(value, expected[key]), key
    argv = [*ADAPTER, *DATA, "--steps", "2", "--num_samples", "2", "--batch", "2", "--threads", "1"]
    out = sampler.main(
        sampler.parse_args([*argv, "--output_dir", str(tmp_path / "a"), "--out_dir", str(tmp_path / "s")])
    )
    first, second = output_paths(out, 0, 2)[2:]
    a, b = (np.asarray(Image.open(p)) for p in (first, second))
    assert a.shape == (32, 32, 3) and (a != b).any()  # two seeds, two images


@pytest.fixture(scope="module")
def db_setup(base, tmp_path_factory):
    preset, path = base
    root = tmp_path_factory.mktemp(f"db-{preset}")
    cat = root / "data" / "dreambooth" / "cat"
    cat.mkdir(parents=True)
    for i, size in enumerate([(80, 64), (64, 96)]):
        a = np.full((size[1], size[0], 3), (30, 60, 200), np.uint8)
        a[10:40, 10 + 5 * i : 50, :] = (250, 120, 20)
        Image.fromarray(a).save(cat / f"{i:02d}.jpg")
    write_prompts_file(BUILTIN, root / "data" / "dreambooth" / "prompts_and_classes.txt")
    common = ["--pretrained_model", str(path), "--data_root", str(root / "data"), "--run", "160", *DB]
    return preset, path, root, common


@pytest.mark.slow
def test_dreambooth_trains_resumes_and_exports_on_the_base(db_setup, monkeypatch, tmp_path):
    preset, path, root, common = db_setup

    def args(out: str, *extra: str):
        return db_cli.parse_args(
            [*common, "--max_train_steps", "2", "--output_root", str(root / out), *extra]
        )

    full = db_cli.main(args("full"))
    info = json.loads((full.parent / "run.json").read_text())
    recipe = json.loads((root / "data" / "class_data" / "cat" / "class_images.json").read_text())
    assert info["class_images_generated"] == 2
    assert recipe["sampler"] == {"tiny-sd2": "ddim", "tiny-sdxl": "euler"}[preset]  # the base's own sampler
    real_save = train_mod.save_checkpoint

    def save_then_die(*a, **k):  # killed right after its first checkpoint
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        db_cli.main(args("killed"))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = db_cli.main(args("killed"))
    expected, got = oft_layers.read_adapter(full)[0], oft_layers.read_adapter(resumed)[0]
    assert expected.keys() == got.keys() and all(torch.equal(got[k], v) for k, v in expected.items())
    assert json.loads((resumed.parent / "run.json").read_text())["resumed_from_step"] == 1

    # exports: PEFT (loaded by PeftModel into the plain base UNet) and one merged file, both with our outputs
    def export(fmt: str, output: Path) -> Path:
        argv = ["--base", str(path), "--adapter", str(full), "--output", str(output), "--format", fmt]
        return merge_cli.main(merge_cli.parse_args(argv))

    adapted, _ = load_with_adapter(path, full, merge=False)
    cond = adapted.condition(["a qwe cat wearing a red hat"] * 2, 64, 64)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 700])
    with torch.no_grad():
        ours = adapted.unet(x, t, **cond.unet_kwargs()).sample
        plain = load_sd(path).unet(x, t, **cond.unet_kwargs()).sample
        merged = load_sd(export("single-file", tmp_path / "merged.safetensors"))
        assert merged.preset == preset and not list(oft_layers.oft_modules(merged.unet))
        from_file = merged.unet(x, t, **cond.unet_kwargs()).sample
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_unet = PeftModel.from_pretrained(
                load_sd(path).unet, export("peft", tmp_path / "peft")
            ).eval()
        theirs = peft_unet(x, t, **cond.unet_kwargs()).sample
    same = tol(torch.float32, network_terms(adapted.unet), scale=ours.abs().max())
    torch.testing.assert_close(from_file, ours, **same)
    torch.testing.assert_close(theirs, ours, **same)
    assert (ours - plain).abs().max() > EFFECT * same["atol"]
    with pytest.raises(ValueError, match="the web-UI file names SD1.x's layers"):
        export("webui", tmp_path / "ui.safetensors")
    # generate.py: the adapter in the base's diffusers pipeline (SDXL: StableDiffusionXLPipeline)
    argv = ["--base", str(path), "--adapter", str(full), "--num_images", "1", "--steps", "2", "--resolution", "64",
            "--output_dir", str(tmp_path / "gen"), "--device", "cpu"]  # fmt: skip
    (image,) = generate_cli.main(generate_cli.parse_args(argv))
    assert np.asarray(Image.open(image)).shape == (64, 64, 3)
