"""The model-level benchmark runs end to end on the tiny preset and leaves the shared UNet as it found it."""

import json

import torch

from bench import bench_sd_step as bench_sd_step_cli
from tests.helpers.numerics import is_duration


def _bench():
    return bench_sd_step_cli


def test_tiny_run_writes_results_and_restores_the_unet(tmp_path, monkeypatch):
    bench = _bench()
    built = []
    original = bench.UNet2DConditionModel

    def keep(**cfg):  # remember the UNet the benchmark builds, to inspect it afterwards
        built.append(original(**cfg))
        return built[-1]

    monkeypatch.setattr(bench, "UNet2DConditionModel", keep)
    out = tmp_path / "sd_step.json"
    args = bench.parse_args(
        [
            "--preset",
            "tiny",
            "--latent",
            "8",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--max-repeats",
            "1",
            "--sample-steps",
            "2",
            "--sample-repeats",
            "1",
            "--threads",
            str(torch.get_num_threads()),
            "--out",
            str(out),
        ]
    )
    results = bench.main(args)
    saved = json.loads(out.read_text())
    assert saved["training"].keys() == results["training"].keys()
    train = saved["training"]["variants"]
    assert {
        "OFT r=4 (ours, auto path)",
        "OFT r=4 reference-style dense",
        bench.BASELINE,
        bench.CONTROL,
    } <= set(train)
    assert all(is_duration(t) for v in train.values() for t in v["times_s"])
    assert all(len(v["times_s"]) == 1 for v in train.values()) and train[bench.BASELINE]["ratio"] == [1, 1, 1]
    assert train["OFT r=4 (ours, auto path)"]["trainable"] > 0 and saved["training"]["rounds"] == 1
    assert set(saved["sampling"]["variants"]) == {"plain UNet", "plain UNet, control copy", "OFT r=4 merged"}
    assert "| OFT r=4 merged |" in saved["table"] and "vs LoRA [95 % CI]" in saved["table"]
    # every adapter was stripped: only the plain, frozen diffusers modules remain
    unet = built[0]
    assert not any(p.requires_grad for p in unet.parameters())
    assert all(type(m).__module__.startswith(("diffusers", "torch")) for m in unet.modules())
    assert isinstance(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q, torch.nn.Linear)


def test_sdxl_shaped_run_in_bf16_with_checkpointing(tmp_path):
    """The SDXL-shaped tiny UNet (pooled embedding and size numbers added) in bf16 with gradient checkpointing,
    two variants: our OFT against PEFT's LoRA."""
    bench = _bench()
    ours = "OFT r=4 (ours, auto path)"
    argv = ["--base", "tiny-sdxl", "--dtype", "bf16", "--gradient-checkpointing", "--warmup", "0", "--repeats",
            "1", "--max-repeats", "1", "--parts", "training", "--variants", ours, bench.BASELINE,
            "--threads", str(torch.get_num_threads()), "--out", str(tmp_path / "xl.json")]  # fmt: skip
    results = bench.main(bench.parse_args(argv))
    assert results["latent"] == 8 and results["dtype"] == "bf16" and results["checkpointing"]
    assert set(results["training"]["variants"]) == {ours, bench.BASELINE}
    assert "Base tiny-sdxl, batch 1, 8x8 latents, bf16, gradient checkpointing" in results["table"]
