"""What the tests share (the only modules a test imports besides the library): fixtures, tolerances, servers."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: the scripts' folders, pyproject.toml
