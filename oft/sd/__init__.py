"""Stable Diffusion 1.5 backbone: in-code configs, offline tokenizer, tiny preset, loading, OFT target lists."""

from oft.sd.models import SDModels, build_sd, load_sd
from oft.sd.targets import CONTROL_TARGETS, DB_TARGETS

__all__ = ["CONTROL_TARGETS", "DB_TARGETS", "SDModels", "build_sd", "load_sd"]
