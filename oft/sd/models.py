"""The SD1.5 backbone as one object: UNet, VAE, CLIP text encoder, tokenizer and training noise schedule.

``build_sd`` makes it with random weights from the in-code configs (``"tiny"`` for tests, ``"sd15"`` for the real
architecture, weight-free with ``device="meta"``); ``load_sd`` fills it from a checkpoint, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from oft.sd.configs import LATENT_SCALE, MAX_LENGTH, PRESETS, SCHEDULER, preset_config
from oft.sd.tokenizer import build_tokenizer


def short_hash(text: str) -> str:
    """A short stable hash (12 hex digits) used for model identities."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass
class SDModels:
    """The parts of Stable Diffusion that OFT training and sampling need.

    ``identity`` names the base weights (checkpoints store it and refuse resuming against another base): a
    content fingerprint for loaded files (``identity_of``), ``<preset>-seed<n>`` for random builds. Compare a
    recorded one with ``same_base``, which also accepts ``legacy_identity``, the older path+size+mtime form.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    preset: str
    identity: str
    latent_scale: float = LATENT_SCALE
    legacy_identity: str | None = None  # what files written before fingerprints recorded for these weights

    def same_base(self, recorded: str | None) -> bool:
        """Whether ``recorded`` (a checkpoint's base identity) names these weights: the content fingerprint,
        or, for files written before it, the legacy path+size+mtime form of the same file, untouched."""
        return recorded is not None and recorded in (self.identity, self.legacy_identity)

    def freeze(self) -> SDModels:
        """Freeze the three networks (``requires_grad_(False)`` and ``eval()``): OFT trains only what it injects."""
        for net in (self.unet, self.vae, self.text_encoder):
            net.requires_grad_(False)
            net.eval()
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDModels:
        """Move the three networks to ``device`` and/or cast them to ``dtype`` (in place); returns self."""
        for net in (self.unet, self.vae, self.text_encoder):
            # pass only what changes: diffusers warns on every ``to(dtype=...)``, even a no-op one
            kwargs = {"device": device} if device is not None else {}
            if dtype is not None and dtype != net.dtype:
                kwargs["dtype"] = dtype
            if kwargs:
                net.to(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, 77) as SD1.5 makes them: truncated, padded with ``<|endoftext|>``."""
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's last hidden state for ``prompts``: (B, 77, hidden), the UNet's cross-attention context."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, 4, H/8, W/8), sampled from the posterior, times the scale."""
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) (scaled as ``encode_images`` returns them) -> images (B, 3, 8h, 8w) in [-1, 1]."""
        images = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.latent_scale).sample
        return images.clamp(-1, 1)


def build_networks(preset: str) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """UNet, VAE and text encoder of ``preset`` with freshly initialised weights (on the current default device)."""
    cfg = preset_config(preset)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return unet, vae, text_encoder


def assemble(
    preset: str, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, identity: str
) -> SDModels:
    """Wrap networks with the offline tokenizer and SD1.5's training schedule."""
    return SDModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        noise_scheduler=DDPMScheduler(**SCHEDULER),
        preset=preset,
        identity=identity,
    )


def build_sd(preset: str = "tiny", seed: int = 0, device: torch.device | str = "cpu") -> SDModels:
    """SD with random weights from the in-code configs: ``"tiny"`` (tests) or ``"sd15"`` (the real architecture).

    ``device="meta"`` allocates no weights (shapes only): enough to inject OFT and count parameters of SD1.5.
    The weights are a function of ``seed`` alone, so two builds with the same seed are identical.
    """
    preset_config(preset)  # validate the name before any work
    if str(device) == "meta":
        with torch.device("meta"):
            unet, vae, text_encoder = build_networks(preset)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet, vae, text_encoder = build_networks(preset)
        for net in (unet, vae, text_encoder):
            net.to(device)
    return assemble(preset, unet, vae, text_encoder, identity=f"{preset}-seed{seed}")


def legacy_identity_of(path: Path) -> str:
    """The identity files recorded before content fingerprints: a hash of the resolved path, size and mtime of
    the weights (every file for a folder). Kept only to recognise those files' base while it is untouched."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return short_hash(stamp)


FINGERPRINT_PREFIX = "fp1:"  # the fingerprint recipe's version; legacy identities are bare 12-hex hashes
_SLICES, _SLICE_BYTES = 16, 1 << 16  # fixed slices of the data read per file: 1 MiB at most
_MAX_HEADER = 64 << 20  # a safetensors header is ~0.1 MB for SD1.5: a length beyond this is not one


def _structure(f, size: int) -> tuple[bytes, int]:
    """What describes every tensor of an open weight file, read without touching the tensor data, and where
    the data starts (the slices of ``fingerprint_file`` are taken from there on).

    safetensors: the JSON header (names, dtypes, shapes, offsets). A zip (PyTorch's ``.ckpt``/``.bin`` since
    1.6): its central directory as ``zipfile`` lists it: name, CRC-32 and size of every record, so the CRC-32
    that ``torch.save`` computes of each storage covers the whole content. Anything else: nothing (the slices
    alone then tell files apart).
    """
    f.seek(0)
    head = f.read(9)
    if len(head) == 9:
        n = struct.unpack("<Q", head[:8])[0]
        if head[8:9] == b"{" and n <= min(size - 8, _MAX_HEADER):
            try:
                header = json.loads(head[8:] + f.read(n - 1))
            except ValueError:
                header = None
            if isinstance(header, dict):
                # the tensors' entries in a canonical order; ``__metadata__`` (free text, written in hash-map
                # order, so it differs between two saves of the same weights) is not the weights
                header.pop("__metadata__", None)
                return b"safetensors:" + json.dumps(header, sort_keys=True).encode(), 8 + n
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as zf:
            rows = [f"{i.filename}:{i.CRC:08x}:{i.file_size}" for i in zf.infolist()]
        return ("zip:" + "|".join(rows)).encode(), 0
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return b"", 0


def fingerprint_file(path: Path, digest) -> None:
    """Feed ``digest`` with a cheap summary of ``path``'s bytes: size, structure (``_structure``) and
    ``_SLICES`` slices of ``_SLICE_BYTES`` at fixed relative positions of the data (its first and last bytes
    included).

    Reads the header or central directory plus 1 MiB, never the whole file (SD1.5's .ckpt is 7.7 GB). Two
    files with the same bytes always agree; files differing only inside unsampled bytes of a format without
    per-record checksums (safetensors) can collide: a deliberate trade of certainty for a read of ~1 MiB.
    """
    size = path.stat().st_size
    digest.update(f"size:{size};".encode())
    with open(path, "rb") as f:
        structure, start = _structure(f, size)
        digest.update(structure)
        span = min(_SLICE_BYTES, size - start)
        for k in range(_SLICES):
            f.seek(start + (size - start - span) * k // (_SLICES - 1))
            digest.update(f.read(span))


def identity_of(path: str | os.PathLike) -> str:
    """The base's identity: a content fingerprint (``fingerprint_file``) of the weights ``load_sd`` reads.

    Independent of the path and of timestamps, so a copied, moved or ``touch``ed file keeps it, while other
    weights change it. A diffusers folder: the same over the weight file it loads for each part (other files
    in the folder do not count).
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        fingerprint_file(path, digest)
    else:
        for part, names in _WEIGHT_NAMES.items():
            found = next((path / part / n for n in names if (path / part / n).is_file()), None)
            if found is not None:
                digest.update(f"{part}/{found.name};".encode())
                fingerprint_file(found, digest)
    return FINGERPRINT_PREFIX + digest.hexdigest()[:16]


def identity_mismatch_hint(recorded: str) -> str:
    """Why a recorded identity may not match, for the one-line refusals of the callers that compare them."""
    if not re.fullmatch(r"[0-9a-f]{12}", recorded):  # a fingerprint (or a random build's name)
        return "the weights differ"
    return (
        "it was recorded in the older path+size+mtime form, which also changes when the same file is "
        "copied, moved or touched"
    )


def missing_checkpoint_message(path: str | os.PathLike) -> str:
    """The one line shown when the SD weights are not where the user pointed."""
    return (
        f"Stable Diffusion weights not found at {path}: run `bash scripts/download_model.sh` "
        "(writes models/v1-5-pruned.ckpt) or pass a diffusers folder (with unet/, vae/, text_encoder/)"
    )


def _adopt(
    net: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, assign: bool
) -> torch.nn.Module:
    """Load ``state_dict`` into ``net`` strictly, as one line naming missing, unexpected or mis-shaped keys."""
    try:
        result = net.load_state_dict(state_dict, strict=False, assign=assign)
    except RuntimeError as err:  # size mismatches: torch lists them on several lines
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ValueError(f"{what} does not fit the SD architecture: {details}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what} does not fit the SD architecture: {len(result.missing_keys)} missing key(s) "
            f"{result.missing_keys[:8]}, {len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:8]}"
        )
    return net


def _networks_from_state_dicts(
    preset: str, unet_sd: dict, vae_sd: dict, text_sd: dict, source: str
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Networks of ``preset`` holding the given weights; the big ones are built weight-free and adopt the tensors."""
    cfg = preset_config(preset)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
    unet = _adopt(unet, unet_sd, f"{source} (UNet)", assign=True)
    vae = _adopt(vae, vae_sd, f"{source} (VAE)", assign=True)
    # CLIP keeps a non-persistent position-id buffer that a weight-free build would leave empty: build it for real.
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    text_encoder = _adopt(text_encoder, text_sd, f"{source} (text encoder)", assign=False)
    return unet, vae, text_encoder


def _recognise_preset(conv_in_weight: torch.Tensor | None) -> str:
    """The preset whose UNet ``conv_in`` has this weight's width; "sd15" when unknown (errors then name keys)."""
    width = None if conv_in_weight is None else conv_in_weight.shape[0]
    return next((p for p in PRESETS if PRESETS[p]["unet"]["block_out_channels"][0] == width), "sd15")


def _single_file_networks(path: Path, preset: str | None, ema: bool):
    from oft.sd import convert

    checkpoint = convert.read_single_file(path)
    if ema:
        checkpoint = convert.take_ema(checkpoint, str(path))
    preset = preset or _recognise_preset(checkpoint.get(convert.UNET_PREFIX + "input_blocks.0.0.weight"))
    expected = convert.to_ldm_state_dict(build_sd(preset, device="meta"))
    convert.check_ldm_keys(checkpoint, expected, str(path))
    convert.check_architecture(path, preset)
    cfg = preset_config(preset)
    unet_sd, vae_sd, text_sd = convert.from_ldm_state_dict(checkpoint, cfg["unet"], cfg["vae"])
    return preset, _networks_from_state_dicts(preset, unet_sd, vae_sd, text_sd, str(path))


_DIFFUSERS_WEIGHTS = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
]
# Weight file names of a diffusers folder, in order of preference.
_WEIGHT_NAMES = {
    "unet": _DIFFUSERS_WEIGHTS,
    "vae": _DIFFUSERS_WEIGHTS,
    "text_encoder": [
        "model.safetensors",
        "model.fp16.safetensors",
        "pytorch_model.bin",
        "pytorch_model.fp16.bin",
    ],
}


def _folder_networks(path: Path, preset: str | None):
    from oft.sd import convert

    parts = {}
    for part, names in _WEIGHT_NAMES.items():
        found = next((path / part / n for n in names if (path / part / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"diffusers folder {path} has no {part}/ weights (looked for {', '.join(names)})"
            )
        parts[part] = convert.read_single_file(found)
    parts["text_encoder"] = convert.strip_text_model_prefix(parts["text_encoder"])
    parts["text_encoder"].pop("embeddings.position_ids", None)
    preset = preset or _recognise_preset(parts["unet"].get("conv_in.weight"))
    return preset, _networks_from_state_dicts(
        preset, parts["unet"], parts["vae"], parts["text_encoder"], str(path)
    )


def load_sd(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    ema: bool = False,
    preset: str | None = None,
) -> SDModels:
    """Load SD from a single-file checkpoint (``.ckpt``/``.safetensors``, LDM keys) or a diffusers folder, offline.

    The architecture comes from the in-code configs (``preset`` "sd15" or "tiny", recognised from the weights when
    None); every weight must be present and nothing else (a missing or unexpected key is an error that names it).
    ``ema=True`` takes the UNet's EMA weights from a file that has both (the reference trained from the non-EMA
    ones, the default). Returns trainable (not yet frozen) networks in ``dtype`` on the CPU: call ``.freeze()``,
    ``.to(device)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(missing_checkpoint_message(path))
    if path.is_dir():
        if ema:
            raise ValueError(
                f"ema=True needs a single-file checkpoint with EMA weights; {path} is a diffusers folder"
            )
        preset, (unet, vae, text_encoder) = _folder_networks(path, preset)
    else:
        preset, (unet, vae, text_encoder) = _single_file_networks(path, preset, ema)
    models = assemble(preset, unet, vae, text_encoder, identity=identity_of(path))
    models.legacy_identity = legacy_identity_of(path)
    return models.to(dtype=dtype)
