"""The shell entry points (scripts/*.sh, oft-db/*.sh) find the project's Python by themselves
(scripts/_python.sh: $PYTHON, else .venv/bin/python, else python3) and, when that interpreter lacks the
packages, stop with one line naming it and the fix instead of a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.setup import REPO

HELPER = REPO / "scripts" / "_python.sh"
SCRIPTS = sorted(
    p.relative_to(REPO).as_posix()
    for p in [*REPO.glob("scripts/*.sh"), *REPO.glob("oft-db/*.sh")]
    if not p.name.startswith("_")  # _python.sh is sourced, not run
)
BASH = shutil.which("bash")
BARE_PATH = "/usr/bin:/bin"  # no venv, no pyenv shims

# What each script's --help must name: the real options (and source) of the Python script behind it.
HELP_NAMES = {
    "scripts/download_model.sh": ["Set up sd15", "v1-5-pruned.ckpt", "--models-root", "--url", "--token"],
    "scripts/dataset_setup_control_ade20k.sh": ["Set up ade20k", "--data-root", "--keep-archive"],
    "scripts/dataset_setup_control_celebhq.sh": ["Set up celebhq", "--data-root", "--retries"],
    "scripts/dataset_setup_control_deepfashion.sh": ["Set up deepfashion", "--data-root", "--retries"],
    "scripts/dataset_setup_db_dreambooth.sh": ["Set up dreambooth", "--data-root", "--method"],
    "scripts/dataset_setup_control_coco.sh": ["prepare_coco.py", "--coco-dir", "--depth-model", "--seed"],
    "oft-db/train_dreambooth_oft.sh": [
        "usage: bash oft-db/train_dreambooth_oft.sh RUN_INDEX",
        "train_dreambooth_oft.py",
        "--run RUN",
        "--dry-run",
        "--no-coft",
        "--output_root",
    ],
}


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: no venv on PATH, VIRTUAL_ENV and PYTHON unset, offline, one thread."""
    return {"PATH": BARE_PATH, "HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def run(script: Path | str, *args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def fake_python(path: Path, body: str) -> Path:
    """An executable ``python`` stand-in: a shell script with ``body``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_every_entry_point_is_covered():
    assert set(SCRIPTS) == set(HELP_NAMES), "add the new .sh to HELP_NAMES with the options its --help names"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_without_activating_the_environment(script, tmp_path):
    """From a checkout after `make test`, with nothing activated, --help prints the real options."""
    env = bare_env(tmp_path)
    if not os.access(REPO / ".venv" / "bin" / "python", os.X_OK):  # e.g. a conda env without .venv
        env["PYTHON"] = sys.executable
    out = run(script, "--help", env=env)
    assert out.returncode == 0, out.stderr
    for name in HELP_NAMES[script]:
        assert name in out.stdout, f"{script} --help does not name {name!r}"


def refusal(out: subprocess.CompletedProcess) -> str:
    """The one stderr line of a refused run (and nothing else: no traceback, no stdout)."""
    assert out.returncode == 1
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_interpreter_without_the_packages_is_one_line(script, tmp_path):
    """$PYTHON is a real interpreter that cannot see site-packages (-S): one line naming it and the fix."""
    bare = fake_python(tmp_path / "bin" / "python", f'exec "{sys.executable}" -S "$@"')
    flag = "-h" if script.startswith("oft-db/") else "--help"  # -h too is help there, not a bad RUN_INDEX
    line = refusal(run(script, flag, env=bare_env(tmp_path, PYTHON=str(bare))))
    name = Path(script).name
    assert re.fullmatch(
        rf"{re.escape(name)}: {re.escape(str(bare))} \(\$PYTHON\) lacks the project's packages "
        r"\(No modules? named '\w+'(, '\w+')*\): point PYTHON at .*, or unset it to use \.venv.*",
        line,
    ), line
    assert "'tqdm'" in line  # every entry point needs it


def test_missing_interpreter_and_crashing_check_are_one_line(tmp_path):
    line = refusal(run("scripts/download_model.sh", env=bare_env(tmp_path, PYTHON=str(tmp_path / "nope"))))
    assert line.startswith(f"download_model.sh: no Python interpreter '{tmp_path / 'nope'}' ($PYTHON): ")
    # An interpreter whose check itself fails with a traceback (e.g. Python 2): only its last line is shown.
    old = fake_python(
        tmp_path / "python2",
        "echo 'Traceback (most recent call last):' >&2; echo '  File \"<string>\"' >&2; "
        "echo 'ImportError: No module named util' >&2; exit 1",
    )
    line = refusal(run("scripts/download_model.sh", env=bare_env(tmp_path, PYTHON=str(old))))
    assert "lacks the project's packages (ImportError: No module named util): " in line


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the helper and one entry point in a fresh tree: .venv and PATH can be faked there."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(HELPER, root / "scripts")
    shutil.copy(REPO / "scripts" / "download_model.sh", root / "scripts")
    return root


ECHO = 'if [ "$1" = -c ]; then exit 0; fi; echo "{who} $PYTHONPATH $*"'  # the check passes; the run echoes


def test_interpreter_precedence(checkout, tmp_path):
    """$PYTHON, else the repository's .venv/bin/python, else python3 on PATH; the repo goes on PYTHONPATH."""
    script = checkout / "scripts" / "download_model.sh"
    target = f"{checkout} {checkout}/scripts/setup_data.py sd15 --url X"
    fake_python(tmp_path / "bin" / "python3", ECHO.format(who="path-python3"))
    env = bare_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{BARE_PATH}")

    assert run(script, "--url", "X", env=env).stdout == f"path-python3 {target}\n"
    venv = fake_python(checkout / ".venv" / "bin" / "python", ECHO.format(who="venv-python"))
    assert run(script, "--url", "X", env=env).stdout == f"venv-python {target}\n"
    mine = fake_python(tmp_path / "mine" / "python", ECHO.format(who="my-python"))
    assert run(script, "--url", "X", env={**env, "PYTHON": str(mine)}).stdout == f"my-python {target}\n"
    venv.chmod(0o644)  # not executable: skipped
    assert run(script, "--url", "X", env=env).stdout == f"path-python3 {target}\n"


def test_fallback_python3_without_packages_says_make_test(checkout, tmp_path):
    fake_python(tmp_path / "bin" / "python3", f'exec "{sys.executable}" -S "$@"')
    env = bare_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{BARE_PATH}")
    line = refusal(run(checkout / "scripts" / "download_model.sh", env=env))
    assert line == (
        f"download_model.sh: python3 ({tmp_path / 'bin' / 'python3'}) lacks the project's packages "
        "(No module named 'tqdm'): run make test (creates .venv) or activate your environment"
    )


def test_helper_refuses_to_be_run(tmp_path):
    out = run(HELPER, env=bare_env(tmp_path))
    assert out.returncode == 2 and "is sourced" in out.stderr
