"""No file the project loads can run code: every ``torch.load`` is ``weights_only=True``, and every resume/load
path fed a malicious pickle (an object whose ``__reduce__`` would create a marker file) refuses it with one
clear line, the marker never appearing. The DreamBooth checkpoint state (optimizer, schedule, meta, the OFT path
cache with tuple keys) loads that way for every learning-rate schedule."""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import oft_layers
from oft.cli.db import train_dreambooth_oft as train_dreambooth_oft_cli
from oft.cli.run import run_main
from oft.db.checkpoints import read_state, save_checkpoint
from tests.helpers import REPO

# (files, text in the call) of the torch.load calls let through, and why
ALLOWED = [
    ("tests/test_no_pickle.py", "weights_only=False"),  # shows that the malicious file runs code unguarded
    ("tests/*.py", "last.ckpt"),  # tests reading back the Lightning last.ckpt their own run just wrote
]


class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (or worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# not source: environments and caches (hidden folders too), and the git-ignored data, model and output folders
SKIP = {"__pycache__", "data", "models", "outputs", "lightning_logs", "oft_diffusion.egg-info"}


def python_files(root: Path = REPO) -> list[Path]:
    """Every .py file of the repository outside hidden folders (.venv, .git), caches and data folders."""
    return sorted(
        p
        for p in root.rglob("*.py")
        if not any(part.startswith(".") or part in SKIP for part in p.relative_to(root).parts[:-1])
    )


def unsafe_loads(path: Path, root: Path = REPO) -> list[str]:
    """``file:line`` of every ``torch.load(...)`` in ``path`` without a literal ``weights_only=True``."""
    source = path.read_text(encoding="utf-8")
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
        ):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "torch"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        call = ast.get_source_segment(source, node) or ""
        allowed = any(fnmatch.fnmatch(rel, files) and text in call for files, text in ALLOWED)
        if not safe and not allowed:
            found.append(f"{rel}:{node.lineno}")
    return found


def test_every_torch_load_is_weights_only():
    files = python_files()
    assert len(files) > 50 and REPO / "oft" / "db" / "train.py" in files  # the scan sees the tree
    bad = [hit for path in files for hit in unsafe_loads(path)]
    assert not bad, f"torch.load without weights_only=True (can run code from the file): {', '.join(bad)}"


def test_the_scan_finds_unsafe_loads(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "a = torch.load('x')\n"
        "b = torch.load('x', weights_only=False)\n"
        "c = torch.load('x', map_location='cpu', weights_only=True)\n"
        "d = torch.load(\n    'x', mmap=True\n)\n"
    )
    assert unsafe_loads(tmp_path / "m.py", tmp_path) == ["m.py:2", "m.py:3", "m.py:5"]


@pytest.fixture
def evil(tmp_path):
    """(write(path, wrap) -> path of a malicious torch file, marker): ``wrap`` puts the payload where a
    loader expects its data."""
    marker = tmp_path / "PWNED"

    def write(path: Path, wrap=lambda payload: {"state_dict": payload}) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(Payload(marker)), path)
        return path

    return write, marker


def test_the_payload_runs_when_loaded_unguarded(evil, tmp_path):
    write, marker = evil
    torch.load(write(tmp_path / "x.pt"), weights_only=False)
    assert marker.is_file()  # so the marker's absence below means the loaders refused it


def assert_one_clear_line(message: str, path: Path) -> None:
    assert "\n" not in message and "\x1b" not in message, message  # no paragraphs, no terminal colour codes
    assert str(path) in message and "weights_only=False" not in message, message


def test_dreambooth_resume_refuses_a_malicious_state(evil, tmp_path, monkeypatch):
    write, marker = evil
    out = tmp_path / "run"
    checkpoint = out / "checkpoint-000002"
    state = write(
        checkpoint / "state.pt", lambda p: {"step": 2, "optimizer": p, "lr_scheduler": {}, "meta": {}}
    )
    save_file({"x": torch.zeros(1)}, str(checkpoint / "adapter.safetensors"))
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "photos" / "a.png")
    script = train_dreambooth_oft_cli
    argv = [
        "--pretrained_model", str(tmp_path / "never-loaded.ckpt"),
        "--instance_data_dir", str(tmp_path / "photos"),
        "--instance_prompt", "a photo of qwe dog", "--class_prompt", "a photo of dog",
        "--class_data_dir", str(tmp_path / "class"), "--num_validation_images", "0", "--output_dir", str(out),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train_dreambooth_oft.py"])
    for resume in ([], ["--resume_from_checkpoint", "latest"], ["--resume_from_checkpoint", str(checkpoint)]):
        with pytest.raises(SystemExit) as exit_:  # as the script's __main__ runs it
            run_main(script.main, lambda r=resume: script.parse_args([*argv, *r]), errors=(ValueError,))
        assert_one_clear_line(str(exit_.value.code), state)
        assert "--resume_from_checkpoint none" in str(exit_.value.code)
        assert not marker.exists()


def read_control(path: Path):
    from oft.control.checkpoint import read_control

    return read_control(path)


def read_sd_checkpoint(path: Path):
    from oft.sd.weightfiles import read_single_file

    return read_single_file(path)


def resume_toy_autoencoder(path: Path):
    from oft.toy.config import ToyConfig
    from oft.toy.model import ConvAutoEncoder
    from oft.toy.train import train_autoencoder

    config = ToyConfig(epochs=1, image_size=8, num_images=2, batch_size=2)
    return train_autoencoder(ConvAutoEncoder(), torch.zeros(2, 3, 8, 8), config, 0, path, {})


def load_fid_inception(path: Path):
    from oft.metrics.fid import load_inception

    return load_inception(path)


LOADERS = {  # loader: (file name, where the payload goes: what the loader reads first)
    read_control: ("control.ckpt", lambda p: {"state_dict": {}, "oft_control": p}),
    read_sd_checkpoint: ("v1-5-pruned.ckpt", lambda p: {"state_dict": p}),
    resume_toy_autoencoder: ("checkpoint.pt", lambda p: {"run_key": {}, "model": p}),
    load_fid_inception: ("pt_inception.pth", lambda p: {"Conv2d_1a_3x3.conv.weight": p}),
}


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_loaders_refuse_a_malicious_file(loader, evil, tmp_path):
    """oft/control/checkpoint.py, oft/sd/convert.py, oft/toy/train.py's resume, oft/metrics/fid.py: each refuses
    with its own error type, all ValueErrors but the toy's (examples/toy_exp_ae.py prints ToyDataError)."""
    from oft.toy.config import ToyDataError

    write, marker = evil
    name, wrap = LOADERS[loader]
    path = write(tmp_path / name, wrap)
    with pytest.raises((ValueError, ToyDataError)) as err:
        loader(path)
    assert_one_clear_line(str(err.value), path)
    assert not marker.exists()
    assert "truncated or corrupt" not in str(err.value)  # a file that carries code is not a damaged download


SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dreambooth_state_is_tensors_and_plain_values(schedule, tmp_path):
    from diffusers.optimization import get_scheduler

    model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    oft_layers.inject(model, ["0"], r=2, eps=1e-3, coft=True)
    optimizer = torch.optim.AdamW(oft_layers.oft_parameters(model), lr=1e-3)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=2, num_training_steps=10)
    model(torch.randn(3, 8, generator=torch.Generator().manual_seed(0))).square().sum().backward()
    optimizer.step()
    scheduler.step()
    meta = {"base_model": "fp1:0123456789abcdef", "run": 160, "validation_prompt": "a qwe cat"}
    cache = {("cpu", "torch.float32", 320, 320, 4, 13, True): "input"}
    saved_cache = oft_layers.path_cache()
    try:
        oft_layers.clear_path_cache()
        oft_layers.load_path_cache(cache)
        checkpoint = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, meta, limit=2)
    finally:
        oft_layers.clear_path_cache()
        oft_layers.load_path_cache(saved_cache)
    state = read_state(checkpoint)  # weights_only=True
    assert state["step"] == 3 and state["meta"] == meta and state["oft_path_cache"] == cache
    assert state["lr_scheduler"] == scheduler.state_dict()
    expected = optimizer.state_dict()
    assert state["optimizer"]["param_groups"] == expected["param_groups"]
    for key, values in expected["state"].items():
        for name, value in values.items():
            assert torch.equal(
                torch.as_tensor(state["optimizer"]["state"][key][name]), torch.as_tensor(value)
            )
