"""The identity of base weights on disk: a content fingerprint that copies, moves and ``touch`` keep, and the
older path+size+mtime form that files written before fingerprints recorded (``SDModels.same_base``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from pathlib import Path

from oft.sd.weightfiles import WEIGHT_NAMES, part_weights


def short_hash(text: str) -> str:
    """A short stable hash (12 hex digits) used for model identities."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def legacy_identity_of(path: Path) -> str:
    """The identity files recorded before content fingerprints: a hash of the resolved path, size and mtime of
    the weights (every file for a folder). Kept only to recognise those files' base while it is untouched."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return short_hash(stamp)


FINGERPRINT_PREFIX = "fp1:"  # the fingerprint recipe's version; legacy identities are bare 12-hex hashes
_SLICES, _SLICE_BYTES = 16, 1 << 16  # fixed slices of the data read per file: 1 MiB at most
_MAX_HEADER = 64 << 20  # a safetensors header is ~0.1 MB for SD1.5: a length beyond this is not one


def _structure(f, size: int) -> tuple[bytes, int]:
    """What describes every tensor of an open weight file, read without touching the tensor data, and where
    the data starts (the slices of ``fingerprint_file`` are taken from there on).

    safetensors: the JSON header (names, dtypes, shapes, offsets). A zip (PyTorch's ``.ckpt``/``.bin`` since
    1.6): its central directory as ``zipfile`` lists it: name, CRC-32 and size of every record, so the CRC-32
    that ``torch.save`` computes of each storage covers the whole content. Anything else: nothing (the slices
    alone then tell files apart).
    """
    f.seek(0)
    head = f.read(9)
    if len(head) == 9:
        n = struct.unpack("<Q", head[:8])[0]
        if head[8:9] == b"{" and n <= min(size - 8, _MAX_HEADER):
            try:
                header = json.loads(head[8:] + f.read(n - 1))
            except ValueError:
                header = None
            if isinstance(header, dict):
                # the tensors' entries in a canonical order; ``__metadata__`` (free text, written in hash-map
                # order, so it differs between two saves of the same weights) is not the weights
                header.pop("__metadata__", None)
                return b"safetensors:" + json.dumps(header, sort_keys=True).encode(), 8 + n
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as zf:
            rows = [f"{i.filename}:{i.CRC:08x}:{i.file_size}" for i in zf.infolist()]
        return ("zip:" + "|".join(rows)).encode(), 0
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return b"", 0


def fingerprint_file(path: Path, digest) -> None:
    """Feed ``digest`` with a cheap summary of ``path``'s bytes: size, structure (``_structure``) and
    ``_SLICES`` slices of ``_SLICE_BYTES`` at fixed relative positions of the data (its first and last bytes
    included).

    Reads the header or central directory plus 1 MiB, never the whole file (SD1.5's .ckpt is 7.7 GB). Two
    files with the same bytes always agree; files differing only inside unsampled bytes of a format without
    per-record checksums (safetensors) can collide: a deliberate trade of certainty for a read of ~1 MiB.
    """
    size = path.stat().st_size
    digest.update(f"size:{size};".encode())
    with open(path, "rb") as f:
        structure, start = _structure(f, size)
        digest.update(structure)
        span = min(_SLICE_BYTES, size - start)
        for k in range(_SLICES):
            f.seek(start + (size - start - span) * k // (_SLICES - 1))
            digest.update(f.read(span))


def identity_of(path: str | os.PathLike) -> str:
    """The base's identity: a content fingerprint (``fingerprint_file``) of the weights ``load_sd`` reads.

    Independent of the path and of timestamps, so a copied, moved or ``touch``ed file keeps it, while other
    weights change it. A diffusers folder: the same over the weight file it loads for each part (other files
    in the folder do not count).
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        fingerprint_file(path, digest)
    else:
        for part in WEIGHT_NAMES:
            found = part_weights(path, part)
            if found is not None:
                digest.update(f"{part}/{found.name};".encode())
                fingerprint_file(found, digest)
    return FINGERPRINT_PREFIX + digest.hexdigest()[:16]


def identity_mismatch_hint(recorded: str) -> str:
    """Why a recorded identity may not match, for the one-line refusals of the callers that compare them."""
    if not re.fullmatch(r"[0-9a-f]{12}", recorded):  # a fingerprint (or a random build's name)
        return "the weights differ"
    return (
        "it was recorded in the older path+size+mtime form, which also changes when the same file is "
        "copied, moved or touched"
    )
