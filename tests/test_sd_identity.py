"""The base model's identity is a content fingerprint: copied, moved or touched weights keep it, other weights
change it, and it reads a few MB at most. Files that recorded the older path+size+mtime identity still load
on the same untouched base. A truncated base is one line naming the file and the fix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from oft.cli.control import train as train_cli
from oft.control.checkpoint import ControlCheckpointError, load_control
from oft.sd import build_sd, load_sd
from oft.sd import identity as sd_identity
from oft.sd.identity import identity_of, legacy_identity_of
from oft.sd.loading import save_single_file
from tests.helpers.control import REPO, initial_model, tiny_sd_file

ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]


def train_argv(model: Path, out: Path) -> list[str]:
    """train.py on 2 synthetic items of 32 px, one step per epoch, a checkpoint every step."""
    argv = [*ADAPTER, "--control", "synthetic", "--resolution", "32", "--synthetic_length", "2"]
    argv += ["--batch_size", "2", "--num_workers", "0", "--accelerator", "cpu", "--sample_every", "0"]
    return [*argv, "--save_every", "1", "--model", str(model), "--output_dir", str(out)]


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_copied_and_touched_bases_keep_their_identity_other_weights_do_not(tmp_path, suffix):
    base = save_single_file(build_sd("tiny", seed=0), tmp_path / f"a{suffix}")
    identity = identity_of(base)
    assert identity.startswith("fp1:")
    copy = tmp_path / "elsewhere" / f"copy{suffix}"
    copy.parent.mkdir()
    shutil.copyfile(base, copy)  # a new path and a new mtime
    os.utime(base, ns=(1, 1))  # touched
    assert identity_of(copy) == identity_of(base) == identity
    assert legacy_identity_of(copy) != legacy_identity_of(base)  # what the old identity got wrong
    # the same shapes with other values; one flipped byte
    assert identity_of(save_single_file(build_sd("tiny", seed=1), tmp_path / f"b{suffix}")) != identity
    if suffix == ".safetensors":  # saved again: the same tensor bytes, metadata in another hash-map order
        assert identity_of(save_single_file(build_sd("tiny", seed=0), tmp_path / f"c{suffix}")) == identity
    data = bytearray(base.read_bytes())
    data[-32_768] ^= 1  # inside the last of the fixed slices (the last 64 KiB)
    flipped = tmp_path / f"flipped{suffix}"
    flipped.write_bytes(bytes(data))
    assert identity_of(flipped) != identity


def test_a_diffusers_folder_is_fingerprinted_by_the_weights_it_loads(tmp_path):
    tiny = build_sd("tiny", seed=0)
    folder = tmp_path / "sd"
    for part in ("unet", "vae", "text_encoder"):
        getattr(tiny, part).save_pretrained(folder / part)
    identity = load_sd(folder).identity
    (folder / "README.md").write_text("notes")  # not a weight file
    os.utime(folder / "unet/diffusion_pytorch_model.safetensors", ns=(1, 1))
    shutil.copytree(folder, tmp_path / "copy")
    assert identity_of(folder) == identity_of(tmp_path / "copy") == identity
    build_sd("tiny", seed=1).vae.save_pretrained(folder / "vae")
    assert identity_of(folder) != identity


def test_the_fingerprint_reads_a_few_mb_of_a_large_file(tmp_path, monkeypatch):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # a sparse 4 GiB file: no disk space used
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + (4 << 30))
    read = []

    class Counting(io.FileIO):
        def readinto(self, buffer):
            n = super().readinto(buffer)
            read.append(n or 0)
            return n

    monkeypatch.setattr(
        sd_identity, "open", lambda p, mode="rb": io.BufferedReader(Counting(p)), raising=False
    )
    identity_of(path)
    assert 0 < sum(read) < 2 << 20  # 16 slices of 64 KiB plus the header and read-ahead


def test_resume_and_sampling_accept_a_copied_or_touched_base_and_refuse_another(tmp_path):
    base = tiny_sd_file(tmp_path)
    ini = initial_model(tmp_path, base, *ADAPTER)
    os.utime(base, ns=(1, 1))
    load_control(ini)  # the recorded base_path, touched
    copy = tmp_path / "copy.ckpt"
    shutil.copyfile(base, copy)
    assert load_control(ini, copy).sd.identity == load_control(ini).sd.identity  # --base <copy>
    other = tiny_sd_file(tmp_path, seed=1, name="other.ckpt")
    with pytest.raises(ControlCheckpointError, match=r"was built on base SD 'fp1:.*\(the weights differ\)"):
        load_control(ini, other)

    train, argv = train_cli, train_argv(ini, tmp_path / "run")
    train.main(train.parse_args([*argv, "--max_steps", "1"]))
    os.utime(base, ns=(2, 2))  # touched between the kill and the resume
    train.main(train.parse_args([*argv, "--max_steps", "2", "--resume", "auto"]))
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 2


def _with_legacy_identity(ini: Path, base: Path) -> Path:
    """``ini`` as a file written before fingerprints: its base recorded as path+size+mtime."""
    with safe_open(str(ini), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["base_identity"] = legacy_identity_of(base)
    legacy = ini.with_name("legacy.safetensors")
    save_file(tensors, str(legacy), metadata=meta)
    return legacy


def test_files_with_the_legacy_identity_load_on_the_same_untouched_base(tmp_path):
    base = tiny_sd_file(tmp_path)
    legacy = _with_legacy_identity(initial_model(tmp_path, base, *ADAPTER), base)
    cm = load_control(legacy)
    assert cm.sd.identity == legacy_identity_of(base)  # carried on: this run's checkpoints keep matching
    train, argv = train_cli, train_argv(legacy, tmp_path / "run")
    train.main(train.parse_args([*argv, "--max_steps", "1"]))
    train.main(train.parse_args([*argv, "--max_steps", "2", "--resume", "auto"]))  # resumes
    os.utime(base, ns=(1, 1))  # the legacy form cannot survive a touch: refused, saying why
    with pytest.raises(
        ControlCheckpointError, match=r"older path\+size\+mtime form.*copied, moved or touched"
    ):
        load_control(legacy)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_truncated_base_is_one_line_naming_the_file_and_the_fix(tmp_path, suffix):
    whole = save_single_file(build_sd("tiny"), tmp_path / f"whole{suffix}").read_bytes()
    cut = tmp_path / f"v1-5-pruned{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError) as err:
        load_sd(cut)
    message = str(err.value)
    assert "\n" not in message and f"cannot read {cut} as a " in message
    assert "truncated or corrupt" in message and "bash scripts/download_model.sh" in message


def test_a_truncated_base_on_the_command_line_is_one_line(tmp_path):
    whole = save_single_file(build_sd("tiny"), tmp_path / "whole.safetensors").read_bytes()
    cut = tmp_path / "base.safetensors"
    cut.write_bytes(whole[: len(whole) // 2])
    cmd = [sys.executable, str(REPO / "oft-control/tool_add_control_oft.py"), "--input_path", str(cut)]
    cmd += ["--output_path", str(tmp_path / "ini.safetensors"), "--adapter-only", *ADAPTER]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert run.stderr.startswith(
        f"tool_add_control_oft: cannot read {cut} as a safetensors file (SafetensorError"
    )
