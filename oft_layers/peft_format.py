"""PEFT's OFT and BOFT adapter folders, written from our OFT layers and read into them (no PEFT import needed).

What this follows, checked against PEFT 0.21 (``tests/test_peft_format.py`` loads both directions with it):

- A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``, whose keys are
  ``base_model.model.<module>.<parameter>`` for a ``PeftModel`` wrapping the model our layer names refer to.
- OFT (``peft_type`` "OFT"): ``oft_R.weight`` (r, b(b-1)/2), or (1, ...) with ``block_share``, the strict upper
  triangle (``triu_indices`` order) of a skew S_p. Its exact mode applies ``x (I - S_p)(I + S_p)^-1`` per block
  before the frozen layer: our rotation with ``S_p = S``. Its Cayley-Neumann mode (``use_cayley_neumann``,
  PEFT's default) with n terms computes ``I + 2 S_p + ... + 2 S_p^(n-2) + S_p^(n-1)`` (n = 3 computes n = 4's),
  the transpose of our Neumann series: ours with n - 1 terms at ``S = -S_p``. Its COFT (``coft``) projects S_p
  onto the Frobenius radius ``eps / sqrt(r)`` in every forward: ours with ``eps = eps_p / b^2``.
- BOFT with one butterfly factor (``boft_n_butterfly_factor`` 1, the identity permutation) is block-diagonal
  OFT with the exact Cayley transform of the skew part of ``boft_R`` (1, r, b, b) and a per-output scale
  ``boft_s`` (out, 1) applied before the bias: our layer with magnitude post-fitting.
- PEFT's Conv2d OFT rotates unfolded input patches and sums them back (``F.fold``), another operator than
  rotating filters: convolutions are not converted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .cayley import CONVENTION, skew
from .config import OFTConfig
from .inject import oft_modules
from .io import _pack, _unpack, adapter_metadata, apply_adapter
from .layers import OFTLayer, OFTLinear

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # a PeftModel's path to the wrapped model's modules
OFT_KEY, BOFT_KEYS = "oft_R.weight", ("boft_R", "boft_s")
# Options every PEFT config carries, as PEFT writes them for an adapter with no extras.
_COMMON = {
    "task_type": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": True,
    "bias": "none",
    "fan_in_fan_out": False,
    "init_weights": True,
    "modules_to_save": None,
    "exclude_modules": None,
    "layers_to_transform": None,
    "layers_pattern": None,
}


class PeftFormatError(ValueError):
    """An adapter that one side cannot represent, or a folder that is not a PEFT OFT/BOFT adapter."""


def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a PEFT ``adapter_config.json``."""
    return (Path(path) / CONFIG_FILE).is_file()


def peft_neumann_terms(ours: int) -> int:
    """PEFT's ``num_cayley_neumann_terms`` computing our ``neumann_terms`` series (at S = -S_p)."""
    if ours < 3:
        raise PeftFormatError(
            f"PEFT's Cayley-Neumann series has no form of our {ours}-term series (it starts at 3 terms); "
            "train with --neumann_terms 3 or more, or export merged weights"
        )
    return ours + 1


def our_neumann_terms(peft: int) -> int:
    """Our ``neumann_terms`` computing PEFT's ``num_cayley_neumann_terms`` series (at S = -S_p)."""
    if peft < 3:
        raise PeftFormatError(
            f"num_cayley_neumann_terms={peft}: PEFT then computes I + 2S (or I), not a Cayley series this "
            "project has; re-save the adapter with 3 or more terms"
        )
    return max(peft - 1, 3)


def _one(layers: list[tuple[str, OFTLayer]], what: str, value) -> object:
    """The value ``value(layer)`` all layers share (a PEFT config has one), or a clear refusal."""
    seen = {value(layer) for _, layer in layers}
    if len(seen) > 1:
        raise PeftFormatError(
            f"a PEFT config has one {what} for every layer, this adapter's layers use {sorted(seen, key=str)}"
        )
    return seen.pop()


def peft_adapter(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and ``adapter_config.json`` of ``model``'s OFT layers in PEFT's format: OFT, or BOFT with one
    butterfly factor when the layers carry magnitude scales. Refuses, naming the cause, what PEFT cannot hold."""
    layers = list(oft_modules(model))
    if not layers:
        raise PeftFormatError("the model has no OFT layers to export")
    convs = [name for name, layer in layers if not isinstance(layer, OFTLinear)]
    if convs:
        raise PeftFormatError(
            f"{convs[0]} ({len(convs)} conv layers): PEFT's Conv2d OFT rotates unfolded input patches, not "
            "filters, so it cannot hold this rotation; export linear targets only, or merged weights"
        )
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise PeftFormatError(f"{merged[0]} is merged; unmerge the model before exporting its adapter")
    blocks = _one(layers, "block count r", lambda layer: layer.blocks)
    share = _one(layers, "block_share", lambda layer: layer.config.block_share)
    cayley = _one(layers, "Cayley method", lambda layer: layer.config.cayley)
    names = [name for name, _ in layers]
    if any(layer.s is not None for _, layer in layers):
        if cayley != "exact":
            raise PeftFormatError(
                "magnitude scales go to PEFT's BOFT, which has the exact Cayley transform only; this adapter "
                "uses the Neumann series: export merged weights instead"
            )
        tensors = {}
        for name, layer in layers:
            R = layer.R.detach().expand(blocks, -1, -1) if share else layer.R.detach()
            s = layer.s.detach() if layer.s is not None else torch.ones(layer.out_features, dtype=R.dtype)
            tensors[f"{PREFIX}{name}.boft_R"] = skew(R)[None]
            tensors[f"{PREFIX}{name}.boft_s"] = s[:, None]
        config = {
            **_COMMON,
            "peft_type": "BOFT",
            "boft_block_num": blocks,
            "boft_block_size": 0,
            "boft_n_butterfly_factor": 1,
            "boft_dropout": 0.0,
            "target_modules": names,
        }
        return tensors, config
    neumann = cayley == "neumann"
    terms = _one(layers, "neumann_terms", lambda layer: layer.config.neumann_terms) if neumann else None
    sign = -1.0 if neumann else 1.0  # PEFT's series approximates the transpose: it gets -S
    tensors = {
        f"{PREFIX}{name}.{OFT_KEY}": _pack(sign * skew(layer.R.detach())).reshape(1 if share else blocks, -1)
        for name, layer in layers
    }
    config = {
        **_COMMON,
        "peft_type": "OFT",
        "r": blocks,
        "oft_block_size": 0,  # r given: PEFT derives the block size per layer
        "target_modules": names,
        "module_dropout": 0.0,
        # COFT off: PEFT would re-project every forward onto its own radius; a trained R is inside ours
        "coft": False,
        "block_share": share,
        "use_cayley_neumann": neumann,
        "num_cayley_neumann_terms": peft_neumann_terms(terms) if neumann else 5,
    }
    return tensors, config


def save_peft(
    model: nn.Module, folder: str | os.PathLike, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s OFT layers as a PEFT adapter folder (``peft_adapter``), which
    ``PeftModel.from_pretrained(model_without_oft, folder)`` loads. Our per-layer options (COFT radius, paths)
    and ``extra_metadata`` ride along in the weights file's metadata, where ``load_peft`` finds them. Writes
    into ``folder`` as it is: wrap the call in an atomic folder write for a durable export."""
    tensors, config = peft_adapter(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        **{k: str(v) for k, v in (extra_metadata or {}).items()},
        "format": "pt",  # what PEFT's own files record
        "oft_layers": adapter_metadata(model)["layers"],
        "cayley_convention": CONVENTION,
    }
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE), metadata=meta
    )
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """The config, tensors and weights metadata of a PEFT folder, with one-line errors."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise PeftFormatError(f"{folder / CONFIG_FILE} is not a readable PEFT config ({err})") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PeftFormatError(
            f"{folder} has no {WEIGHTS_FILE}; save the PEFT model with safe_serialization=True (the default)"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            return config, {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors' own error types for truncated or foreign files
        raise PeftFormatError(f"{weights} is not a readable safetensors file ({err})") from None


def _by_module(
    tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]
) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {suffix: tensor}}`` of PEFT keys ``PREFIX + module + "." + suffix``; other keys refused."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith("." + s)), None)
        if not key.startswith(PREFIX) or suffix is None:
            raise PeftFormatError(
                f"unexpected tensor {key!r}: expected {PREFIX}<module>.{' or .'.join(suffixes)} "
                "(embedding OFT, trained biases and modules_to_save are not converted)"
            )
        out.setdefault(key[len(PREFIX) : -len(suffix) - 1], {})[suffix] = value
    return out


def _target(modules: dict[str, nn.Module], name: str) -> nn.Linear:
    """The plain ``nn.Linear`` a PEFT layer adapts, or a clear refusal."""
    module = modules.get(name)
    if module is None:
        raise PeftFormatError(f"the PEFT adapter names a module {name!r} the model does not have")
    if not isinstance(module, nn.Linear):
        raise PeftFormatError(
            f"{name} is a {type(module).__name__}: PEFT OFT/BOFT folders are converted for plain nn.Linear layers"
        )
    return module


def _oft_layers(config: dict, tensors: dict, modules: dict, ours: dict) -> tuple[dict, dict]:
    """Our per-layer options and R of a PEFT OFT adapter."""
    neumann = bool(config.get("use_cayley_neumann", True))
    terms = our_neumann_terms(int(config.get("num_cayley_neumann_terms", 5))) if neumann else 5
    share, coft = bool(config.get("block_share", False)), bool(config.get("coft", False))
    options, sd = {}, {}
    for name, parts in _by_module(tensors, (OFT_KEY,)).items():
        linear, packed = _target(modules, name), parts[OFT_KEY]
        try:
            S = _unpack(packed)  # (k, b, b) skew
        except ValueError as err:
            raise PeftFormatError(f"{name}: {err}") from None
        k, b = S.shape[0], S.shape[-1]
        if packed.dim() != 2 or linear.in_features % b or (share and k != 1):
            raise PeftFormatError(f"{name}: oft_R of shape {tuple(packed.shape)} does not fit {linear}")
        r = linear.in_features // b
        if not share and k != r:
            raise PeftFormatError(
                f"{name}: {k} blocks of {b} do not cover {linear.in_features} input features"
            )
        cfg = OFTConfig(
            r=r,
            coft=coft,
            eps=float(config["eps"]) / (b * b) if coft else None,
            block_share=share,
            cayley="neumann" if neumann else "exact",
            neumann_terms=terms,
        )
        options[name] = _restore(cfg, ours.get(name))
        R = (0.0 - S) if neumann else S
        sd[f"{name}.R"] = R[0] if share else R
        if coft:  # PEFT projects before every forward: so does the first one here
            sd[f"{name}.R"] = _project_like_peft(sd[f"{name}.R"], float(config["eps"]), k)
    return options, sd


def _project_like_peft(R: torch.Tensor, eps: float, k: int) -> torch.Tensor:
    """Each (b, b) block of R scaled onto PEFT's Frobenius radius ``eps / sqrt(k)`` if outside it, as its
    ``_project_batch`` does: that radius is computed in float32 (``torch.sqrt`` of an integer tensor)."""
    radius = torch.tensor(eps, dtype=torch.float32) / torch.tensor(float(k), dtype=torch.float32).sqrt()
    norms = torch.linalg.matrix_norm(R, keepdim=True)
    return torch.where(norms <= radius, R, R * (radius.to(R.dtype) / norms))


def _boft_layers(config: dict, tensors: dict, modules: dict, ours: dict) -> tuple[dict, dict]:
    """Our per-layer options, R and s of a PEFT BOFT adapter with one butterfly factor."""
    if int(config.get("boft_n_butterfly_factor", 1)) != 1:
        raise PeftFormatError(
            f"BOFT with {config['boft_n_butterfly_factor']} butterfly factors is a product of permuted "
            "block-diagonal rotations; only one factor (plain OFT) converts to this project's layers"
        )
    options, sd = {}, {}
    for name, parts in _by_module(tensors, BOFT_KEYS).items():
        linear = _target(modules, name)
        R, s = parts.get("boft_R"), parts.get("boft_s")
        if R is None or s is None or R.dim() != 4 or R.shape[0] != 1 or s.shape != (linear.out_features, 1):
            raise PeftFormatError(f"{name}: BOFT tensors {sorted(parts)} do not fit {linear}")
        r, b = R.shape[1], R.shape[-1]
        if r * b != linear.in_features:
            raise PeftFormatError(
                f"{name}: {r} blocks of {b} do not cover {linear.in_features} input features"
            )
        options[name] = _restore(OFTConfig(r=r, magnitude=True), ours.get(name))
        sd[f"{name}.R"], sd[f"{name}.s"] = R[0], s[:, 0]
    return options, sd


def _restore(cfg: OFTConfig, ours: dict | None) -> dict:
    """``cfg`` as a dict; when our own export's metadata describes the same rotation, the options PEFT has no
    slot for (our COFT radius, the compute path) come back from it."""
    out = cfg.to_dict()
    keys = ("r", "block_share", "cayley", "magnitude") + (
        ("neumann_terms",) if cfg.cayley == "neumann" else ()
    )
    if ours is not None and not cfg.coft and all(ours.get(k) == out[k] for k in keys):
        out.update({k: ours[k] for k in ("coft", "eps", "path")})
    return out


def load_peft(model: nn.Module, folder: str | os.PathLike) -> dict[str, str]:
    """Wrap and load the layers a PEFT OFT folder, or a BOFT folder with one butterfly factor, adapts in
    ``model`` (module names as in the folder, without ``base_model.model.``): the model then computes what
    ``PeftModel.from_pretrained(model, folder)`` computes. Returns our adapter metadata for the layers, with the
    extra metadata our own export stored (e.g. ``base_model``)."""
    folder = Path(folder)
    config, tensors, meta = _read(folder)
    kind = config.get("peft_type")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise PeftFormatError(
            f"{folder}: the adapter also trains biases or whole modules (bias={config.get('bias')!r}, "
            f"modules_to_save={config.get('modules_to_save')}), which this project's layers keep frozen"
        )
    ours = json.loads(meta["oft_layers"]) if "oft_layers" in meta else {}
    modules = dict(model.named_modules())
    if kind == "OFT":
        options, sd = _oft_layers(config, tensors, modules, ours)
    elif kind == "BOFT":
        options, sd = _boft_layers(config, tensors, modules, ours)
    else:
        raise PeftFormatError(
            f"{folder} holds a PEFT {kind} adapter; only OFT and BOFT convert to OFT layers"
        )
    if not sd:
        raise PeftFormatError(f"{folder}: the adapter has no tensors")
    apply_adapter(model, sd, {"layers": json.dumps(options)})
    extra = {k: v for k, v in meta.items() if k not in ("format", "oft_layers", "cayley_convention")}
    return {**extra, **adapter_metadata(model), "source": f"peft:{kind}"}
