"""The one atomic-write primitive and the output-folder check: a failure at any point (a kill between write and
rename, a full disk, a writer that raises) leaves the old file and no temporary, the error is one line naming the
folder, and temporaries are invisible to every reader's pattern."""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import sys

import pytest
import torch

from oft.cli.run import run_main
from oft.common import files
from oft.common.files import (
    WriteError,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    create_output_folder,
    temporaries,
)


def only(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_temporary_is_hidden_in_the_destination_folder_and_matches_no_data_pattern(tmp_path):
    seen = {}

    def write(tmp):
        seen["tmp"] = tmp
        seen["globbed"] = [
            p.name
            for pattern in ("*.png", "*.ckpt", "*.safetensors", "*.json")
            for p in tmp_path.glob(pattern)
        ]
        tmp.write_bytes(b"new")

    for name in ("0001.png", "last.ckpt", "model.safetensors", "eval.json"):
        atomic_write(tmp_path / name, write)
        tmp = seen["tmp"]
        assert tmp.parent == tmp_path and tmp.name.startswith(f".{name}.") and tmp.name.endswith(".tmp")
        assert not any(fnmatch.fnmatch(tmp.name, p) for p in ("*.png", "*.ckpt", "*.safetensors", "*.json"))
        assert tmp.name not in seen["globbed"]
        assert (tmp_path / name).read_bytes() == b"new"
    assert only(tmp_path) == ["0001.png", "eval.json", "last.ckpt", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


@pytest.mark.parametrize("where", ["writer", "replace"])
def test_a_failure_between_write_and_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, where):
    target = atomic_write_bytes(tmp_path / "last.ckpt", b"old, complete")

    def half_then_fail(tmp):
        tmp.write_bytes(b"new, hal")
        if where == "writer":
            raise KeyboardInterrupt  # a signal mid-write: not an OSError, so it propagates as it is

    if where == "replace":  # the process dies between the complete temporary and the rename
        monkeypatch.setattr(files.os, "replace", lambda *_: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(KeyboardInterrupt if where == "writer" else WriteError):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old, complete"
    assert only(tmp_path) == ["last.ckpt"] and temporaries(target) == []


class FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``room`` bytes are in."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.fh.write(b)

    def close(self) -> None:
        self.fh.close()
        super().close()


@pytest.mark.parametrize("writer", ["bytes", "atomic_torch_save"])
def test_a_full_disk_is_one_line_naming_the_folder_and_keeps_the_old_file(tmp_path, monkeypatch, writer):
    folder = tmp_path / "checkpoints"
    target = atomic_write_bytes(folder / "last.ckpt", b"old")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(WriteError) as caught:
        if writer == "bytes":
            atomic_write(target, write)
        else:  # torch reports the failed write() as a RuntimeError raised while handling the OSError
            monkeypatch.setattr(files, "open", lambda *a: FullDisk(open(*a), room=2048), raising=False)
            atomic_torch_save(target, {"w": torch.zeros(10_000)})
    message = str(caught.value)
    assert message == f"cannot write checkpoints/last.ckpt: no space left on device in {folder}"
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_bytes() == b"old" and only(folder) == ["last.ckpt"]


def test_an_error_that_is_not_about_the_disk_is_not_renamed(tmp_path):
    with pytest.raises(ValueError, match="bad data"):
        atomic_write(tmp_path / "a.json", lambda tmp: (_ for _ in ()).throw(ValueError("bad data")))
    assert only(tmp_path) == []


@pytest.mark.parametrize("links", [True, False])
def test_keep_previous_always_leaves_a_complete_file(tmp_path, monkeypatch, links):
    last, prev = tmp_path / "last.ckpt", tmp_path / "last.prev.ckpt"
    atomic_write_bytes(last, b"v1")
    atomic_write(last, lambda tmp: tmp.write_bytes(b"v2"), keep_previous=prev)
    assert (last.read_bytes(), prev.read_bytes()) == (b"v2", b"v1")
    if not links:  # file systems without hard links: last.ckpt itself is moved aside
        monkeypatch.setattr(files.os, "link", lambda *_: (_ for _ in ()).throw(PermissionError(1, "no")))
    real_replace = os.replace

    def die_before_the_new_file_lands(src, dst):
        if os.path.basename(dst) == "last.ckpt":
            raise OSError(errno.EIO, "killed here")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", die_before_the_new_file_lands)
    with pytest.raises(WriteError):
        atomic_write(last, lambda tmp: tmp.write_bytes(b"v3"), keep_previous=prev)
    assert prev.read_bytes() == b"v2"  # the previous version survives in last.prev.ckpt either way
    assert last.read_bytes() == b"v2" if links else not last.exists()
    assert temporaries(last) == [] and temporaries(prev) == []


def test_output_folder_under_a_file_is_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError) as caught:
        create_output_folder(tmp_path / "file" / "x" / "y", f"--out_dir {tmp_path}/file/x/y")
    assert str(caught.value) == (
        f"--out_dir {tmp_path}/file/x/y: cannot create folder: {tmp_path / 'file'} is not a folder"
    )
    with pytest.raises(WriteError, match=r"cannot create folder: .*file is not a folder$"):
        create_output_folder(tmp_path / "file")  # the folder itself is a file
    with pytest.raises(WriteError, match=r"^cannot write x/y\.png: .*file is not a folder$"):
        atomic_write_bytes(tmp_path / "file" / "x" / "y.png", b"")
    made = create_output_folder(tmp_path / "a" / "b")
    assert made.is_dir() and only(made) == []  # the write probe leaves nothing


def test_run_main_prints_a_write_error_as_one_line_whatever_errors_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oft-db/some_script.py"])

    def main(_):
        raise WriteError("cannot write a/b.png: no space left on device in /x/a", errno.ENOSPC)

    with pytest.raises(SystemExit) as caught:
        run_main(main, lambda: None, errors=(ValueError,))
    assert caught.value.code == "some_script: cannot write a/b.png: no space left on device in /x/a"


def test_atomic_folder_replaces_the_old_folder_only_when_complete(tmp_path):
    final = tmp_path / "validation"
    files.atomic_folder(final, lambda tmp: (tmp / "a.txt").write_text("old"))
    with pytest.raises(RuntimeError, match="killed"):

        def broken(tmp):
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-build")

        files.atomic_folder(final, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["validation"]  # no temporary left, the old one intact
    assert (final / "a.txt").read_text() == "old"
    files.atomic_folder(final, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced as a whole


def test_publish_moves_a_checked_download_and_never_deletes_a_folder_unasked(tmp_path):
    download, final = tmp_path / ".download", tmp_path / "data" / "ADE20K"
    download.mkdir()
    (download / "x.png").write_bytes(b"1")
    assert files.publish(download, final) == final and (final / "x.png").read_bytes() == b"1"
    again = tmp_path / ".again"
    again.mkdir()
    (again / "y.png").write_bytes(b"2")
    with pytest.raises(files.WriteError):  # an existing dataset is not replaced silently
        files.publish(again, final)
    assert (final / "x.png").is_file() and again.is_dir()
