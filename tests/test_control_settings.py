"""oft-control's schedules and sampling against their sources: every entry of the per-task settings table pinned to
the reference implementation (Zeju1997/oft at df2b263) or the paper text, the defaults train.py draws from it, the
rendered table, and the sampler's reference prompt and chunks."""

from __future__ import annotations

from dataclasses import astuple

import pytest
import torch

from oft.cli.control import test_oft_parallel as sampler
from oft.cli.control import train
from oft.control import inference, jobs
from oft.control.checkpoint import ControlModel
from oft.control.config import SYNTHETIC_DEFAULTS, Experiment, Sampling, Training
from oft.sd.tokenizer import build_tokenizer
from oft.specs.tasks import SETTINGS, TASKS, settings_markdown
from tests.helpers import REPO

PAPER = "paper text (SPEC §3)"
BATCH = (16, "oft-control/train.py:46", None, "")  # batch_size = 16, the same for every task
ALL = None  # the task trains on its whole training list


def _ref(value, line, other=None, other_source=""):
    """A value set at datasets/utils.py:line."""
    return (value, f"datasets/utils.py:{line}", other, other_source)


def _subset(n, line):
    return (n, f"datasets/coco_dataset.py:{line}", None, "")


# Read off the reference's datasets/utils.py (max_epochs, logger_freq, the dataset built), datasets/coco_dataset.py
# (the subset's caption file prompt_train_blip_{N}k.json) and oft-control/train.py (batch_size, learning_rate).
EXPECTED = {
    "segm": {"epochs": _ref(20, 14), "sample_every": _ref(1000, 9), "subset": _ref(ALL, 12)},
    "canny": {"epochs": _ref(11, 22, 10, PAPER), "sample_every": _ref(3000, 18), "subset": _ref(ALL, 20)},
    "canny1k": {"epochs": _ref(30, 62), "sample_every": _ref(300, 58), "subset": _subset(1_000, 379)},
    "canny5k": {"epochs": _ref(10, 54), "sample_every": _ref(300, 50), "subset": _subset(5_000, 328)},
    "canny20k": {"epochs": _ref(10, 46), "sample_every": _ref(300, 42), "subset": _subset(20_000, 277)},
    "canny50k": {"epochs": _ref(10, 38), "sample_every": _ref(300, 34), "subset": _subset(50_000, 226)},
    "depth": {
        "epochs": _ref(20, 30, 10, "paper text"),
        "sample_every": _ref(500, 26),
        "subset": _ref(ALL, 28),
    },
    "densepose": {"epochs": _ref(20, 78), "sample_every": _ref(300, 74), "subset": _ref(ALL, 76)},
    "landmark": {
        "epochs": _ref(20, 86),
        "sample_every": _ref(1000, 81),
        "subset": _ref(ALL, 84),
        "batch_size": (4, PAPER, 16, "oft-control/train.py:46"),  # the paper's 4 is the default
    },
    "sketch": {"epochs": _ref(10, 70, 8, PAPER), "sample_every": _ref(1000, 66), "subset": _ref(ALL, 68)},
    "ablation_segm": {  # Fig. 1: the first --n_samples items (ade20k_dataset.py:61-67), each 100 times (:68)
        "epochs": _ref(1, 94),
        "sample_every": (0, "datasets/utils.py:89: logger_freq 1e11, never reached", None, ""),
        "subset": (ALL, "datasets/ade20k_dataset.py:61-67", None, ""),
    },
}
NEEDS = {"ablation_segm": ["--n_samples", "10"]}  # the flags a task cannot train without
SHARED = {
    "lr": (1e-5, "oft-control/train.py:49", None, ""),
    "log_every": (50, "ours; the reference logged no loss, oft-control/oldm/logger.py:155-164", None, ""),
}


def test_every_setting_is_pinned_to_its_source():
    assert list(TASKS) == list(EXPECTED)
    for name, task in TASKS.items():
        expected = {**SHARED, "batch_size": BATCH, **EXPECTED[name]}
        got = {k: astuple(s) for k, s in task.settings().items()}
        assert list(got) == list(SETTINGS) and got == {k: expected[k] for k in SETTINGS}, name


def test_train_defaults_come_from_the_table_and_the_flags_reach_the_other_values():
    def resolved(*flags: str) -> Training:
        args = train.parse_args(list(flags))
        return args.training.for_task(args.experiment)

    for name, expected in EXPECTED.items():
        cfg = resolved("--control", name, *NEEDS.get(name, []))
        batch = expected.get("batch_size", BATCH)[0]
        got = (cfg.epochs, cfg.batch_size, cfg.sample_every, cfg.lr, cfg.log_every)
        assert got == (expected["epochs"][0], batch, expected["sample_every"][0], 1e-5, 50), name
    assert resolved("--control", "landmark", "--batch_size", "16").batch_size == 16  # the reference's
    assert resolved("--control", "depth", "--epochs", "10").epochs == 10  # the paper's
    assert resolved("--control", "canny", "--sample_every", "0").sample_every == 0  # 0 = never, not "unset"
    for name, (_, flag) in SETTINGS.items():  # the table's flags are train.py's
        if flag is not None:
            assert getattr(train.parse_args([flag, "3"]).training, name) == 3, flag
    synthetic = Training().for_task(Experiment(control="synthetic"))
    assert (synthetic.epochs, synthetic.batch_size, synthetic.sample_every) == tuple(
        SYNTHETIC_DEFAULTS.values()
    )


def test_help_states_the_table_defaults(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, expected in EXPECTED.items():
        assert f"{name} {expected['epochs'][0]}," in text or f"{name} {expected['epochs'][0]})" in text


def test_the_rendered_table_shows_every_value_its_source_and_the_disagreements():
    text = settings_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(TASKS)
    canny1k = rows[list(TASKS).index("canny1k")]
    assert canny1k.startswith("| `canny1k` | 30 (datasets/utils.py:62) | 16 (oft-control/train.py:46) | 300 ")
    assert "1,000 (datasets/coco_dataset.py:379)" in canny1k and canny1k.endswith("| 1e-5 | 50 |")
    assert "| all (datasets/utils.py:12) |" in rows[0]
    assert (
        "| first `--n_samples` × 100 (datasets/ade20k_dataset.py:61-67; datasets/ade20k_dataset.py:68) |"
        in rows[-1]
    )
    disagreements = [line for line in text.splitlines() if line.startswith("- ")]
    assert disagreements == [
        "- `canny` epochs: default 11 (datasets/utils.py:22); paper text (SPEC §3): 10, with `--epochs 10`",
        "- `depth` epochs: default 20 (datasets/utils.py:30); paper text: 10, with `--epochs 10`",
        "- `landmark` batch / GPU: default 4 (paper text (SPEC §3)); oft-control/train.py:46: 16, with "
        "`--batch_size 16`",
        "- `sketch` epochs: default 10 (datasets/utils.py:70); paper text (SPEC §3): 8, with `--epochs 8`",
    ]
    assert "lr 1e-5 (oft-control/train.py:49)" in text


def test_the_readme_shows_the_table_the_code_holds():
    assert settings_markdown() in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_sampler_prompts_caption_comma_unless_bare(monkeypatch, tmp_path):
    """The reference conditioned on caption + ', ' + an empty added prompt (test_oft_parallel.py:49, :135)."""
    seen: list[list[str]] = []

    def fake_generate(cm, hints, prompts, seeds, **sampling):
        seen.append(prompts)
        return torch.zeros(len(prompts), 3, 8, 8)

    monkeypatch.setattr(inference, "generate", fake_generate)
    item = {"hint": torch.zeros(3, 8, 8), "jpg": torch.zeros(3, 8, 8), "txt": "a red car"}
    for flags, prompt in (([], "a red car, "), (["--bare_prompt"], "a red car")):
        args = sampler.parse_args([*flags, "--num_samples", "2"])
        job = inference.SamplingJob("unused.safetensors", None, tmp_path / str(len(flags)), args.sampling)
        inference.sample_item(job, ControlModel(None, None, {}), item, 7)
        assert seen[-1] == [prompt, prompt]
    assert Sampling().prompt("x") == "x, " and Sampling(bare_prompt=True).prompt("x") == "x"


def test_img_id_n_covers_the_reference_chunk_of_20(monkeypatch, tmp_path):
    """test_oft_parallel.py:80 (--batch 20) and :119-124: job-array task N samples items 20N .. 20N+19."""
    calls: list[list[int]] = []
    monkeypatch.setattr(jobs, "run_parallel", lambda job, data, indices, *rest: calls.append(indices))
    data = ["--control", "synthetic", "--synthetic_length", "95", "--resolution", "8"]
    for img_id, items in (
        (0, range(0, 20)),
        (3, range(60, 80)),
        (4, range(80, 95)),
    ):  # the last chunk is short
        args = sampler.parse_args([*data, "--img_ID", str(img_id)])
        assert args.sampling.batch == 20
        jobs.sample(
            args.experiment, args.sampling, ControlModel(None, None, {}), out_dir=tmp_path, img_id=img_id
        )
        assert calls[-1] == list(items)
    with pytest.raises(ValueError, match="--img_ID 5 is out of range: 95 items in chunks of --batch 20"):
        jobs.sample(args.experiment, args.sampling, ControlModel(None, None, {}), out_dir=tmp_path, img_id=5)


def test_the_reference_prompt_is_the_caption_plus_one_comma_token():
    tokenizer = build_tokenizer()
    bare, reference = (
        tokenizer(Sampling(bare_prompt=b).prompt("a red car"))["input_ids"] for b in (True, False)
    )
    assert reference == [*bare[:-1], tokenizer.convert_tokens_to_ids(",</w>"), bare[-1]]
