"""The parameter command reproduces paper Table 3's OFT figures on the weight-free SD1.5 architecture."""

from dataclasses import replace

import pytest

import oft_layers
from oft.cli.control import tool_add_control_oft as tool_add_control_oft_cli
from oft.control.checkpoint import new_control_model
from oft.control.hint import HINT_WIDTHS, scaled_widths
from oft.control.params import (
    PAPER_TABLE3,
    UNUSED_TIME_MLP,
    budget_matched_eps,
    count_control_parameters,
    paper_proportions,
    proportions,
)
from oft.sd import build_sd


def _tool():
    return tool_add_control_oft_cli


@pytest.mark.parametrize("r", [2, 4, 8, 16])
def test_counting_gives_paper_table3(r):
    """The counting code on the weight-free SD1.5 UNet: the paper's DOF exactly, and its total to the reported
    0.1M once the reference's unused time-embedding MLP is added."""
    row = count_control_parameters(r)
    dof, total = PAPER_TABLE3[r]
    assert (row.r, row.layers, row.oft_dof, row.hint_encoder) == (r, 144, dof, 1_086_480)
    assert (
        UNUSED_TIME_MLP == 2_050_560
        and row.reference_total == row.oft_dof + row.hint_encoder + UNUSED_TIME_MLP
    )
    assert f"{row.reference_total / 1e6:.1f}M" == total


def test_count_only_prints_the_four_figures(capsys):
    tool = _tool()
    table = tool.main(tool.parse_args(["--count-only", "--r", "2", "4", "8", "16"]))
    assert capsys.readouterr().out.strip() == table.strip()
    for figure in ("26,345,824", "13,144,928", "6,544,480", "3,244,256", "1,086,480", "2,050,560"):
        assert figure in table
    row4 = next(line for line in table.splitlines() if line.startswith("| 4 |"))
    assert row4 == ("| 4 | 144 | 13,144,928 | 13,144,928 | 1,086,480 | 14,231,408 | 16,281,968 | 16.3M |")


def test_counts_follow_the_formula_on_the_tiny_preset():
    """r·b(b−1)/2 per layer by hand. Tiny: three 32-wide transformer blocks (down, two up) and a 64-wide mid
    block whose attn2 keys/values read the 32-wide text context."""
    row = count_control_parameters(2, preset="tiny")
    widths = [32] * 9 * 3 + [64] * 7 + [32] * 2
    assert row.layers == 36
    assert row.oft_dof == sum(2 * (w // 2) * (w // 2 - 1) // 2 for w in widths)


def _block_dof(r: int, width: int, context: int, ff: bool) -> int:
    """Skew DOF of one transformer block by hand: attn1 q/k/v/out and attn2 q/out read ``width`` features, attn2
    k/v the text ``context``; the GEGLU projection reads ``width``."""
    dof = lambda features: r * (features // r) * (features // r - 1) // 2  # noqa: E731
    return 6 * dof(width) + 2 * dof(context) + (dof(width) if ff else 0)


@pytest.mark.parametrize(
    "base, blocks, context",
    [
        # SD2.1: SD1.5's 16 blocks (5 at 320, 5 at 640, 6 at 1280 with the mid block), 1024-wide OpenCLIP context
        ("sd21", {320: 5, 640: 5, 1280: 6}, 1024),
        # SDXL: 2 + 2x2 + 3x2 blocks at 640 (down, up), 2x10 + 10 + 3x10 at 1280, context 768 + 1280
        ("sdxl", {640: 10, 1280: 60}, 2048),
    ],
)
@pytest.mark.parametrize("r", [2, 4])
def test_counts_of_the_other_bases_follow_the_formula(base, blocks, context, r):
    for targets, ff in (("attn+ff", True), ("attn", False)):
        row = count_control_parameters(r, base, targets)
        assert row.layers == sum(blocks.values()) * (9 if ff else 8)
        assert row.oft_dof == sum(n * _block_dof(r, w, context, ff) for w, n in blocks.items())
        assert row.hint_encoder == 1_086_480  # the 320-wide first block of every base


def test_count_only_prints_another_base(capsys):
    tool = _tool()
    table = tool.main(tool.parse_args(["--count-only", "--base", "sdxl", "--r", "4"]))
    assert "| sdxl | 4 | 630 | 162,565,760 | 1,086,480 | 163,652,240 |" in table
    assert "| attn | - | 4 | 560 | 149,807,360 |" in table and "paper" not in table


def test_flags_are_checked():
    tool = _tool()
    with pytest.raises(SystemExit):
        tool.parse_args(["--count-only", "--r", "0"])
    with pytest.raises(SystemExit):  # building a model takes one r
        tool.parse_args(["--r", "2", "4"])


def test_proportions_of_the_paper_and_of_the_tiny_preset():
    """SD1.5 at r = 4: 13.1 M rotation DOF beside a 1.09 M hint encoder (12 : 1), and COFT's narrowest block
    (b = 80) on a radius eps·b²/√r = 3.2, i.e. 0.04 per row at eps = 1e-3. The tiny preset at r = 4 with
    ControlNet's hint channels inverts the first and gives COFT a tenth of the per-row budget (b = 8)."""
    paper = paper_proportions(4, 1e-3)
    assert (paper.adapter, paper.hint_encoder, paper.block) == (PAPER_TABLE3[4][0], 1_086_480, 80)
    assert paper.radius == pytest.approx(3.2) and paper.per_entry_budget == pytest.approx(0.04)
    assert paper.adapter_to_hint == pytest.approx(13_144_928 / 1_086_480)
    cm = new_control_model(build_sd("tiny"), r=4, eps=1e-3, coft=True, block_share=False)
    tiny = proportions(cm.sd.unet, cm.hint, 1e-3)
    assert (tiny.adapter, tiny.block) == (oft_layers.count_trainable(cm.sd.unet), 8)
    assert tiny.hint_encoder == sum(p.numel() for p in cm.hint.parameters()) == 422_640
    assert tiny.per_entry_budget == pytest.approx(1e-3 * 8 / 2) and tiny.adapter_to_hint < 1 / 50
    shared = new_control_model(build_sd("tiny"), r=4, eps=1e-3, coft=True, block_share=True)
    assert proportions(shared.sd.unet, shared.hint, 1e-3).adapter == tiny.adapter // 4  # one block per layer


def test_the_demo_proportions_scaled_hint_encoder_and_budget_matched_eps():
    """The demo's toy (r = 1, ControlNet's hint channels × 0.1): the rotations outweigh the hint encoder, as on
    SD1.5, and the eps that gives its 32-wide blocks SD1.5's per-entry budget of 0.04 is 0.04·√1/32."""
    widths = scaled_widths(0.1)
    assert widths == (2, 2, 3, 3, 10, 10, 26) and scaled_widths(1.0) == HINT_WIDTHS
    cm = new_control_model(build_sd("tiny"), r=1, eps=1e-3, coft=True, block_share=False, hint_widths=widths)
    toy = proportions(cm.sd.unet, cm.hint, 1e-3)
    convs = zip((3, *widths), (*widths, 32), strict=True)  # the seven convs and the zero conv to width 32
    assert toy.hint_encoder == sum(9 * i * o + o for i, o in convs) == 11_311
    assert toy.block == 32 and toy.adapter_to_hint > 2
    eps = budget_matched_eps(toy, paper_proportions(4, 1e-3))
    assert eps == pytest.approx(0.04 / 32)
    assert replace(toy, eps=eps).per_entry_budget == pytest.approx(
        paper_proportions(4, 1e-3).per_entry_budget
    )
    with pytest.raises(ValueError, match="positive"):
        scaled_widths(0)
