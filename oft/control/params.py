"""Trainable parameters of the control model (paper Table 3), counted on a real architecture (SD1.5, SD2.1,
SDXL), weight-free.

The UNet and the hint encoder are built on the meta device (shapes only, no memory), OFT is injected on the 144
control targets (or another target set of ``oft.sd.targets.TARGET_SETS``), and the rotations are counted as the reference did: skew degrees of freedom ``r·b(b−1)/2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from oft.control.hint import HintEncoder
from oft.sd.configs import preset_config
from oft.sd.targets import CONTROL_TARGET_SET, CONTROL_TARGETS, TARGET_SETS, target_set
from oft_layers import count_trainable, inject, oft_modules, rotation_dof

# Paper Table 3 (SPEC §2): OFT skew DOF of the 144 layers and the reported total, per r.
PAPER_TABLE3: dict[int, tuple[int, str]] = {
    2: (26_345_824, "29.5M"),
    4: (13_144_928, "16.3M"),
    8: (6_544_480, "9.7M"),
    16: (3_244_256, "6.4M"),
}
# The reference's control model also built a time-embedding MLP, Linear(320, 1280) -> SiLU -> Linear(1280, 1280),
# that its forward never used; its parameters are in the paper's totals. We do not build it.
UNUSED_TIME_MLP = (320 * 1280 + 1280) + (1280 * 1280 + 1280)  # 2,050,560


@dataclass(frozen=True)
class ParameterCount:
    """One row of the table: OFT rotations, hint encoder, our total and the reference's total."""

    r: int
    layers: int
    oft_dof: int
    hint_encoder: int
    targets: str = CONTROL_TARGET_SET
    conv_layout: str = "flat"
    preset: str = "sd15"

    @property
    def total(self) -> int:
        return self.oft_dof + self.hint_encoder

    @property
    def reference_total(self) -> int:
        return self.total + UNUSED_TIME_MLP


def count_control_parameters(
    r: int, preset: str = "sd15", targets: str = CONTROL_TARGET_SET, conv_layout: str = "flat"
) -> ParameterCount:
    """Inject OFT with ``r`` blocks on the target set ``targets`` (``TARGET_SETS``; convolutions in
    ``conv_layout``) of a weight-free UNet of ``preset`` and count."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**preset_config(preset)["unet"]).requires_grad_(False)
        hint = HintEncoder(out_channels=unet.conv_in.out_channels)
    names = inject(unet, target_set(targets), r=r, conv_layout=conv_layout)
    hint_size = sum(p.numel() for p in hint.parameters())
    return ParameterCount(r, len(names), count_trainable(unet), hint_size, targets, conv_layout, preset)


def count_target_sets(r: int, preset: str = "sd15") -> list[ParameterCount]:
    """``count_control_parameters`` for every target set at ``r``, sets with convolutions in both layouts."""
    rows = []
    for name, patterns in TARGET_SETS.items():
        has_convs = any("resnets" in p for p in patterns)
        for layout in ("flat", "channel") if has_convs else ("flat",):
            rows.append(count_control_parameters(r, preset, name, layout))
    return rows


@dataclass(frozen=True)
class Proportions:
    """What the paper's claims depend on, beyond the method: how the trained rotations compare in size with the
    hint encoder that every arm trains alike, and how far COFT lets a rotation move."""

    adapter: int  # OFT skew degrees of freedom
    hint_encoder: int  # parameters
    block: int  # block size b of the narrowest adapted layer
    r: int
    eps: float  # COFT's eps (the radius of that block follows)

    @property
    def adapter_to_hint(self) -> float:
        return self.adapter / self.hint_encoder

    @property
    def radius(self) -> float:
        """COFT's Frobenius radius of the narrowest block: ``eps * b^2 / sqrt(r)``."""
        return self.eps * self.block**2 / self.r**0.5

    @property
    def per_entry_budget(self) -> float:
        """The radius per row of the block, ``radius / b``: how far one entry can move on average."""
        return self.radius / self.block


def proportions(unet: torch.nn.Module, hint: torch.nn.Module, eps: float) -> Proportions:
    """The ``Proportions`` of a UNet with OFT injected (real or on the meta device) and its hint encoder."""
    layers = [layer for _, layer in oft_modules(unet)]
    if not layers:
        raise ValueError("the UNet has no OFT layers: inject them first (oft_layers.inject)")
    dof = sum(rotation_dof(layer) for layer in layers)
    hint_size = sum(p.numel() for p in hint.parameters())
    return Proportions(dof, hint_size, min(layer.block_size for layer in layers), layers[0].config.r, eps)


def paper_proportions(r: int, eps: float) -> Proportions:
    """The same on SD1.5 at ``r`` and ``eps`` (weight-free): 13.1 M DOF beside a 1.09 M hint encoder at r = 4."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**preset_config("sd15")["unet"]).requires_grad_(False)
        hint = HintEncoder(out_channels=unet.conv_in.out_channels)
    inject(unet, CONTROL_TARGETS, r=r)
    return proportions(unet, hint, eps)


def budget_matched_eps(toy: Proportions, reference: Proportions) -> float:
    """The eps that gives ``toy``'s narrowest block ``reference``'s per-entry budget: since the budget is
    ``eps * b / sqrt(r)``, ``eps_toy = budget_ref * sqrt(r_toy) / b_toy``."""
    return reference.per_entry_budget * toy.r**0.5 / toy.block


def format_parameter_table(rows: list[ParameterCount]) -> str:
    """The table printed by ``tool_add_control_oft.py --count-only``: for SD1.5 next to the paper's figures
    (Table 3), for another base its own counts."""
    if any(row.preset != "sd15" for row in rows):
        lines = [
            "| base | r | OFT layers | OFT skew DOF | hint encoder | total |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row.preset} | {row.r} | {row.layers} | {row.oft_dof:,} | {row.hint_encoder:,} | {row.total:,} |"
            for row in rows
        ]
        return "\n".join(lines)
    lines = [
        "| r | OFT layers | OFT skew DOF | paper Table 3 DOF | hint encoder | total (ours) | reference total | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper_dof, paper_total = PAPER_TABLE3.get(row.r, (None, "-"))
        lines.append(
            f"| {row.r} | {row.layers} | {row.oft_dof:,} | {'-' if paper_dof is None else f'{paper_dof:,}'} | "
            f"{row.hint_encoder:,} | {row.total:,} | {row.reference_total:,} | {paper_total} |"
        )
    lines.append(
        f"\nThe reference total adds {UNUSED_TIME_MLP:,} parameters of a time-embedding MLP "
        "(Linear 320->1280, SiLU, Linear 1280->1280) that the reference's control model built but never used in "
        "its forward pass; we do not build it, so our trainable total is smaller by exactly that amount."
    )
    return "\n".join(lines)


def format_target_set_table(rows: list[ParameterCount]) -> str:
    """The per-target-set table (the appendix ablation of where OFT goes) of ``--count-only``."""
    lines = [
        "| target set | conv layout | r | OFT layers | OFT skew DOF | hint encoder | total (ours) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        layout = row.conv_layout if any("resnets" in p for p in TARGET_SETS[row.targets]) else "-"
        lines.append(
            f"| {row.targets} | {layout} | {row.r} | {row.layers} | {row.oft_dof:,} | {row.hint_encoder:,} | "
            f"{row.total:,} |"
        )
    return "\n".join(lines)
