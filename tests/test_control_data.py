"""oft-control data: hint encoder shape/size/zero start, the synthetic task, the on-disk task readers and the
messages users see for bad data, shuffling, and the flag table."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from oft.cli.flags import add_options, options_from
from oft.control.config import Experiment, Training
from oft.control.data import ControlDataset, DataError, SyntheticDataset, build_dataset
from oft.control.hint import HintEncoder
from oft.control.training import ControlDataModule
from oft.specs import synthetic
from tests.helpers.control import make_task_tree


def test_hint_encoder_size_shape_and_zero_start():
    enc = HintEncoder(320)
    assert sum(p.numel() for p in enc.parameters()) == 1_086_480  # SPEC §2/§3
    out = enc(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 320, 8, 6)
    assert torch.count_nonzero(out) == 0  # zero conv: the controlled model starts as the base model
    with torch.no_grad():
        enc.zero_conv.weight.normal_()
    assert torch.count_nonzero(enc(torch.rand(1, 3, 16, 16))) > 0
    with pytest.raises(ValueError, match="multiple of 8"):
        enc(torch.rand(1, 3, 20, 16))


def test_synthetic_items_are_deterministic_and_consistent():
    target, caption, controls, truth = synthetic.make_item(3, seed=7, size=64)
    again = synthetic.make_item(3, seed=7, size=64)
    assert np.array_equal(target, again[0]) and caption == again[1]
    assert not np.array_equal(target, synthetic.make_item(4, seed=7, size=64)[0])
    assert caption.split()[1:] == [
        truth["colour"],
        truth["shape"],
        "on",
        "a",
        truth["background"],
        "background",
    ]
    # the caption's colours are the image's: background in the corner, shape colour at the mask's pixels
    assert tuple(target[0, 0]) == synthetic.COLOURS[truth["background"]]
    mask = (controls["segm"] == synthetic.SEGM_PALETTE[truth["shape"]]).all(-1)
    assert mask.sum() > 0 and (target[mask] == synthetic.COLOURS[truth["colour"]]).all()
    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(controls["canny"], cv2.Canny(gray, 100, 200))
    assert controls["canny"].any()  # colour pairs are chosen so the edges exist
    for i in range(40):  # any size works and every item has an edge
        assert synthetic.make_item(i, seed=1, size=32)[2]["canny"].any()


def test_synthetic_dataset_items_and_splits():
    ds = SyntheticDataset("train", length=5, size=32, hint_kind="segm", seed=0)
    item = ds[2]
    assert item["jpg"].shape == (3, 32, 32) and item["hint"].shape == (3, 32, 32)
    assert (
        item["jpg"].min() >= -1
        and item["jpg"].max() <= 1
        and item["hint"].min() >= 0
        and item["hint"].max() <= 1
    )
    assert not torch.equal(
        SyntheticDataset("val", 5, 32)[2]["jpg"], SyntheticDataset("train", 5, 32)[2]["jpg"]
    )
    with pytest.raises(ValueError, match="--synthetic_hint must be one of"):
        SyntheticDataset(hint_kind="depth")


@pytest.mark.parametrize("task", ["segm", "landmark", "canny5k"])
def test_task_reader_reads_reference_layout(tmp_path, task):
    captions = make_task_tree(tmp_path, task, 3, size=32)
    ds = ControlDataset(task, "train", tmp_path, resolution=16)  # also resizes
    assert len(ds) == 3 and [ds[i]["txt"] for i in range(3)] == captions
    target, _, controls, _ = synthetic.make_item(1, 0, 32)
    item = ds[1]
    assert item["jpg"].shape == (3, 16, 16)
    expected = cv2.resize(controls["segm"], (16, 16), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(item["hint"], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_missing_folder_and_caption_file_messages(tmp_path):
    with pytest.raises(DataError, match=r"missing data folder .*ADE20K.*dataset_setup_control_ade20k\.sh"):
        ControlDataset("segm", "train", tmp_path)
    (tmp_path / "LAION").mkdir()
    with pytest.raises(
        DataError, match=r"missing caption file .*prompt_train_blip\.json.*no download script"
    ):
        ControlDataset("sketch", "train", tmp_path)
    (tmp_path / "ADE20K" / "train").mkdir(parents=True)
    (tmp_path / "ADE20K" / "train" / "prompt_train_blip.json").write_text("{not json\n")
    with pytest.raises(DataError, match=r"not a jsonl caption file.*dataset_setup_control_ade20k\.sh"):
        ControlDataset("segm", "train", tmp_path)


def test_missing_item_files_are_counted_and_undecodable_images_skipped(tmp_path):
    make_task_tree(tmp_path, "segm", 4, size=16)
    (tmp_path / "ADE20K/train/segm/2.png").unlink()
    with pytest.warns(
        UserWarning, match=r"skipping 1 of 4 items whose files are missing \(first: .*segm/2\.png\)"
    ):
        ds = ControlDataset("segm", "train", tmp_path, resolution=16)
    assert len(ds) == 3
    (tmp_path / "ADE20K/train/color/1.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"cannot decode image .*color/1\.png; skipped \(1 so far"):
        item = ds[1]
    assert item["txt"] == ds[2]["txt"] and ds.skipped == 1  # the next readable item stands in
    for i in range(4):
        (tmp_path / f"ADE20K/train/segm/{i}.png").unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"none of the 4 items .* has its files"):
        ControlDataset("segm", "train", tmp_path)


def test_build_dataset_names_unknown_task():
    with pytest.raises(ValueError, match=r"unknown control task 'edges'.*synthetic"):
        build_dataset("edges", "train")


def test_training_order_is_shuffled_and_a_function_of_seed_and_epoch():
    ds = SyntheticDataset("train", length=12, size=16)
    dm = ControlDataModule(ds, batch_size=12, num_workers=0, seed=3)

    def order(epoch: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))["index"].tolist()

    assert order(0) != list(range(12)) and sorted(order(0)) == list(range(12))
    assert order(0) == order(0) and order(0) != order(1)


def test_configs_generate_both_spellings_and_show_paper_defaults():
    parser = argparse.ArgumentParser()
    add_options(parser, Experiment, only=("r", "eps", "coft", "block_share", "data_root"))
    add_options(parser, Training, only=("lr", "timestep_range"))
    args = parser.parse_args(["--block-share", "--coft"])
    assert args.block_share and args.coft and args.r == Experiment.r == 4 and args.lr == Training.lr == 1e-5
    assert parser.parse_args(["--block_share"]).block_share
    assert "[default: 1e-05]" in parser.format_help()
    both = [parser.parse_args([flag, "d"]).data_root for flag in ("--data-root", "--data_root")]
    assert both == ["d", "d"]
    parsed = parser.parse_args(["--timestep_range", "400", "900", "--r", "8"])
    assert options_from(Training, parsed).timestep_range == (400, 900)
    assert options_from(Experiment, parsed).r == 8
