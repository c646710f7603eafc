"""PEFT's OFT/BOFT folders in both directions, checked against the installed PEFT on the tiny SD UNet in float64:
our layers and ``PeftModel.from_pretrained`` compute the same outputs, for exact and Neumann Cayley, with a block
shared, with magnitude scales (BOFT, one butterfly factor), and for adapters PEFT trained itself (with its COFT).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import BOFTConfig, PeftModel, get_peft_model
from peft import OFTConfig as PeftOFTConfig
from safetensors.torch import save_file

import oft_layers
from oft.sd import build_sd
from oft.sd.targets import target_set
from oft_layers.peft_format import CONFIG_FILE, WEIGHTS_FILE, our_neumann_terms, peft_neumann_terms
from tests.helpers.numerics import EFFECT, network_terms, tol

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT's notes on its Neumann change and CUDA


@pytest.fixture(scope="module")
def base_state():
    """The tiny SD UNet's weights (float64), to build fresh copies from."""
    unet = build_sd("tiny", seed=0).unet.double()
    return unet.state_dict()


@pytest.fixture
def fresh(base_state):
    """A factory of fresh float64 tiny UNets in eval mode."""

    def make():
        unet = build_sd("tiny", seed=0).unet.double().eval()
        unet.load_state_dict(base_state)
        return unet

    return make


def inputs(unet) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    return x, torch.tensor([10, 600]), context


@torch.no_grad()
def output(model) -> torch.Tensor:
    unet = model.get_base_model() if isinstance(model, PeftModel) else model
    return model(*inputs(unet)).sample


def close(a: torch.Tensor, b: torch.Tensor, unet) -> None:
    """Equal up to float64 rounding through the network (~1e-13 here)."""
    torch.testing.assert_close(a, b, **tol(torch.float64, network_terms(unet), scale=a.abs().max()))


def adapted(unet, scale: float = 0.05, **options):
    """``unet`` with OFT on the attention projections and random skew rotations of about ``scale``."""
    oft_layers.inject(unet, target_set("attn"), **options)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(unet):
            layer.R.copy_(
                oft_layers.skew(torch.randn(layer.R.shape, generator=g, dtype=layer.R.dtype)) * scale
            )
            if layer.s is not None:
                layer.s.copy_(1 + 0.1 * torch.randn(layer.s.shape, generator=g, dtype=layer.s.dtype))
    return unet


@pytest.mark.parametrize(
    "options",
    [
        {"r": 4},
        {"r": 4, "cayley": "neumann", "neumann_terms": 5},
        {"r": 2, "cayley": "neumann", "neumann_terms": 3},
        {"r": 4, "block_share": True},
        {"r": 4, "coft": True, "eps": 1e-3},
    ],
    ids=["exact", "neumann5", "neumann3", "shared", "coft"],
)
def test_export_loads_in_peft_with_equal_outputs(fresh, tmp_path, options):
    ours = adapted(fresh(), **options)
    oft_layers.save_peft(ours, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "OFT" and config["r"] == options["r"] and config["coft"] is False
    peft_model = PeftModel.from_pretrained(fresh(), tmp_path)
    expected = output(ours)
    close(output(peft_model), expected, ours)
    assert (expected - output(fresh())).abs().max() > EFFECT * 1e-10  # the rotations do something
    # and back: the PEFT folder of our export restores the same layers, options and outputs
    back = fresh()
    oft_layers.load_peft(back, tmp_path)
    layers = dict(oft_layers.oft_modules(back))
    for name, layer in oft_layers.oft_modules(ours):
        assert layers[name].config == layer.config
        torch.testing.assert_close(layers[name].R, layer.R, rtol=0, atol=0)
    close(output(back), expected, ours)


def test_magnitude_scales_go_to_boft_with_one_factor(fresh, tmp_path):
    ours = adapted(fresh(), r=4, magnitude=True)
    oft_layers.save_peft(ours, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "BOFT" and config["boft_n_butterfly_factor"] == 1
    close(output(PeftModel.from_pretrained(fresh(), tmp_path)), output(ours), ours)
    back = fresh()
    oft_layers.load_peft(back, tmp_path)
    close(output(back), output(ours), ours)


def peft_trained(model, config, steps: int = 3):
    """A PEFT model trained by PEFT for a few AdamW steps on a regression loss (not at its init)."""
    peft_model = get_peft_model(model, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-2)
    x, t, context = inputs(model)
    for _ in range(steps):
        opt.zero_grad()
        peft_model(x, t, context).sample.square().mean().backward()
        opt.step()
    return peft_model.eval()


@pytest.mark.parametrize(
    "config",
    [
        {"use_cayley_neumann": False},
        {"use_cayley_neumann": True, "num_cayley_neumann_terms": 5},
        {"use_cayley_neumann": False, "block_share": True},
        {"use_cayley_neumann": False, "coft": True, "eps": 1e-3},
    ],
    ids=["exact", "neumann", "shared", "coft"],
)
def test_a_peft_trained_oft_adapter_imports_with_peft_outputs(fresh, tmp_path, config):
    names = [n for n, _ in oft_layers.oft_modules(adapted(fresh(), r=4))]
    peft_model = peft_trained(fresh(), PeftOFTConfig(r=4, oft_block_size=0, target_modules=names, **config))
    peft_model.save_pretrained(tmp_path)
    expected = output(peft_model)  # PEFT's forward (with COFT: projected first, as in training)
    ours = fresh()
    meta = oft_layers.load_peft(ours, tmp_path)
    assert meta["source"] == "peft:OFT" and len(list(oft_layers.oft_modules(ours))) == len(names)
    close(output(ours), expected, ours)
    assert (expected - output(fresh())).abs().max() > EFFECT * 1e-10
    if config.get("coft"):  # PEFT's radius eps/sqrt(r) on S is ours at eps/b²
        for _, layer in oft_layers.oft_modules(ours):
            assert layer.config.coft and layer.radius() == pytest.approx(1e-3 / 2, rel=1e-12)


def test_a_peft_trained_boft_adapter_imports_with_its_scales(fresh, tmp_path):
    names = [n for n, _ in oft_layers.oft_modules(adapted(fresh(), r=4))]
    config = BOFTConfig(boft_block_num=4, boft_block_size=0, boft_n_butterfly_factor=1, target_modules=names)
    peft_model = peft_trained(fresh(), config)
    peft_model.save_pretrained(tmp_path)
    ours = fresh()
    oft_layers.load_peft(ours, tmp_path)
    assert all(layer.s is not None for _, layer in oft_layers.oft_modules(ours))
    close(output(ours), output(peft_model), ours)


def test_neumann_term_counts_map_to_the_same_polynomial():
    S = oft_layers.skew(torch.randn(3, 6, 6, dtype=torch.float64)) * 0.2
    eye = torch.eye(6, dtype=torch.float64)
    for ours in (3, 4, 5, 8):
        n = peft_neumann_terms(ours)
        assert our_neumann_terms(n) == ours
        # PEFT's series at -S, written out: I + 2(-S) + ... + 2(-S)^(n-2) + (-S)^(n-1)
        P = -S
        peft = eye + sum(2 * torch.linalg.matrix_power(P, k) for k in range(1, n - 1))
        peft = peft + torch.linalg.matrix_power(P, n - 1)
        torch.testing.assert_close(oft_layers.cayley(S, "neumann", ours), peft, rtol=1e-13, atol=1e-13)
    assert our_neumann_terms(3) == 3  # PEFT computes 3 terms as 4
    for bad in (1, 2):
        with pytest.raises(ValueError, match="Cayley"):
            our_neumann_terms(bad)
        with pytest.raises(ValueError, match="starts at 3"):
            peft_neumann_terms(bad)


def test_what_peft_cannot_hold_is_refused_in_one_line(fresh, tmp_path):
    conv = fresh()
    oft_layers.inject(conv, target_set("conv"), r=1)
    with pytest.raises(ValueError, match="PEFT's Conv2d OFT rotates unfolded input patches"):
        oft_layers.save_peft(conv, tmp_path / "conv")
    mixed = fresh()
    oft_layers.inject(mixed, [r".*attn1\.to_q"], r=4)
    oft_layers.inject(mixed, [r".*attn1\.to_k"], r=2)
    with pytest.raises(ValueError, match="one block count r for every layer"):
        oft_layers.save_peft(mixed, tmp_path / "mixed")
    with pytest.raises(ValueError, match="exact Cayley transform only"):
        oft_layers.save_peft(adapted(fresh(), r=4, magnitude=True, cayley="neumann"), tmp_path / "m")
    with pytest.raises(ValueError, match="no OFT layers"):
        oft_layers.save_peft(fresh(), tmp_path / "none")
    assert not (tmp_path / "conv" / WEIGHTS_FILE).exists()


def test_foreign_folders_are_refused_naming_the_cause(fresh, tmp_path):
    good = tmp_path / "good"
    oft_layers.save_peft(adapted(fresh(), r=4), good)
    config = json.loads((good / CONFIG_FILE).read_text())

    def folder(name: str, **changes) -> str:
        path = tmp_path / name
        path.mkdir()
        (path / CONFIG_FILE).write_text(json.dumps({**config, **changes}))
        (path / WEIGHTS_FILE).write_bytes((good / WEIGHTS_FILE).read_bytes())
        return path

    cases = {
        "holds a PEFT LORA adapter": folder("lora", peft_type="LORA"),
        "also trains biases": folder("bias", bias="all"),
        "not a Cayley series": folder("n2", use_cayley_neumann=True, num_cayley_neumann_terms=2),
    }
    for message, path in cases.items():
        with pytest.raises(ValueError, match=message):
            oft_layers.load_peft(fresh(), path)
    extra = folder("extra")
    save_file({"base_model.model.conv_in.lora_A.weight": torch.zeros(2, 2)}, str(extra / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="unexpected tensor 'base_model.model.conv_in.lora_A.weight'"):
        oft_layers.load_peft(fresh(), extra)
    (extra / WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        oft_layers.load_peft(fresh(), extra)
    other = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="names a module 'down_blocks"):
        oft_layers.load_peft(other, good)
    with warnings.catch_warnings():
        assert oft_layers.is_peft_folder(good) and not oft_layers.is_peft_folder(tmp_path)
