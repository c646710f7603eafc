"""Run an entry point (``python tests/train_driver.py oft-control/train.py ARGS``) as its ``__main__`` would,
with faults injected where the environment says, for tests/test_control_kill.py.

- ``OFT_TEST_KILL_AT=<point>:<n>``: SIGKILL this process (kill -9: no cleanup, no ``finally``) at the n-th
  time a checkpoint save reaches ``point``: ``save`` (a save begins, nothing written yet), ``mid-write`` (half of
  the checkpoint's bytes are in its temporary), ``rotated`` (``last.prev.ckpt`` was replaced, ``last.ckpt`` not
  yet), ``replaced`` (``last.ckpt`` was replaced, the folder not yet fsync'ed).
- ``OFT_TEST_NO_LINK=1``: ``os.link`` fails as on file systems without hard links (EPERM).
- ``OFT_TEST_AUDIT_TMPDIR=<file>``: append to ``<file>`` every file or folder this process creates, opens for
  writing or renames under ``$TMPDIR`` (Python's audit events; ``tempfile.gettempdir()``'s one-off probe of the
  folder runs before the hook, as it would at the first call anyway).
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys
import tempfile
from collections import Counter

import torch

KILL_POINT, _, KILL_COUNT = os.environ.get("OFT_TEST_KILL_AT", "").partition(":")
reached: Counter[str] = Counter()


def point(name: str) -> None:
    reached[name] += 1
    if name == KILL_POINT and reached[name] == int(KILL_COUNT):
        os.kill(os.getpid(), signal.SIGKILL)


def is_checkpoint_temporary(f: object) -> bool:
    name = os.path.basename(str(getattr(f, "name", "")))
    return name.startswith(".last.ckpt.") and name.endswith(".tmp")


real_save = torch.save


def save(obj, f, *args, **kwargs):
    if not is_checkpoint_temporary(f):
        return real_save(obj, f, *args, **kwargs)
    point("save")
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    point("mid-write")
    f.write(data[len(data) // 2 :])


real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    name = os.path.basename(os.fspath(dst))
    if name in ("last.prev.ckpt", "last.ckpt"):
        point("rotated" if name == "last.prev.ckpt" else "replaced")


def no_link(*_args, **_kwargs):
    raise PermissionError(1, "Operation not permitted")


def audit_tmpdir(report: str) -> None:
    root = os.path.realpath(tempfile.gettempdir())
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event not in ("open", "os.mkdir", "os.rename", "os.link", "os.symlink", "shutil.move"):
            return
        target = args[1] if event in ("os.rename", "os.link", "os.symlink", "shutil.move") else args[0]
        if not isinstance(target, (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(target))
        if not path.startswith(root + os.sep):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not (isinstance(mode, str) and set(mode) & set("wax+")) and not (
                isinstance(flags, int) and flags & writing
            ):
                return
        with open(report, "a") as fh:  # the report lies outside $TMPDIR
            fh.write(f"{event} {path}\n")

    sys.addaudithook(hook)


if __name__ == "__main__":
    torch.save = save
    os.replace = replace
    if os.environ.get("OFT_TEST_NO_LINK"):
        os.link = no_link
    if os.environ.get("OFT_TEST_AUDIT_TMPDIR"):
        audit_tmpdir(os.environ["OFT_TEST_AUDIT_TMPDIR"])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runpy.run_path(sys.argv[0], run_name="__main__")
