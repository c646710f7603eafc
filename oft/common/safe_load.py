"""Why ``torch.load(..., weights_only=True)`` refused a file, in one line.

A ``.pt``/``.ckpt`` file is a pickle: loaded with ``weights_only=False`` it can call any Python function (an
object's ``__reduce__``), so a checkpoint from elsewhere could run arbitrary code on resume. Every loader of the
project uses ``weights_only=True``, which rebuilds only tensors, containers and plain values and refuses anything
else with ``pickle.UnpicklingError``; torch's message for that is several lines long and suggests retrying with
``weights_only=False``, which is exactly what must not happen. ``load_error_line`` turns it (and the other ways a
load fails) into one line for the project's error messages.
"""

from __future__ import annotations

import pickle
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand (\d+)")


def refused_pickle(err: BaseException) -> bool:
    """Whether ``err`` is ``weights_only`` loading refusing pickled Python objects (not a damaged file)."""
    return isinstance(err, pickle.UnpicklingError) and "weights only" in _ANSI.sub("", str(err)).lower()


def load_error_line(err: BaseException) -> str:
    """One line describing why a weights loader (``torch.load(..., weights_only=True)``, safetensors) failed
    with ``err``: a refused pickle said as such, else the error's type and first sentence (torch's messages
    run to paragraphs)."""
    text = _ANSI.sub("", str(err))
    if refused_pickle(err):
        found = _GLOBAL.search(text)
        what = f" ({found[1] or 'pickle opcode ' + found[2]})" if found else ""
        return (
            f"it holds pickled Python objects{what}, not only tensors; they were not loaded, because loading "
            "them could run code"
        )
    first = re.split(r"\.\s|\n", text.strip(), maxsplit=1)[0].strip()
    return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
