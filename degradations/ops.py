"""The degradation operations, on float tensors ``(B, C, H, W)`` in [0, 1], CPU or CUDA.

Each operation takes a batch and the list of its per-sample record entries. This is the
one implementation behind both front ends: the per-image API runs it with a batch of one.

Why the choices:
* Blur is a correlation with reflect-101 borders (OpenCV's ``filter2D`` default), computed
  by FFT: the 41x41 kernels of the face presets make direct convolution ~1,700 MACs per
  pixel, while one FFT pass costs the same for any kernel. On CPU the FFT runs in
  ``scipy.fft`` (pocketfft, several times faster than torch's CPU FFT here, and
  deterministic for any worker count); on CUDA in ``torch.fft``.
* Noise fields are drawn on the CPU from the record's own seed, so a record gives the same
  noise on any device and in any batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.fft as sfft
import torch
import torch.nn.functional as F

from .jpeg import jpeg_libjpeg, jpeg_torch
from .kernels import make_kernel

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.dtype} array of shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)[None]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to the 8-bit grid (still float)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, 3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    v = torch.round(x.detach().clamp(0, 1) * 255.0).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(v.transpose(1, 2, 0))


def reflect101_index(n: int, pad: int) -> np.ndarray:
    """Indices of ``arange(-pad, n + pad)`` reflected about the edges without repeating
    them (OpenCV BORDER_REFLECT_101), valid for any ``pad`` even when ``pad >= n``."""
    i = np.arange(-pad, n + pad)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def _fft_correlate(xp: torch.Tensor, kernels: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Correlate padded ``xp (n, C, H+2r, W+2r)`` with ``kernels (n, k, k)``; keep ``out_hw``."""
    n, c, hp, wp = xp.shape
    k = kernels.shape[-1]
    h, w = out_hw
    # Linear (not circular) correlation needs an FFT size >= padded size; the valid output
    # rows [k-1, k-1+h) never touch wrapped values.
    fh, fw = sfft.next_fast_len(hp, real=True), sfft.next_fast_len(wp, real=True)
    flipped = np.ascontiguousarray(kernels[:, ::-1, ::-1])  # correlation = convolution with the flip
    if xp.device.type == "cpu" and not xp.requires_grad:
        workers = max(1, torch.get_num_threads())
        kf = sfft.rfft(flipped.astype(np.float32), n=fw, axis=-1, workers=workers)
        kf = sfft.fft(kf, n=fh, axis=-2, workers=workers)
        spec = sfft.rfft2(xp.numpy(), s=(fh, fw), workers=workers)
        spec *= kf[:, None]
        y = sfft.irfft2(spec, s=(fh, fw), workers=workers)
        return torch.from_numpy(np.ascontiguousarray(y[..., k - 1:k - 1 + h, k - 1:k - 1 + w]))
    # CUDA, or a CPU tensor that needs gradients: torch.fft (differentiable).
    kt = torch.as_tensor(flipped, dtype=xp.dtype, device=xp.device)
    spec = torch.fft.rfft2(xp, s=(fh, fw)) * torch.fft.rfft2(kt, s=(fh, fw))[:, None]
    y = torch.fft.irfft2(spec, s=(fh, fw))
    return y[..., k - 1:k - 1 + h, k - 1:k - 1 + w]


def filter2d(x: torch.Tensor, kernels: list[np.ndarray]) -> torch.Tensor:
    """Correlate each sample with its own odd-sized kernel, reflect-101 borders."""
    n, c, h, w = x.shape
    if len(kernels) != n:
        raise ValueError(f"filter2d got {len(kernels)} kernels for a batch of {n}")
    k = max(kk.shape[0] for kk in kernels)
    # Smaller kernels are zero-padded to the largest: the same filter, one batched FFT.
    stack = np.zeros((n, k, k), dtype=np.float64)
    for i, kk in enumerate(kernels):
        o = (k - kk.shape[0]) // 2
        stack[i, o:o + kk.shape[0], o:o + kk.shape[1]] = kk
    r = k // 2
    ih = torch.as_tensor(reflect101_index(h, r), device=x.device)
    iw = torch.as_tensor(reflect101_index(w, r), device=x.device)
    xp = x.index_select(2, ih).index_select(3, iw)
    return _fft_correlate(xp.contiguous(), stack, (h, w)).to(x.device)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR`` /
    ``INTER_CUBIC`` semantics; ``area`` is torch's adaptive average pooling)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    if mode in ("area", "nearest"):
        return F.interpolate(x, size=size, mode=mode)
    raise ValueError(f"unknown resize mode {mode!r}")


def gaussian_noise_field(seed: int, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """The noise of a record: N(0, sigma/255) from PCG64(seed), float32, on the CPU."""
    z = np.random.Generator(np.random.PCG64(int(seed))).standard_normal(shape, dtype=np.float32)
    return torch.from_numpy(z).mul_(float(sigma) / 255.0)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = GRAY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def poisson_noise(x: torch.Tensor, seed: int, scale: float, gray: bool) -> torch.Tensor:
    """Shot noise of one image ``(1, C, H, W)`` as Real-ESRGAN's ``generate_poisson_noise``:
    the photon count scale is the number of distinct 8-bit levels, rounded up to a power
    of two; the noise is ``(Poisson(img * vals) / vals - img) * scale``."""
    img = quantize(x).detach().cpu().double()
    if gray:
        img = to_gray(img)
    arr = img.numpy()
    vals = float(2 ** np.ceil(np.log2(max(len(np.unique(arr)), 1))))
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    out = rng.poisson(arr * vals) / vals
    return torch.from_numpy(((out - arr) * scale).astype(np.float32))


# --- per-op batch functions: (x, entries, jpeg_backend) -> x -------------------------------

def _op_filter(x, entries, backend):
    return filter2d(x, [make_kernel(**e["kernel"]) for e in entries])


def _op_resize(x, entries, backend):
    modes = {e["mode"] for e in entries}
    sizes = {tuple(e["size"]) for e in entries}
    if len(modes) == 1 and len(sizes) == 1:
        return resize(x, sizes.pop(), modes.pop())
    return [resize(x[i:i + 1], e["size"], e["mode"]) for i, e in enumerate(entries)]


def _op_noise(x, entries, backend):
    fields = []
    for i, e in enumerate(entries):
        c, h, w = x.shape[1:]
        if e["type"] == "gaussian":
            f = gaussian_noise_field(e["seed"], (1 if e["gray"] else c, h, w), e["sigma"])
        elif e["type"] == "poisson":
            f = poisson_noise(x[i:i + 1], e["seed"], e["scale"], e["gray"])[0]
        else:
            raise ValueError(f"unknown noise type {e['type']!r}")
        fields.append(f.expand(c, h, w))
    noise = torch.stack(fields).to(device=x.device, dtype=x.dtype)
    return (x + noise).clamp(0, 1)


def _op_jpeg(x, entries, backend):
    qualities = [int(e["quality"]) for e in entries]
    if backend == "torch":
        return jpeg_torch(x.clamp(0, 1), qualities)
    out = []
    for i, q in enumerate(qualities):
        u8 = to_uint8(x[i])
        dec = jpeg_libjpeg(u8, q)
        out.append(torch.from_numpy(np.ascontiguousarray(dec.transpose(2, 0, 1))).float().div_(255.0))
    return torch.stack(out).to(x.device)


def _op_color_shift(x, entries, backend):
    shift = torch.tensor([e["shift"] for e in entries], dtype=x.dtype, device=x.device) / 255.0
    return (x + shift[:, :, None, None]).clamp(0, 1)


def _op_gray(x, entries, backend):
    return to_gray(x).expand_as(x).contiguous()


def _op_color_jitter(x, entries, backend):
    import torchvision.transforms.functional as TF
    out = []
    for i, e in enumerate(entries):
        img = x[i].clamp(0, 1)
        for name in e["order"]:
            img = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                   "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}[name](img, e[name])
        out.append(img)
    return torch.stack(out)


OPS: dict[str, Callable] = {
    "blur": _op_filter, "sinc": _op_filter, "motion": _op_filter,
    "resize": _op_resize, "noise": _op_noise, "jpeg": _op_jpeg,
    "color_shift": _op_color_shift, "gray": _op_gray, "color_jitter": _op_color_jitter,
}
