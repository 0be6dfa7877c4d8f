"""``PatchAutoencoder``: the ``mini`` preset's autoencoder, a drop-in for ``AutoencoderKL``.

Every ``f x f`` patch of the image (``f = patch_size``) becomes ``latent_channels`` numbers
by a linear map plus a small residual convolutional network on the patch grid; the decoder
mirrors it. The linear maps start as the PCA of the training faces' patches (closed form,
``init_from_pca``), and the residual networks start at zero, so training starts from the
best linear autoencoder and only improves on it.

Why not ``AutoencoderKL`` at this scale (measured on the Reface-HQ build of
``identities_512``, 64 px, held-out identities; docs/mgfr-training.md): the KL autoencoder
(factor 4, 16 or 32 channels) reached 22.2 dB round-trip PSNR after 400 steps and about
+2 dB per 4x more steps, far from the 30 dB a restorer in its latent space needs within a
CPU budget; ``AutoencoderTiny`` did no better (24.6 dB at 300 steps). The PCA of 4x4
patches alone gives 36.3 dB with 16 components (29.8 with 8) on the same held-out faces.

The interface is ``AutoencoderKL``'s where MGFR uses it: ``encode(x).latent_dist`` (a
deterministic ``DiagonalGaussianDistribution``: ``mean``, ``std`` 0, ``kl()`` 0),
``decode(z).sample``, ``config.scaling_factor``, ``save_pretrained``/``from_pretrained``
(safetensors). ``mgfr.base.vae_scale_factor`` reads ``patch_size``.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(self.act(x))))


def _residual_net(cin: int, cout: int, hidden: int, layers: int) -> nn.Sequential:
    out = nn.Conv2d(hidden, cout, 3, padding=1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1),
                         *[_ResBlock(hidden) for _ in range(layers)], nn.SiLU(), out)


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Linear patch projection + residual conv refinement (see the module doc)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, latent_channels: int = 16,
                 patch_size: int = 4, hidden_channels: int = 96, num_layers: int = 2,
                 scaling_factor: float = 1.0, sample_size: int = 64):
        super().__init__()
        if patch_size < 1 or latent_channels < 1 or hidden_channels < 1 or num_layers < 0:
            raise ValueError("patch_size, latent_channels and hidden_channels must be >= 1 "
                             "and num_layers >= 0")
        d_in, d_out = in_channels * patch_size ** 2, out_channels * patch_size ** 2
        self.unshuffle = nn.PixelUnshuffle(patch_size)
        self.shuffle = nn.PixelShuffle(patch_size)
        self.enc_linear = nn.Conv2d(d_in, latent_channels, 1)
        self.enc_res = _residual_net(d_in, latent_channels, hidden_channels, num_layers)
        self.dec_linear = nn.Conv2d(latent_channels, d_out, 1)
        self.dec_res = _residual_net(latent_channels, d_out, hidden_channels, num_layers)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        f = self.config.patch_size
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of the "
                             f"patch size {f}")
        p = self.unshuffle(x)
        mean = self.enc_linear(p) + self.enc_res(p)
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1),
                                            deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = self.shuffle(self.dec_linear(z) + self.dec_res(z))
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mean, return_dict=return_dict)

    @torch.no_grad()
    def init_from_pca(self, faces: np.ndarray) -> float:
        """Set both linear maps to the PCA of the patches of ``faces`` (uint8
        (N, H, W, C)), the residual nets' outputs to zero; returns the share of patch
        variance the kept components explain."""
        if self.config.in_channels != self.config.out_channels:
            raise ValueError("PCA initialisation needs in_channels == out_channels")
        x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).double()
        p = self.unshuffle(x / 127.5 - 1)                      # (N, d, h, w)
        p = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])      # (patches, d)
        mu = p.mean(0)
        _, s, vt = torch.linalg.svd(p - mu, full_matrices=False)
        k = self.config.latent_channels
        if k > vt.shape[0]:
            raise ValueError(f"latent_channels {k} exceeds the patch dimension {vt.shape[0]}")
        w = vt[:k]                                             # (k, d)
        self.enc_linear.weight.copy_(w[:, :, None, None].to(self.enc_linear.weight))
        self.enc_linear.bias.copy_((-w @ mu).to(self.enc_linear.bias))
        self.dec_linear.weight.copy_(w.T[:, :, None, None].to(self.dec_linear.weight))
        self.dec_linear.bias.copy_(mu.to(self.dec_linear.bias))
        for net in (self.enc_res, self.dec_res):
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        var = s ** 2
        return float(var[:k].sum() / var.sum())
