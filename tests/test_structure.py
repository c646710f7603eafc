"""The shape of the code, checked: imports point down (the import-linter contract of pyproject.toml), the
scripts are thin, the console commands exist, functions stay short and tests import no other test."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.helpers import REPO

SCRIPT_FOLDERS = ("oft-control", "oft-db", "scripts", "examples")
LONGEST_FUNCTION = 80  # lines, in oft/


def python_files(*folders: str) -> list[Path]:
    return sorted(
        p for folder in folders for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts
    )


def test_every_import_points_down_and_no_package_has_a_cycle():
    linter = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(linter), "--no-logo", "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.count(" KEPT") == 2 and "BROKEN" not in run.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The contract is not vacuous: a probe module importing upwards breaks it."""
    probe = REPO / "oft" / "specs" / "_layer_probe.py"
    probe.write_text("import oft.control.jobs  # noqa: F401\n")
    try:
        linter = Path(sys.executable).with_name("lint-imports")
        run = subprocess.run(
            [str(linter), "--no-logo", "--no-cache"], cwd=REPO, capture_output=True, text=True
        )
    finally:
        probe.unlink()
    assert run.returncode != 0 and "oft.specs._layer_probe -> oft.control.jobs" in run.stdout


@pytest.mark.parametrize("path", python_files(*SCRIPT_FOLDERS), ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_are_thin_wrappers_of_a_command_line_module(path):
    tree = ast.parse(path.read_text())
    body = [
        node
        for node in tree.body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    assert len(body) == 2 and len(imports) == 1 and isinstance(body[1], ast.If), ast.dump(tree)[:300]
    module = importlib.import_module(imports[0].module)
    assert imports[0].module.startswith("oft.cli.") and callable(module.cli)
    assert module.__doc__ and ast.get_docstring(tree)  # the script says what it is; --help says the rest


def test_console_commands_point_to_command_line_functions():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    wrapped = {ast.parse(p.read_text()).body[1].module for p in python_files(*SCRIPT_FOLDERS)}
    targets = {}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert function == "cli" and callable(getattr(importlib.import_module(module), function)), name
        targets[module] = name
    assert set(targets) == wrapped  # one console command per script, and no other


def test_functions_in_the_library_stay_short():
    lengths = {}
    for path in python_files("oft", "oft_layers"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = (
                    node.end_lineno - node.lineno + 1
                )
    longest = max(lengths, key=lengths.get)
    assert lengths[longest] < LONGEST_FUNCTION, f"{longest}: {lengths[longest]} lines"


def test_the_library_never_loads_code_by_path():
    for path in python_files("oft", "oft_layers"):
        text = path.read_text()
        assert "spec_from_file_location" not in text and "runpy" not in text, path


def test_tests_import_the_library_and_their_helpers_only():
    """Never another test module: what tests share lives in tests/helpers/ (``bench`` is imported by its own
    tests, of the benchmark bookkeeping)."""
    for path in python_files("tests"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            )  # fmt: skip
            for name in names:
                if name.startswith("tests") or name.startswith("test_"):
                    assert name.startswith("tests.helpers"), f"{path.relative_to(REPO)} imports {name}"
