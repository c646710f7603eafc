"""Architecture and schedule configs of Stable Diffusion 1.5 and of the tiny test preset: the one place they live.

The SD1.5 values are those of ``runwayml/stable-diffusion-v1-5`` (``v1-inference.yaml`` of the original LDM code,
translated to diffusers/transformers config keys), so loading needs no config file from a model hub. The tiny
preset keeps SD's structure (cross-attention down/up blocks with attn1/attn2/GEGLU transformer blocks, a VAE that
downsamples by 8, a CLIP text encoder with the real 49,408-token vocabulary) at a size that trains in well under
a second per step on a CPU.
"""

from __future__ import annotations

from typing import Any

# CLIP ViT-L/14 tokenizer facts (SD1.5's ``cond_stage_model``).
VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>, also the padding token of SD1.5

LATENT_SCALE = 0.18215
LATENT_CHANNELS = 4
VAE_DOWNSAMPLE = 8

# Training noise schedule of SD1.5 (``DDPMScheduler``): scaled-linear betas 0.00085 -> 0.012 over 1000 steps.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}

_UNET_COMMON: dict[str, Any] = {
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "use_linear_projection": False,  # SD1.5's proj_in/proj_out are 1x1 convs
}

_VAE_COMMON: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": LATENT_CHANNELS,
    "act_fn": "silu",
    "scaling_factor": LATENT_SCALE,
}

_TEXT_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": EOS_TOKEN_ID,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {
            **_UNET_COMMON,
            "sample_size": 64,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,  # diffusers' legacy name: SD1.5 has 8 heads per attention
            "norm_num_groups": 32,
        },
        "vae": {
            **_VAE_COMMON,
            "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "norm_num_groups": 32,
        },
        "text_encoder": {
            **_TEXT_COMMON,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
        },
    },
    "tiny": {
        "unet": {
            **_UNET_COMMON,
            "sample_size": 8,
            # SD's pattern at two levels: cross-attention blocks, then a plain block at the lowest resolution.
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "cross_attention_dim": 32,  # = the tiny text encoder's hidden size, as 768 is for SD1.5
            "attention_head_dim": 8,
            # 8 channels per group at width 32 (SD1.5: 10 at 320). One channel per group would be an instance
            # norm, which maps every spatially constant channel to its bias: flat colours could not be made.
            "norm_num_groups": 4,
        },
        "vae": {
            **_VAE_COMMON,
            "sample_size": 64,
            # Four levels like SD's, so the VAE downsamples by 8 and the hint encoder fits unchanged.
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 16, 32, 32],
            "layers_per_block": 1,
            "norm_num_groups": 2,  # 8 channels per group at width 16 (SD1.5's VAE: 4 at 128), see the UNet's note
        },
        "text_encoder": {
            **_TEXT_COMMON,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
    },
}


def preset_config(preset: str) -> dict[str, dict[str, Any]]:
    """The configs of ``preset`` ("sd15" or "tiny"): ``{"unet": ..., "vae": ..., "text_encoder": ...}`` (copies)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown SD preset {preset!r}: choose one of {sorted(PRESETS)}")
    return {part: dict(cfg) for part, cfg in PRESETS[preset].items()}
