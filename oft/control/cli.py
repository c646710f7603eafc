"""What every oft-control entry point shares: one clear line instead of a traceback for a user's mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def run(main: Callable[[argparse.Namespace], Any], parse_args: Callable[[], argparse.Namespace]) -> None:
    """``main(parse_args())``; a missing file or a bad value exits with ``error: <message>`` (status 2)."""
    args = parse_args()
    try:
        main(args)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
