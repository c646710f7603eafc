"""Properties of the orthogonal adapter: exactness against the explicit formula, invariances, COFT, files."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import oft_layers as ol


def explicit_Q(R: torch.Tensor) -> torch.Tensor:
    """SPEC §1 written out: Q = (I - S)(I + S)^{-1}, S = (R - R^T)/2, in float64 with an explicit inverse."""
    R = R.double()
    S = (R - R.transpose(-1, -2)) / 2
    eye = torch.eye(R.shape[-1], dtype=torch.float64)
    if S.dim() == 3:  # one block at a time: batched CPU LU is itself broken at large b (SPEC §8)
        return torch.stack([(eye - s) @ torch.linalg.inv(eye + s) for s in S])
    return (eye - S) @ torch.linalg.inv(eye + S)


def explicit_weight(W: torch.Tensor, R: torch.Tensor, share_r: int | None = None) -> torch.Tensor:
    """W' = W_flat @ blockdiag(Q)^T reshaped back (float64)."""
    Q = explicit_Q(R)
    blocks = [Q] * share_r if share_r else list(Q)
    dense = torch.block_diag(*blocks)
    return (W.double().reshape(W.shape[0], -1) @ dense.T).reshape(W.shape)


def randomize(layer: ol.OFTLayer, std: float = 0.1, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.R.copy_(torch.randn(layer.R.shape, generator=g) * std)
        if layer.s is not None:
            layer.s.copy_(1 + 0.1 * torch.randn(layer.s.shape, generator=g))


def neuron_cosines(W: torch.Tensor) -> torch.Tensor:
    w = W.reshape(W.shape[0], -1).double()
    w = w / w.norm(dim=1, keepdim=True)
    return w @ w.T


# ---------------------------------------------------------------------------------------------------- Cayley
@pytest.mark.parametrize("shape", [(4, 8, 8), (16, 16), (2, 40, 40)])
def test_cayley_blocks_are_orthogonal_and_match_explicit_formula(shape):
    R = torch.randn(shape, dtype=torch.float64) * 0.3
    Q = ol.cayley(R)
    eye = torch.eye(shape[-1], dtype=torch.float64)
    assert torch.allclose(Q @ Q.transpose(-1, -2), eye.expand_as(Q), atol=1e-12)
    assert torch.allclose(Q, explicit_Q(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Q), torch.ones(Q.shape[:-2], dtype=torch.float64))  # rotations


def test_cayley_of_zero_is_identity_and_only_skew_part_matters():
    R = torch.randn(3, 6, 6)
    sym = R + R.transpose(-1, -2)
    assert torch.equal(ol.cayley(torch.zeros(3, 6, 6)), torch.eye(6).expand(3, 6, 6))
    assert torch.allclose(ol.cayley(R), ol.cayley(R + sym), atol=1e-6)


@pytest.mark.parametrize("b", [8, 32, 80])
def test_neumann_series_approximates_the_same_matrix(b):
    R = torch.randn(4, b, b) * 1e-3
    assert (ol.cayley(R, "neumann", 5) - ol.cayley(R, "exact")).abs().max() < 1e-5
    # more terms, closer: the series converges to the exact transform for ||S|| < 1
    R = torch.randn(2, b, b, dtype=torch.float64) * (0.2 / b)
    errs = [(ol.cayley(R, "neumann", k) - ol.cayley(R, "exact")).abs().max() for k in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("b", [160, 320])
def test_exact_cayley_correct_at_large_blocks_with_two_threads(b):
    # SPEC §8: batched CPU LU is broken at b >= ~150 with several threads; our path must stay exact there.
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        R = torch.randn(4, b, b, generator=torch.Generator().manual_seed(b)) * 1e-2
        for _ in range(3):
            Q = ol.cayley(R)
            err = (Q @ Q.transpose(1, 2) - torch.eye(b)).abs().max()
            assert err < 1e-5
            assert (Q.double() - explicit_Q(R)).abs().max() < 1e-5
    finally:
        torch.set_num_threads(old)


def test_cayley_runs_in_float32_for_half_parameters():
    R = (torch.randn(2, 8, 8) * 0.1).to(torch.bfloat16)
    Q = ol.cayley(R)
    assert Q.dtype == torch.float32
    assert torch.allclose(Q @ Q.transpose(1, 2), torch.eye(8).expand(2, 8, 8), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- layers
def make_linear(seed=0, i=16, o=12, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(i, o, bias=bias)


def test_identity_at_initialisation():
    lin, conv = make_linear(), nn.Conv2d(4, 6, 3, padding=1)
    x, xc = torch.randn(3, 5, 16), torch.randn(2, 4, 8, 8)
    for path in ("weight", "input", "dense"):
        assert torch.equal(ol.OFTLinear(lin, r=4, path=path)(x), lin(x)) or torch.allclose(
            ol.OFTLinear(lin, r=4, path=path)(x), lin(x), atol=1e-6
        )
    assert torch.allclose(ol.OFTConv2d(conv, r=4)(xc), conv(xc), atol=1e-6)
    assert torch.allclose(ol.OFTLinear(lin, r=4, magnitude=True)(x), lin(x), atol=1e-6)


@pytest.mark.parametrize("path", ["weight", "input", "dense", "auto"])
@pytest.mark.parametrize("share", [False, True])
def test_linear_equals_explicit_formula(path, share):
    lin = make_linear()
    layer = ol.OFTLinear(lin, r=4, block_share=share, path=path)
    randomize(layer)
    x = torch.randn(7, 16)
    W = explicit_weight(lin.weight, layer.R, share_r=4 if share else None)
    expected = x.double() @ W.T + lin.bias.double()
    assert torch.allclose(layer(x).double(), expected, atol=1e-5)


def test_magnitude_scale_multiplies_outputs_not_bias():
    lin = make_linear()
    layer = ol.OFTLinear(lin, r=2, magnitude=True)
    randomize(layer)
    x = torch.randn(4, 16)
    W = explicit_weight(lin.weight, layer.R) * layer.s.double()[:, None]
    assert torch.allclose(layer(x).double(), x.double() @ W.T + lin.bias.double(), atol=1e-5)
    plain = ol.OFTLinear(lin, r=2)
    with torch.no_grad():
        plain.R.copy_(layer.R)
    assert not torch.allclose(plain(x), layer(x), atol=1e-3)  # the option changes the result


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, stride=2, padding=1, dilation=1),
        dict(kernel_size=3, stride=1, padding=2, dilation=2),
        dict(kernel_size=1),
        dict(kernel_size=(3, 1), padding=(1, 0)),
    ],
)
def test_conv2d_equals_convolution_with_rotated_filters(kw):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, **kw)
    kh, kw_ = conv.kernel_size
    r = 2 if (4 * kh * kw_) % 4 else 4
    layer = ol.OFTConv2d(conv, r=r)
    randomize(layer, std=0.2)
    x = torch.randn(2, 4, 9, 9)
    W = explicit_weight(conv.weight, layer.R).float()
    expected = nn.functional.conv2d(x, W, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # every filter is rotated as a whole: norms and pairwise angles between filters are preserved
    rot = layer.rotated_weight()
    assert torch.allclose(rot.flatten(1).norm(dim=1), conv.weight.flatten(1).norm(dim=1), atol=1e-5)
    assert torch.allclose(neuron_cosines(rot), neuron_cosines(conv.weight), atol=1e-5)


@pytest.mark.parametrize("tokens", [3, 64])
def test_paths_agree_in_outputs_and_gradients(tokens):
    lin = make_linear(i=32, o=24)
    x0 = torch.randn(2, tokens, 32)
    results = {}
    for path in ("weight", "input", "dense", "auto"):
        layer = ol.OFTLinear(lin, r=4, path=path)
        randomize(layer)
        x = x0.clone().requires_grad_(True)
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results[path] = (y.detach(), x.grad, layer.R.grad)
    for path in ("input", "dense", "auto"):
        for a, b in zip(results["weight"], results[path]):
            assert torch.allclose(a, b, atol=1e-5)


def test_auto_picks_the_cheaper_path_where_the_flop_count_is_clear():
    layer = ol.OFTLinear(nn.Linear(32, 64), r=4)  # training: rotating W costs out + N, rotating x 3N
    assert layer.choose_path(torch.randn(2, 100, 32)) == "weight"  # 264 vs 600
    assert layer.choose_path(torch.randn(2, 5, 32)) == "input"  # 74 vs 30
    with torch.no_grad():  # inference: out vs N
        assert layer.choose_path(torch.randn(2, 100, 32)) == "weight"  # 64 vs 200
        assert layer.choose_path(torch.randn(2, 10, 32)) == "input"  # 64 vs 20


@pytest.mark.parametrize("path", ["weight", "input"])
def test_gradients_match_finite_differences(path):
    lin = nn.Linear(8, 5).double()
    layer = ol.OFTLinear(lin, r=2, path=path, magnitude=True).double()
    randomize(layer)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    R = layer.R.detach().clone().requires_grad_(True)
    s = layer.s.detach().clone().requires_grad_(True)

    def g(x, R, s):  # route R and s through the call so that gradcheck perturbs them
        old = layer.R, layer.s
        del layer.R, layer.s
        layer.R, layer.s = R, s
        try:
            return layer(x)
        finally:
            del layer.R, layer.s
            layer.R, layer.s = old

    assert torch.autograd.gradcheck(g, (x, R, s), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_and_backward(dtype):
    lin = make_linear().to(dtype)
    for path in ("weight", "input"):
        layer = ol.OFTLinear(lin, r=4, path=path)
        randomize(layer, std=0.05)
        x = torch.randn(4, 16).to(dtype)
        y = layer(x)
        assert y.dtype == dtype and torch.isfinite(y).all()
        ref = x.float() @ explicit_weight(lin.weight.float(), layer.R).float().T + lin.bias.float()
        assert (y.float() - ref).abs().max() < 0.05
        y.float().sum().backward()
        assert layer.R.grad.dtype == torch.float32 and torch.isfinite(layer.R.grad).all()


def test_autocast_bf16_weight_path():
    layer = ol.OFTLinear(make_linear(), r=4, path="weight")
    randomize(layer)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(x), atol=0.05)


# ---------------------------------------------------------------------------------------------------- training
def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


def test_training_preserves_neuron_angles_norms_and_energy():
    model = tiny_model()
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    ol.inject(model, [r"0", r"2"], r=4)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(5):
        loss = model(torch.randn(16, 16)).pow(2).mean() + model(torch.randn(16, 16)).sin().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (_, layer), W in zip(ol.oft_modules(model), before):
        assert layer.R.abs().max() > 1e-3  # it trained
        Wr = layer.rotated_weight()
        assert not torch.allclose(Wr, W, atol=1e-4)
        assert torch.allclose(Wr.norm(dim=1), W.norm(dim=1), atol=1e-5)
        assert torch.allclose(neuron_cosines(Wr), neuron_cosines(W), atol=1e-5)
        assert torch.isclose(ol.hyperspherical_energy(Wr), ol.hyperspherical_energy(W), rtol=1e-5)


def test_coft_projection_honours_radius_after_huge_step():
    model = tiny_model()
    ol.inject(model, [r"0"], r=4, eps=1e-3, coft=True)
    ol.inject(model, [r"2"], r=2, eps=1e-3, coft=True, block_share=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e4)
    ol.project_after_step(opt, model)
    (model(torch.randn(4, 16)) * 1e6).sum().backward()
    opt.step()
    layers = dict(ol.oft_modules(model))
    b0, b2 = layers["0"].block_size, layers["2"].block_size
    rho0, rho2 = 1e-3 * b0**2 / math.sqrt(4), 1e-3 * b2**2
    norms0 = torch.linalg.matrix_norm(layers["0"].R)
    assert torch.allclose(norms0, torch.full_like(norms0, rho0), rtol=1e-5)  # on the sphere, not beyond
    assert math.isclose(torch.linalg.matrix_norm(layers["2"].R).item(), rho2, rel_tol=1e-5)
    # inside the ball nothing moves
    with torch.no_grad():
        layers["0"].R.mul_(0.5)
    kept = layers["0"].R.clone()
    assert ol.project_(model) == 0 and torch.equal(layers["0"].R, kept)


def test_block_sharing_uses_one_block_everywhere():
    layer = ol.OFTLinear(make_linear(), r=4, block_share=True)
    assert layer.R.shape == (4, 4)
    randomize(layer)
    Q = layer.rotation()
    assert Q.shape == (4, 4, 4) and all(torch.equal(Q[0], Q[i]) for i in range(4))


def test_count_trainable_counts_skew_degrees_of_freedom():
    model = tiny_model()
    ol.inject(model, ["0"], r=4)  # in 16 -> b 4: 4 * 4*3/2 = 24
    ol.inject(model, ["2"], r=2, block_share=True)  # in 32 -> b 16 shared: 120
    extra = nn.Linear(3, 3)  # a trainable non-OFT module counts by numel (12)
    model.append(extra)
    assert ol.count_trainable(model) == 24 + 120 + 12
    model[0].R.requires_grad_(False)
    assert ol.count_trainable(model) == 120 + 12


# ---------------------------------------------------------------------------------------------------- merge, files
def test_merge_unmerge_round_trip():
    model = tiny_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ol.inject(model, ["0", "2"], r=4, magnitude=True)
    for _, layer in ol.oft_modules(model):
        randomize(layer, std=0.3)
    x = torch.randn(5, 16)
    y = model(x)
    assert ol.merge(model) == 2
    assert torch.allclose(model(x), y, atol=1e-5)
    assert all(layer.merged for _, layer in ol.oft_modules(model))
    ol.unmerge(model)
    assert torch.allclose(model(x), y, atol=1e-5)
    ol.strip(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, original[k], atol=1e-6), k


def test_strip_with_merge_gives_a_plain_model_with_the_adapted_behaviour():
    model = tiny_model()
    ol.inject(model, ["0"], r=2)
    randomize(model[0])
    x = torch.randn(3, 16)
    y = model(x)
    assert ol.strip(model, merge=True) == ["0"]
    assert type(model[0]) is nn.Linear and torch.allclose(model(x), y, atol=1e-5)


def test_save_load_round_trip_into_a_plain_model(tmp_path):
    model = tiny_model()
    ol.inject(model, ["0", "2"], r=4, eps=1e-3, coft=True)
    for i, (_, layer) in enumerate(ol.oft_modules(model)):
        randomize(layer, seed=i)
    x = torch.randn(3, 16)
    path = ol.save_adapter(model, tmp_path / "a.safetensors", {"base": "tiny"})
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary left
    fresh = tiny_model()  # no OFT yet: load_adapter injects from the file's metadata
    meta = ol.load_adapter(fresh, path)
    assert meta["r"] == "4" and meta["coft"] == "true" and meta["base"] == "tiny"
    assert meta["cayley_convention"] == ol.CONVENTION
    assert torch.allclose(fresh(x), model(x), atol=1e-6)
    ol.load_adapter(fresh, path)  # loading again into an injected model works too


def test_loading_refuses_mismatches(tmp_path):
    model = tiny_model()
    ol.inject(model, ["0"], r=4)
    path = ol.save_adapter(model, tmp_path / "a.safetensors")
    other = tiny_model()
    ol.inject(other, ["0"], r=2)
    with pytest.raises(ValueError, match="trained with"):
        ol.load_adapter(other, path)
    other = tiny_model()
    ol.inject(other, ["0", "2"], r=4)
    with pytest.raises(ValueError, match="missing '2.R'"):
        ol.load_adapter_state_dict(other, ol.adapter_state_dict(model))
    with pytest.raises(ValueError, match="shape"):
        ol.load_adapter_state_dict(model, {"0.R": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match="NaN"):
        ol.load_adapter_state_dict(model, {"0.R": torch.full((4, 4, 4), float("nan"))})
    wrong = nn.Sequential(nn.Linear(16, 32))
    wrong.append(nn.GELU())
    with pytest.raises(ValueError, match="no module '2'"):
        big = tiny_model()
        ol.inject(big, ["0", "2"], r=4)
        ol.load_adapter(wrong, ol.save_adapter(big, tmp_path / "b.safetensors"))
    (tmp_path / "c.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ol.load_adapter(model, tmp_path / "c.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        ol.load_adapter(model, tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="do not divide its 16 input features"):
        ol.OFTLinear(make_linear(), r=3)
    with pytest.raises(ValueError, match="positive integer"):
        ol.OFTLinear(make_linear(), r=0)
    with pytest.raises(ValueError, match="positive finite eps"):
        ol.OFTLinear(make_linear(), r=4, coft=True)
    with pytest.raises(ValueError, match="non-empty"):
        ol.inject(tiny_model(), [])
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        ol.inject(tiny_model(), [r".*to_q"])
    with pytest.raises(ValueError, match="matched only \\['GELU'\\]"):
        ol.inject(tiny_model(), ["1"])
    model = tiny_model()
    ol.inject(model, ["0"], r=4)
    with pytest.raises(ValueError, match="already has OFT"):
        ol.inject(model, ["0"], r=4)
    with torch.no_grad():
        model[0].R.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        ol.merge(model)
    coft = tiny_model()
    ol.inject(coft, ["0"], r=4, eps=1e-3, coft=True)
    with torch.no_grad():
        coft[0].R.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="diverged"):
        ol.project_(coft)


def test_inject_failure_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(12, 18), nn.GELU(), nn.Linear(18, 8))
    with pytest.raises(ValueError, match="'2': .*do not divide its 18 input features"):
        ol.inject(model, ["0", "2"], r=4)  # fits layer 0 (12 inputs), not layer 2 (18)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        ol.inject(model, ["0", "nope"], r=4)  # layer 0 is valid, but nothing may change
    assert not list(ol.oft_modules(model))


def test_hyperspherical_energy_known_answer():
    # two orthogonal unit neurons: distance sqrt(2) both ways -> 2 / sqrt(2)
    W = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert torch.isclose(ol.hyperspherical_energy(W), torch.tensor(2 / math.sqrt(2), dtype=torch.float64))
    # opposite neurons: distance 2 -> 2 * (1/2)^2 with power 2
    W = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    assert torch.isclose(ol.hyperspherical_energy(W, power=2), torch.tensor(0.5, dtype=torch.float64))


def test_enable_magnitude_keeps_output_then_scales_and_round_trips(tmp_path):
    model = tiny_model()
    ol.inject(model, ["0", "2"], r=4)
    for i, (_, layer) in enumerate(ol.oft_modules(model)):
        randomize(layer, seed=i)
    x = torch.randn(3, 16)
    y = model(x)
    assert ol.enable_magnitude(model) == 2
    assert model[0].config.magnitude and model[0].s.shape == (32,)
    assert torch.allclose(model(x), y, atol=1e-6)  # s = 1: nothing changes until the scales train
    with torch.no_grad():
        model[2].s.mul_(2.0)
    assert not torch.allclose(model(x), y, atol=1e-3)
    fresh = tiny_model()  # the post-fitted adapter reloads with its scales, from the file's metadata
    ol.load_adapter(fresh, ol.save_adapter(model, tmp_path / "m.safetensors"))
    assert torch.allclose(fresh(x), model(x), atol=1e-6) and fresh[2].s is not None
    merged = ol.OFTLinear(nn.Linear(8, 4), r=2)
    merged.merge()
    with pytest.raises(ValueError, match="unmerge it first"):
        merged.enable_magnitude()


def test_apply_adapter_takes_tensors_and_metadata_from_memory():
    model = tiny_model()
    ol.inject(model, ["2"], r=2, eps=1e-3, coft=True)
    randomize(model[2])
    fresh = tiny_model()
    ol.apply_adapter(fresh, ol.adapter_state_dict(model), ol.adapter_metadata(model))
    x = torch.randn(2, 16)
    assert torch.allclose(fresh(x), model(x), atol=1e-6) and fresh[2].config.coft


def test_readme_example_trains_only_the_rotations():
    model = tiny_model().requires_grad_(False)
    names = ol.inject(model, [r"\d"], r=4, eps=1e-3, coft=True)
    assert names == ["0", "2"]
    params = list(ol.oft_parameters(model))
    assert [p.shape for p in params] == [(4, 4, 4), (4, 8, 8)]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ol.project_after_step(opt, model)
    before = [m.weight.clone() for m in model if isinstance(m, nn.Linear)]
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    assert all(p.abs().max() > 0 for p in params)
    assert all(torch.equal(a, layer.base.weight) for a, (_, layer) in zip(before, ol.oft_modules(model)))


def test_a_failed_adapter_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    model = tiny_model()
    ol.inject(model, ["0"], r=4)
    path = ol.save_adapter(model, tmp_path / "a.safetensors")
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("oft_layers.io.save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ol.save_adapter(model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
