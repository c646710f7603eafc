"""Adapter file versions: version 2 stores each R as the packed upper triangle of its skew part (half the bytes),
version 1 (the full R) is still read, and a non-skew R falls back to version 1 so every file reloads exactly."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import oft_layers as ol

FIXTURE = Path(__file__).parent / "data" / "adapter_v1.safetensors"


def three_layer_model() -> nn.Sequential:
    """The architecture of the committed version 1 fixture (base weights: seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 8))


def inject_three(model: nn.Module, **shared) -> nn.Module:
    """OFT as in the fixture: r=2; shared block with magnitude; COFT with r=4."""
    ol.inject(model, ["0"], r=2, **shared)
    ol.inject(model, ["2"], r=3, block_share=True, magnitude=True, **shared)
    ol.inject(model, ["4"], r=4, eps=1e-2, coft=True, **shared)
    return model


def train(model: nn.Module, steps: int = 5) -> None:
    """A few real AdamW steps (weight decay, COFT projection) on a regression loss."""
    params = list(ol.oft_parameters(model))
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    ol.project_after_step(opt, model)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        model(x).sub(x.flip(1)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata exactly as stored."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def test_version_1_fixture_loads_to_its_tensors_and_outputs():
    stored, meta = raw(FIXTURE)
    assert (
        meta["format_version"] == "1" and stored["0.R"].shape == (2, 4, 4) and stored["2.R"].shape == (4, 4)
    )
    # the fixture's R and s: 0.1 * randn (and 1 + 0.1 * randn) from seed 17, layer by layer, written by the v1 code
    g = torch.Generator().manual_seed(17)
    for key in ("0.R", "2.R", "2.s", "4.R"):
        expected = torch.randn(stored[key].shape, generator=g)
        torch.testing.assert_close(stored[key], 1 + 0.1 * expected if key.endswith(".s") else 0.1 * expected)

    loaded = three_layer_model()
    ol.load_adapter(loaded, FIXTURE)
    direct = inject_three(three_layer_model())
    with torch.no_grad():
        for key, value in ol.adapter_state_dict(direct).items():
            value.copy_(stored[key])
    for key, value in ol.adapter_state_dict(loaded).items():
        assert torch.equal(bits(value), bits(stored[key])), key
    assert loaded[2].config.block_share and loaded[4].config.coft and loaded[2].s is not None
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), direct(x))


@pytest.mark.parametrize("cayley", ["exact", "neumann"])
def test_trained_adapter_is_written_packed_and_reloads_bit_for_bit(tmp_path, cayley):
    model = inject_three(three_layer_model(), cayley=cayley)
    train(model)
    before = ol.adapter_state_dict(model)
    assert all(before[k].abs().max() > 0 for k in ("0.R", "2.R", "4.R"))
    path = ol.save_adapter(model, tmp_path / "a.safetensors")

    stored, meta = raw(path)
    assert meta["format_version"] == "2"
    assert stored["0.R"].shape == (2, 6) and stored["2.R"].shape == (6,) and stored["4.R"].shape == (4, 3)
    rows, cols = torch.triu_indices(4, 4, 1)
    assert torch.equal(stored["0.R"], before["0.R"][:, rows, cols])  # triu_indices order
    assert torch.equal(stored["2.s"], before["2.s"])  # magnitude scales stay as they are

    sd, _ = ol.read_adapter(path)
    fresh = three_layer_model()
    ol.load_adapter(fresh, path)
    for key, value in before.items():
        assert torch.equal(bits(sd[key]), bits(value)), key
        assert torch.equal(bits(ol.adapter_state_dict(fresh)[key]), bits(value)), key
    x = torch.randn(5, 8)
    assert torch.equal(fresh(x), model(x))


def test_packed_file_has_the_skew_byte_count():
    model = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 16))
    ol.inject(model, ["0"], r=4)  # b = 8
    ol.inject(model, ["2"], r=2, block_share=True)  # b = 8, one shared block
    train_free = ol.adapter_state_dict(model)  # zero init: exactly skew
    packed, meta = ol.adapter_file(model)
    assert meta["format_version"] == "2"

    def nbytes(sd):
        return sum(v.numel() * v.element_size() for k, v in sd.items() if k.endswith(".R"))

    b = 8
    assert nbytes(packed) == 4 * (4 + 1) * b * (b - 1) // 2
    assert nbytes(train_free) == 4 * (4 + 1) * b * b
    assert nbytes(packed) / nbytes(train_free) == (b - 1) / (2 * b)


def test_a_non_skew_R_is_written_in_full(tmp_path):
    model = inject_three(three_layer_model())
    train(model, steps=2)
    with torch.no_grad():
        model[4].R[1, 0, 0] = 0.25  # a user-built R: a diagonal entry, which the rotation ignores
    path = ol.save_adapter(model, tmp_path / "a.safetensors")
    stored, meta = raw(path)
    assert meta["format_version"] == "1" and stored["0.R"].shape == (2, 4, 4)  # the whole file, full
    fresh = three_layer_model()
    ol.load_adapter(fresh, path)
    for key, value in ol.adapter_state_dict(model).items():
        assert torch.equal(bits(ol.adapter_state_dict(fresh)[key]), bits(value)), key


def test_apply_adapter_takes_packed_or_unpacked_tensors(tmp_path):
    model = inject_three(three_layer_model())
    train(model, steps=2)
    x = torch.randn(3, 8)
    packed, meta = ol.adapter_file(model)
    path = ol.save_adapter(model, tmp_path / "a.safetensors")
    for sd in (packed, ol.read_adapter(path)[0], ol.unpack_adapter(packed, meta)):
        fresh = three_layer_model()
        ol.apply_adapter(fresh, sd, meta)
        assert torch.equal(fresh(x), model(x))
    bad = {**packed, "0.R": torch.zeros(2, 5)}
    with pytest.raises(ValueError, match="not b\\(b-1\\)/2"):
        ol.apply_adapter(three_layer_model(), bad, meta)
