"""Where OFT goes in the SD UNet (SPEC §2): module-path regexes, the one source of truth for both trees.

The patterns are matched with ``re.fullmatch`` against ``unet.named_modules()`` names, so a swapped attention
implementation (the reference's xformers pitfall) cannot silently drop layers: ``inject`` raises when a pattern
matches nothing, and ``tests/test_sd_targets.py`` checks the counts on the real SD1.5 architecture.
"""

from __future__ import annotations

import re

# Every transformer block of the UNet: down_blocks.i.attentions.j / mid_block.attentions.0 / up_blocks.i.attentions.j
# A level of the UNet: down_blocks.i, mid_block or up_blocks.i
LEVEL = r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)"
_BLOCK = LEVEL + r"\.attentions\.\d+\.transformer_blocks\.\d+"

# oft-control: attn1/attn2 q, k, v, out and the GEGLU input projection: 9 linears x 16 blocks = 144 on SD1.5.
CONTROL_TARGETS: tuple[str, ...] = (
    _BLOCK + r"\.attn[12]\.to_(?:q|k|v|out\.0)",
    _BLOCK + r"\.ff\.net\.0\.proj",
)

# oft-db: q, k, v, out of all attention modules (attn1 and attn2 of 16 blocks = 32 modules): 128 on SD1.5.
DB_TARGETS: tuple[str, ...] = (_BLOCK + r"\.attn[12]\.to_(?:q|k|v|out\.0)",)

# Every ResBlock of the UNet: down_blocks.i.resnets.j / mid_block.resnets.j / up_blocks.i.resnets.j
_RESNET = LEVEL + r"\.resnets\.\d+"

# The appendix ablation of where OFT goes (paper Table 5, the reference's inject_trainable_oft_conv and
# inject_trainable_oft_extended in oft-control/oft.py): "conv" wraps every nn.Conv2d under a ResBlock (the 3x3
# conv1/conv2 and the 1x1 conv_shortcut where the width changes); "extended" wraps every nn.Linear and nn.Conv2d
# under ResBlock, CrossAttention and GEGLU: the control set plus those convolutions plus each ResBlock's
# time-embedding projection. proj_in/proj_out, ff.net.2 and the down/upsampler convs are in no set (the
# reference's module classes never contain them).
CONV_TARGETS: tuple[str, ...] = (_RESNET + r"\.(?:conv1|conv2|conv_shortcut)",)
EXTENDED_TARGETS: tuple[str, ...] = (*CONTROL_TARGETS, *CONV_TARGETS, _RESNET + r"\.time_emb_proj")

# Target sets by name (the --targets flags): oft-db's default "attn", oft-control's "attn+ff".
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "attn": DB_TARGETS,
    "attn+ff": CONTROL_TARGETS,
    "conv": CONV_TARGETS,
    "extended": EXTENDED_TARGETS,
}
CONTROL_TARGET_SET, DB_TARGET_SET = "attn+ff", "attn"
# --conv_layout of both trainers (oft_layers.config.CONV_LAYOUTS; default its first, "flat")
CONV_LAYOUT_HELP = (
    "blocks of a convolution: flat = r blocks over the flattened filter; channel = the reference's, one "
    "kxk block per input channel (only with --targets conv or extended)"
)


def target_set(name: str) -> tuple[str, ...]:
    """The module-path regexes of the target set ``name`` (one of ``TARGET_SETS``), or a clear error."""
    if name not in TARGET_SETS:
        raise ValueError(f"unknown target set {name!r}; choose one of {list(TARGET_SETS)}")
    return TARGET_SETS[name]


def match_targets(names, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """The names (in order) that fully match any of ``patterns``: what ``oft_layers.inject`` would wrap."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in names if any(c.fullmatch(n) for c in compiled)]
