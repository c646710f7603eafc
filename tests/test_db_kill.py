"""The DreamBooth trainer killed with SIGKILL at several points, then run again with the identical command: the
result is the uninterrupted run's, bit for bit (adapter, class images), and ``log.jsonl`` lists every step once.

The trainer runs as a child process (oft-db/train_dreambooth_oft.py on the tiny preset) under a small wrapper
that kills it with SIGKILL at a chosen ``os.replace`` (every file of the project appears by one: the moment a
complete temporary or checkpoint folder is about to get its name), optionally truncating the temporary first (a
kill in the middle of the write); one kill comes from outside, while it trains. No ``finally`` block, no
``atexit`` runs after SIGKILL, so this is what a pre-empted job or the OOM killer leaves behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oft_layers
from oft.common.images import list_images
from oft.db.checkpoints import rewrite_log
from oft.sd import build_sd
from oft.sd.loading import save_single_file
from tests.helpers import REPO

# argv: POINT SCRIPT ARGS...; POINT is "none", "kill:NAME", "truncate:NAME" (kill at the rename onto NAME,
# after cutting the temporary to half) or "checkpoint" (kill at the first checkpoint folder's rename, after
# cutting its state.pt to half)
KILLER = r"""
import os, runpy, signal, sys
point, script, *argv = sys.argv[1:]
kind, _, target = point.partition(":")
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    name = os.path.basename(os.fspath(dst))
    if name.startswith("checkpoint-") if kind == "checkpoint" else name == target:  # "none": target ""
        cut = os.path.join(src, "state.pt") if kind == "checkpoint" else src
        if kind != "kill":
            os.truncate(cut, os.path.getsize(cut) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""
SCRIPT = REPO / "oft-db" / "train_dreambooth_oft.py"
STEPS = 6
# one thread and the FLOP rule for the OFT path (no timing): every process computes exactly the same way
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OFT_PATH_POLICY": "flops",
}


def make_inputs(root: Path) -> Path:
    """A tiny SD checkpoint and 3 synthetic subject photos of different sizes under ``root``."""
    ckpt = save_single_file(build_sd("tiny", seed=3), root / "tiny.ckpt")
    photos = root / "cat"
    photos.mkdir()
    for i, size in enumerate([(80, 64), (64, 96), (72, 72)]):
        a = np.full((size[1], size[0], 3), (30, 60, 200), np.uint8)
        a[10:40, 10 + 5 * i : 50, :] = (250, 120, 20)
        Image.fromarray(a).save(photos / f"{i:02d}.jpg")
    return ckpt


def command(root: Path, run: str, point: str = "none") -> list[str]:
    return [
        sys.executable, "-c", KILLER, point, str(SCRIPT),
        "--pretrained_model", str(root / "tiny.ckpt"), "--instance_data_dir", str(root / "cat"),
        "--instance_prompt", "a photo of qwe cat", "--class_prompt", "a photo of cat",
        "--class_data_dir", str(root / run / "class"), "--output_dir", str(root / run / "out"),
        "--resolution", "64", "--num_class_images", "3", "--sample_batch_size", "2",
        "--class_inference_steps", "3", "--num_validation_images", "0", "--checkpointing_steps", "1",
        "--max_train_steps", str(STEPS), "--learning_rate", "2e-3", "--no-progress",
    ]  # fmt: skip


def run(cmd: list[str], expect: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock")


@pytest.fixture
def tmpdir_elsewhere(tmp_path, monkeypatch):
    """$TMPDIR on another file system (/dev/shm, tmpfs), as on clusters; it must stay empty."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("needs /dev/shm (tmpfs) for a $TMPDIR on another file system")
    folder = Path(tempfile.mkdtemp(prefix="oft-test-tmpdir-", dir="/dev/shm"))
    assert os.stat(folder).st_dev != os.stat(tmp_path).st_dev
    # torch's compile cache would make an (empty) folder in $TMPDIR at import: not this project's file
    monkeypatch.setitem(ENV, "TMPDIR", str(folder))
    monkeypatch.setitem(ENV, "TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_kill_9_anywhere_then_rerun_equals_uninterrupted(tmp_path, tmpdir_elsewhere):
    make_inputs(tmp_path)
    # the uninterrupted run, alongside the first kills (one thread each: 2 cores)
    reference = subprocess.Popen(command(tmp_path, "ref"), env=ENV, stderr=open(tmp_path / "ref.err", "w"))
    killed = -signal.SIGKILL
    cls, out = tmp_path / "run" / "class", tmp_path / "run" / "out"

    # 1. killed while writing class image 1 (its temporary cut to half): image 0 is there, 1 only as a hidden
    #    truncated temporary, which the next run must neither count nor read
    run(command(tmp_path, "run", "truncate:0001.jpg"), killed)
    assert [p.name for p in list_images(cls)] == ["0000.jpg"] and hidden(cls)
    # 2. killed right before class image 2 gets its name (a complete temporary)
    run(command(tmp_path, "run", "kill:0002.jpg"), killed)
    assert [p.name for p in list_images(cls)] == ["0000.jpg", "0001.jpg"] and hidden(cls)
    # 3. killed from outside while training
    proc = subprocess.Popen(command(tmp_path, "run"), env=ENV, stderr=open(tmp_path / "run.err", "w"))
    deadline = time.monotonic() + 240
    while not ((out / "log.jsonl").is_file() and len(complete_lines(out / "log.jsonl")) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.err").read_text()[-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == killed
    assert not (out / "adapter.safetensors").exists()
    # 4. resumed by the identical command (no --resume_from_checkpoint), killed while writing its first
    #    checkpoint (state.pt cut to half, the folder not yet renamed): that step is logged, not checkpointed
    run(command(tmp_path, "run", "checkpoint"), killed)
    assert list(out.glob(".tmp-checkpoint-*"))
    # 5. the identical command again, to the end
    run(command(tmp_path, "run"), 0)
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-3000:]

    info = json.loads((out / "run.json").read_text())
    assert info["resumed_from_step"] >= 1 and info["class_images_generated"] == 0
    assert logged_steps(out) == list(range(1, STEPS + 1))
    ref_cls = tmp_path / "ref" / "class"
    assert (
        [p.name for p in list_images(cls)]
        == [p.name for p in list_images(ref_cls)]
        == [
            "0000.jpg",
            "0001.jpg",
            "0002.jpg",
        ]
    )
    for p in list_images(ref_cls):
        assert (cls / p.name).read_bytes() == p.read_bytes(), p.name
    assert not hidden(cls)  # the killed writers' temporaries were cleaned up under the folder lock
    final = oft_layers.read_adapter(out / "adapter.safetensors")[0]
    expected = oft_layers.read_adapter(tmp_path / "ref" / "out" / "adapter.safetensors")[0]
    assert final.keys() == expected.keys()
    for k, v in expected.items():  # same kernels, one thread, the FLOP-rule path: exactly equal
        assert torch.equal(final[k], v), k
    assert not list(out.glob("*checkpoint-*"))  # finished: checkpoints and torn checkpoint writes removed
    assert os.listdir(tmpdir_elsewhere) == []  # nothing was written in $TMPDIR


def complete_lines(path: Path) -> list[str]:
    """The complete lines of a file that is being written."""
    text = path.read_text()
    return text.splitlines()[: text.count("\n")]


def test_list_images_skips_temporaries_and_hidden_files(tmp_path):
    for name in [
        "0000.png", "0003.PNG", "photo.jpeg",
        ".0001.png.3f9a2c11.tmp.png",  # atomic_write's temporary, older naming (kept the data suffix)
        ".0001.png.3f9a2c11.tmp",  # and newer
        "._0002.png", ".DS_Store", "notes.txt", "0004.png.part",
    ]:  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["0000.png", "0003.PNG", "photo.jpeg"]


def test_rewrite_log_keeps_each_step_once(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"step": s, "loss": float(i)} for i, s in enumerate([1, 2, 3, 4, 5, 5, 6, 3, 4])]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')  # a line cut by a kill
    assert rewrite_log(log, 4) == 4
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    # steps 3 and 4 were trained again after a resume: the later records are the ones that led on
    assert [(r["step"], r["loss"]) for r in kept] == [(1, 0.0), (2, 1.0), (3, 7.0), (4, 8.0)]
    assert rewrite_log(log, 0) == 0 and log.read_text() == ""
    assert rewrite_log(tmp_path / "new.jsonl", 3) == 0 and (tmp_path / "new.jsonl").read_text() == ""
