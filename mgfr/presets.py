"""MGFR base presets as data: the frozen prior's configs and the adapter options per scale.

A preset names everything needed to build the frozen Stable Diffusion parts from config
(diffusers / transformers config dicts), so ``mgfr.base.build_base_from_config`` makes the
architecture with random weights and no download, and ``mgfr.base.load_base`` knows which
asset folder holds the real weights.

* ``tiny``: a few million parameters, 64 px, random init (or the prior that
  ``mgfr pretrain-prior`` trains); tests, CPU runs and the demo.
* ``mini``: 64 px, a prior and adapters trained here by the toolkit's own recipe
  (``mgfr/configs/mini-*.yaml``) and shipped with the repository (asset ``mgfr-mini``):
  the model that restores faces on a CPU, and the default of ``mgfr restore``.
* ``sd21-base``: Stable Diffusion 2.1-base at 512 px (the paper's prior). The UNet config
  is the published one (865.9 M parameters).
* ``sd21``: Stable Diffusion 2.1 at 768 px: the same UNet as ``sd21-base``, trained to
  predict v (``prediction_type: v_prediction``).
* ``sd15``: Stable Diffusion 1.5 at 512 px.

``adapter`` holds the defaults of :class:`mgfr.adapters.DualControlAdapter` for that scale;
``embedder`` the default identity embedder (dlib's 128-d descriptor works offline; ArcFace
512-d is used when the user has its weights and asks for it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from reface_core.registry import Registry

# DDPM betas of every Stable Diffusion 1.x/2.x checkpoint (scheduler_config.json).
_SD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading",
}

_SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}


def _sd_unet(cross_attention_dim: int, attention_head_dim, linear_projection: bool) -> dict:
    return {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
        "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": attention_head_dim, "use_linear_projection": linear_projection,
    }


def vae_scale_factor(vae_config) -> int:
    """Pixels per latent along a side: ``patch_size`` of a PatchAutoencoder, else
    2 ** (levels - 1) of an AutoencoderKL."""
    if vae_config.get("patch_size"):
        return int(vae_config["patch_size"])
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


@dataclass(frozen=True)
class BasePreset:
    """One scale of MGFR: the frozen prior's configs, resolution and adapter defaults."""

    name: str
    description: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    adapter: dict[str, Any]
    embedder: str = "dlib"
    asset: str | None = None   # asset resolver name of the real weights folder (None: random)
    # MGFRPipeline call defaults for this scale (strength, guidance ...); the rest come
    # from mgfr.pipeline.CALL_DEFAULTS.
    inference: dict[str, Any] = field(default_factory=dict)
    # the autoencoder's class: diffusers' AutoencoderKL, or mgfr.autoencoder.PatchAutoencoder
    vae_class: str = "AutoencoderKL"
    # pretrain-prior refuses to call a prior done when the VAE's round trip on held-out
    # faces is below this PSNR (dB); 0 turns the gate off.
    vae_gate_psnr: float = 0.0   # asset resolver name of the real weights folder (None: random)
    tokenizer_pad: str = "<|endoftext|>"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            "name": self.name, "description": self.description, "resolution": self.resolution,
            "unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
            "scheduler": self.scheduler, "adapter": self.adapter, "embedder": self.embedder,
            "asset": self.asset, "vae_scale_factor": self.vae_scale_factor,
            "inference": self.inference, "vae_gate_psnr": self.vae_gate_psnr})


PRESETS = Registry("MGFR base preset", sort=True, hint="or give a base folder")


def register_preset(preset: BasePreset) -> BasePreset:
    # Re-registering a name replaces it (a user may refine a built-in preset).
    return PRESETS.register(preset.name, preset, description=preset.description, overwrite=True)


register_preset(BasePreset(
    name="tiny",
    description="tiny random-init prior (64 px, latents 4x32x32) for tests and CPU runs",
    resolution=64,
    unet={
        "sample_size": 32, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 32,
        "cross_attention_dim": 64, "attention_head_dim": 8, "act_fn": "silu",
    },
    vae={
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "act_fn": "silu", "norm_num_groups": 32, "sample_size": 64, "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "projection_dim": 64, "bos_token_id": 49406,
        "eos_token_id": 49407, "pad_token_id": 49407,
    },
    scheduler=dict(_SD_SCHEDULER),
    # The tiny adapter copies the UNet encoder at full width (ControlNet practice); at this
    # size the cost does not matter and the copy lets the adapter start from the prior.
    adapter={"channel_mult": 1.0, "id_tokens": 4, "read_prompt": True},
))

register_preset(BasePreset(
    name="mini",
    description="CPU-scale MGFR (64 px, latents 16x16x16) trained here and shipped (asset mgfr-mini)",
    resolution=64,
    # No attention at the largest latent level (16x16): there it costs 4x the time of a
    # convolution-only level for no measured gain (perf/bench_mgfr_train.py).
    unet={
        "sample_size": 16, "in_channels": 16, "out_channels": 16, "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [48, 96, 128], "layers_per_block": 1, "norm_num_groups": 16,
        "cross_attention_dim": 64, "attention_head_dim": 8, "act_fn": "silu",
    },
    # A patch autoencoder (mgfr.autoencoder): 4x4 patches -> 16 channels by a linear map
    # started at the PCA of the training patches plus a residual conv net. AutoencoderKL
    # did not reach the 30 dB round-trip gate in the CPU budget (22.2 dB after 400 steps;
    # the PCA alone gives 36.3 dB on the held-out faces). 16x16 latents keep the UNet cheap.
    vae={
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "patch_size": 4,
        "hidden_channels": 96, "num_layers": 2, "scaling_factor": 1.0, "sample_size": 64,
    },
    vae_class="PatchAutoencoder",
    text_encoder={
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "projection_dim": 64, "bos_token_id": 49406,
        "eos_token_id": 49407, "pad_token_id": 49407,
    },
    scheduler=dict(_SD_SCHEDULER),
    adapter={"channel_mult": 1.0, "id_tokens": 4, "read_prompt": True},
    asset="mgfr-mini",
    inference={"strength": 0.3, "guidance_scale": 1.0, "lambda_na": 0.0, "lambda_nq": 0.5,
               "num_inference_steps": 20},
    vae_gate_psnr=30.0,
))

register_preset(BasePreset(
    name="sd21-base",
    description="Stable Diffusion 2.1-base (512 px, OpenCLIP ViT-H text encoder): the paper's prior",
    resolution=512,
    unet=_sd_unet(1024, [5, 10, 20, 20], True),
    vae=dict(_SD_VAE),
    text_encoder={
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
        "num_attention_heads": 16, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "gelu", "projection_dim": 512, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1,
    },
    scheduler=dict(_SD_SCHEDULER),
    # Half-width adapters: two full-width copies of the SD encoder would cost ~0.9x a UNet
    # call on top of it; at half width each costs ~1/4 of a full copy (docs/mgfr.md).
    adapter={"channel_mult": 0.5, "id_tokens": 4, "read_prompt": True},
    asset="sd21-base",
    tokenizer_pad="!",
))

register_preset(BasePreset(
    name="sd21",
    description="Stable Diffusion 2.1 (768 px, v-prediction, OpenCLIP ViT-H text encoder)",
    resolution=768,
    unet={**_sd_unet(1024, [5, 10, 20, 20], True), "sample_size": 96},
    vae={**_SD_VAE, "sample_size": 768},
    text_encoder=dict(PRESETS.get("sd21-base").text_encoder),
    scheduler={**_SD_SCHEDULER, "prediction_type": "v_prediction"},
    adapter={"channel_mult": 0.5, "id_tokens": 4, "read_prompt": True},
    asset="sd21",
    tokenizer_pad="!",
))

register_preset(BasePreset(
    name="sd15",
    description="Stable Diffusion 1.5 (512 px, CLIP ViT-L/14 text encoder)",
    resolution=512,
    unet=_sd_unet(768, 8, False),
    vae=dict(_SD_VAE),
    text_encoder={
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1,
    },
    scheduler=dict(_SD_SCHEDULER),
    adapter={"channel_mult": 0.5, "id_tokens": 4, "read_prompt": True},
    asset="sd15",
))


def available_presets() -> list[str]:
    return PRESETS.names()


def get_preset(name: str) -> BasePreset:
    """The preset called ``name``; an unknown name gets a did-you-mean error."""
    return PRESETS.get(name)
