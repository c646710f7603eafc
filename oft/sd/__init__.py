"""Stable Diffusion 1.5 backbone: in-code configs, offline tokenizer, tiny preset, loading, samplers, OFT targets."""

from oft.sd.hooks import add_to_conv_in
from oft.sd.loading import load_sd
from oft.sd.models import SDModels, build_sd
from oft.sd.sampling import sample
from oft.sd.targets import CONTROL_TARGETS, DB_TARGETS

__all__ = ["CONTROL_TARGETS", "DB_TARGETS", "SDModels", "add_to_conv_in", "build_sd", "load_sd", "sample"]
