"""Small file helpers shared by every writer: atomic writes, output folders and streamed checksums.

Every output of the project goes through ``atomic_write``, and every failure to write one (a full disk, a
read-only mount, a path under a file) is a ``WriteError``: one line naming the file, the cause and the folder,
which the entry points print instead of a traceback (``oft.cli.run.run_main``).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

# the suffix of every temporary: hidden (leading dot) and without the data suffix, so no reader's pattern
# (``*.png``, ``*.ckpt``, ``*.safetensors``, ``*.json``) ever picks one up
TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """An output could not be written or its folder not created; ``str()`` is one line naming the file or
    folder and the cause (``cannot write checkpoints/last.ckpt: no space left on device in /runs/a/checkpoints``).
    ``errno`` is the underlying error's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def _reason(err: OSError) -> str:
    """``No space left on device`` -> ``no space left on device`` (the message continues a sentence)."""
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: itself, or one in its cause/context chain (torch.save reports a failed
    ``write`` of a file object as a RuntimeError raised while the OSError was being handled)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _folder_problem(folder: Path, err: OSError) -> str:
    """Why ``folder`` cannot be created or written: the ancestor that is a file, or the cause and where."""
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        for parent in [*reversed(folder.parents), folder]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is not a folder"
    existing = next((p for p in [folder, *folder.parents] if p.is_dir()), folder)
    return f"{_reason(err)} in {os.path.abspath(existing)}"


def create_output_folder(folder: str | os.PathLike, label: str | None = None) -> Path:
    """Create ``folder`` (and its parents) and check that files can be created in it, or raise one
    ``WriteError`` line: ``<label>: cannot create folder: /etc/passwd is not a folder``.

    ``label`` names what the user gave, e.g. ``f"--output_dir {args.output_dir}"`` (default: the folder).
    Entry points call it right after parsing, before any model loads, so a bad output path fails in a second
    rather than after minutes of loading or training.
    """
    folder = Path(folder)
    label = label or str(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # an existing folder on a read-only mount or without write permission fails here, not at the end
        fd, probe = _create_temporary(folder, "write-probe")
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise WriteError(
            f"{label}: cannot create folder: {_folder_problem(folder, err)}", err.errno
        ) from None
    return folder


def _temporary_name(folder: Path, name: str) -> Path:
    """``<folder>/.<name>.<random>.tmp``: hidden, and ending in no reader's data suffix."""
    return folder / f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new empty temporary (open fd, path), created with mode 0666 so that the umask applies, as for any
    file ``open()`` creates."""
    while True:
        tmp = _temporary_name(folder, name)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporaries of ``atomic_write(path, ...)`` present now: those a killed writer left behind (or one
    being written right now: only the single writer of ``path`` may remove them)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"))


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path``'s data (or a folder's entries) to the device: a rename is durable only once both are."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise  # some file systems cannot sync a folder; nothing to do about it there
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    keep_previous: str | os.PathLike | None = None,
) -> Path:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same folder, then rename.

    Readers see either the old file or the complete new one, never a half-written file, even if the process is
    killed mid-write or the disk fills up: the temporary ``.<name>.<random>.tmp`` (hidden, no data suffix:
    ``write`` must not infer a format from the name, e.g. ``PIL.Image.save(tmp, format="PNG")``; ``torch.save``,
    ``safetensors`` and ``Path.write_bytes`` do not care) is fsync'ed, renamed over ``path`` with
    ``os.replace``, and the folder fsync'ed. On any error the temporary is removed, ``path`` is untouched, and an
    OS error (ENOSPC, EIO, EACCES, EROFS, ...) is raised as one ``WriteError`` line naming the folder.

    ``keep_previous``: before the rename, the current ``path`` (if any) becomes this file, atomically (a hard
    link renamed over it; where links are not supported, ``path`` itself is renamed), so a complete previous
    version survives whatever happens next (``oft.control.training``'s ``last.prev.ckpt``).
    """
    path = Path(path)
    folder = path.parent
    shown = f"{folder.name}/{path.name}" if folder.name else path.name
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(folder, path.name)
        os.close(fd)
        write(tmp)
        _fsync(tmp)
        if keep_previous is not None and path.is_file():
            _keep_previous(path, Path(keep_previous))
        os.replace(tmp, path)
        tmp = None
        _fsync(folder, directory=True)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause = _os_error(err)
        if cause is None or isinstance(err, WriteError):
            raise
        raise WriteError(f"cannot write {shown}: {_folder_problem(folder, cause)}", cause.errno) from err
    return path


def _keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a complete copy of ``path`` without a moment where neither is: hard-link ``path`` to a
    temporary and rename that over ``previous`` (``path`` stays in place throughout)."""
    link = _temporary_name(previous.parent, previous.name)
    try:
        os.link(path, link)
    except OSError:  # no hard links here (some network/FUSE file systems): move path aside instead
        os.replace(path, previous)  # until the caller's rename, only ``previous`` holds a checkpoint
        return
    try:
        os.replace(link, previous)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def publish(source: str | os.PathLike, final: str | os.PathLike, *, replace_folder: bool = False) -> Path:
    """Move a complete, checked ``source`` (file or folder, same file system) to ``final`` in one rename and
    fsync the folder entry; ``replace_folder``: an existing folder ``final`` is deleted first (else the rename
    refuses a non-empty one). Errors as in ``atomic_write``: one ``WriteError``."""
    source, final = Path(source), Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if replace_folder and final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)  # a folder cannot be renamed over a non-empty one
        os.replace(source, final)
        _fsync(final.parent, directory=True)
    except OSError as err:
        if isinstance(err, WriteError):
            raise
        raise WriteError(f"cannot write {final}: {_folder_problem(final.parent, err)}", err.errno) from err
    return final


def atomic_folder(final: str | os.PathLike, build: Callable[[Path], object]) -> Path:
    """Make the folder ``final`` through ``build(tmp)`` on a fresh hidden ``.tmp-<name>`` beside it, then
    ``publish`` it: readers (and resumes) see the old folder or the complete new one, never a partial one."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed build's leftovers
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, final, replace_folder=True)


def atomic_torch_save(path: str | os.PathLike, obj: object, **kwargs: object) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see ``atomic_write``; ``kwargs``: its ``keep_previous``).

    Saved through a Python file object, not the path: torch's own file writer reports a full disk as a
    RuntimeError without an errno, whereas a failed ``write()`` of a file object keeps the OSError in the
    exception chain, so the failure is a ``WriteError`` naming the cause."""
    import torch  # here: this module stays importable without torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write, **kwargs)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` written to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: object, indent: int = 2) -> Path:
    """``obj`` written to ``path`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def sha256_file(path: str | os.PathLike, progress: bool = True) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks with a progress bar (archives run to many GB)."""
    path = Path(path)
    digest = hashlib.sha256()
    with (
        open(path, "rb") as fh,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"checksum {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
