"""Choosing the forward of ``OFTLinear(path="auto")`` and the COFT projection's host-device contract.

Timings are scripted (a fake clock), never measured: what is tested is the decision logic, its cache and that
the choice changes nothing in the results.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import oft_layers as ol
from oft_layers import paths

pytestmark = pytest.mark.numerics


@pytest.fixture(autouse=True)
def fresh_cache():
    old = paths.get_path_policy()
    paths.clear_path_cache()
    paths.set_path_policy("measure")
    yield
    paths.clear_path_cache()
    paths.set_path_policy(old)


def scripted_clock(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Make every timed call of a path take ``seconds[path]`` on ``paths``' clock; returns the paths called."""
    timed: list[str] = []
    now = [0.0]
    monkeypatch.setattr(paths, "_clock", lambda: now[0])
    real_measure = paths.measure

    def measure(run, device, rule):
        def scripted(path):
            timed.append(path)
            now[0] += seconds[path]
            return run(path)

        return real_measure(scripted, device, rule)

    monkeypatch.setattr(paths, "measure", measure)
    return timed


def layer_and_input(out=40, tokens=32, in_=32, seed=0):
    torch.manual_seed(seed)
    layer = ol.OFTLinear(nn.Linear(in_, out), r=4)
    with torch.no_grad():
        layer.R.normal_(0, 0.1)
    return layer, torch.randn(2, tokens // 2, in_)


def test_flop_rule_far_from_out_equals_tokens_never_times(monkeypatch):
    timed = scripted_clock(monkeypatch, {"weight": 1.0, "input": 1.0})
    wide, x = layer_and_input(out=400, tokens=32)  # 12.5x more weight rows than tokens: rotate x
    assert wide.choose_path(x) == "input"
    narrow, x = layer_and_input(out=8, tokens=64)  # 8x more tokens: rotate W
    assert narrow.choose_path(x) == "weight"
    assert timed == [] and ol.path_cache() == {}


@pytest.mark.parametrize("faster", ["weight", "input"])
def test_measured_choice_is_cached_and_changes_nothing_in_the_outputs(monkeypatch, faster):
    slower = "input" if faster == "weight" else "weight"
    timed = scripted_clock(monkeypatch, {faster: 1.0, slower: 2.0})
    layer, x = layer_and_input(out=40, tokens=32)  # out/N = 1.25: the FLOP rule is unsure, measure
    x.requires_grad_(True)
    rng = torch.get_rng_state()
    y = layer(x)
    assert torch.equal(torch.get_rng_state(), rng)  # measuring draws no random numbers
    assert timed and set(timed) == {"weight", "input"}
    n = len(timed)
    y2 = layer(x)  # same shape class: the cached winner, no new timing
    assert len(timed) == n and list(ol.path_cache().values()) == [faster]
    # the chosen forward gives exactly what pinning it gives, and the other one agrees to rounding
    pinned = {}
    for path in ("weight", "input"):
        twin = ol.OFTLinear(layer.base, r=4, path=path)
        with torch.no_grad():
            twin.R.copy_(layer.R)
        pinned[path] = twin(x)
    assert torch.equal(y, pinned[faster]) and torch.equal(y2, y)
    torch.testing.assert_close(pinned[faster], pinned[slower])  # float32 defaults: rel 1.3e-6, abs 1e-5
    # timing left no autograd trace: gradients come from the real call only
    y.sum().backward()
    assert layer.R.grad is not None and torch.isfinite(layer.R.grad).all()


def test_a_measured_tie_keeps_the_flop_rule_and_each_shape_class_measures_once(monkeypatch):
    timed = scripted_clock(monkeypatch, {"weight": 1.0, "input": 1.0 - paths.MARGIN / 2})
    layer, x = layer_and_input(out=40, tokens=32)
    assert layer.choose_path(x) == paths.flop_rule(40, 32, backward=True) == "weight"
    _, x_other_bucket = layer_and_input(out=40, tokens=64)  # tokens 64: another power of two
    first = len(timed)
    layer.choose_path(x_other_bucket)
    assert len(timed) > first and len(ol.path_cache()) == 2
    layer.choose_path(torch.randn(1, 33, 32))  # 33 tokens: the same bucket as 32..63, cached
    assert len(ol.path_cache()) == 2
    with torch.no_grad():  # without a backward the costs differ (out vs N): a class of its own
        assert layer.choose_path(x) == paths.flop_rule(40, 32, backward=False) == "input"
    assert len(ol.path_cache()) == 3 and {k[-1] for k in ol.path_cache()} == {True, False}


def test_extra_work_counts_the_block_products_of_each_way():
    # units of in*b multiply-adds: W' = W B^T is out rows, every product over activations is N rows
    assert paths.extra_work("weight", 640, 2048, backward=True) == 640 + 2048  # rotate W; x_i^T gx_i
    assert paths.extra_work("input", 640, 2048, backward=True) == 3 * 2048  # x B; gu B^T; x_i^T gu_i
    assert paths.extra_work("weight", 640, 2048, backward=False) == 640
    assert paths.extra_work("input", 640, 2048, backward=False) == 2048
    assert paths.flop_rule(640, 2048) == "weight" and paths.flop_rule(1280, 512) == "input"  # 1792 > 1536
    assert paths.flop_rule(1024, 512) == "weight"  # out = 2N: a tie goes to rotating the weight


def test_flops_policy_and_pinned_paths_never_time(monkeypatch):
    timed = scripted_clock(monkeypatch, {"weight": 1.0, "input": 5.0})
    layer, x = layer_and_input(out=40, tokens=32)
    ol.set_path_policy("flops")
    assert layer.choose_path(x) == paths.flop_rule(40, 32, backward=True) and timed == []
    ol.set_path_policy("measure")
    pinned = ol.OFTLinear(nn.Linear(32, 40), r=4, path="input")
    assert pinned.choose_path(x) == "input" and timed == []
    with pytest.raises(ValueError, match="path policy must be one of"):
        ol.set_path_policy("fastest")


def test_meta_tensors_are_never_timed(monkeypatch):
    timed = scripted_clock(monkeypatch, {"weight": 1.0, "input": 5.0})
    layer = ol.OFTLinear(nn.Linear(32, 40, device="meta"), r=4)
    assert layer(torch.empty(2, 16, 32, device="meta")).shape == (2, 16, 40)
    assert timed == []


# ---------------------------------------------------------------------------------------------------- COFT
SYNCS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"}


class SyncCounter(TorchFunctionMode):
    """Counts tensor calls that need the value on the host (a device synchronisation on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def coft_model(layers: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
    ol.inject(model, [r"\d+"], r=4, eps=1e-3, coft=True)
    return model


@pytest.mark.parametrize("layers", [1, 6])
def test_projection_hook_never_synchronises_and_project_once(layers):
    model = coft_model(layers)
    opt = torch.optim.SGD(ol.oft_parameters(model), lr=10.0)
    ol.project_after_step(opt, model)
    model(torch.randn(4, 16)).pow(2).sum().backward()
    with SyncCounter() as counter:
        opt.step()
    assert counter.calls == []  # 0 host round trips per step, whatever the number of layers
    rho = model[0].config.radius(model[0].block_size)
    for _, layer in ol.oft_modules(model):
        assert (torch.linalg.matrix_norm(layer.R.double()) <= rho * (1 + 4 * 2**-24)).all()
    with SyncCounter() as counter:
        ol.project_(model)
    assert len(counter.calls) == 1  # the count: one round trip after the loop, not one per layer


def test_blocks_on_their_sphere_stay_put_and_beyond_it_move():
    model = coft_model(2)
    rho = model[0].config.radius(model[0].block_size)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in ol.oft_modules(model):
            layer.R.copy_(torch.randn(layer.R.shape, generator=g))  # far outside the ball
    assert ol.project_(model) == 8  # 2 layers x 4 blocks
    projected = [layer.R.clone() for _, layer in ol.oft_modules(model)]
    for R in projected:  # on the sphere to the rounding of float32 entries
        norms = torch.linalg.matrix_norm(R.double())
        assert ((norms - rho).abs() <= rho * 2**-24 * 2).all()
    # idempotent: a projected block is on the ball on any CPU, not re-scaled by a rounding-level factor
    assert ol.project_(model) == 0
    assert all(torch.equal(a, layer.R) for a, (_, layer) in zip(projected, ol.oft_modules(model)))
    with torch.no_grad():
        model[0].R[1].mul_(1 + 1e-4)  # clearly outside: moved back onto the sphere
    assert ol.project_(model) == 1
    assert abs(torch.linalg.matrix_norm(model[0].R[1].double()).item() - rho) <= rho * 2**-23


def test_a_saved_path_cache_makes_another_process_choose_the_same(monkeypatch):
    scripted_clock(monkeypatch, {"weight": 1.0, "input": 0.5})
    layer, x = layer_and_input(out=40, tokens=32)
    layer.choose_path(x)
    saved = ol.path_cache()
    assert list(saved.values()) == ["input"]  # measured; the FLOP rule says "weight"
    ol.clear_path_cache()  # a new process: nothing measured yet
    timed = scripted_clock(monkeypatch, {"weight": 0.5, "input": 1.0})  # timing would now pick "weight"
    ol.load_path_cache(saved)
    assert layer.choose_path(x) == "input" and timed == []
    with pytest.raises(ValueError, match="neither 'weight' nor 'input'"):
        ol.load_path_cache({next(iter(saved)): "dense"})


def test_the_default_policy_never_times_and_use_path_policy_restores_the_one_before(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "OFT_PATH_POLICY"}
    code = "import oft_layers; print(oft_layers.get_path_policy())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "flops"  # bit-identical across processes unless asked otherwise
    timed = scripted_clock(monkeypatch, {"weight": 1.0, "input": 0.5})
    layer, x = layer_and_input(out=40, tokens=32)
    with ol.use_path_policy("flops"):
        assert layer.choose_path(x) == "weight" and timed == []
        with ol.use_path_policy("measure"):
            assert layer.choose_path(x) == "input" and timed
        assert ol.get_path_policy() == "flops"
    assert ol.get_path_policy() == "measure"  # the fixture's
