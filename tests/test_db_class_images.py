"""Class images made as the reference made them by default (PNDM 50, CFG 7.5, float16 on a GPU, JPEG), DDIM/PNG
as the option; and --reference_schedule, the reference's 10,005 steps."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from oft.cli.db import train_dreambooth_oft as train_cli
from oft.common.images import list_images
from oft.db.class_images import class_recipe, ensure_class_images
from oft.db.config import DreamBoothConfig
from oft.sd import build_sd
from oft.specs.sampling import DREAMBOOTH_CLASS, DREAMBOOTH_CLASS_DDIM, SamplerPreset


def test_reference_recipe_is_the_default():
    cfg = DreamBoothConfig()
    assert cfg.class_images == "reference" and cfg.num_class_images == 200 and cfg.class_inference_steps == 50
    reference = class_recipe(cfg.class_images)
    assert reference.sampling == DREAMBOOTH_CLASS == SamplerPreset("pndm", 50, 7.5)
    assert reference.suffix == ".jpg"
    # the stock pipeline's torch_dtype: float16 on a GPU whatever the run's dtype, float32 on a CPU
    assert reference.dtype(torch.device("cuda"), torch.float32) == torch.float16
    assert reference.dtype(torch.device("cpu"), torch.bfloat16) == torch.float32
    ddim = class_recipe("ddim")
    assert ddim.sampling == DREAMBOOTH_CLASS_DDIM == SamplerPreset("ddim", 50, 7.5) and ddim.suffix == ".png"
    assert ddim.dtype(torch.device("cuda"), torch.bfloat16) == torch.bfloat16


def few_steps(name: str):
    recipe = class_recipe(name)
    return replace(recipe, sampling=replace(recipe.sampling, steps=2))


@pytest.fixture(scope="module")
def models():
    return build_sd("tiny", seed=3)


def test_reference_recipe_writes_jpeg_and_ddim_png(models, tmp_path):
    made = {}
    for name in ("reference", "ddim"):
        folder = tmp_path / name
        kwargs = {"size": 64, "batch_size": 2, "recipe": few_steps(name), "progress": False}
        assert ensure_class_images(models, folder, "a photo of cat", 3, **kwargs) == 3
        assert ensure_class_images(models, folder, "a photo of cat", 3, **kwargs) == 0  # cached
        suffix = class_recipe(name).suffix
        assert [p.name for p in list_images(folder)] == [f"000{k}{suffix}" for k in range(3)]
        with Image.open(folder / f"0000{suffix}") as im:
            assert im.format == {".jpg": "JPEG", ".png": "PNG"}[suffix] and im.size == (64, 64)
            made[name] = np.asarray(im.convert("RGB"), dtype=np.float32)
        meta = json.loads((folder / "class_images.json").read_text())
        assert (meta["sampler"], meta["suffix"], meta["dtype"]) == (
            class_recipe(name).sampling.sampler,
            suffix,
            "torch.float32",  # a CPU: no float16 there
        )
    # PNDM and DDIM from the same seeds: other samplers, other images (far beyond JPEG's loss)
    assert np.abs(made["reference"] - made["ddim"]).mean() > 10
    # a cache made with one recipe is refused for the other
    with pytest.raises(ValueError, match="sampler 'ddim' .*not 'pndm'.*--class_images"):
        ensure_class_images(
            models, tmp_path / "ddim", "a photo of cat", 3, size=64, recipe=few_steps("reference")
        )


def test_class_images_flag_selects_the_recipe():
    assert train_cli.parse_args([]).class_images == "reference"
    assert train_cli.parse_args(["--class_images", "ddim"]).class_images == "ddim"
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--class_images", "png"])


def test_reference_schedule_flag(capsys):
    assert DreamBoothConfig().max_train_steps == 2005
    assert DreamBoothConfig(reference_schedule=True).max_train_steps == 10005
    assert DreamBoothConfig(reference_schedule=True, max_train_steps=10005).max_train_steps == 10005
    with pytest.raises(
        ValueError, match="--reference_schedule trains 10005 steps: drop --max_train_steps 400"
    ):
        DreamBoothConfig(reference_schedule=True, max_train_steps=400)
    train_cli.main(train_cli.parse_args(["--reference_schedule", "--dry-run"]))
    out = capsys.readouterr().out
    assert "max_train_steps: 10005" in out and "reference_schedule: True" in out
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--reference_schedule" in help_text and "train 10,005 steps" in help_text
    assert "[default: 2005]" in help_text
