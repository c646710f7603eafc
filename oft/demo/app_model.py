"""The trained tiny control model the app (``oft-control/app.py``) opens without arguments, shipped in
``oft/demo/tiny_control/``: the demo's OFT run of seed 0 on the packaged tiny base (``Demo.build`` and
``Demo.train`` at every ``DemoConfig`` default: canny edges of the synthetic task, 64 px, 600 steps), re-saved
with the size and control it was trained for and without the path of the machine that made it.

Reproduce (about 1 min on 2 cores)::

    OMP_NUM_THREADS=1 python -c "from oft.demo.app_model import make_app_model; make_app_model()"
"""

from __future__ import annotations

from pathlib import Path

from oft.demo.config import DEFAULT_BASE, DemoConfig
from oft.specs.sampling import DEMO

APP_MODEL = Path(__file__).with_name("tiny_control") / "tiny-control.safetensors"
APP_BASE = DEFAULT_BASE  # the base it loads on: the shipped tiny base
APP_SAMPLER = DEMO  # how the demo samples its models (DDIM 20, CFG 5)
APP_METHOD = "oft"


def make_app_model(out: Path = APP_MODEL, work: Path = Path("outputs/demo_app"), seed: int = 0) -> Path:
    """Train (or reuse, in ``work``) the demo's ``APP_METHOD`` model of ``seed`` and write it to ``out``, with
    metadata ``resolution`` and ``synthetic_hint`` and an empty ``base_path`` (pass ``APP_BASE`` to load it)."""
    # Lightning and diffusers (~4 s): imported when a model is made, so that the app's --help answers at once
    from oft.control.checkpoint import load_control, save_control
    from oft.demo.pipeline import Demo

    demo = Demo(DemoConfig(out_dir=work, seed=seed, seeds=1))
    demo.build(seed)
    demo.train(APP_METHOD, seed)
    experiment = demo.experiment(APP_METHOD, "train", seed)
    cm = load_control(demo.final_file(APP_METHOD, seed), APP_BASE)
    cm.meta["base_path"] = ""  # no path of this machine in a shipped file
    extra = {"resolution": experiment.resolution, "synthetic_hint": experiment.synthetic_hint}
    return save_control(cm, out, extra=extra)
