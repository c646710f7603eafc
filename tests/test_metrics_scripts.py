"""The four evaluation entry points: --help explains each, defaults stated in the help match the parser."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from tests.helpers.metrics import REPO

SCRIPTS = {
    "eval_canny": "eval_canny.json",
    "eval_landmark": "eval_landmark.json",
    "eval_segm": "eval_segm",
    "eval_fid": "eval_fid.json",
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_inputs_outputs_and_sample_choice(name, capsys):
    script = importlib.import_module(f"oft.cli.control.{name}")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert SCRIPTS[name] in text and "source/image_{i}.png" in text
    assert "--sample-index" in text and "--all-samples" in text and "(default 0)" in text
    args = script.parse_args(["folder"])
    assert args.sample_index == 0 and not args.all_samples and args.out is None


def test_bad_input_is_one_line_on_the_command_line(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "oft-control" / "eval_canny.py"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("eval_canny: ")
    assert "is not a sampling output folder" in run.stderr
