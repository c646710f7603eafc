"""The oft-control training module: frozen SD + OFT on the control targets + hint encoder, ε-MSE loss (SPEC §3).

Two stages share it: ``stage="oft"`` trains R and the hint encoder (``train.py``); ``stage="magnitude"`` freezes
both and trains only per-output scales (``train_with_norm.py``, SPEC §1). Checkpoints hold only what trains,
plus the base model's identity, so they stay small and refuse to resume on another base.
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F

import oft_layers
from oft.common.seeds import step_generator
from oft.control.checkpoint import ControlModel, load_control, save_control
from oft.control.config import Training
from oft.control.encodings import Encodings, encode_dataset
from oft.sd import add_to_conv_in

STAGES = ("oft", "magnitude")
# set by the checkpoint reader (``oft.control.training.AtomicCheckpointIO``) in what it returns: the file read,
# which is not the one Lightning was given when an unreadable last.ckpt fell back to last.prev.ckpt
LOADED_FROM = "oft_loaded_from"


class ControlOFT(L.LightningModule):
    """Lightning module of oft-control. ``model``: a control-model file (initial or trained), or a loaded
    ``ControlModel`` (trained in place)."""

    def __init__(
        self,
        model: str | os.PathLike | ControlModel,
        base: str | None = None,
        *,
        stage: str = "oft",
        lr: float = Training.lr,
        weight_decay: float = Training.weight_decay,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        timestep_range: tuple[int, int] | None = None,
        cache_encodings: bool = False,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.save_hyperparameters(ignore=["model"])  # a path or a whole model: neither belongs in checkpoints
        self.cm = model if isinstance(model, ControlModel) else load_control(model, base)
        sd = self.cm.sd
        total = sd.noise_scheduler.config.num_train_timesteps
        self.timestep_range = tuple(timestep_range) if timestep_range else (0, total)
        lo, hi = self.timestep_range
        if not 0 <= lo < hi <= total:
            raise ValueError(f"timestep range [{lo}, {hi}) must lie within [0, {total}) and be non-empty")
        # registered as children so Lightning moves them; ``self.cm`` keeps the same objects
        self.unet, self.vae, self.text_encoder, self.hint = sd.unet, sd.vae, sd.text_encoder, self.cm.hint
        self.text_encoder_2 = sd.text_encoder_2  # SDXL's second encoder (None otherwise)
        if stage == "magnitude":
            for _, layer in oft_layers.oft_modules(self.unet):
                layer.R.requires_grad_(False)
            oft_layers.enable_magnitude(self.unet)
            self.hint.requires_grad_(False)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.encodings: Encodings | None = None  # set at the start of fitting with cache_encodings
        self.strict_loading = (
            False  # checkpoints hold only the trainable tensors; on_load_checkpoint checks them
        )

    # ---------------------------------------------------------------------------------------------- training
    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def on_fit_start(self) -> None:
        if self.hparams.cache_encodings and self.encodings is None:
            self.encodings = encode_dataset(self.cm.sd, self.trainer.datamodule.dataset).to(self.device)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The base's MSE (ε-prediction; SD2.1: v-prediction) of one batch: jpg (B, 3, H, W) in [-1, 1], hint
        (B, 3, H, W) in [0, 1], txt (B,)."""
        sd = self.cm.sd
        if self.encodings is not None:  # the same draws from the posteriors encoded once
            index = batch["index"].to(self.encodings.mean.device)
            latents = self.encodings.latents(index, generator, sd.latent_scale)
            cond = self.encodings.cond.index(index)
        else:
            latents = sd.encode_images(batch["jpg"], generator=generator)  # (B, 4, H/8, W/8), frozen VAE
            # (B, 77, d) from the frozen text encoder(s); no prompt dropout (reference)
            cond = sd.condition(batch["txt"], *batch["jpg"].shape[-2:])
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        lo, hi = self.timestep_range  # all of [0, 1000) unless narrowed (the reference: all)
        t = torch.randint(lo, hi, (latents.shape[0],), generator=generator, device=latents.device)
        noisy = sd.noise_scheduler.add_noise(latents, noise, t)
        with add_to_conv_in(self.unet, self.hint(batch["hint"])):
            pred = self.unet(noisy, t, **cond.to(latents.device, latents.dtype).unet_kwargs()).sample
        return F.mse_loss(pred.float(), sd.training_target(latents, noise, t).float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        gen = step_generator(self.hparams.seed, self.global_step, self.global_rank, device=self.device)
        loss = self.loss(batch, gen)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["txt"]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.stage == "oft":
            oft_layers.project_after_step(opt, self.unet)  # COFT layers only; a no-op for plain OFT
        return opt

    # ------------------------------------------------------------------------------------------- checkpoints
    def _identity(self) -> dict[str, str]:
        return {
            "base_identity": self.cm.sd.identity,
            "layers": self.cm.meta["layers"],
            "stage": self.hparams.stage,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["oft_control"] = self._identity()
        checkpoint["oft_path_cache"] = (
            oft_layers.path_cache()
        )  # a resumed run computes (and rounds) the same way

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        where = checkpoint.get(LOADED_FROM) or getattr(self.trainer, "ckpt_path", None) or "the checkpoint"
        saved = checkpoint.get("oft_control")
        if saved is None:
            raise ValueError(
                f"{where} is not an oft-control training checkpoint; pass --resume none or another file"
            )
        mine = self._identity()
        for key, what in (("base_identity", "base SD"), ("layers", "OFT configuration"), ("stage", "stage")):
            same = self.cm.sd.same_base(saved[key]) if key == "base_identity" else saved[key] == mine[key]
            if not same:  # the base by content (or, for older checkpoints, the same untouched file)
                shown = (saved[key], mine[key]) if key != "layers" else ("its r/eps/coft", "this run's")
                raise ValueError(
                    f"{where} was trained with another {what} ({shown[0]!r}, this run: {shown[1]!r}); "
                    "resume with the same --base/--model and flags, or start fresh with --resume none"
                )
        missing = set(self.trainable_names()) - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"{where} lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]})")
        oft_layers.load_path_cache(checkpoint.get("oft_path_cache", {}))

    def export(self, path: str | os.PathLike, **extra: object) -> None:
        """Write the trained control model (adapter + hint encoder, base referenced) for inference/post-fitting."""
        save_control(
            self.cm, path, extra={"global_step": self.global_step, "stage": self.hparams.stage, **extra}
        )
