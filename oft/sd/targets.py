"""Where OFT goes in the SD UNet (SPEC §2): module-path regexes, the one source of truth for both trees.

The patterns are matched with ``re.fullmatch`` against ``unet.named_modules()`` names, so a swapped attention
implementation (the reference's xformers pitfall) cannot silently drop layers: ``inject`` raises when a pattern
matches nothing, and ``tests/test_sd_targets.py`` checks the counts on the real SD1.5 architecture.
"""

from __future__ import annotations

import re

# Every transformer block of the UNet: down_blocks.i.attentions.j / mid_block.attentions.0 / up_blocks.i.attentions.j
_BLOCK = r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+"

# oft-control: attn1/attn2 q, k, v, out and the GEGLU input projection: 9 linears x 16 blocks = 144 on SD1.5.
CONTROL_TARGETS: tuple[str, ...] = (
    _BLOCK + r"\.attn[12]\.to_(?:q|k|v|out\.0)",
    _BLOCK + r"\.ff\.net\.0\.proj",
)

# oft-db: q, k, v, out of all attention modules (attn1 and attn2 of 16 blocks = 32 modules): 128 on SD1.5.
DB_TARGETS: tuple[str, ...] = (_BLOCK + r"\.attn[12]\.to_(?:q|k|v|out\.0)",)

TARGET_SETS: dict[str, tuple[str, ...]] = {"control": CONTROL_TARGETS, "db": DB_TARGETS}


def match_targets(names, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """The names (in order) that fully match any of ``patterns``: what ``oft_layers.inject`` would wrap."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in names if any(c.fullmatch(n) for c in compiled)]
