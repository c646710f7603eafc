"""The 750-run DreamBooth table (SPEC §4), the dataset's prompt file, --dry-run of the .sh and of the queue."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oft.cli.db import run_queue as run_queue_cli
from oft.cli.db import train_dreambooth_oft as train_dreambooth_oft_cli
from oft.db.config import DreamBoothConfig
from oft.db.runs import Job, plan_jobs, run_queue
from oft.specs.benchmark import (
    BUILTIN,
    NUM_RUNS,
    PromptTable,
    get_run,
    parse_prompts_file,
    parse_run_range,
    read_table,
)
from oft.specs.sampling import DREAMBOOTH_CLASS, DREAMBOOTH_VALIDATION
from tests.helpers.db import write_prompts_file

ROOT = Path(__file__).resolve().parents[1]

# SPEC §4, copied independently of the library: subject order and class nouns; cats and dogs use live prompts.
SPEC_SUBJECTS = """backpack/backpack, backpack_dog/backpack, bear_plushie/stuffed animal, berry_bowl/bowl, can/can,
candle/candle, cat/cat, cat2/cat, clock/clock, colorful_sneaker/sneaker, dog/dog, dog2/dog, dog3/dog, dog5/dog,
dog6/dog, dog7/dog, dog8/dog, duck_toy/toy, fancy_boot/boot, grey_sloth_plushie/stuffed animal, monster_toy/toy,
pink_sunglasses/glasses, poop_emoji/toy, rc_car/toy, red_cartoon/cartoon, robot_toy/toy, shiny_sneaker/sneaker,
teapot/teapot, vase/vase, wolf_plushie/stuffed animal"""
SPEC_LIVE = {6, 7, *range(10, 17)}
# google/dreambooth prompts_and_classes.txt: the 10 prompts where the two lists differ (indices 10..19)
OBJECT_MIDDLE = [
    "with a wheat field in the background",
    "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background",
    "floating on top of water",
    "floating in an ocean of milk",
    "on top of green grass with sunflowers around it",
    "on top of a mirror",
    "on top of the sidewalk in a crowded street",
    "on top of a dirt road",
    "on top of a white rug",
]
LIVE_MIDDLE = [
    "wearing a red hat",
    "wearing a santa hat",
    "wearing a rainbow scarf",
    "wearing a black top hat and a monocle",
    "in a chef outfit",
    "in a firefighter outfit",
    "in a police outfit",
    "wearing pink glasses",
    "wearing a yellow shirt",
    "in a purple wizard outfit",
]
HEAD = [
    "in the jungle",
    "in the snow",
    "on the beach",
    "on a cobblestone street",
    "on top of pink fabric",
    "on top of a wooden floor",
    "with a city in the background",
    "with a mountain in the background",
    "with a blue house in the background",
    "on top of a purple rug in a forest",
]
TAIL_ADJ = ["red", "purple", "shiny", "wet", "cube shaped"]


def spec_prompt(p: int, live: bool, token: str | None, noun: str) -> str:
    who = f"{token} {noun}" if token else noun
    if p >= 20:
        return f"a {TAIL_ADJ[p - 20]} {who}"
    return f"a {who} {(HEAD + (LIVE_MIDDLE if live else OBJECT_MIDDLE))[p]}"


def test_every_run_index_matches_spec():
    subjects = [tuple(x.strip().split("/")) for x in SPEC_SUBJECTS.replace("\n", " ").split(",")]
    assert len(subjects) == 30
    for i in range(NUM_RUNS):
        run = get_run(i)
        s, p = i // 25, i % 25
        subject, noun = subjects[s]
        assert (run.subject, run.class_noun, run.subject_index, run.prompt_index) == (subject, noun, s, p)
        assert run.live == (s in SPEC_LIVE)
        assert run.instance_prompt == f"a photo of qwe {noun}"
        assert run.class_prompt == f"a photo of {noun}"
        assert run.validation_prompt == spec_prompt(p, run.live, "qwe", noun)
        assert run.eval_prompt == spec_prompt(p, run.live, None, noun)
        assert run.name == f"{subject}-{p}"
    with pytest.raises(ValueError, match="0..749"):
        get_run(750)


def test_run_ranges():
    assert parse_run_range("137") == [137]
    assert parse_run_range("0-3,2,740-749") == [0, 1, 2, 3, *range(740, 750)]
    assert len(parse_run_range("0-749")) == 750
    for bad in ("5-2", "0-750", "a"):
        with pytest.raises(ValueError, match="run range"):
            parse_run_range(bad)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_prompts_file_matches_builtin_table(tmp_path, newline):
    path = write_prompts_file(BUILTIN, tmp_path / "dreambooth" / "prompts_and_classes.txt", newline)
    assert parse_prompts_file(path.read_text()) == BUILTIN
    assert read_table(path.parent) == BUILTIN
    assert read_table(tmp_path / "absent") == BUILTIN  # no dataset yet: the built-in table


def test_perturbed_prompts_file_is_refused_naming_the_first_difference(tmp_path):
    live = list(BUILTIN.live_prompts)
    live[13] = "a {0} {1} wearing a black top hat"
    path = write_prompts_file(
        PromptTable(BUILTIN.subjects, BUILTIN.object_prompts, tuple(live)), tmp_path / "p.txt"
    )
    path.rename(tmp_path / "prompts_and_classes.txt")
    with pytest.raises(
        ValueError, match=r"live_prompts\[13\] is 'a \{0\} \{1\} wearing a black top hat'.*setup"
    ):
        read_table(tmp_path)
    subjects = list(BUILTIN.subjects)
    subjects[2] = ("bear_plushie", "teddy bear")
    write_prompts_file(
        PromptTable(tuple(subjects), BUILTIN.object_prompts, BUILTIN.live_prompts),
        tmp_path / "prompts_and_classes.txt",
    )
    with pytest.raises(ValueError, match=r"subjects\[2\]"):
        read_table(tmp_path)
    (tmp_path / "prompts_and_classes.txt").write_text("Classes\nnot a csv line at all\n")
    with pytest.raises(ValueError, match="line 2"):
        read_table(tmp_path)


def test_script_dry_run_prints_the_run_card(capsys, tmp_path):
    script = train_dreambooth_oft_cli
    args = script.parse_args(["--run", "137", "--dry-run", "--data-root", str(tmp_path / "data")])
    assert script.main(args) is None
    out = capsys.readouterr().out
    assert "subject:           candle" in out and "class:             candle" in out
    assert "instance prompt:   a photo of qwe candle" in out
    assert "class prompt:      a photo of candle" in out
    assert "validation prompt: a qwe candle with the Eiffel Tower in the background" in out
    assert f"output folder:     {Path('outputs/dreambooth/candle-12')}" in out
    assert f"class images:      {tmp_path / 'data' / 'class_data' / 'candle'}" in out
    assert not (tmp_path / "data").exists()  # nothing trained, nothing written


def test_shell_wrapper_dry_run():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", "oft-db/train_dreambooth_oft.sh", "137", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        "subject:           candle" in out and "a qwe candle with the Eiffel Tower in the background" in out
    )
    bad = subprocess.run(
        ["bash", "oft-db/train_dreambooth_oft.sh", "x"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_queue_dry_run_skips_finished_runs(tmp_path, capsys):
    queue = run_queue_cli
    finished = tmp_path / "runs" / "cat-1"
    finished.mkdir(parents=True)
    (finished / "adapter.safetensors").write_bytes(b"done")
    args = queue.parse_args(
        [
            "--runs",
            "150-152",
            "--gpus",
            "0,1",
            "--output_root",
            str(tmp_path / "runs"),
            "--dry-run",
            "--",
            "--no-coft",
        ]
    )
    assert queue.main(args) == {}
    out = capsys.readouterr().out
    assert "3 runs: 1 finished (skipped), 2 to run on 2 slot(s)" in out
    assert (
        "run 150: cat / cat / 'a qwe cat in the jungle'" in out
        and "run 152:" in out
        and "run 151:" not in out
    )
    assert args.extra == ["--output_root", str(tmp_path / "runs"), "--no-coft"]


# A queued job that shows by files, not by clock readings, which jobs ran beside it. It marks its start, waits
# (at most 60 s) until a second job has started (seeing that while alive proves the two overlapped, however
# loaded the machine), lingers a little so that a third concurrent job could show up, marks its end and prints
# its slot, whether it met a second job, and the most jobs it saw running (started, not yet ended: a job
# starts only after another ended, so a queue that keeps to its slots never shows 3). Exit status: argv[3].
RENDEZVOUS_JOB = """
import os, pathlib, sys, time
meet, i = pathlib.Path(sys.argv[1]), sys.argv[2]
count = lambda kind: len(list(meet.glob(kind + "-*")))
(meet / f"start-{i}").touch()
peak = count("start") - count("end")
deadline = time.monotonic() + 60
while count("start") < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
met = count("start") >= 2
for _ in range(20):
    peak = max(peak, count("start") - count("end"))
    time.sleep(0.01)
print(os.environ["CUDA_VISIBLE_DEVICES"], int(met), peak)
(meet / f"end-{i}").touch()
sys.exit(int(sys.argv[3]))
"""


def test_queue_runs_one_job_per_slot(tmp_path):
    meet = tmp_path / "meet"
    meet.mkdir()
    jobs, done = plan_jobs(
        [0, 1, 2],
        lambda i: [sys.executable, "-c", RENDEZVOUS_JOB, str(meet), str(i), str(int(i == 2))],
        tmp_path,
    )
    assert done == [] and [j.index for j in jobs] == [0, 1, 2] and isinstance(jobs[0], Job)
    codes = run_queue(jobs, ["3", "5"], poll=0.05, log=lambda _: None)
    assert codes == {0: 0, 1: 0, 2: 1}  # a failing run is reported, the others finish
    met, peak = {}, {}
    for job in jobs:
        gpu, met[job.index], peak[job.index] = (job.folder / "train.log").read_text().split()
        assert gpu in ("3", "5")
    # jobs 0 and 1 ran at the same time (two slots used in parallel); no job ever saw three running
    assert met[0] == met[1] == "1" and max(peak.values()) == "2"
    with pytest.raises(ValueError, match="no GPU visible"):
        run_queue(jobs, [])


def test_training_defaults_are_the_reference_settings():
    """SPEC §4 values, and the sampler presets of ``oft.specs.sampling`` (one source of those settings)."""
    cfg = DreamBoothConfig()
    expected = {
        "r": 4, "eps": 6e-5, "coft": True, "block_share": False, "learning_rate": 6e-5, "weight_decay": 1e-2,
        "max_grad_norm": 1.0, "lr_scheduler": "constant", "train_batch_size": 1, "resolution": 512, "seed": 0,
        "with_prior_preservation": True, "prior_loss_weight": 1.0, "num_class_images": 200, "num_validation_images": 8,
    }  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert (cfg.validation_sampler, cfg.validation_inference_steps, cfg.guidance_scale) == (
        DREAMBOOTH_VALIDATION.sampler,
        DREAMBOOTH_VALIDATION.steps,
        DREAMBOOTH_VALIDATION.guidance,
    )
    assert cfg.class_inference_steps == DREAMBOOTH_CLASS.steps and cfg.class_images == "reference"
    assert cfg.oft_options() == {
        "r": 4,
        "eps": 6e-5,
        "coft": True,
        "block_share": False,
        "conv_layout": "flat",
    }
    cfg.coft = False  # plain OFT: no radius applies
    assert cfg.oft_options()["eps"] is None and not cfg.oft_options()["coft"]
