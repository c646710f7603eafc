"""Download, verify, unpack and place datasets and checkpoints: the machinery behind ``scripts/``.

One ``setup(source, root)`` call takes a ``Source`` (see ``oft.setup.sources``) from nothing to a checked
folder or file under the data (or models) root:

1. ``fetch``: HTTP download into ``<root>/.downloads/<name>.part`` with resume (``Range``), retries with
   back-off and a progress bar; the size is checked against what the server announced.
2. ``verify``: size and SHA-256 against the published values pinned in ``oft.setup.sources`` or, for sources
   that publish none, against those recorded in ``<root>/.oft-manifest.json`` on the first success (trust on
   first use); archives must be valid zip files.
3. ``unpack``: extract into ``<root>/.unpack-<name>-*`` (same file system), find the folder with the
   expected layout, check it, and only then rename it into place: the result exists complete or not at all.

A second run finds the checked result and does nothing; an interrupted one resumes the ``.part`` file and
discards stale unpack folders. Every failure is a ``SetupError`` whose message is one line saying what went
wrong and what to do next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tqdm import tqdm

from oft.common.files import atomic_write_bytes, publish, sha256_file
from oft.setup.layout import LayoutError

USER_AGENT = "oft-diffusion-setup/0.1 (+https://github.com/Zeju1997/oft)"
CHUNK = 1 << 20
MANIFEST = ".oft-manifest.json"
DOWNLOADS = ".downloads"
# Network failures worth retrying (the server or the path to it may recover). Every OSError counts: file
# errors never get here (``_receive`` turns them into SetupError), so what remains is DNS, refused or reset
# connections, time-outs and TLS errors (URLError, ConnectionError, TimeoutError, ssl.SSLError).
_TRANSIENT = (OSError, http.client.HTTPException)


class SetupError(RuntimeError):
    """A setup step failed; the message is one line naming the problem and what to do next."""


class NotFoundError(SetupError):
    """The server answered 404/410: the next mirror, if any, may still have the file."""


@dataclass(frozen=True)
class Source:
    """Where one dataset or checkpoint comes from and what it must look like once in place."""

    name: str  # command-line name, e.g. "ade20k"
    description: str  # one line for --help
    urls: tuple[str, ...]  # tried in order; a 404 moves on to the next (mirrors)
    filename: str  # what the download is saved as (the reference's names)
    target: str  # the result, relative to the root: a folder (archives) or a file ("file" kind)
    check: Callable[[Path], str]  # layout check of the result; returns a one-line summary
    kind: str = "zip"  # "zip": unpack and move a folder into place; "file": the download is the result
    member: str | None = None  # folder inside the archive that becomes ``target``; None: look for it
    git_url: str | None = None  # alternative to the archive: clone and take ``git_member``
    git_member: str | None = None
    sha256: str | None = None  # pinned published checksum; None: trust on first use (the manifest records it)
    size: str = "unknown"  # approximate size on disk, for --help and the README
    models: bool = False  # lives under the models root instead of the data root
    size_bytes: int | None = None  # pinned published size in bytes, checked before the (long) checksum

    @property
    def verification(self) -> str:
        """How a download of this source is checked, for --help and the README."""
        if self.sha256:
            return "pinned SHA-256" + (" and size" if self.size_bytes else "")
        return "trust on first use: no published checksum"


def say(message: str) -> None:
    """Print a status line to stderr without breaking progress bars."""
    tqdm.write(message, file=sys.stderr)


def run_job(job: Callable[[], str]) -> int:
    """Run a setup job for a command line: print its summary line, or one error line; return the exit status."""
    try:
        summary = job()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    print(summary)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(root: Path) -> dict:
    """The checksums recorded under ``root`` (``{filename: {"url", "size", "sha256"}}``); empty if none."""
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise SetupError(f"{root / MANIFEST} is not valid JSON ({exc}): delete it and rerun") from None


def record_manifest(root: Path, filename: str, url: str, size: int, sha256: str) -> None:
    """Record a verified download so that later downloads of the same file are checked against it."""
    manifest = read_manifest(root)
    manifest[filename] = {"url": url, "size": size, "sha256": sha256}
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------- download


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """Fail early, with the fix, when ``folder``'s file system has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SetupError(
            f"not enough disk space for {what} in {folder}: need {_mb(needed)}, {_mb(free)} free; "
            "free some space or pass --data-root/--models-root on a larger disk, then rerun"
        )


def _write_error(exc: OSError, path: Path) -> SetupError:
    if exc.errno == errno.ENOSPC:
        return SetupError(
            f"disk full while writing {path}: free some space or pass --data-root/--models-root on a larger "
            "disk, then rerun (the download resumes)"
        )
    return SetupError(
        f"cannot write {path} ({exc.strerror or exc}): check the folder's permissions, then rerun"
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header (``bytes 100-199/1000`` or ``bytes */1000``)."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    return start, (int(m.group(2)) if m.group(2) != "*" else None)


def _receive(resp, part: Path, progress: bool) -> int | None:
    """Append (206) or write afresh (200) the response body to ``part``; return the full size if known."""
    have = part.stat().st_size if part.exists() else 0
    if resp.status == 206:
        start, total = _content_range(resp.headers.get("Content-Range"))
        if start != have:  # a server that resumes elsewhere cannot be trusted with this file: start over
            part.unlink(missing_ok=True)
            raise http.client.HTTPException(f"server resumed at byte {start} instead of {have}")
        mode = "ab"
    else:
        have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = int(length) if length is not None else None
    if total is not None:
        ensure_space(part.parent, total - have, part.name[: -len(".part")])
    with tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name[: -len(".part")],
        disable=not progress,
    ) as bar:
        try:
            fh = open(part, mode)
        except OSError as exc:
            raise _write_error(exc, part) from None
        with fh:
            while chunk := resp.read(CHUNK):
                try:
                    fh.write(chunk)
                    fh.flush()
                except OSError as exc:
                    raise _write_error(exc, part) from None
                bar.update(len(chunk))
    return total


def fetch(
    url: str,
    dest: Path,
    *,
    headers: dict[str, str] | None = None,
    retries: int = 5,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming whatever an earlier attempt left.

    ``headers`` (e.g. ``Authorization``) are sent to ``url`` only, not to the hosts it redirects to (signed
    CDN links reject a second credential). Transient failures (refused or dropped connections, time-outs,
    5xx, truncated bodies) are retried ``retries`` times with doubling waits, each retry resuming.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    host = urllib.parse.urlsplit(url).netloc
    attempt, last = 0, ""
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        for key, value in (headers or {}).items():
            req.add_unredirected_header(key, value)
        try:
            with urlopen(req, timeout=timeout) as resp:
                total = _receive(resp, part, progress)
            got = part.stat().st_size
            if total is None or got == total:
                break
            if got > total:
                part.unlink()
                raise SetupError(
                    f"{url} sent {got} bytes, more than the {total} it announced: rerun to start over"
                )
            last = f"connection closed at {_mb(got)} of {_mb(total)}"
        except HTTPError as exc:
            if exc.code == 416:  # nothing left to send: complete if the sizes agree, else start over
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total is not None and have == total:
                    break
                part.unlink(missing_ok=True)
                last = "server refused to resume; restarting"
            elif exc.code in (404, 410):
                raise NotFoundError(
                    f"{url} answered {exc.code} {exc.reason}: the file moved; pass --url with a working mirror"
                ) from None
            elif exc.code in (401, 403):
                raise SetupError(
                    f"{url} answered {exc.code} {exc.reason}: this file needs a login or accepted licence; "
                    "pass --token <token> (Hugging Face: set HF_TOKEN) and rerun"
                ) from None
            elif exc.code == 429 or exc.code >= 500:
                last = f"server error {exc.code} {exc.reason}"
            else:
                raise SetupError(
                    f"{url} answered {exc.code} {exc.reason}: pass --url with a working mirror"
                ) from None
        except _TRANSIENT as exc:
            last = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        attempt += 1
        if attempt > retries:
            got = part.stat().st_size if part.exists() else 0
            if got == 0:
                raise SetupError(
                    f"cannot download from {host} ({last}) after {attempt} attempts: check the network "
                    "connection or proxy (HTTPS_PROXY), then rerun the same command"
                )
            raise SetupError(
                f"download of {dest.name} stopped at {_mb(got)} ({last}) after {attempt} attempts: "
                "rerun the same command to resume from there"
            )
        wait = min(retry_wait * 2 ** (attempt - 1), 60.0)
        say(f"{dest.name}: {last}; retry {attempt}/{retries} in {wait:.0f} s")
        time.sleep(wait)
    part.replace(dest)


def _host_matches(url: str, hosts: tuple[str, ...]) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return any(host == h or host.endswith("." + h) for h in hosts)


def fetch_any(
    urls: tuple[str, ...],
    dest: Path,
    *,
    token: str | None = None,
    token_hosts: tuple[str, ...] | None = None,
    **kwargs,
) -> str:
    """``fetch`` from the first of ``urls`` that has the file (404 moves on); return the URL used.

    ``token`` goes out as ``Authorization: Bearer`` to URLs on ``token_hosts`` (every URL when None), so
    that e.g. a Hugging Face token from the environment never reaches another host.
    """
    for i, url in enumerate(urls):
        send = token and (token_hosts is None or _host_matches(url, token_hosts))
        try:
            say(f"downloading {dest.name} from {url}")
            fetch(url, dest, headers={"Authorization": f"Bearer {token}"} if send else None, **kwargs)
            return url
        except NotFoundError as exc:
            if i == len(urls) - 1:
                raise
            say(f"{exc}; trying the next mirror")
    raise ValueError("no URL given")


# ---------------------------------------------------------------------------------------------- verify


def verify(source: Source, path: Path, root: Path, progress: bool = True) -> str:
    """Check a downloaded file's checksum (pinned or recorded) and, for archives, the zip structure.

    Pinned values (published, ``oft.setup.sources``) take precedence over recorded ones (the manifest's first
    success). Returns its SHA-256. A file that fails is deleted so that the next run downloads it again.
    """
    recorded = read_manifest(root).get(source.filename, {})
    pinned = source.sha256 is not None
    if pinned:
        why = (
            "the published value: the download was corrupt or truncated (deleted; rerun to fetch it again), or "
            "the mirror serves another file (pass --url with the original source)"
        )
    else:
        why = (
            f"was recorded on the first download: the download was corrupt (deleted; rerun to fetch it again) or "
            f"the source changed (then remove its entry from {root / MANIFEST})"
        )
    want_size = source.size_bytes if pinned else recorded.get("size")
    size = path.stat().st_size
    if want_size is not None and size != want_size:
        path.unlink()
        raise SetupError(
            f"{source.filename} has {size:,} bytes but {want_size:,} {'is ' if pinned else ''}{why}"
        )
    expected = source.sha256 if pinned else recorded.get("sha256")
    digest = sha256_file(path, progress)
    if expected and digest != expected:
        path.unlink()
        raise SetupError(
            f"{source.filename} has SHA-256 {digest[:12]}… but {expected[:12]}… {'is ' if pinned else ''}{why}"
        )
    if source.kind == "zip" and not zipfile.is_zipfile(path):
        path.unlink()
        raise SetupError(
            f"{source.filename} is not a valid zip archive (truncated or an error page): it was deleted; "
            "rerun to download it again, or pass --url with a mirror"
        )
    return digest


# ---------------------------------------------------------------------------------------------- unpack


def _slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", target)


def _scratch(root: Path, source: Source) -> Path:
    """A fresh unpack folder on the root's file system (so that placing it is a rename); stale ones from
    interrupted runs are removed first."""
    prefix = f".unpack-{_slug(source.target)}-"
    for stale in root.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def unpack(source: Source, archive: Path, root: Path, progress: bool = True) -> Path:
    """Extract ``archive`` into a fresh scratch folder under ``root`` and return it.

    A corrupt archive (bad CRC, truncated member) is deleted, as is the scratch folder.
    """
    tmp = _scratch(root, source)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            ensure_space(root, sum(i.file_size for i in infos), f"unpacking {archive.name}")
            for info in tqdm(infos, desc=f"unpack {archive.name}", unit="file", disable=not progress):
                member = PurePosixPath(info.filename)
                if member.is_absolute() or ".." in member.parts:
                    raise SetupError(
                        f"{archive.name} holds an unsafe path {info.filename!r}: refusing to unpack it"
                    )
                zf.extract(info, tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise SetupError(
            f"{archive.name} is a corrupt archive ({exc}): it was deleted; rerun to download it again"
        ) from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, tmp) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _candidates(tmp: Path, source: Source, member: str | None) -> list[Path]:
    """Folders of an unpacked tree that may be the dataset, most likely first.

    Without an explicit member, archives are accepted with the dataset folder at the top, inside one
    wrapper folder, or without a folder of its own.
    """
    if member:
        return [tmp / member]
    name = PurePosixPath(source.target).name
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    found = [tmp / name] + [t / name for t in tops] + tops + [tmp]
    return list(dict.fromkeys(p for p in found if p.is_dir()))


def place(source: Source, tmp: Path, root: Path, member: str | None) -> str:
    """Find the unpacked folder that passes the layout check and rename it to ``root/target``.

    Always removes ``tmp``; on a layout failure nothing appears at the target.
    """
    final = root / source.target
    try:
        candidates = _candidates(tmp, source, member)
        problems: list[str] = []
        for folder in candidates:
            try:
                summary = source.check(folder)
            except LayoutError as exc:
                problems.append(str(exc))
                continue
            publish(folder, final)
            return summary
        first = problems[0] if problems else "the archive is empty"
        raise SetupError(
            f"{source.name}: the downloaded data does not have the layout the readers expect ({first}); "
            "the source may have changed: report it, or lay the data out by hand as the README's data section shows"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clone(source: Source, root: Path) -> Path:
    """Shallow ``git clone`` of ``source.git_url`` into a scratch folder under ``root``; return the folder."""
    tmp = _scratch(root, source)
    proc = subprocess.run(
        ["git", "clone", "--depth", "1", "--quiet", source.git_url, str(tmp / "repo")],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SetupError(
            f"git clone {source.git_url} failed ({detail}): rerun with --method zip to use the archive"
        )
    return tmp


# ---------------------------------------------------------------------------------------------- setup


def _by_hand(source: Source, root: Path, urls: tuple[str, ...]) -> str:
    where = root / source.target if source.kind == "file" else root / DOWNLOADS / source.filename
    return f"; or download {source.filename} by hand from {urls[0]} and save it as {where}, then rerun"


@contextlib.contextmanager
def _exclusive(path: Path, who: str):
    """Hold an exclusive lock on ``path`` (created if needed), or fail at once if someone else holds it:
    two jobs appending to the same ``.part`` file would corrupt it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SetupError(
                f"{who} is running (it holds {path}): wait for it to finish, then rerun"
            ) from None
        yield
    finally:
        os.close(fd)


def setup(
    source: Source,
    root: str | os.PathLike,
    *,
    urls: tuple[str, ...] | None = None,
    token: str | None = None,
    token_hosts: tuple[str, ...] | None = None,
    method: str = "auto",
    keep_archive: bool = False,
    retries: int = 5,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Bring ``source`` into ``root`` (download, verify, unpack, check, place); return a one-line summary.

    ``method`` (sources with a git repository): ``"git"`` clones, ``"zip"`` downloads the archive,
    ``"auto"`` clones when git is installed and falls back to the archive. ``token``/``token_hosts``: see
    ``fetch_any``. One run at a time per source and root (a lock file). Raises ``SetupError``.
    """
    if method not in ("auto", "git", "zip"):
        raise ValueError(f"method must be auto, git or zip, not {method!r}")
    root = Path(root)
    try:
        (root / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, root / DOWNLOADS) from None
    final = root / source.target
    with _exclusive(root / DOWNLOADS / f"{source.filename}.lock", f"another setup of {source.name}"):
        # An empty folder (made by hand, or by a .gitignore-only checkout) is replaced like a missing one.
        if final.exists() and not (final.is_dir() and not any(final.iterdir())):
            try:
                return f"{source.name}: already in place at {final} ({source.check(final)}); nothing to do"
            except LayoutError as exc:
                raise SetupError(
                    f"{final} exists but is incomplete ({exc}): move it away or delete it, then rerun"
                ) from None
        return _obtain(
            source,
            root,
            final,
            urls or source.urls,
            method,
            keep_archive,
            dict(
                token=token,
                token_hosts=token_hosts,
                retries=retries,
                retry_wait=retry_wait,
                timeout=timeout,
                progress=progress,
            ),
        )


def _obtain(
    source: Source,
    root: Path,
    final: Path,
    urls: tuple[str, ...],
    method: str,
    keep_archive: bool,
    fetch_kwargs: dict,
) -> str:
    """The body of ``setup`` once the lock is held and nothing is in place yet."""
    progress = fetch_kwargs["progress"]

    if source.git_url and (method == "git" or (method == "auto" and shutil.which("git"))):
        try:
            say(f"cloning {source.git_url}")
            tmp = clone(source, root)
            return (
                f"{source.name}: ready at {final} ({place(source, tmp, root, f'repo/{source.git_member}')})"
            )
        except SetupError as exc:
            if method == "git":
                raise
            say(f"{exc}; falling back to the archive")

    download = root / DOWNLOADS / source.filename
    # A complete download (from an earlier run, or saved by hand) is verified rather than fetched again.
    url = str(download)
    try:
        if not download.exists():
            url = fetch_any(urls, download, **fetch_kwargs)
        digest = verify(source, download, root, progress)
        size = download.stat().st_size
        if source.kind == "file":
            summary = _place_file(source, download, final)
    except SetupError as exc:
        # The file kind's whole result is the download, so any failure leaves the user without it.
        if download.exists() and source.kind != "file":
            raise
        raise SetupError(f"{exc}{_by_hand(source, root, urls)}") from None
    if source.kind != "file":
        tmp = unpack(source, download, root, progress)
        try:
            summary = place(source, tmp, root, source.member)
        except SetupError as exc:  # a sound archive with the wrong content: keep it for unpacking by hand
            raise SetupError(f"{exc}; the archive is kept at {download}") from None
    record_manifest(root, source.filename, url, size, digest)
    if source.kind != "file" and not keep_archive:
        download.unlink(missing_ok=True)
    return f"{source.name}: ready at {final} ({summary}); sha256 {digest}"


def _place_file(source: Source, download: Path, final: Path) -> str:
    """Check a single-file download and rename it into place."""
    try:
        summary = source.check(download)
    except LayoutError as exc:
        download.unlink()
        raise SetupError(f"{exc}: it was deleted; rerun to download it again") from None
    publish(download, final)
    return summary
