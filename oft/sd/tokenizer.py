"""SD's tokenizers (CLIP ViT-L/14 BPE, which OpenCLIP's encoders share), built offline from the vocabulary that ``open_clip_torch`` ships.

``CLIPTokenizer.from_pretrained(...)`` needs a model hub and, offline, quietly returns a 2-token vocabulary
(SPEC §8), so we rebuild ``vocab`` and ``merges`` exactly as CLIP's ``SimpleTokenizer`` does from
``bpe_simple_vocab_16e6.txt.gz``: 256 byte symbols, the same with ``</w>``, 48,894 merges, then the start and end
tokens — 49,408 entries, ids identical to ``open_clip.tokenize``.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

from transformers import CLIPTokenizer

from oft.sd.configs import EOS_TOKEN, MAX_LENGTH, VOCAB_SIZE

_N_MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer keeps this many merges of the file


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (256 entries, in CLIP's order)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def default_bpe_path() -> Path:
    """The BPE merges file inside the installed ``open_clip`` package."""
    import open_clip  # heavy (~3 s: its model zoo): imported for its vocabulary file only, when one is built

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP BPE vocabulary not found at {path}: reinstall open_clip_torch (pip install open-clip-torch)"
        )
    return path


def clip_vocab_and_merges(
    bpe_path: str | os.PathLike | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's ``(vocab, merges)`` rebuilt from the gzipped merges file, in ``SimpleTokenizer``'s order."""
    lines = gzip.open(bpe_path or default_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]  # first line is a version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=1)
def _cached_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return clip_vocab_and_merges()


def build_tokenizer(pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """SD's tokenizer: CLIP BPE, 77 tokens, truncation, padded with ``pad_token`` (SD1.5 and SDXL's first
    encoder: ``<|endoftext|>``, id 49407; SD2 and SDXL's OpenCLIP encoder: ``!``, id 0); offline.

    Call it as SD does: ``tok(prompts, padding="max_length", max_length=77, truncation=True)``.
    """
    vocab, merges = _cached_vocab_and_merges()
    # transformers 5 takes ``vocab=``/``merges=``; the old ``vocab_file=`` keyword is silently ignored there.
    tok = CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), model_max_length=MAX_LENGTH, pad_token=pad_token
    )
    if tok.vocab_size != VOCAB_SIZE or tok.pad_token_id != vocab[pad_token]:
        raise RuntimeError(
            f"CLIP tokenizer built with vocabulary {tok.vocab_size} and pad id {tok.pad_token_id} "
            f"(expected {VOCAB_SIZE} and {vocab[pad_token]}): check the installed transformers/open_clip_torch versions"
        )
    return tok
