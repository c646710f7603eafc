"""Put OFT into any model by module path, take it out, merge it, count what trains."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from torch import nn

from .config import OFTConfig
from .layers import OFTConv2d, OFTLayer, OFTLinear


def oft_modules(model: nn.Module) -> Iterator[tuple[str, OFTLayer]]:
    """(name, layer) for every OFT layer in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, OFTLayer):
            yield name, module


def oft_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The trainable adapter parameters (R, and s with magnitude fitting) of every OFT layer: what to optimise."""
    for _, layer in oft_modules(model):
        yield from (p for p in (layer.R, layer.s) if p is not None and p.requires_grad)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def wrap(module: nn.Module, config: OFTConfig, name: str = "") -> OFTLayer:
    """The OFT wrapper for one nn.Linear or nn.Conv2d (a clear error for anything else)."""
    if isinstance(module, OFTLayer):
        raise ValueError(f"{name or 'module'} already has OFT; call strip(model) first")
    cls = OFTLinear if isinstance(module, nn.Linear) else OFTConv2d if isinstance(module, nn.Conv2d) else None
    if cls is not None:
        try:
            return cls(module, config)
        except ValueError as err:
            raise ValueError(f"{name!r}: {err}") from None
    raise TypeError(
        f"{name or 'module'} is a {type(module).__name__}; OFT wraps nn.Linear and nn.Conv2d only"
    )


def inject(model: nn.Module, targets: Sequence[str], **options) -> list[str]:
    """Wrap every Linear/Conv2d whose module path fully matches one of the regexes ``targets`` (other matched
    modules, e.g. containers, are passed over; a pattern matching no Linear/Conv2d is an error); the wrapped
    base layers are frozen. Options are ``OFTConfig``'s (r, eps, coft, block_share, cayley, neumann_terms, magnitude,
    path, conv_layout). Returns the wrapped names. Matching by path, not by class, so another attention implementation
    cannot silently drop layers.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("targets must be a non-empty list of module-path regexes, e.g. [r'.*attn1\\.to_q']")
    config = OFTConfig(**options)
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for pattern in map(re.compile, targets):
        hits = [n for n in modules if n and pattern.fullmatch(n)]
        # containers and activations may match a broad pattern too; only Linear/Conv2d (or OFT) layers count
        layers = [n for n in hits if isinstance(modules[n], (nn.Linear, nn.Conv2d, OFTLayer))]
        if not layers:
            found = (
                f"it matched only {sorted({type(modules[n]).__name__ for n in hits})}"
                if hits
                else (f"module paths look like {[n for n in modules if n][:3]}")
            )
            raise ValueError(
                f"target {pattern.pattern!r} matches no nn.Linear/nn.Conv2d of "
                f"{type(model).__name__} ({found})"
            )
        chosen += [n for n in layers if n not in chosen]
    wrapped = [
        (name, wrap(modules[name], config, name)) for name in chosen
    ]  # validate all before changing any
    for name, layer in wrapped:
        _set_submodule(model, name, layer)
    return chosen


def strip(model: nn.Module, merge: bool = False) -> list[str]:
    """Replace every OFT layer by its base layer: the original weights (``merge=False``) or with the rotation
    folded in (``merge=True``, a plain model that behaves like the adapted one). Returns the stripped names."""
    names = []
    for name, layer in list(oft_modules(model)):
        layer.merge() if merge else layer.unmerge()
        _set_submodule(model, name, layer.base)
        names.append(name)
    return names


def merge(model: nn.Module) -> int:
    """Fold every rotation into its base weight (inference at exactly the base model's cost)."""
    layers = [layer for _, layer in oft_modules(model)]
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Undo ``merge`` for every OFT layer (restores the base weights up to float rounding)."""
    layers = [layer for _, layer in oft_modules(model)]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def enable_magnitude(model: nn.Module) -> int:
    """Give every OFT layer a per-output scale ``s`` (init 1; model output unchanged); returns how many layers.
    For magnitude post-fitting: freeze R, then train only the scales."""
    layers = [layer for _, layer in oft_modules(model)]
    for layer in layers:
        layer.enable_magnitude()
    return len(layers)


def rotation_dof(layer: OFTLayer) -> int:
    """Free parameters of a layer's rotation: skew degrees of freedom ``r*b(b-1)/2`` (shared: ``b(b-1)/2``),
    r being the layer's block count."""
    b = layer.block_size
    return (1 if layer.config.block_share else layer.blocks) * b * (b - 1) // 2


def count_trainable(model: nn.Module) -> int:
    """Trainable parameters as the reference counted them: R as its skew degrees of freedom ``r*b(b-1)/2``
    (shared: ``b(b-1)/2``), everything else trainable by numel."""
    counted, total = set(), 0
    for _, layer in oft_modules(model):
        if layer.R.requires_grad:
            total += rotation_dof(layer)
        counted.add(id(layer.R))
    for p in model.parameters():
        if p.requires_grad and id(p) not in counted:
            total += p.numel()
    return total
