"""Architecture and schedule configs of the Stable Diffusion bases and of their tiny test presets: the one place
they live.

Bases: SD1.5 (``runwayml/stable-diffusion-v1-5``, ``v1-inference.yaml``), SD2.1 (``stabilityai/stable-diffusion-
2-1``, 768 px, v-prediction, the OpenCLIP ViT-H/14 text encoder as diffusers converts it: 23 of its 24 layers)
and SDXL base 1.0 (``stabilityai/stable-diffusion-xl-base-1.0``: CLIP ViT-L and OpenCLIP ViT-bigG/14 text
encoders, their penultimate layers concatenated, the pooled bigG embedding and the size/crop conditioning added
to the time embedding). The values are those of the hub configs, translated to diffusers/transformers keys, so
loading needs no config file from a model hub. The tiny presets keep each base's structure (the cross-attention
blocks with attn1/attn2/GEGLU, a VAE that downsamples by 8, the real 49,408-token vocabulary, SD2's linear
projections and v-prediction, SDXL's two encoders and added conditioning) at a size that trains in well under a
second per step on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# CLIP ViT-L/14 tokenizer facts (SD1.5's ``cond_stage_model``).
VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>, also the padding token of SD1.5
EOS_TOKEN, BANG_TOKEN = "<|endoftext|>", "!"  # the padding tokens: CLIP's end token, OpenCLIP's "!" (id 0)

LATENT_SCALE = 0.18215
LATENT_CHANNELS = 4
VAE_DOWNSAMPLE = 8

# Training noise schedule of every base (``DDPMScheduler``): scaled-linear betas 0.00085 -> 0.012 over 1000
# steps; SD2.1 (768-v) predicts the velocity instead of the noise (``scheduler_config``).
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


# The OpenCLIP text encoders as CLIPTextModel configs (diffusers' conversion): GELU, not CLIP's quick GELU.
_OPENCLIP = {**_TEXT_COMMON, "hidden_act": "gelu"}
_SD2_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "use_linear_projection": True,  # SD2's and SDXL's proj_in/proj_out are linears
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
_SDXL_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "addition_embed_type": "text_time",  # pooled text embedding + Fourier features of the 6 size/crop numbers
}

PRESETS.update(
    {
        "sd21": {
            "unet": {
                **_SD2_UNET,
                "sample_size": 96,
                "block_out_channels": [320, 640, 1280, 1280],
                "cross_attention_dim": 1024,
                "attention_head_dim": [5, 10, 20, 20],  # 64 channels per head at every level
                "upcast_attention": True,  # the 768-v model's attention softmax runs in float32
            },
            "vae": PRESETS["sd15"]["vae"],
            "text_encoder": {
                **_OPENCLIP,
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 23,
                "num_attention_heads": 16,
                "projection_dim": 512,
            },
        },
        "sdxl": {
            "unet": {
                **_SDXL_UNET,
                "sample_size": 128,
                "block_out_channels": [320, 640, 1280],
                "transformer_layers_per_block": [1, 2, 10],
                "cross_attention_dim": 2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG)
                "attention_head_dim": [5, 10, 20],
                "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816,  # 1280 pooled + 6 x 256
            },
            "vae": {**PRESETS["sd15"]["vae"], "sample_size": 1024, "scaling_factor": 0.13025},
            "text_encoder": PRESETS["sd15"]["text_encoder"],
            "text_encoder_2": {
                **_OPENCLIP,
                "hidden_size": 1280,
                "intermediate_size": 5120,
                "num_hidden_layers": 32,
                "num_attention_heads": 20,
                "projection_dim": 1280,
            },
        },
        "tiny-sd2": {
            "unet": {
                **PRESETS["tiny"]["unet"],
                "use_linear_projection": True,
                "attention_head_dim": [4, 8],
                "upcast_attention": True,
            },
            "vae": PRESETS["tiny"]["vae"],
            "text_encoder": {**PRESETS["tiny"]["text_encoder"], "hidden_act": "gelu"},
        },
        "tiny-sdxl": {
            "unet": {
                **PRESETS["tiny"]["unet"],
                "use_linear_projection": True,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                "transformer_layers_per_block": [1, 2],
                "cross_attention_dim": 64,  # 32 + 32: the two tiny encoders' widths
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 80,  # 32 pooled + 6 x 8
            },
            "vae": {**PRESETS["tiny"]["vae"], "scaling_factor": 0.13025},
            "text_encoder": PRESETS["tiny"]["text_encoder"],
            "text_encoder_2": {**PRESETS["tiny"]["text_encoder"], "hidden_act": "gelu"},
        },
    }
)


@dataclass(frozen=True)
class Base:
    """What a base adds to its networks' configs: how it is trained, prompted and sized."""

    family: str  # "sd1", "sd2" or "sdxl": the key layout of its files and the UIs' names
    resolution: int  # the image size it was trained at, in pixels
    prediction: str  # the UNet's target: "epsilon" (the noise) or "v_prediction" (the velocity)
    pad_tokens: tuple[str, ...]  # per text encoder: the token prompts are padded with


_SD1 = dict(family="sd1", prediction="epsilon", pad_tokens=(EOS_TOKEN,))
_SD2 = dict(family="sd2", prediction="v_prediction", pad_tokens=(BANG_TOKEN,))
_SDXL = dict(family="sdxl", prediction="epsilon", pad_tokens=(EOS_TOKEN, BANG_TOKEN))
BASES: dict[str, Base] = {
    "sd15": Base(resolution=512, **_SD1),
    "sd21": Base(resolution=768, **_SD2),
    "sdxl": Base(resolution=1024, **_SDXL),
    "tiny": Base(resolution=64, **_SD1),
    "tiny-sd2": Base(resolution=64, **_SD2),
    "tiny-sdxl": Base(resolution=64, **_SDXL),
}
REAL_BASES = ("sd15", "sd21", "sdxl")  # the --base choices of the real architectures


def preset_config(preset: str) -> dict[str, dict[str, Any]]:
    """The configs of ``preset`` (``PRESETS``): ``{"unet": ..., "vae": ..., "text_encoder": ...[,
    "text_encoder_2": ...]}`` (copies)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown SD preset {preset!r}: choose one of {sorted(PRESETS)}")
    return {part: dict(cfg) for part, cfg in PRESETS[preset].items()}


def base_of(preset: str) -> Base:
    """The ``Base`` facts of ``preset``."""
    preset_config(preset)
    return BASES[preset]


def scheduler_config(preset: str) -> dict[str, Any]:
    """The training noise schedule of ``preset``: SD's scaled-linear betas, with the base's prediction type."""
    return {**SCHEDULER, "prediction_type": base_of(preset).prediction}
