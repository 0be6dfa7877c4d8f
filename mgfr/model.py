"""``MGFRModel``: the dual-control adapter applied to a frozen ``UNet2DConditionModel``.

    base = mgfr.base.load_base("tiny")
    model = MGFRModel.from_base(base)                       # untrained: == frozen UNet
    eps = model(noisy, t, encode_prompts(base, prompts), lq_latents, ref_latents, id_embeds)

Training stages (``trainable_parameters(stage)``): stage 1 trains the LCA alone (no
references are given, so the RCA never runs); stage 2 trains what the reference branch
adds (RCA, RLF, identity projection, exchange links) with the LCA kept as stage 1 left it.
The UNet, VAE, text encoder and face recogniser are never trained.

Adapter folders (``save_adapters``) hold ``config.json`` + ``diffusion_pytorch_model.safetensors``
(diffusers' own layout, so ``DualControlAdapter.from_pretrained`` reads them too) and
``mgfr_adapters.json``: the base (preset name or prior folder), stage, identity embedder
name and dimension, training step; and a ``README.md`` model card whose YAML front matter
the Hugging Face Hub reads (``mgfr.hub``), so the folder uploads as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .adapters import AdapterConditions, DualControlAdapter

ADAPTERS_FILE = "mgfr_adapters.json"
STAGES = (1, 2)


class MGFRModel(nn.Module):
    """A frozen UNet steered by a :class:`~mgfr.adapters.DualControlAdapter`."""

    def __init__(self, unet, adapter: DualControlAdapter):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self.unet.requires_grad_(False)
        self.base = None  # the BaseModels when built by from_base / load_adapters
        self.info: dict[str, Any] = {}

    @classmethod
    def from_base(cls, base, **adapter_options) -> MGFRModel:
        """A new (untrained) model on ``base``; the preset's adapter options are defaults."""
        from .presets import get_preset

        preset = get_preset(base.preset)
        opts = {**preset.adapter, "id_embedder": preset.embedder, **adapter_options}
        adapter = DualControlAdapter.from_unet(base.unet, **opts)
        _move(adapter, base.device, base.dtype)
        model = cls(base.unet, adapter)
        model.base = base
        return model

    # ---- forward ---------------------------------------------------------------------------
    def prepare(self, lq_latents, ref_latents=None, id_embeds=None, ref_mask=None
                ) -> AdapterConditions:
        return self.adapter.prepare(lq_latents, ref_latents, id_embeds, ref_mask)

    def step(self, noisy_latents: torch.Tensor, timesteps, encoder_hidden_states: torch.Tensor,
             cond: AdapterConditions, *, num_branches: int = 1, lca_scale: float = 1.0,
             rca_scale: float = 1.0) -> torch.Tensor:
        """One denoising step for ``num_branches`` guidance branches, whose prompts are
        stacked branch-major in ``encoder_hidden_states`` (K*B rows) and go through the UNet
        as one batch. A text-blind adapter runs once on the B latents and its residuals are
        shared by the branches; an adapter that reads the prompt runs on all K*B rows."""
        k = int(num_branches)
        if encoder_hidden_states.shape[0] != k * noisy_latents.shape[0]:
            raise ValueError(f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows; "
                             f"expected {k} branches x {noisy_latents.shape[0]} latents")
        if self.adapter.config.read_prompt:
            x = torch.cat([noisy_latents] * k) if k > 1 else noisy_latents
            t = torch.as_tensor(timesteps, device=x.device)
            if t.numel() > 1 and k > 1:
                t = torch.cat([t.reshape(-1)] * k)
            down, mid = self.adapter(x, t, cond.tile(k), encoder_hidden_states=encoder_hidden_states,
                                     lca_scale=lca_scale, rca_scale=rca_scale)
            return self.unet(x, t, encoder_hidden_states, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]
        down, mid = self.adapter(noisy_latents, timesteps, cond, lca_scale=lca_scale,
                                 rca_scale=rca_scale)
        if k > 1:
            noisy_latents = torch.cat([noisy_latents] * k)
            down = tuple(torch.cat([d] * k) for d in down)
            mid = torch.cat([mid] * k)
            t = torch.as_tensor(timesteps, device=noisy_latents.device)
            timesteps = torch.cat([t.reshape(-1).expand(noisy_latents.shape[0] // k)] * k) \
                if t.numel() > 1 else t
        return self.unet(noisy_latents, timesteps, encoder_hidden_states,
                         down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]

    def forward(self, noisy_latents: torch.Tensor, timesteps, encoder_hidden_states: torch.Tensor,
                lq_latents: torch.Tensor, ref_latents: torch.Tensor | None = None,
                id_embeds: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The noise prediction. ``ref_latents``: (B, R, C, h, w) VAE latents of the
        references or None; ``id_embeds``: (B, R, D) identity embeddings or None;
        ``ref_mask``: (B, R) with 0 for padding references, or None."""
        cond = self.prepare(lq_latents, ref_latents, id_embeds, ref_mask)
        return self.step(noisy_latents, timesteps, encoder_hidden_states, cond)

    # ---- training ------------------------------------------------------------------------
    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        """Mark stage ``stage``'s parameters trainable (and every other one frozen); return them.

        Stage 1: the LCA. Stage 2: RCA, RLF, identity projection, exchange links."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.unet.requires_grad_(False)
        self.adapter.requires_grad_(False)
        if stage == 1:
            params = list(self.adapter.lca_parameters())
        else:
            if not self.adapter.config.enable_rca:
                raise ValueError("stage 2 needs an adapter with the RCA (enable_rca=True)")
            params = list(self.adapter.rca_parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- files ---------------------------------------------------------------------------
    def save_adapters(self, directory: str | os.PathLike, **info) -> Path:
        """Write the adapter (safetensors), ``mgfr_adapters.json`` and a ``README.md`` model
        card (``mgfr.hub``: Hub front matter) atomically.

        ``info`` adds fields to the JSON (``base``, ``stage``, ``step``, ``metrics``,
        ``training_data_sha256``, ...); the identity embedder name and dimension come from
        the adapter config."""
        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.info)
        if self.base is not None:
            meta.setdefault("base", self.base.base or self.base.preset)
        meta.update(info)
        meta["id_embedder"] = self.adapter.config.id_embedder
        meta["id_embed_dim"] = int(self.adapter.config.id_embed_dim)
        adapter = self.adapter
        if int(meta.get("stage", 0)) == 1 and adapter.config.enable_rca:
            # Stage 1 trains the LCA alone: its folder holds the LCA alone (stage 2 adds a
            # fresh reference branch, see ``with_reference_branch``).
            adapter = lca_only(adapter)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            adapter.save_pretrained(tmp, safe_serialization=True)
            (tmp / ADAPTERS_FILE).write_text(json.dumps(meta, indent=2, default=str))
            from .hub import CARD_FILE, model_card
            stage = meta.get("stage")
            name = "mgfr-adapters" + (f"-stage{int(stage)}" if stage is not None else "")
            (tmp / CARD_FILE).write_text(model_card(meta, name), encoding="utf-8")
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.info = meta
        return out

    def load_adapter_weights(self, directory: str | os.PathLike) -> None:
        """Load saved adapter weights into this model in place (training resume)."""
        loaded = read_adapter(directory)
        if loaded.config != self.adapter.config:
            diff = sorted(k for k in set(loaded.config) | set(self.adapter.config)
                          if loaded.config.get(k) != self.adapter.config.get(k))
            raise ValueError(f"{directory}: adapter config differs from this model's in {diff}")
        self.adapter.load_state_dict(loaded.state_dict())
        self.info = read_adapters_info(directory)

    @classmethod
    def load_adapters(cls, directory: str | os.PathLike, *, base=None, unet=None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      embedder: str | None = None) -> MGFRModel:
        """A model from an adapter folder. The base comes from ``base`` (a BaseModels, a
        preset name or a folder), else ``unet``, else the ``base`` in ``mgfr_adapters.json``.
        ``embedder``: the identity embedder the caller will use; another one than the
        adapter was trained with is refused."""
        from .base import BaseModels, load_base

        info = read_adapters_info(directory)
        adapter = read_adapter(directory)
        if info.get("id_embedder") and info["id_embedder"] != adapter.config.id_embedder:
            raise ValueError(f"{directory}: {ADAPTERS_FILE} names embedder "
                             f"{info['id_embedder']!r} but the adapter config "
                             f"{adapter.config.id_embedder!r}")
        if embedder is not None:
            import faces

            faces.check_same_embedder(adapter.config.id_embedder, embedder)
        base_models = None
        if unet is None:
            if isinstance(base, BaseModels):
                base_models = base
            else:
                name = base or info.get("base")
                if not name:
                    raise ValueError(f"{directory}: {ADAPTERS_FILE} names no base; pass base=")
                base_models = load_base(str(name), device=device, dtype=dtype)
            unet = base_models.unet
        _move(adapter, unet.device, unet.dtype)
        model = cls(unet, adapter)
        model.base = base_models
        model.info = info
        return model


def lca_only(adapter: DualControlAdapter) -> DualControlAdapter:
    """A copy of ``adapter`` without the reference branch (``enable_rca=False``)."""
    cfg = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
    out = DualControlAdapter(**{**cfg, "enable_rca": False})
    keep = out.state_dict().keys()
    out.load_state_dict({k: v for k, v in adapter.state_dict().items() if k in keep})
    return out.to(next(adapter.parameters()).device)


def with_reference_branch(adapter: DualControlAdapter, unet=None, **options) -> DualControlAdapter:
    """``adapter`` with a reference branch added (RCA, RLF, identity projection, links),
    newly initialised (from ``unet`` when the adapter copies the UNet), the LCA kept.
    ``options``: adapter fields for the new branch (identity embedder and dimension)."""
    if adapter.config.enable_rca and not options:
        return adapter
    cfg = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
    out = DualControlAdapter(**{**cfg, **options, "enable_rca": True})
    if unet is not None and float(out.config.channel_mult) == 1.0:
        out.copy_unet_weights(unet)
    lca = {k: v for k, v in adapter.state_dict().items() if k.startswith(("lca.", "lca_out.",
                                                                           "lca_mid_out."))}
    missing, unexpected = out.load_state_dict(lca, strict=False)
    if unexpected or any(k.startswith(("lca.", "lca_out.", "lca_mid_out.")) for k in missing):
        raise ValueError("the LCA of the stage-1 adapter does not fit the new adapter")
    return out.to(next(adapter.parameters()).device)


def _move(module, device, dtype) -> None:
    module.to(device)
    if dtype != torch.float32:  # diffusers warns on any .to(dtype); only cast when needed
        module.to(dtype=dtype)


def read_adapters_info(directory: str | os.PathLike) -> dict:
    f = Path(directory) / ADAPTERS_FILE
    if not f.is_file():
        return {}
    try:
        info = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not a readable JSON file ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{f}: must hold a JSON object")
    return info


def read_adapter(directory: str | os.PathLike) -> DualControlAdapter:
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"adapter folder {d} does not exist")
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: no config.json (not an MGFR adapter folder)")
    if not (d / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"{d}: no diffusion_pytorch_model.safetensors (adapters are "
                                f"read from safetensors only)")
    from .checked import check_fits_weights, read_config, safetensors_shapes

    # Numbers bounded and the config checked against the weights' shapes before any
    # allocation (an edited config.json must not allocate gigabytes).
    config = read_config(d / "config.json")
    shapes = safetensors_shapes(d, "diffusion_pytorch_model.safetensors")
    check_fits_weights(lambda: DualControlAdapter.from_config(config), shapes, str(d))
    try:
        return DualControlAdapter.from_pretrained(d, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{d}: cannot load the adapter ({first})") from None


# ---- helpers for text and images ----------------------------------------------------------
@torch.no_grad()
def encode_prompts(base, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states (N, 77, dim) of ``prompts`` (padded/truncated to 77)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tok = base.tokenizer(list(prompts), padding="max_length", truncation=True,
                         max_length=base.tokenizer.model_max_length, return_tensors="pt")
    ids = tok.input_ids.to(base.text_encoder.device)
    return base.text_encoder(ids)[0].to(base.dtype)


def images_to_tensor(images, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (H, W, 3) / (B, H, W, 3) arrays or tensors, a list of them, or float (B, 3, H, W)
    tensors in [-1, 1] -> float (B, 3, H, W) in [-1, 1]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        shapes = {tuple(np.asarray(i).shape) for i in images}
        if len(shapes) != 1:
            raise ValueError(f"images differ in size: {sorted(shapes)}")
        images = np.stack([np.asarray(i) for i in images])
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected images as arrays or tensors, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3); got "
                             f"{tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(dtype=torch.float32) / 127.5 - 1.0
    else:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1]; got "
                             f"{tuple(images.shape)}")
        x = images
    return x.to(device=device, dtype=dtype)


@torch.no_grad()
def encode_images(base, images, *, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled VAE latents (B, 4, H/f, W/f) of images (see ``images_to_tensor`` for forms).

    ``sample=False`` takes the posterior mean (deterministic; what conditions use)."""
    x = images_to_tensor(images, device=base.vae.device, dtype=base.vae.dtype)
    f = base.vae_scale_factor
    if x.shape[-1] % f or x.shape[-2] % f:
        raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of the VAE "
                         f"factor {f}")
    dist = base.vae.encode(x).latent_dist
    z = dist.sample(generator) if sample else dist.mean
    return z * base.vae.config.scaling_factor
