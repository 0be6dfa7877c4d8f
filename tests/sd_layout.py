"""Write a folder in the exact layout of a Stable Diffusion checkpoint on the Hugging Face Hub
(``stabilityai/stable-diffusion-2-1-base``, or its 768-v sibling ``stable-diffusion-2-1``),
with small random weights.

The files and the config keys are those of the real repository; the scheduler config
holds the real values. The model configs keep the real keys and block layout with reduced
widths and depth (marked ``REDUCED`` below) so the models build and run in seconds:

* ``model_index.json``: ``StableDiffusionPipeline``, as on the Hub;
* ``scheduler/scheduler_config.json``: ``PNDMScheduler`` of SD 2.1-base (epsilon) or
  ``DDIMScheduler`` of SD 2.1 (v_prediction), real values;
* ``tokenizer/``: the CLIP BPE tokenizer (built offline from the ``clip-bpe-vocab`` asset)
  with SD 2.x's "!" padding, written by ``CLIPTokenizer.save_pretrained``;
* ``text_encoder/``, ``vae/``, ``unet/``: ``config.json`` + safetensors weights;
* ``feature_extractor/preprocessor_config.json`` as on the Hub (MGFR does not read it).

``hf_cache=True`` writes the Hugging Face cache layout instead:
``ROOT/models--stabilityai--stable-diffusion-2-1-base/{refs/main, snapshots/<rev>/...,
blobs/<sha256>}``, the snapshot's files being symbolic links into ``blobs/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

#: the real model_index.json of stabilityai/stable-diffusion-2-1-base
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

#: the real scheduler/scheduler_config.json of stable-diffusion-2-1-base
SCHEDULER_21_BASE = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}

#: the real scheduler/scheduler_config.json of stable-diffusion-2-1 (768 px, v)
SCHEDULER_21_V = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}


def unet_config(sample_size: int = 64) -> dict:
    """SD 2.1-base's unet/config.json; REDUCED: block_out_channels (real 320, 640, 1280,
    1280), layers_per_block (real 2), norm_num_groups (real 32), cross_attention_dim
    (real 1024). attention_head_dim keeps the real head counts 5/10/20/20."""
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0",
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [40, 80, 160, 160],                       # REDUCED
        "center_input_sample": False, "cross_attention_dim": 32,        # REDUCED
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True,
        "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,        # REDUCED
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 8,  # REDUCED
        "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"],
        "use_linear_projection": True,
    }


def vae_config(sample_size: int = 512) -> dict:
    """SD 2.1-base's vae/config.json (no scaling_factor key: diffusers' default 0.18215);
    REDUCED: block_out_channels (real 128, 256, 512, 512), layers_per_block (real 2)."""
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.8.0", "act_fn": "silu",
        "block_out_channels": [32, 32, 32, 32],                          # REDUCED
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
        "latent_channels": 4, "layers_per_block": 1,                     # REDUCED
        "norm_num_groups": 32, "out_channels": 3, "sample_size": sample_size,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_encoder_config() -> dict:
    """SD 2.1-base's text_encoder/config.json; REDUCED: hidden_size (real 1024),
    intermediate_size (4096), num_attention_heads (16), num_hidden_layers (23),
    projection_dim (512)."""
    return {
        "_name_or_path": "hf-models/stable-diffusion-v2-768x768/text_encoder",
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
        "dropout": 0.0, "eos_token_id": 2, "hidden_act": "gelu",
        "hidden_size": 32, "initializer_factor": 1.0, "initializer_range": 0.02,  # REDUCED
        "intermediate_size": 64, "layer_norm_eps": 1e-05,                         # REDUCED
        "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 4, "num_hidden_layers": 2,                         # REDUCED
        "pad_token_id": 1, "projection_dim": 32, "torch_dtype": "float32",        # REDUCED
        "transformers_version": "4.25.0.dev0", "vocab_size": 49408,
    }


FEATURE_EXTRACTOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_sd21_folder(out, *, v_prediction: bool = False, sample_size: int | None = None,
                      seed: int = 0, hf_cache: bool = False) -> Path:
    """Write the folder (see the module doc) and return the path to pass as ``--base``:
    ``out`` itself, or with ``hf_cache`` the ``models--...`` folder under ``out``.

    ``v_prediction``: the SD 2.1 768-v layout (DDIM scheduler with ``v_prediction``, UNet
    ``sample_size`` 96); else SD 2.1-base (PNDM, epsilon, 64). ``sample_size`` overrides
    the UNet's (latent side; the face side is 8x it) to keep a test's images small."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mgfr.base import build_tokenizer

    out = Path(out)
    side = sample_size or (96 if v_prediction else 64)
    folder = out
    if hf_cache:
        name = "stable-diffusion-2-1" if v_prediction else "stable-diffusion-2-1-base"
        repo = out / f"models--stabilityai--{name}"
        folder = out / ".staging"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    parts = {"unet": (UNet2DConditionModel, unet_config(side)),
             "vae": (AutoencoderKL, vae_config(side * 8))}
    for sub, (cls, cfg) in parts.items():
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        model.save_pretrained(folder / sub, safe_serialization=True)
        _write_json(folder / sub / "config.json", cfg)   # the Hub's config, key for key
    te_cfg = text_encoder_config()
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_cfg.items()
                                         if k not in ("architectures", "_name_or_path")}))
    te.save_pretrained(folder / "text_encoder", safe_serialization=True)
    _write_json(folder / "text_encoder" / "config.json", te_cfg)
    build_tokenizer("sd21-base").save_pretrained(folder / "tokenizer")
    _write_json(folder / "scheduler" / "scheduler_config.json",
                SCHEDULER_21_V if v_prediction else SCHEDULER_21_BASE)
    index = dict(MODEL_INDEX)
    if v_prediction:
        index["scheduler"] = ["diffusers", "DDIMScheduler"]
    _write_json(folder / "model_index.json", index)
    _write_json(folder / "feature_extractor" / "preprocessor_config.json", FEATURE_EXTRACTOR)
    if not hf_cache:
        return out
    # the Hub cache: content-addressed blobs, a snapshot of links, refs/main naming it
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rev = hashlib.sha1("".join(str(p.relative_to(folder)) for p in files).encode()).hexdigest()
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for p in files:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snap / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.rmtree(folder)
    return repo
