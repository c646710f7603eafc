"""oft-control training survives kill -9 at any point and bad files end in one line.

The reference run and the killed runs are subprocesses of ``tests/train_driver.py`` (the real ``train.py``
``__main__`` with faults injected at named points of a checkpoint save), one thread each, with ``$TMPDIR`` on
another file system (/dev/shm, tmpfs), as on clusters where Lightning's own save copied the file across and a
kill left a 0-byte last.ckpt.
"""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oft.cli.control import test_oft_parallel as sampler
from oft.cli.control import tool_add_control_oft as tool
from oft.cli.control import train
from oft.cli.control import train_with_norm as norm
from oft.cli.run import run_main
from oft.common.files import temporaries
from tests.helpers.control import REPO, initial_model, tiny_sd_file

ADAPTER = ["--r=4", "--eps=1e-3", "--coft"]
# one batch per epoch: every checkpoint (one per step) lies at an epoch boundary
TRAIN = [
    *ADAPTER,
    *("--control", "synthetic", "--resolution", "32", "--synthetic_length", "2", "--batch_size", "2"),
    *("--num_workers", "0", "--accelerator", "cpu", "--lr", "1e-3", "--sample_every", "0"),
    *("--log_every", "1", "--save_every", "1", "--max_steps", "8"),
]
STEPS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny base and initial model, a $TMPDIR on another file system, and one uninterrupted run."""
    root = tmp_path_factory.mktemp("kill")
    if not Path("/dev/shm").is_dir():
        pytest.skip("needs /dev/shm (tmpfs) for a $TMPDIR on another file system")
    tmpdir = Path(tempfile.mkdtemp(prefix="oft-test-tmpdir-", dir="/dev/shm"))
    try:
        assert os.stat(tmpdir).st_dev != os.stat(root).st_dev  # another file system: a move is a copy
        ini = initial_model(root, tiny_sd_file(root), *ADAPTER)
        s = {"root": root, "ini": ini, "tmpdir": tmpdir, "audit": root / "tmpdir_writes.txt"}
        started = time.monotonic()
        proc = run(s, "reference")
        s["seconds"] = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield s
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def run(s, out: str, timeout: float = 300, kill_after: float | None = None, **faults: str):
    """``train.py`` on ``<root>/<out>`` through the driver; ``faults``: its OFT_TEST_* variables."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "OFT_PATH_POLICY": "flops",  # no timing: every process computes (and rounds) the same way
        "TMPDIR": str(s["tmpdir"]),
        # torch's compile cache would make an (empty) folder in $TMPDIR at import; it is not ours to move
        "TORCHINDUCTOR_CACHE_DIR": str(s["root"] / "inductor"),
        "OFT_TEST_AUDIT_TMPDIR": str(s["audit"]),
        **{f"OFT_TEST_{k.upper()}": v for k, v in faults.items()},
    }
    cmd = [
        sys.executable,
        str(REPO / "tests/helpers/train_driver.py"),
        str(REPO / "oft-control/train.py"),
        *TRAIN,
    ]
    cmd += ["--model", str(s["ini"]), "--output_dir", str(s["root"] / out)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            proc.kill()
            raise
        proc.kill()  # SIGKILL from outside, at a random moment
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def newest_complete(ckpt_dir: Path) -> int:
    """The step a resume would continue from: last.ckpt if it loads, else last.prev.ckpt."""
    for name in ("last.ckpt", "last.prev.ckpt"):
        try:
            return step(ckpt_dir / name)
        except Exception:  # noqa: BLE001 - missing or unreadable: the next one
            continue
    raise AssertionError(f"no complete checkpoint in {ckpt_dir}: {sorted(os.listdir(ckpt_dir))}")


def tensors(obj, prefix=""):
    """Every tensor of a nested checkpoint, by its path of keys."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


def assert_same_training_state(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["global_step"] == cb["global_step"] == STEPS
    assert ca["loops"] == cb["loops"]  # the progress counters too: another resume would continue identically
    ta, tb = (
        dict(tensors({k: ca[k] for k in ("state_dict", "optimizer_states")})),
        dict(tensors({k: cb[k] for k in ("state_dict", "optimizer_states")})),
    )
    assert sorted(ta) == sorted(tb) and len(ta) > 0
    for key, value in ta.items():  # exact: the same kernels on one thread, resumed at epoch boundaries
        assert torch.equal(value, tb[key]), key


def test_checkpoints_are_written_in_the_run_folder_never_in_tmpdir(setup):
    ckpt_dir = setup["root"] / "reference/checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["last.ckpt", "last.prev.ckpt"]
    assert (step(ckpt_dir / "last.ckpt"), step(ckpt_dir / "last.prev.ckpt")) == (STEPS, STEPS - 1)
    assert not setup["audit"].exists(), setup["audit"].read_text()  # nothing created there, ever
    assert os.listdir(setup["tmpdir"]) == []


@pytest.mark.slow
def test_kill_9_at_any_point_then_the_same_command_finishes_as_an_uninterrupted_run(setup):
    out, ckpt_dir = "killed", setup["root"] / "killed/checkpoints"

    def state() -> tuple[int | None, int | None]:  # (step of last.ckpt, of last.prev.ckpt); None: absent
        return tuple(
            step(p) if p.exists() else None for p in (ckpt_dir / "last.ckpt", ckpt_dir / "last.prev.ckpt")
        )

    # one run of the same command per entry, killed at the n-th time a save reaches the point; the state left
    plan = [
        ({"kill_at": "mid-write:2"}, (1, None)),  # a half-written temporary of step 2 stays behind
        ({"kill_at": "rotated:2"}, (2, 2)),  # step 3's save: last.ckpt hard-linked to last.prev.ckpt
        ({"kill_at": "replaced:1"}, (3, 2)),  # step 3's save: renamed, the folder not yet fsync'ed
        # no hard links: last.ckpt is moved aside, so between the two renames only last.prev.ckpt exists
        ({"kill_at": "rotated:1", "no_link": "1"}, (None, 3)),
        ({"kill_at": "save:2"}, (4, 3)),  # resumed from last.prev.ckpt, then killed while training step 5
    ]
    for i, (faults, expected) in enumerate(plan):
        proc = run(setup, out, **faults)
        assert proc.returncode == -9, (faults, proc.stderr[-3000:])
        assert state() == expected, (faults, sorted(os.listdir(ckpt_dir)))
        if i == 0:
            assert len(temporaries(ckpt_dir / "last.ckpt")) == 1
        if faults["kill_at"] == "save:2":
            assert f"warning: {ckpt_dir / 'last.ckpt'} is missing" in proc.stderr
    # and kill -9 from outside at a random moment (import, setup, training or a save)
    delay = random.Random(13).uniform(0.3, 1.0) * setup["seconds"]
    proc = run(setup, out, kill_after=delay)
    assert proc.returncode in (-9, 0), proc.stderr[-3000:]
    newest_complete(ckpt_dir)
    proc = run(setup, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert_same_training_state(ckpt_dir / "last.ckpt", setup["root"] / "reference/checkpoints/last.ckpt")
    final, reference = (
        load_file(setup["root"] / d / "control_final.safetensors") for d in (out, "reference")
    )
    assert sorted(final) == sorted(reference)
    assert all(torch.equal(final[k], reference[k]) for k in final)
    assert sorted(os.listdir(ckpt_dir)) == ["last.ckpt", "last.prev.ckpt"]  # stale temporaries were removed
    assert not setup["audit"].exists(), setup["audit"].read_text()
    assert os.listdir(setup["tmpdir"]) == []


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_checkpoints(setup, out: str) -> Path:
    ckpt_dir = setup["root"] / out / "checkpoints"
    shutil.copytree(setup["root"] / "reference/checkpoints", ckpt_dir)
    return ckpt_dir


def main_line(script, argv: list[str], monkeypatch) -> str:
    """What ``script``'s ``__main__`` prints on failure (run_main: exit status 1, one line)."""
    monkeypatch.setattr(sys, "argv", [str(REPO / f"oft-control/{script.__name__.rpartition('.')[2]}.py")])
    with pytest.raises(SystemExit) as caught:
        run_main(script.main, lambda: script.parse_args(argv))
    assert isinstance(caught.value.code, str), caught.value.code  # a message: exit status 1
    return caught.value.code


def test_truncated_last_ckpt_resumes_from_last_prev_with_one_warning(setup, capfd):
    ckpt_dir = copy_checkpoints(setup, "truncated_last")
    truncate(ckpt_dir / "last.ckpt")
    train.main(train.parse_args([*TRAIN, "--model", str(setup["ini"]), "--output_dir", str(ckpt_dir.parent)]))
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{ckpt_dir / 'last.ckpt'} is unreadable" in warnings[0], warnings
    assert "resuming from last.prev.ckpt instead" in warnings[0]
    # resumed from step 7, trained step 8; the truncated file never replaced the good last.prev.ckpt
    assert (step(ckpt_dir / "last.ckpt"), step(ckpt_dir / "last.prev.ckpt")) == (STEPS, STEPS - 1)


def test_no_readable_checkpoint_is_one_error_line_with_the_fix(setup, monkeypatch):
    ckpt_dir = copy_checkpoints(setup, "both_truncated")
    truncate(ckpt_dir / "last.ckpt")
    (ckpt_dir / "last.prev.ckpt").write_bytes(b"")  # what a kill during Lightning's cross-device copy left
    args = [*TRAIN, "--model", str(setup["ini"]), "--output_dir", str(ckpt_dir.parent)]
    line = main_line(train, args, monkeypatch)
    assert line.startswith(f"train: cannot resume from {ckpt_dir}: no readable checkpoint (last.ckpt: ")
    assert "last.prev.ckpt: it is empty (0 bytes)" in line and line.endswith("start over with --resume none")
    assert "\n" not in line
    explicit = main_line(train, [*args, "--resume", str(ckpt_dir / "last.ckpt")], monkeypatch)
    assert explicit.startswith(f"train: cannot resume from {ckpt_dir / 'last.ckpt'}: no readable checkpoint")
    assert explicit.endswith("pass another --resume file, or start over with --resume none")
    assert "\n" not in explicit


def test_a_full_disk_at_a_checkpoint_save_is_one_line_and_keeps_the_last_checkpoint(setup, monkeypatch):
    out = setup["root"] / "full_disk"
    real_save, saves = torch.save, []

    class FullDisk(io.RawIOBase):
        def __init__(self, fh) -> None:
            self.fh = fh

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            if self.fh.tell() + len(b) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(b)

    def save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", "")).endswith(".tmp") and ".last.ckpt." in str(f.name):
            saves.append(1)
            if len(saves) == 2:  # the disk fills up during the second save
                return real_save(obj, FullDisk(f), *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = [*TRAIN, "--model", str(setup["ini"]), "--output_dir", str(out)]
    line = main_line(train, args, monkeypatch)
    assert (
        line == f"train: cannot write checkpoints/last.ckpt: no space left on device in {out / 'checkpoints'}"
    )
    assert (
        sorted(os.listdir(out / "checkpoints")) == ["last.ckpt"] and step(out / "checkpoints/last.ckpt") == 1
    )
    assert temporaries(out / "checkpoints/last.ckpt") == []


def test_an_output_folder_under_a_file_is_one_line_before_any_model_loads(setup, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    bad, is_file = tmp_path / "file" / "x", f"cannot create folder: {tmp_path / 'file'} is not a folder"
    ini = str(setup["ini"])
    cases = [
        (train, [*TRAIN, "--model", ini, "--output_dir", str(bad)], f"train: --output_dir {bad}: {is_file}"),
        (
            norm,
            [*TRAIN, "--model", ini, "--output_dir", str(bad)],
            f"train_with_norm: --output_dir {bad}: {is_file}",
        ),
        (
            tool,
            ["--input_path", str(tmp_path / "no_sd.ckpt"), "--output_path", str(bad / "ini.ckpt")],
            f"tool_add_control_oft: --output_path {bad / 'ini.ckpt'}: {is_file}",
        ),
        (
            sampler,
            [*ADAPTER, "--control", "synthetic", "--model", ini, "--out_dir", str(bad)],
            f"test_oft_parallel: --out_dir {bad}: {is_file}",
        ),
        (
            sampler,
            [*ADAPTER, "--control", "synthetic", "--model", ini, "--output_dir", str(bad)],
            f"test_oft_parallel: --output_dir {bad}: {is_file}",
        ),
    ]
    for script, argv, expected in cases:
        # tool: the missing SD would be reported if the folder were not checked before loading it
        assert main_line(script, argv, monkeypatch) == expected


SAMPLE = [
    *ADAPTER,
    *("--control", "synthetic", "--resolution", "32", "--synthetic_length", "3", "--steps", "3"),
    *("--num_samples", "2", "--batch", "2", "--workers", "1", "--threads", "1"),
]


def sample(setup, out: str, kill_after: float | None = None) -> subprocess.CompletedProcess:
    """``test_oft_parallel.py`` with the reference run's model into ``<root>/<out>``, like ``run``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OFT_PATH_POLICY": "flops",
           "TMPDIR": str(setup["tmpdir"]), "TORCHINDUCTOR_CACHE_DIR": str(setup["root"] / "inductor")}  # fmt: skip
    model = setup["root"] / "reference/control_final.safetensors"
    cmd = [sys.executable, str(REPO / "oft-control/test_oft_parallel.py"), *SAMPLE, "--model", str(model)]
    cmd += ["--out_dir", str(setup["root"] / out)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        proc.kill()
        if kill_after is None:
            raise
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_a_sampler_killed_at_any_point_finishes_byte_for_byte_as_an_uninterrupted_one(setup):
    started = time.monotonic()
    proc = sample(setup, "gen_reference")
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = setup["root"] / "gen_reference"
    expected = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file())
    assert sum(name.endswith(".png") for name in expected) == 3 * 2 + 3 + 3  # results, sources, hints
    rng = random.Random(7)
    for _ in range(3):  # kill -9 from outside at seeded random moments (start-up, sampling or a write)
        proc = sample(setup, "gen_killed", kill_after=rng.uniform(0.3, 1.0) * seconds)
        assert proc.returncode in (-9, 0), proc.stderr[-3000:]
    proc = sample(setup, "gen_killed")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    killed = setup["root"] / "gen_killed"
    data = sorted(
        p.relative_to(killed).as_posix()
        for p in killed.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert data == expected
    for rel in expected:
        assert (killed / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert os.listdir(setup["tmpdir"]) == []
