"""The dual-control adapter of MGFR: LCA, RCA with RLF and identity tokens, exchange links.

The paper fixes the parts; where it is silent the choices below are ours (each is a config
field, so another choice is a config change, and docs/mgfr.md gives the reasons):

* **LCA** (LQ control adapter): a ControlNet-style encoder whose blocks mirror the frozen
  UNet's down blocks and mid block (built from the UNet config, so any SD-family UNet
  works). Input: ``conv_in(concat(z_t, z_lq))``; its own timestep embedding. With
  ``read_prompt=True`` (the presets' default) its attention blocks **read the prompt**
  through cross-attention, as ControlNet's encoder copy does: the adapters then know when
  the prompt asks for "low quality" (negative-quality training samples), and their
  residuals differ per guidance branch, so they run once per branch. With
  ``read_prompt=False`` (text-blind, the first design) the cross-attention is removed and
  the residuals are computed once per step and shared by every guidance branch (cheaper;
  docs/mgfr.md gives the measured cost).
* **RLF** (reference latent fusion): the frozen VAE encodes each reference; a trainable
  ResBlock follows; its output is added to a trainable 3x3 conv of z_lq. Several references:
  the ResBlock outputs are **averaged** (masked mean) before the addition.
* **RCA** (reference control adapter): a second encoder like the LCA, fed
  ``conv_in(concat(z_t, rlf))``. The **identity embedding** enters through cross-attention
  in the RCA's attention blocks: an IP-Adapter-FaceID style MLP projects each reference's
  embedding into ``id_tokens`` tokens; several references **concatenate** their tokens
  (masked). With ``read_prompt`` the RCA attends to the prompt's tokens followed by the
  identity tokens (one cross-attention over both; the identity tokens have the text
  width); text-blind, the identity tokens are its only cross-attention.
* **Exchange links**: after every encoder level, zero-initialised 1x1 convs add each
  adapter's features into the other (computed from the features before the exchange).
* **Outputs**: one zero-initialised 1x1 conv per UNet skip feature and one for the mid
  block, per adapter, mapping adapter width to UNet width; the LCA and RCA outputs are summed
  and added to the frozen UNet's skips (``down_block_additional_residuals``), as ControlNet.
  Zero output convs make an untrained adapter add exact zeros, so the model then predicts
  exactly what the frozen UNet predicts.
* **Width**: ``channel_mult`` scales every adapter channel count; ``1.0`` is a full copy of
  the UNet encoder (and ``copy_unet_weights`` then initialises the adapter from the UNet,
  ControlNet practice); ``0.5`` quarters the adapter FLOPs, which is what keeps an
  ``sd21-base`` MGFR step within 1.8x of a bare UNet step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block
from torch import nn

#: identity embedders and their dimensions (faces.get_embedder names)
EMBEDDER_DIMS = {"dlib": 128, "arcface-antelopev2": 512, "arcface-buffalo_l": 512}

#: UNet config keys the adapter mirrors (``DualControlAdapter.from_unet`` copies them)
UNET_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
             "norm_num_groups", "norm_eps", "act_fn", "attention_head_dim",
             "num_attention_heads", "use_linear_projection", "flip_sin_to_cos", "freq_shift",
             "downsample_padding", "transformer_layers_per_block", "mid_block_type")


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _groups(channels: int, groups: int) -> int:
    # Scaled widths may not divide by the UNet's group count; take the largest divisor.
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _as_tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


class ControlEncoder(nn.Module):
    """One ControlNet-style encoder: conv_in, timestep embedding, down blocks, mid block.

    Its blocks mirror the UNet's (types, layers, downsampling) at ``channels`` widths, so
    it yields one feature per UNet skip connection, at the same resolutions.
    """

    def __init__(self, *, in_channels: int, channels: tuple[int, ...], down_block_types,
                 layers_per_block: int, norm_num_groups: int, norm_eps: float, act_fn: str,
                 heads: tuple[int, ...], use_linear_projection: bool, flip_sin_to_cos: bool,
                 freq_shift: int, downsample_padding: int, transformer_layers, mid_block_type,
                 cross_attention_dim: int | None):
        super().__init__()
        self.has_cross_attention = cross_attention_dim is not None
        # diffusers' attention blocks always build a cross-attention; a text-free encoder
        # builds them with a placeholder width and then removes it (self-attention + FF stay).
        block_context = cross_attention_dim or channels[0]
        time_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, act_fn=act_fn)
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        n = len(down_block_types)
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            g = _groups(out_ch, norm_num_groups)
            g = min(g, _groups(in_ch, norm_num_groups))
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=in_ch, out_channels=out_ch,
                temb_channels=time_dim, add_downsample=i < n - 1, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, resnet_groups=g, cross_attention_dim=block_context,
                num_attention_heads=heads[i], attention_head_dim=out_ch // heads[i],
                downsample_padding=downsample_padding,
                use_linear_projection=use_linear_projection,
                transformer_layers_per_block=transformer_layers[i]))
        self.mid_block = get_mid_block(
            mid_block_type or "UNetMidBlock2DCrossAttn", temb_channels=time_dim,
            in_channels=channels[-1], resnet_eps=norm_eps, resnet_act_fn=act_fn,
            resnet_groups=_groups(channels[-1], norm_num_groups),
            cross_attention_dim=block_context, num_attention_heads=heads[-1],
            attention_head_dim=channels[-1] // heads[-1],
            use_linear_projection=use_linear_projection,
            transformer_layers_per_block=transformer_layers[-1])
        if not self.has_cross_attention:
            from diffusers.models.attention import BasicTransformerBlock

            for m in self.modules():
                if isinstance(m, BasicTransformerBlock):
                    m.attn2 = None  # forward skips the cross-attention when attn2 is None
                    m.norm2 = None

    def run_block(self, i: int, h: torch.Tensor, temb: torch.Tensor,
                  context: torch.Tensor | None, context_mask: torch.Tensor | None):
        block = self.down_blocks[i]
        if getattr(block, "has_cross_attention", False) and context is not None:
            return block(h, temb, encoder_hidden_states=context,
                         encoder_attention_mask=context_mask)
        return block(h, temb)

    def run_mid(self, h, temb, context, context_mask):
        if getattr(self.mid_block, "has_cross_attention", False) and context is not None:
            return self.mid_block(h, temb, encoder_hidden_states=context,
                                  encoder_attention_mask=context_mask)
        return self.mid_block(h, temb)


class ReferenceLatentFusion(nn.Module):
    """RLF: ResBlock(z_ref) averaged over references, plus a 3x3 conv of z_lq."""

    def __init__(self, latent_channels: int, channels: int, groups: int, eps: float):
        super().__init__()
        self.ref_in = nn.Conv2d(latent_channels, channels, kernel_size=3, padding=1)
        self.ref_block = ResnetBlock2D(in_channels=channels, out_channels=channels,
                                       temb_channels=None, groups=_groups(channels, groups),
                                       eps=eps)
        self.lq_conv = nn.Conv2d(latent_channels, channels, kernel_size=3, padding=1)

    def forward(self, ref_latents: torch.Tensor, lq_latents: torch.Tensor,
                ref_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, r = ref_latents.shape[:2]
        f = self.ref_block(self.ref_in(ref_latents.flatten(0, 1)), None)
        f = f.unflatten(0, (b, r))
        if ref_mask is None:
            f = f.mean(dim=1)
        else:
            w = ref_mask.to(f.dtype)[:, :, None, None, None]
            f = (f * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return f + self.lq_conv(lq_latents)


class IdentityProjection(nn.Module):
    """IP-Adapter-FaceID style: id embedding (D) -> ``num_tokens`` tokens of ``token_dim``."""

    def __init__(self, id_dim: int, token_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.proj = nn.Sequential(nn.Linear(id_dim, id_dim * 2), nn.GELU(),
                                  nn.Linear(id_dim * 2, token_dim * num_tokens))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        # (B, R, D) -> (B, R * N, token_dim): every reference contributes its own tokens.
        b, r = id_embeds.shape[:2]
        x = self.proj(id_embeds).reshape(b, r * self.num_tokens, self.token_dim)
        return self.norm(x)


@dataclass
class AdapterConditions:
    """Step-invariant inputs of the adapter, computed once per image (not per step)."""

    lq_latents: torch.Tensor
    rlf: torch.Tensor | None = None          # (B, rlf_channels, h, w) or None (no reference)
    id_tokens: torch.Tensor | None = None    # (B, R * N, token_dim)
    id_mask: torch.Tensor | None = None      # (B, R * N) 1 = attend, or None

    def repeat(self, n: int) -> AdapterConditions:
        def rep(t):
            return None if t is None else t.repeat_interleave(n, dim=0)
        return AdapterConditions(rep(self.lq_latents), rep(self.rlf), rep(self.id_tokens),
                                 rep(self.id_mask))

    def tile(self, k: int) -> AdapterConditions:
        """The conditions stacked ``k`` times, branch-major (the order of guidance branches)."""
        if k == 1:
            return self

        def tile(t):
            return None if t is None else torch.cat([t] * k)
        return AdapterConditions(tile(self.lq_latents), tile(self.rlf), tile(self.id_tokens),
                                 tile(self.id_mask))


class DualControlAdapter(ModelMixin, ConfigMixin):
    """LCA + RCA (with RLF and identity tokens) + exchange links; see the module doc.

    Build it from a UNet with :meth:`from_unet`; the constructor arguments are the config.
    ``forward`` returns ``(down_residuals, mid_residual)`` for
    ``UNet2DConditionModel(..., down_block_additional_residuals=..., mid_block_additional_residual=...)``.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, *, in_channels: int = 4, down_block_types=("CrossAttnDownBlock2D",
                 "CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64, 64),
                 layers_per_block: int = 1, norm_num_groups: int = 32, norm_eps: float = 1e-5,
                 act_fn: str = "silu", attention_head_dim=8, num_attention_heads=None,
                 use_linear_projection: bool = False, flip_sin_to_cos: bool = True,
                 freq_shift: int = 0, downsample_padding: int = 1,
                 transformer_layers_per_block=1, mid_block_type: str = "UNetMidBlock2DCrossAttn",
                 channel_mult: float = 1.0, enable_rca: bool = True, rlf_channels: int = 64,
                 id_embedder: str = "dlib", id_embed_dim: int = 128, id_tokens: int = 4,
                 id_token_dim: int = 64, exchange_links: bool = True,
                 read_prompt: bool = False, cross_attention_dim: int | None = None):
        super().__init__()
        if read_prompt:
            if not cross_attention_dim:
                raise ValueError("read_prompt=True needs cross_attention_dim (the text width)")
            if int(id_token_dim) != int(cross_attention_dim):
                raise ValueError(f"read_prompt=True: id_token_dim ({id_token_dim}) must equal "
                                 f"the text width cross_attention_dim ({cross_attention_dim})")
        n = len(down_block_types)
        if float(channel_mult) <= 0:
            raise ValueError(f"channel_mult must be > 0, got {channel_mult}")
        if id_embedder in EMBEDDER_DIMS and EMBEDDER_DIMS[id_embedder] != int(id_embed_dim):
            raise ValueError(f"id_embed_dim={id_embed_dim} does not match embedder "
                             f"{id_embedder!r} ({EMBEDDER_DIMS[id_embedder]}-d)")
        heads = _as_tuple(num_attention_heads or attention_head_dim, n)
        self.unet_channels = tuple(block_out_channels)
        # Round scaled widths to a multiple of the head count and of 8 so attention heads and
        # group norms still divide them.
        chans = []
        for c, h in zip(block_out_channels, heads, strict=False):
            step = max(8, h)
            chans.append(max(step, int(round(c * channel_mult / step)) * step))
        self.channels = tuple(chans)
        common = dict(channels=self.channels, down_block_types=tuple(down_block_types),
                      layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                      norm_eps=norm_eps, act_fn=act_fn, heads=heads,
                      use_linear_projection=use_linear_projection,
                      flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift,
                      downsample_padding=downsample_padding,
                      transformer_layers=_as_tuple(transformer_layers_per_block, n),
                      mid_block_type=mid_block_type)
        self.lca = ControlEncoder(in_channels=2 * in_channels,
                                  cross_attention_dim=cross_attention_dim if read_prompt else None,
                                  **common)
        self.lca_out = self._output_convs()
        self.lca_mid_out = zero_module(nn.Conv2d(self.channels[-1], block_out_channels[-1], 1))
        if enable_rca:
            self.rlf = ReferenceLatentFusion(in_channels, rlf_channels, norm_num_groups, norm_eps)
            self.id_proj = IdentityProjection(id_embed_dim, id_token_dim, id_tokens)
            self.rca = ControlEncoder(in_channels=in_channels + rlf_channels,
                                      cross_attention_dim=id_token_dim, **common)
            self.rca_out = self._output_convs()
            self.rca_mid_out = zero_module(nn.Conv2d(self.channels[-1], block_out_channels[-1], 1))
            if exchange_links:
                self.link_l2r = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.channels)
                self.link_r2l = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.channels)

    def _skip_channels(self) -> list[tuple[int, int]]:
        """(adapter channels, UNet channels) of every skip feature, in UNet order."""
        n = len(self.channels)
        lpb = self.config.layers_per_block
        out = [(self.channels[0], self.unet_channels[0])]
        for i in range(n):
            out += [(self.channels[i], self.unet_channels[i])] * lpb
            if i < n - 1:
                out.append((self.channels[i], self.unet_channels[i]))
        return out

    def _output_convs(self) -> nn.ModuleList:
        return nn.ModuleList(zero_module(nn.Conv2d(a, u, 1)) for a, u in self._skip_channels())

    @classmethod
    def from_unet(cls, unet, *, copy_unet_weights: bool | None = None, **options):
        """An adapter shaped for ``unet`` (any ``UNet2DConditionModel``); ``options`` override
        the adapter fields (channel_mult, id_embedder, ...). With ``channel_mult == 1``
        the encoders start as copies of the UNet encoder unless ``copy_unet_weights=False``."""
        cfg = {k: unet.config[k] for k in UNET_KEYS if k in unet.config}
        if options.get("read_prompt"):
            text_dim = int(unet.config["cross_attention_dim"])
            options.setdefault("cross_attention_dim", text_dim)
            options.setdefault("id_token_dim", text_dim)
        if options.get("id_embedder") and "id_embed_dim" not in options:
            if options["id_embedder"] not in EMBEDDER_DIMS:
                raise ValueError(f"unknown identity embedder {options['id_embedder']!r}; "
                                 f"choose from {sorted(EMBEDDER_DIMS)}")
            options["id_embed_dim"] = EMBEDDER_DIMS[options["id_embedder"]]
        adapter = cls(**cfg, **options)
        if copy_unet_weights is None:
            copy_unet_weights = float(adapter.config.channel_mult) == 1.0
        if copy_unet_weights:
            adapter.copy_unet_weights(unet)
        return adapter

    @torch.no_grad()
    def copy_unet_weights(self, unet) -> int:
        """Initialise both encoders from the UNet encoder where shapes match (ControlNet
        practice); conv_in copies the UNet's z_t filters and keeps its own for the condition.
        Output convs and exchange links stay zero. Returns the number of tensors copied."""
        src = unet.state_dict()
        copied = 0
        for enc in [self.lca] + ([self.rca] if self.config.enable_rca else []):
            for name, p in enc.state_dict().items():
                s = src.get(name)
                if s is None:
                    continue
                if s.shape == p.shape:
                    p.copy_(s)
                    copied += 1
                elif name == "conv_in.weight" and s.shape[1] <= p.shape[1] and s.shape[0] == p.shape[0]:
                    p[:, :s.shape[1]].copy_(s)
                    copied += 1
        return copied

    # ---- step-invariant part ---------------------------------------------------------
    def prepare(self, lq_latents: torch.Tensor, ref_latents: torch.Tensor | None = None,
                id_embeds: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None
                ) -> AdapterConditions:
        """RLF and identity tokens: everything that does not change across denoising steps."""
        if lq_latents.ndim != 4 or lq_latents.shape[1] != self.config.in_channels:
            raise ValueError(f"lq_latents must be (B, {self.config.in_channels}, h, w); got "
                             f"{tuple(lq_latents.shape)}")
        if ref_latents is None or ref_latents.shape[1] == 0 or not self.config.enable_rca:
            return AdapterConditions(lq_latents)
        b, r = ref_latents.shape[:2]
        if ref_latents.ndim != 5 or ref_latents.shape[0] != lq_latents.shape[0] \
                or ref_latents.shape[2:] != lq_latents.shape[1:]:
            raise ValueError(f"ref_latents must be (B, R, C, h, w) matching lq_latents "
                             f"{tuple(lq_latents.shape)}; got {tuple(ref_latents.shape)}")
        if ref_mask is not None and tuple(ref_mask.shape) != (b, r):
            raise ValueError(f"ref_mask must be (B, R) = {(b, r)}; got {tuple(ref_mask.shape)}")
        rlf = self.rlf(ref_latents, lq_latents, ref_mask)
        d = self.config.id_embed_dim
        if id_embeds is None:
            # No recogniser output: a zero embedding, so only the projection bias speaks.
            id_embeds = ref_latents.new_zeros(b, r, d)
        if id_embeds.ndim != 3 or tuple(id_embeds.shape[:2]) != (b, r) or id_embeds.shape[2] != d:
            raise ValueError(f"id_embeds must be (B, R, {d}) for embedder "
                             f"{self.config.id_embedder!r}; got {tuple(id_embeds.shape)} (an "
                             f"embedding from another face recogniser?)")
        tokens = self.id_proj(id_embeds.to(rlf.dtype))
        id_mask = None
        if ref_mask is not None:
            id_mask = ref_mask.to(rlf.dtype).repeat_interleave(self.config.id_tokens, dim=1)
        return AdapterConditions(lq_latents, rlf, tokens, id_mask)

    # ---- per-step part -----------------------------------------------------------------
    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                cond: AdapterConditions, *, encoder_hidden_states: torch.Tensor | None = None,
                lca_scale: float = 1.0, rca_scale: float = 1.0):
        """``(down_residuals, mid_residual)`` for the frozen UNet at this step.
        ``encoder_hidden_states``: the prompt's text states (B, L, D); needed when the
        adapter reads the prompt (``read_prompt``), ignored otherwise."""
        b = noisy_latents.shape[0]
        text = None
        if self.config.read_prompt:
            if encoder_hidden_states is None:
                raise ValueError("this adapter reads the prompt (read_prompt=True): pass "
                                 "encoder_hidden_states")
            if encoder_hidden_states.shape[0] != b:
                raise ValueError(f"encoder_hidden_states has {encoder_hidden_states.shape[0]} "
                                 f"rows for {b} latents")
            text = encoder_hidden_states.to(noisy_latents.dtype)
        if cond.lq_latents.shape != noisy_latents.shape:
            raise ValueError(f"lq_latents {tuple(cond.lq_latents.shape)} must match the noisy "
                             f"latents {tuple(noisy_latents.shape)}")
        timesteps = torch.as_tensor(timesteps, device=noisy_latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(b) if timesteps.numel() == 1 else timesteps
        dtype = noisy_latents.dtype
        use_rca = cond.rlf is not None
        lca = self.lca
        temb_l = lca.time_embedding(lca.time_proj(timesteps).to(dtype))
        hl = lca.conv_in(torch.cat([noisy_latents, cond.lq_latents.to(dtype)], dim=1))
        skips_l = [hl]
        if use_rca:
            rca = self.rca
            temb_r = rca.time_embedding(rca.time_proj(timesteps).to(dtype))
            hr = rca.conv_in(torch.cat([noisy_latents, cond.rlf.to(dtype)], dim=1))
            ctx, ctx_mask = cond.id_tokens.to(dtype), cond.id_mask
            if text is not None:
                # The prompt's tokens, then the identity tokens.
                if ctx_mask is not None:
                    ctx_mask = torch.cat([ctx_mask.new_ones(b, text.shape[1]), ctx_mask], dim=1)
                ctx = torch.cat([text, ctx], dim=1)
            skips_r = [hr]
        for i in range(len(lca.down_blocks)):
            hl, res_l = lca.run_block(i, hl, temb_l, text, None)
            skips_l += list(res_l)
            if use_rca:
                hr, res_r = rca.run_block(i, hr, temb_r, ctx, ctx_mask)
                skips_r += list(res_r)
                if self.config.exchange_links:
                    hl, hr = hl + self.link_r2l[i](hr), hr + self.link_l2r[i](hl)
        hl = lca.run_mid(hl, temb_l, text, None)
        down = [lca_scale * conv(s) for conv, s in zip(self.lca_out, skips_l, strict=False)]
        mid = lca_scale * self.lca_mid_out(hl)
        if use_rca:
            hr = rca.run_mid(hr, temb_r, ctx, ctx_mask)
            down = [d + rca_scale * conv(s) for d, conv, s in zip(down, self.rca_out, skips_r, strict=False)]
            mid = mid + rca_scale * self.rca_mid_out(hr)
        return tuple(down), mid

    # ---- parameter groups ----------------------------------------------------------------
    def lca_parameters(self):
        yield from self.lca.parameters()
        yield from self.lca_out.parameters()
        yield from self.lca_mid_out.parameters()

    def rca_parameters(self):
        """RCA, RLF, identity projection and exchange links (the stage-2 additions)."""
        if not self.config.enable_rca:
            return
        for m in (self.rca, self.rca_out, self.rca_mid_out, self.rlf, self.id_proj):
            yield from m.parameters()
        if self.config.exchange_links:
            yield from self.link_l2r.parameters()
            yield from self.link_r2l.parameters()

