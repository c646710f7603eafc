"""The sampler settings of every job, each defined here once (SPEC §3, §4); code and flags read them from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SamplerPreset:
    """A sampler (``ddim``, ``dpm``: DPM-Solver++ multistep, ``pndm``: SD1.5's PLMS, or ``euler``: SDXL's),
    its steps, CFG scale and DDIM eta."""

    sampler: str
    steps: int
    guidance: float
    eta: float = 0.0

    def kwargs(self) -> dict:
        """As keyword arguments of ``oft.sd.sample``."""
        return asdict(self)


# oft-control evaluation (the reference's test_oft_parallel.py): DDIM 50, CFG 9, eta 0
CONTROL_EVAL = SamplerPreset("ddim", 50, 9.0)
# the sample grids written during control training: the evaluation sampler, fewer steps
CONTROL_GRID = SamplerPreset("ddim", 20, CONTROL_EVAL.guidance)
# DreamBooth validation images and oft-db/generate.py (the reference: DPM-Solver++ 25 steps, CFG 7.5)
DREAMBOOTH_VALIDATION = SamplerPreset("dpm", 25, 7.5)
# DreamBooth class images as the reference made them: diffusers' stock pipeline called with the prompt alone
# (train_dreambooth_oft.py at df2b263, lines 625-645), i.e. SD1.5's own scheduler (PNDM, PLMS steps only), its
# default 50 steps and CFG 7.5
DREAMBOOTH_CLASS = SamplerPreset("pndm", 50, 7.5)
# The stock pipelines of the other bases, which make their class images under the same recipe name: SD2.1's
# StableDiffusionPipeline with the DDIM scheduler its hub folder ships (v-prediction from the base's schedule),
# SDXL's StableDiffusionXLPipeline with Euler (its default guidance 5.0); both at the pipelines' default 50 steps.
# Taken from the hub configs as known to this project, not re-read here (no network).
STOCK_CLASS = {
    "sd1": DREAMBOOTH_CLASS,
    "sd2": SamplerPreset("ddim", 50, 7.5),
    "sdxl": SamplerPreset("euler", 50, 5.0),
}
# the alternative, --class_images ddim: DDIM 50, the same CFG
DREAMBOOTH_CLASS_DDIM = SamplerPreset("ddim", DREAMBOOTH_CLASS.steps, DREAMBOOTH_CLASS.guidance)
# the CPU demo's sampling of its 64-px tiny base
DEMO = SamplerPreset("ddim", 20, 5.0)

# The reference sampled every validation item with the prompt caption + ", " + a_prompt and an empty a_prompt
# (oft-control/test_oft_parallel.py:49 and :135 at df2b263): one token more than the caption, a trailing comma.
CONTROL_PROMPT_SUFFIX = ", "
# Items per --img_ID chunk of the reference's test_oft_parallel.py (--batch, default 20, line 80).
CONTROL_SAMPLING_CHUNK = 20
