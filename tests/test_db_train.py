"""End to end on the tiny preset, CPU: benchmark run 160 (cat, live prompts) with synthetic subject photos and
prior preservation — class-image generation, training, a kill and a resume, the adapter in a diffusers pipeline,
merged exports, evaluation. Outputs are checked against an uninterrupted run and against the adapter model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oft.db.train as train_mod
import oft_layers
from oft.cli.db import eval_ablation as eval_ablation_cli
from oft.cli.db import generate as generate_cli
from oft.cli.db import merge_adapter as merge_adapter_cli
from oft.cli.db import train_dreambooth_oft as train_dreambooth_oft_cli
from oft.cli.run import run_main
from oft.common.images import list_images
from oft.db.config import DreamBoothConfig
from oft.db.data import DreamBoothSteps
from oft.db.export import load_with_adapter
from oft.sd import build_sd, load_sd
from oft.sd.loading import save_single_file
from oft.sd.webui import apply_webui, read_webui
from oft.specs.benchmark import BUILTIN
from tests.helpers.db import write_prompts_file
from tests.helpers.numerics import EFFECT, network_terms, tol
from tests.helpers.subject import metric_approx, tiny_metrics

RUN = 160  # subject 6 (cat, live prompts), prompt 10: "a qwe cat wearing a red hat"
TINY = [
    "--resolution", "64", "--num_class_images", "3", "--class_inference_steps", "3", "--sample_batch_size", "3",
    "--num_validation_images", "2", "--validation_inference_steps", "3", "--validation_steps", "4",
    "--checkpointing_steps", "2", "--learning_rate", "2e-3", "--no-progress",
]  # fmt: skip


def read_R(path: Path) -> dict[str, torch.Tensor]:
    return oft_layers.read_adapter(path)[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SD checkpoint and a dataset folder: 3 synthetic 'cat' photos of different sizes + the prompt file."""
    root = tmp_path_factory.mktemp("db")
    ckpt = save_single_file(build_sd("tiny", seed=3), root / "models" / "tiny.ckpt")
    cat = root / "data" / "dreambooth" / "cat"
    cat.mkdir(parents=True)
    for i, size in enumerate([(80, 64), (64, 96), (72, 72)]):
        a = np.full((size[1], size[0], 3), (30, 60, 200), np.uint8)
        a[10:40, 10 + 5 * i : 50, :] = (250, 120, 20)  # an orange "subject" on blue
        Image.fromarray(a).save(cat / f"{i:02d}.jpg")
    write_prompts_file(BUILTIN, root / "data" / "dreambooth" / "prompts_and_classes.txt")
    common = ["--pretrained_model", str(ckpt), "--data_root", str(root / "data"), *TINY]
    return root, ckpt, common


@pytest.fixture(scope="module")
def full_run(setup):
    """Run 160 for 4 steps without interruption, through the script (as the .sh calls it)."""
    root, _, common = setup
    script = train_dreambooth_oft_cli
    adapter = script.main(
        script.parse_args(
            [
                "--run",
                str(RUN),
                "--max_train_steps",
                "4",
                "--output_root",
                str(root / "full"),
                "--keep_checkpoints",
                *common,
            ]
        )
    )
    return adapter


@pytest.mark.numerics
def test_training_outputs(setup, full_run):
    root, _, _ = setup
    run_dir = full_run.parent
    assert run_dir == root / "full" / "cat-10"
    info = json.loads((run_dir / "run.json").read_text())
    assert (
        info["validation_prompt"] == "a qwe cat wearing a red hat"
        and info["eval_prompt"] == "a cat wearing a red hat"
    )
    assert info["class_images_generated"] == 3 and info["subject"] == "cat"
    class_dir = root / "data" / "class_data" / "cat"
    # the default recipe: the reference's (PNDM, JPEG)
    assert [p.name for p in list_images(class_dir)] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    with Image.open(class_dir / "0000.jpg") as im:
        assert im.size == (64, 64) and im.format == "JPEG"
    R, meta = oft_layers.read_adapter(full_run)
    assert (
        len(R) == 32 and meta["coft"] == "true" and meta["validation_prompt"] == "a qwe cat wearing a red hat"
    )
    assert all(v.abs().max() > 0 for v in R.values())  # every layer moved from identity
    # COFT: every block inside its Frobenius ball eps*b^2/sqrt(r) (b = in/4), up to the rounding of a norm of
    # b² entries (computed to project, and here)
    for v in R.values():
        b = v.shape[-1]
        slack = 1 + tol(torch.float32, 2 * b * b, worst_case=True)["rtol"]
        assert torch.linalg.matrix_norm(v).max() <= 6e-5 * b * b / 2 * slack
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # the adapter reloaded into the plain base model reproduces the last in-training validation images exactly
    # (one process: the same rotations, inputs and kernels)
    for name in ("00.png", "01.png"):
        a = np.asarray(Image.open(run_dir / "validation" / "step-000004" / name))
        b = np.asarray(Image.open(run_dir / "validation" / "final" / name))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]


@pytest.mark.numerics
def test_kill_and_resume_continues_exactly(setup, full_run, monkeypatch):
    root, _, common = setup
    script = train_dreambooth_oft_cli
    args = ["--run", str(RUN), "--max_train_steps", "4", "--output_root", str(root / "killed"), *common]
    class_dir = root / "data" / "class_data" / "cat"
    mtimes = {p.name: p.stat().st_mtime_ns for p in list_images(class_dir)}

    real_save = train_mod.save_checkpoint

    def save_then_die(*a, **k):  # the process is killed right after its first checkpoint
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        script.main(script.parse_args(args))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    run_dir = root / "killed" / "cat-10"
    assert not (run_dir / "adapter.safetensors").exists()
    ckpt = run_dir / "checkpoint-000002"
    saved = read_R(ckpt / "adapter.safetensors")
    for k, v in read_R(full_run.parent / "checkpoint-000002" / "adapter.safetensors").items():
        assert torch.equal(saved[k], v)  # same state as the uninterrupted run at step 2

    adapter = script.main(script.parse_args(args))  # the identical command resumes (the default: latest)
    assert not list(run_dir.glob("checkpoint-*"))  # finished: checkpoints removed (no --keep_checkpoints)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed_from_step"] == 2 and info["class_images_generated"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in list_images(class_dir)} == mtimes  # reused, not regenerated
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the counter continues at 3
    stamp = adapter.stat().st_mtime_ns
    assert script.main(script.parse_args(args)) == adapter
    assert adapter.stat().st_mtime_ns == stamp  # a re-submitted finished job does nothing
    final, reference = read_R(adapter), read_R(full_run)
    for k in reference:  # resumed == uninterrupted, exactly: one process, the same kernels and thread count
        assert torch.equal(final[k], reference[k]), k


def test_resume_refuses_another_base(setup, full_run, tmp_path):
    root, _, common = setup
    other = save_single_file(build_sd("tiny", seed=4), tmp_path / "other.ckpt")
    script = train_dreambooth_oft_cli
    args = script.parse_args(
        [
            "--run",
            str(RUN),
            "--max_train_steps",
            "6",
            "--output_root",
            str(root / "full"),
            *common,
            "--pretrained_model",
            str(other),
            "--resume_from_checkpoint",
            "latest",
        ]
    )
    with pytest.raises(ValueError, match="same --pretrained_model"):
        script.main(args)


@pytest.mark.numerics
def test_adapter_in_pipeline_and_merged_exports_match(setup, full_run, tmp_path):
    _, ckpt, _ = setup
    from diffusers import StableDiffusionPipeline

    # UNet level: plain base + adapter (unmerged OFT) == merged single file == merged diffusers folder
    adapted, _ = load_with_adapter(ckpt, full_run, merge=False)
    assert len(list(oft_layers.oft_modules(adapted.unet))) == 32
    merge_script = merge_adapter_cli
    single = merge_script.main(
        merge_script.parse_args(
            [
                "--base",
                str(ckpt),
                "--adapter",
                str(full_run),
                "--output",
                str(tmp_path / "m.safetensors"),
                "--format",
                "single-file",
            ]
        )
    )
    folder = merge_script.main(
        merge_script.parse_args(
            ["--base", str(ckpt), "--adapter", str(full_run), "--output", str(tmp_path / "merged")]
        )
    )
    merged = load_sd(single)
    assert not list(oft_layers.oft_modules(merged.unet))  # a plain model: no OFT code needed to use it
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 700])
    ctx = adapted.encode_prompts(["a qwe cat wearing a red hat", ""])
    base = load_sd(ckpt)
    with torch.no_grad():
        ya, ym, yb = (m.unet(x, t, ctx).sample for m in (adapted, merged, base))
    # merged weights W·blockdiag(Q)ᵀ are rounded once, the unmerged layer rounds on the fly: equal up to the
    # UNet's rounding; the adapter's own effect is far larger
    same = tol(torch.float32, network_terms(base.unet), scale=ya.abs().max())
    torch.testing.assert_close(ya, ym, **same)
    assert (ya - yb).abs().max() > EFFECT * same["atol"]

    # pipeline level: generate.py (adapter in a StableDiffusionPipeline) == the merged folder opened by diffusers
    gen = generate_cli
    paths = gen.main(
        gen.parse_args(
            [
                "--base",
                str(ckpt),
                "--adapter",
                str(full_run),
                "--num_images",
                "1",
                "--steps",
                "3",
                "--resolution",
                "64",
                "--output_dir",
                str(tmp_path / "gen"),
                "--device",
                "cpu",
            ]
        )
    )
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(
        "a qwe cat wearing a red hat",
        num_inference_steps=3,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    ours = np.asarray(Image.open(paths[0])).astype(int)
    # two float32 pipelines (unmerged vs merged) agree to ~1e-4, far below one 8-bit level (4e-3), so a pixel
    # can round to the neighbouring level but never further
    assert np.abs(ours - np.round(img * 255).astype(int)).max() <= 1


def test_trained_adapter_exports_for_peft_and_the_web_uis(setup, full_run, tmp_path):
    """The trained COFT adapter exported with --format peft loads with PeftModel.from_pretrained into the plain
    base UNet with our outputs, and the folder converts back (--format adapter) to the same R and options;
    --format webui's weight differences added to the plain base give our outputs too."""
    import warnings

    from peft import PeftModel

    _, ckpt, _ = setup
    merge_script = merge_adapter_cli

    def export(adapter: Path, output: Path, fmt: str) -> Path:
        argv = ["--base", str(ckpt), "--adapter", str(adapter), "--output", str(output), "--format", fmt]
        return merge_script.main(merge_script.parse_args(argv))

    folder = export(full_run, tmp_path / "peft", "peft")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    adapted, _ = load_with_adapter(ckpt, full_run, merge=False)
    base = load_sd(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's note on its Neumann change (this export uses exact Cayley)
        peft_unet = PeftModel.from_pretrained(base.unet, folder).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 700])
    ctx = adapted.encode_prompts(["a qwe cat wearing a red hat", ""])
    with torch.no_grad():
        ours, theirs = adapted.unet(x, t, ctx).sample, peft_unet(x, t, ctx).sample
        with peft_unet.disable_adapter():
            before = peft_unet(x, t, ctx).sample
    # PEFT rotates x per block with its own kernels, ours picks the weight or input path: float32 rounding
    same = tol(torch.float32, network_terms(base.unet), scale=ours.abs().max())
    torch.testing.assert_close(theirs, ours, **same)
    assert (ours - before).abs().max() > EFFECT * same["atol"]
    back = export(folder, tmp_path / "back.safetensors", "adapter")
    R, meta = oft_layers.read_adapter(back)
    original, original_meta = oft_layers.read_adapter(full_run)
    assert R.keys() == original.keys() and all(torch.equal(R[k], original[k]) for k in R)
    assert json.loads(meta["layers"]) == json.loads(original_meta["layers"])  # COFT and eps restored
    assert meta["format_version"] == "2" and meta["source"] == "peft:OFT"
    assert meta["base_model"] == original_meta["base_model"]

    diffs = read_webui(export(full_run, tmp_path / "ui.safetensors", "webui"))
    assert len(diffs) == 32 and all(v.dtype == torch.float16 for v in diffs.values())
    plain = load_sd(ckpt).unet
    apply_webui(plain, diffs)
    with torch.no_grad():
        ui = plain(x, t, ctx).sample
    # fp16 differences: each is off by at most its unit roundoff u = 2^-11 relative, and the output moves with
    # them linearly (the adapter's effect is small against the weights): within 4u of that effect
    u16 = torch.finfo(torch.float16).eps / 2
    assert (ui - ours).abs().max() <= 4 * u16 * (ours - before).abs().max() + same["atol"]


@pytest.mark.numerics
def test_evaluation_of_the_trained_run(setup, full_run):
    root, _, _ = setup
    evaluate = eval_ablation_cli
    argv = ["--output_root", str(root / "full"), "--data_root", str(root / "data"), "--prompts", "10,11"]
    argv += ["--subjects", "cat", "--step", "4", "--num_images", "2", "--lpips_size", "64"]
    args = evaluate.parse_args(argv)
    metrics = tiny_metrics()
    results = evaluate.main(args, metrics=metrics)
    assert list(results["runs"]) == ["cat-10"] and results["missing"] == ["cat-11"]
    row = results["runs"]["cat-10"]
    real = [Image.open(p).convert("RGB") for p in list_images(root / "data" / "dreambooth" / "cat")]
    gen = [Image.open(p).convert("RGB") for p in list_images(full_run.parent / "validation" / "step-000004")]
    direct = metrics.evaluate(real, gen, "a cat wearing a red hat")
    assert row.keys() == {*direct, "subject", "prompt_index", "prompt", "num_real", "num_generated"}
    assert (row["num_real"], row["num_generated"]) == (3, 2)
    assert {k: row[k] for k in direct} == metric_approx(metrics, direct)
    assert (row["subject"], row["prompt_index"], row["prompt"]) == ("cat", 10, "a cat wearing a red hat")
    assert results["subjects"]["cat"]["dino"] == metric_approx(metrics, row["dino"])
    assert results["overall"]["runs"] == 1
    out = root / "full" / "results-step4-prompts10_11"
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["overall"]["clip_t"] == metric_approx(metrics, row["clip_t"])
    md = out.with_suffix(".md").read_text()
    assert "| cat | 1 |" in md and "LPIPS (diversity)" in md and "| OFT |" in md
    # the "Real images" row: the 3 cat photos against each other
    assert results["real_images"]["subjects"]["cat"]["photos"] == 3
    assert results["real_images"]["overall"]["dino"] == metric_approx(
        metrics, metrics.evaluate_real(real)["dino"]
    )
    assert "| **real images** (photo vs photo, pooled) |" in md

    class NoNetworks:  # a second evaluation must come from the per-run cache, computing nothing
        def evaluate(self, *a):
            raise AssertionError("recomputed a cached run")

    cached = evaluate.parse_args([*argv, "--no-real_images"])
    assert evaluate.main(cached, metrics=NoNetworks())["runs"] == results["runs"]
    with_token = evaluate.main(evaluate.parse_args([*argv, "--clip_t_prompt", "validation"]), metrics=metrics)
    row_v = with_token["runs"]["cat-10"]
    assert row_v["prompt"] == "a qwe cat wearing a red hat" and row_v["dino"] == metric_approx(
        metrics, row["dino"]
    )
    assert row_v["clip_t"] == metric_approx(
        metrics, metrics.evaluate(real, gen, "a qwe cat wearing a red hat")["clip_t"]
    )


def test_bad_input_messages(setup, tmp_path):
    _, ckpt, _ = setup
    prompts = {"instance_prompt": "a", "class_prompt": "b", "validation_prompt": "v"}
    folders = {"class_data_dir": str(tmp_path / "c"), "output_dir": str(tmp_path / "o")}
    with pytest.raises(FileNotFoundError, match="dataset_setup_db_dreambooth.sh"):
        train_mod.train(
            DreamBoothConfig(
                pretrained_model=str(ckpt), instance_data_dir=str(tmp_path / "none"), **prompts, **folders
            )
        )
    (tmp_path / "s").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "s" / "a.png")
    with pytest.raises(FileNotFoundError, match="download_model.sh"):
        missing = str(tmp_path / "missing.ckpt")
        train_mod.train(
            DreamBoothConfig(
                pretrained_model=missing, instance_data_dir=str(tmp_path / "s"), **prompts, **folders
            )
        )
    with pytest.raises(ValueError, match="--class_prompt"):
        DreamBoothConfig(instance_data_dir="x", instance_prompt="a", output_dir="o").validate()
    with pytest.raises(ValueError, match="--validation_prompt"):
        DreamBoothConfig(
            instance_data_dir="x", instance_prompt="a", output_dir="o", class_prompt="b", class_data_dir="c"
        ).validate()
    with pytest.raises(ValueError, match="--seed must be >= 0"):  # the step seeds need a non-negative seed
        DreamBoothConfig(instance_data_dir="x", seed=-1, **prompts, **folders).validate()


@pytest.mark.numerics
def test_resume_none_starts_over_and_says_so(setup, full_run, monkeypatch, caplog):
    root, _, common = setup
    script = train_dreambooth_oft_cli
    args = ["--run", str(RUN), "--max_train_steps", "4", "--output_root", str(root / "over"), *common]
    real_save = train_mod.save_checkpoint

    def save_then_die(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        script.main(script.parse_args([*args, "--learning_rate", "1e-2"]))  # an earlier, different run
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    run_dir = root / "over" / "cat-10"
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-000002"]
    with caplog.at_level("INFO", logger="oft.db.train"):
        adapter = script.main(script.parse_args([*args, "--resume_from_checkpoint", "none"]))
    said = [r.getMessage() for r in caplog.records if "starting over" in r.getMessage()]
    assert len(said) == 1 and "--resume_from_checkpoint none" in said[0] and "checkpoint-000002" in said[0]
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_step"] == 0
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    final, reference = read_R(adapter), read_R(full_run)
    for k in reference:  # nothing of the earlier run survived: this is the uninterrupted run's adapter
        assert torch.equal(final[k], reference[k]), k


def test_inputs_are_checked_before_class_images_or_models(setup, tmp_path, monkeypatch):
    """A bad photo, an r that does not divide a layer, an output folder that cannot be made: one line through
    run_main, before any model loads or class image is made."""
    _, ckpt, _ = setup

    def too_late(*a, **k):
        raise AssertionError("expensive work started before the inputs were checked")

    monkeypatch.setattr(train_mod, "ensure_class_images", too_late)
    script = train_dreambooth_oft_cli
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photos / "a.png")
    (tmp_path / "a_file").write_text("x")
    base = [
        "--pretrained_model", str(ckpt), "--instance_data_dir", str(photos),
        "--instance_prompt", "a photo of qwe dog", "--class_prompt", "a photo of dog",
        "--class_data_dir", str(tmp_path / "class"), "--num_validation_images", "0",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train_dreambooth_oft.py"])

    def one_line(*extra: str) -> str:
        with pytest.raises(SystemExit) as exit_:  # as the script's __main__ runs it
            run_main(script.main, lambda: script.parse_args([*base, *extra]), errors=(ValueError,))
        message = str(exit_.value.code)
        assert message.startswith("train_dreambooth_oft: ") and "\n" not in message, message
        return message

    # the model is not even loaded for these
    monkeypatch.setattr(train_mod, "load_sd", too_late)
    assert "r=3 blocks do not divide" in one_line("--r", "3")
    assert "to_k" in one_line("--r", "5") and "take r among [1, 2, 4, 8, 16, 32, 64]" in one_line("--r", "5")
    assert "a_file is not a folder" in one_line("--output_dir", str(tmp_path / "a_file" / "out"))
    assert "--class_data_dir" in one_line("--class_data_dir", str(tmp_path / "a_file" / "cat"))
    (photos / "b.jpg").write_bytes(b"these bytes are no JPEG")
    assert f"cannot decode subject image {photos / 'b.jpg'}" in one_line()
    png = (photos / "a.png").read_bytes()
    (photos / "b.jpg").unlink()
    (photos / "c.png").write_bytes(png[: len(png) // 2])  # truncated
    assert f"cannot decode subject image {photos / 'c.png'}" in one_line()
    (photos / "c.png").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(train_mod, "ensure_class_images", too_late)
    monkeypatch.setattr(sys, "argv", ["train_dreambooth_oft.py"])
    # r = 64 fits SD1.5's widths but not the tiny base's (32): refused once its shapes are known, still before
    # any class image is made
    assert "base model layer" in one_line("--r", "64")


def test_data_order_is_a_function_of_the_step(tmp_path):
    paths = []
    for i in range(3):
        Image.new("RGB", (70, 64), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    data = DreamBoothSteps(paths, paths * 3, size=64, batch_size=1, seed=0)
    assert data.steps_per_epoch == 9
    epoch0 = [data.items_of_step(s)[0] for s in range(9)]
    assert sorted(epoch0) == list(range(9))  # one epoch visits every class image once
    again = DreamBoothSteps(paths, paths * 3, size=64, batch_size=1, seed=0)
    assert torch.equal(data[5]["pixel_values"], again[5]["pixel_values"])  # same step, same batch and crop
    assert data[5]["pixel_values"].shape == (2, 3, 64, 64)  # instance then class image


def test_extended_targets_with_the_channel_conv_layout_train_and_reload(setup, full_run):
    """The appendix ablation's widest set through the DreamBooth command: every adapted conv rotates one k×k
    patch per input channel, and the saved adapter reloads into the base to the last validation images."""
    root, _, common = setup
    script = train_dreambooth_oft_cli
    argv = ["--run", str(RUN), "--max_train_steps", "2", "--output_root", str(root / "extended"),
            "--targets", "extended", "--conv_layout", "channel", "--validation_steps", "2", *common]  # fmt: skip
    adapter = script.main(script.parse_args(argv))
    tensors, meta = oft_layers.read_adapter(adapter)
    R = {k.removesuffix(".R"): v for k, v in tensors.items() if k.endswith(".R")}
    layers = json.loads(meta["layers"])
    unet = load_sd(setup[1]).unet
    modules = dict(unet.named_modules())
    convs = [n for n in R if isinstance(modules[n], torch.nn.Conv2d)]
    assert len(R) == 65 and len(convs) == 21  # tiny preset: 36 attention/GEGLU + 8 time-embedding + 21 convs
    for name in convs:
        conv = modules[name]
        k = conv.kernel_size[0] * conv.kernel_size[1]
        assert R[name].shape == (conv.in_channels, k, k) and layers[name]["conv_layout"] == "channel"
    a = np.asarray(Image.open(adapter.parent / "validation" / "step-000002" / "00.png"))
    b = np.asarray(Image.open(adapter.parent / "validation" / "final" / "00.png"))
    assert np.array_equal(a, b)


def test_a_real_base_at_another_size_than_its_own_is_warned_about():
    assert train_mod.size_warning("sdxl", 512) == (
        "training sdxl at 512 px; it was trained at 1024 px (--resolution 1024)"
    )
    assert train_mod.size_warning("sd15", 512) is None and train_mod.size_warning("sd21", 768) is None
    assert train_mod.size_warning("tiny-sdxl", 64) is None and train_mod.size_warning("tiny", 32) is None
