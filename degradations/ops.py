"""The degradation operations, on float tensors ``(B, C, H, W)`` in [0, 1], CPU or CUDA.

Each operation takes a batch and the list of its per-sample record entries. This is the
one implementation behind both front ends: the per-image API runs it with a batch of one.
Operations that have a faster CPU form dispatch on the tensor: CPU tensors that need no
gradient go through OpenCV/NumPy, CUDA tensors (and CPU tensors with autograd) through
torch. Both forms compute the same formula (tested against each other).

Why the choices:
* Blur is a correlation with reflect-101 borders (OpenCV's ``filter2D`` default), computed
  by FFT: the 41x41 kernels of the face presets make direct convolution ~1,700 MACs per
  pixel, while one FFT pass costs the same for any kernel. On CPU the transform is
  OpenCV's real DFT (about twice as fast as pocketfft or torch's CPU FFT at 576x576, and
  deterministic); on CUDA ``torch.fft``.
* Resizes use OpenCV's SIMD resize on CPU (same half-pixel formula as torch's
  ``interpolate``, ~20x faster at one thread).
* Noise fields are drawn on the CPU from the record's own seed, so a record gives the same
  noise on any device and in any batch.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .jpeg import jpeg_bgr, jpeg_libjpeg, jpeg_torch
from .kernels import make_kernel

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY
_TV_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, used by its colour jitter


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.dtype} array of shape {arr.shape}")
    # NumPy, not torch: one pass, and no OpenMP threads for the caller's thread setting.
    return torch.from_numpy(np.divide(arr.transpose(2, 0, 1), np.float32(255.0), dtype=np.float32))[None]


# ``k / 255`` in float32 for every 8-bit level k: the same values as dividing (tested for
# all 256); a table look-up (``cv2.LUT``) is cheaper than a division per pixel.
LEVELS = (np.arange(256, dtype=np.float32) / np.float32(255.0)).reshape(1, 256)


def _to_levels(plane: np.ndarray) -> np.ndarray:
    """A float plane in any range -> ``uint8`` ``round(clip(plane, 0, 1) * 255)``, rounding
    half to even as ``np.round`` (OpenCV's saturating conversion; tested at every level)."""
    return cv2.convertScaleAbs(np.clip(plane, 0, 1), alpha=255.0)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to the 8-bit grid (still float)."""
    y = x.clamp(0, 1)
    if y.requires_grad:  # straight-through: exact rounding forward, identity gradient
        return y + (torch.round(y * 255.0) / 255.0 - y).detach()
    return y.mul_(255.0).round_().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, 3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    v = x.detach().cpu().numpy().transpose(1, 2, 0)
    return np.round(np.clip(v, 0, 1) * np.float32(255.0)).astype(np.uint8)


def reflect101_index(n: int, pad: int) -> np.ndarray:
    """Indices of ``arange(-pad, n + pad)`` reflected about the edges without repeating
    them (OpenCV BORDER_REFLECT_101), valid for any ``pad`` even when ``pad >= n``."""
    i = np.arange(-pad, n + pad)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def _real_spectrum_multiplier(spec: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Expand the CCS-packed DFT of a point-symmetric kernel centred at the origin (a real
    spectrum: its imaginary slots hold ~0) so that an elementwise product with an image's
    CCS spectrum multiplies every complex coefficient by it: each imaginary slot gets the
    value of its real slot. Layout as OpenCV packs real 2-D transforms (CCS). ``inplace``
    overwrites ``spec`` (every slot written is an imaginary one, every slot read a real
    one, so the order of the copies does not matter)."""
    m, n = spec.shape
    mult = spec if inplace else spec.copy()
    half_n = (n - 1) // 2  # columns 1..2*half_n hold (Re, Im) pairs of the inner frequencies
    mult[:, 2:2 * half_n + 1:2] = spec[:, 1:2 * half_n:2]
    half_m = (m - 1) // 2  # column 0 (and column n-1 when n is even) pack (Re, Im) down rows
    for col in ((0, n - 1) if n % 2 == 0 else (0,)):
        mult[2:2 * half_m + 1:2, col] = spec[1:2 * half_m:2, col]
    return mult


def _cv2_correlate(x: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """Correlate ``x (n, C, H, W)`` float32 with one kernel per sample, by OpenCV's DFT.

    OpenCV's real DFT (packed CCS spectra) is about twice as fast as pocketfft or torch's
    CPU FFT at these sizes and is deterministic for any thread count. Every kernel of the
    presets is point-symmetric (k(x, y) = k(-x, -y)); centred at the origin its spectrum
    is real, so the product is a real elementwise scaling (with the 1/(MN) of the inverse
    folded in) instead of a complex multiplication. Other kernels take the general path.
    """
    _, c, h, w = x.shape
    out = np.empty_like(x)
    work: dict = {}  # DFT-sized buffers, reused across planes: fresh pages are costly
    for i, kern in enumerate(kernels):
        k = kern.shape[0]
        r = k // 2
        # Linear correlation needs a transform at least as large as the padded image; the
        # valid rows never see the circular wrap.
        fh, fw = cv2.getOptimalDFTSize(h + 2 * r), cv2.getOptimalDFTSize(w + 2 * r)
        if work.get("shape") != (fh, fw):
            work = {"shape": (fh, fw), **{b: np.empty((fh, fw), np.float32)
                                          for b in ("kernel", "spec_k", "padded", "spec", "y")}}
        kp = work["kernel"]
        kp.fill(0.0)
        symmetric = np.allclose(kern, kern[::-1, ::-1], rtol=0, atol=1e-12)
        if symmetric:
            # centre tap at (0, 0), negative offsets wrapped to the far ends: the four
            # quadrants written in place (what np.roll of the corner-placed kernel gives,
            # without a full-size temporary and copy)
            scaled = (kern / (fh * fw)).astype(np.float32)
            kp[:k - r, :k - r] = scaled[r:, r:]
            kp[:k - r, fw - r:] = scaled[r:, :r]
            kp[fh - r:, :k - r] = scaled[:r, r:]
            kp[fh - r:, fw - r:] = scaled[:r, :r]
            mult = _real_spectrum_multiplier(cv2.dft(kp, dst=work["spec_k"]), inplace=True)
            y0 = r
        else:
            kp[:k, :k] = kern[::-1, ::-1]  # correlation = convolution with the flipped kernel
            cv2.dft(kp, dst=work["spec_k"])  # (nonzeroRows hints make OpenCV slower here)
            y0 = 2 * r
        for ch in range(c):
            cv2.copyMakeBorder(x[i, ch], r, fh - h - r, r, fw - w - r, cv2.BORDER_REFLECT_101,
                               dst=work["padded"])
            cv2.dft(work["padded"], dst=work["spec"])
            if symmetric:
                cv2.multiply(work["spec"], mult, dst=work["spec"])
                cv2.idft(work["spec"], dst=work["y"], flags=cv2.DFT_REAL_OUTPUT)
            else:
                cv2.mulSpectrums(work["spec"], work["spec_k"], 0, c=work["spec"])
                cv2.idft(work["spec"], dst=work["y"], flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
            out[i, ch] = work["y"][y0:y0 + h, y0:y0 + w]
    return out


def _torch_correlate(x: torch.Tensor, kernels: list[np.ndarray]) -> torch.Tensor:
    """The same correlation with ``torch.fft`` (CUDA, or CPU tensors that need gradients)."""
    n, _, h, w = x.shape
    k = max(kk.shape[0] for kk in kernels)
    # Smaller kernels are zero-padded to the largest: the same filter, one batched FFT.
    stack = np.zeros((n, k, k), dtype=np.float64)
    for i, kk in enumerate(kernels):
        o = (k - kk.shape[0]) // 2
        stack[i, o:o + kk.shape[0], o:o + kk.shape[1]] = kk[::-1, ::-1]
    r = k // 2
    if r < min(h, w):
        xp = F.pad(x, (r, r, r, r), mode="reflect")  # torch "reflect" is reflect-101
    else:  # tiny images: reflect repeatedly, as OpenCV does
        ih = torch.as_tensor(reflect101_index(h, r), device=x.device)
        iw = torch.as_tensor(reflect101_index(w, r), device=x.device)
        xp = x.index_select(2, ih).index_select(3, iw)
    fh, fw = cv2.getOptimalDFTSize(h + 2 * r), cv2.getOptimalDFTSize(w + 2 * r)
    kt = torch.as_tensor(stack, dtype=x.dtype, device=x.device)
    spec = torch.fft.rfft2(xp, s=(fh, fw)) * torch.fft.rfft2(kt, s=(fh, fw))[:, None]
    y = torch.fft.irfft2(spec, s=(fh, fw))
    return y[..., k - 1:k - 1 + h, k - 1:k - 1 + w]


def filter2d(x: torch.Tensor, kernels: list[np.ndarray]) -> torch.Tensor:
    """Correlate each sample with its own odd-sized kernel, reflect-101 borders
    (``cv2.filter2D`` semantics), computed by FFT."""
    if len(kernels) != x.shape[0]:
        raise ValueError(f"filter2d got {len(kernels)} kernels for a batch of {x.shape[0]}")
    if x.device.type == "cpu" and not x.requires_grad and x.dtype == torch.float32:
        return torch.from_numpy(_cv2_correlate(x.detach().contiguous().numpy(), kernels))
    return _torch_correlate(x, kernels)


_CV2_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR`` /
    ``INTER_CUBIC`` semantics, which torch's ``bilinear``/``bicubic`` share; ``area`` is
    torch's adaptive average pooling, ``nearest`` picks ``floor(i * in / out)``)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode in _CV2_INTERP and x.device.type == "cpu" and not x.requires_grad:
        # Same formula as torch's, but OpenCV's SIMD resize is ~20x faster on CPU.
        n, c = x.shape[:2]
        planes = x.detach().reshape(n * c, *x.shape[-2:])
        out = np.empty((n * c, *size), dtype=np.float32)
        for i in range(n * c):
            out[i] = cv2.resize(planes[i].numpy(), (size[1], size[0]), interpolation=_CV2_INTERP[mode])
        return torch.from_numpy(out).reshape(n, c, *size).to(x.dtype)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    if mode in ("area", "nearest"):
        return F.interpolate(x, size=size, mode=mode)
    raise ValueError(f"unknown resize mode {mode!r}")


def gaussian_noise_field(seed: int, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """The noise of a record: N(0, sigma/255) from PCG64(seed), float32, on the CPU."""
    z = np.random.Generator(np.random.PCG64(int(seed))).standard_normal(shape, dtype=np.float32)
    z *= np.float32(float(sigma) / 255.0)
    return torch.from_numpy(z)


def to_gray(x: torch.Tensor, weights=GRAY_WEIGHTS) -> torch.Tensor:
    r, g, b = weights
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def poisson_noise(x: torch.Tensor, seed: int, scale: float, gray: bool) -> torch.Tensor:
    """Shot noise of one image ``(1, C, H, W)`` as Real-ESRGAN's ``generate_poisson_noise``:
    the photon count scale is the number of distinct 8-bit levels, rounded up to a power
    of two; the noise is ``(Poisson(img * vals) / vals - img) * scale``."""
    img = quantize(x).detach().cpu().double()
    if gray:
        # Back on the 8-bit grid after the gray mix, as Real-ESRGAN rounds after its
        # cv2 conversion: the float mix has tens of thousands of distinct levels, which
        # would make `vals` 2^16 and the noise ~20x weaker than the reference.
        img = torch.clamp(torch.round(to_gray(img) * 255.0), 0, 255) / 255.0
    arr = img.numpy()
    vals = float(2 ** np.ceil(np.log2(max(len(np.unique(arr)), 1))))
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    out = rng.poisson(arr * vals) / vals
    return torch.from_numpy(((out - arr) * scale).astype(np.float32))


# --- per-op batch functions: (x, entries, jpeg_backend) -> x -------------------------------

def _op_filter(x, entries, backend):
    return filter2d(x, [make_kernel(**e["kernel"]) for e in entries])


def resize_many(xs: list[torch.Tensor], size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize samples of possibly different sizes (each ``(1, C, h, w)``) to one ``size``,
    stacked into a single ``(n, C, H, W)`` batch."""
    size = (int(size[0]), int(size[1]))
    x0 = xs[0]
    if mode in _CV2_INTERP and x0.device.type == "cpu" and not any(x.requires_grad for x in xs):
        c = x0.shape[1]
        out = np.empty((len(xs), c, *size), dtype=np.float32)
        for n, x in enumerate(xs):
            planes = x.detach()[0]
            for ch in range(c):
                if tuple(x.shape[-2:]) == size:
                    out[n, ch] = planes[ch].numpy()
                else:
                    cv2.resize(planes[ch].numpy(), (size[1], size[0]), dst=out[n, ch],
                               interpolation=_CV2_INTERP[mode])
        return torch.from_numpy(out)
    if len({tuple(x.shape[-2:]) for x in xs}) == 1:
        out = resize(torch.cat(xs) if len(xs) > 1 else xs[0], size, mode)
        return out.clone() if out is xs[0] else out  # never hand back the caller's tensor
    return torch.cat([resize(x, size, mode) for x in xs])


def _op_noise(x, entries, backend):
    c, h, w = x.shape[1:]
    fields = []
    for i, e in enumerate(entries):
        if e["type"] == "gaussian":
            f = gaussian_noise_field(e["seed"], (1 if e["gray"] else c, h, w), e["sigma"])
        elif e["type"] == "poisson":
            f = poisson_noise(x[i:i + 1], e["seed"], e["scale"], e["gray"])[0]
        else:
            raise ValueError(f"unknown noise type {e['type']!r}")
        fields.append(f)
    if x.device.type == "cpu" and not x.requires_grad and x.dtype == torch.float32:
        xn = x.detach().numpy()
        out = np.empty(xn.shape, np.float32)
        for i, f in enumerate(fields):  # NumPy into one new buffer: no temporaries, no OpenMP
            np.add(xn[i], f.numpy(), out=out[i])
        np.clip(out, 0, 1, out=out)
        return torch.from_numpy(out)
    noise = torch.stack([f.expand(c, h, w) for f in fields]).to(device=x.device, dtype=x.dtype)
    return (x + noise).clamp_(0, 1)


def _op_jpeg(x, entries, backend):
    qualities = [int(e["quality"]) for e in entries]
    if backend == "torch":
        return jpeg_torch(x.clamp(0, 1), qualities)
    out = np.empty((len(qualities), 3, *x.shape[-2:]), dtype=np.float32)
    if x.device.type == "cpu" and not x.requires_grad and x.dtype == torch.float32:
        # jpeg_libjpeg's steps on planes: 8-bit BGR straight from the float planes and
        # back through the level table, without HWC transposes and channel flips.
        xn = x.detach().numpy()
        for i, q in enumerate(qualities):
            bgr = cv2.merge([_to_levels(xn[i, c]) for c in (2, 1, 0)])
            dec = cv2.split(jpeg_bgr(bgr, q))
            for c in range(3):
                cv2.LUT(dec[2 - c], LEVELS, dst=out[i, c])
        return torch.from_numpy(out)
    for i, q in enumerate(qualities):
        dec = jpeg_libjpeg(to_uint8(x[i]), q)
        np.divide(dec.transpose(2, 0, 1), np.float32(255.0), out=out[i], dtype=np.float32)
    return torch.from_numpy(out).to(x.device)


def _op_color_shift(x, entries, backend):
    shift = torch.tensor([e["shift"] for e in entries], dtype=x.dtype, device=x.device) / 255.0
    return (x + shift[:, :, None, None]).clamp_(0, 1)


def _op_gray(x, entries, backend):
    return to_gray(x).expand_as(x).contiguous()


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of ``x (n, 3, H, W)`` in [0, 1] by ``delta (n,)`` turns.

    Same result as ``torchvision.transforms.functional.adjust_hue`` (within float
    rounding), written with the value/chroma form of HSV -> RGB: a hue rotation keeps each
    pixel's max and min channel, so three piecewise-linear ramps of the new hue rebuild it
    in a handful of passes instead of a full RGB -> HSV -> RGB round trip.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    vmax, vmin = x.amax(dim=1), x.amin(dim=1)
    chroma = vmax - vmin
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(vmax == r, torch.remainder((g - b) / safe, 6.0),
                    torch.where(vmax == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.remainder(h + 6.0 * delta.to(x.dtype).view(-1, 1, 1), 6.0)
    out = []
    for n_ in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(h + n_, 6.0)
        out.append(vmax - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.to(a.dtype).view(-1, 1, 1, 1)
    return torch.lerp(b, a, ratio).clamp_(0, 1)


def _jitter_cpu(img: np.ndarray, e: dict) -> np.ndarray:
    """One sample's colour jitter in OpenCV, in place on ``img`` (HWC float32 in [0, 1]):
    the torch version's formulas, with OpenCV's float HSV conversion for the hue. Every
    step writes into existing buffers: fresh image-sized arrays cost more in page faults
    than the arithmetic."""
    w = np.asarray([_TV_GRAY], np.float32)
    gray = np.empty(img.shape[:2], np.float32)
    tmp = np.empty_like(img)
    for name in e["order"]:
        f = float(e[name])
        if name == "brightness":
            cv2.multiply(img, (f, f, f, f), dst=img)
        elif name == "contrast":
            mean = float(cv2.transform(img, w, dst=gray).mean())
            cv2.addWeighted(img, f, img, 0.0, (1 - f) * mean, dst=img)
        elif name == "saturation":
            cv2.cvtColor(cv2.transform(img, w, dst=gray), cv2.COLOR_GRAY2RGB, dst=tmp)
            cv2.addWeighted(img, f, tmp, 1 - f, 0.0, dst=img)
        else:
            cv2.cvtColor(img, cv2.COLOR_RGB2HSV, dst=tmp)  # H in degrees
            h = tmp[..., 0]
            h += np.float32(f * 360.0)  # |f| <= 0.5: one wrap at most
            np.subtract(h, np.float32(360.0), out=h, where=h >= 360.0)
            np.add(h, np.float32(360.0), out=h, where=h < 0.0)
            cv2.cvtColor(tmp, cv2.COLOR_HSV2RGB, dst=img)
        np.clip(img, 0, 1, out=img)
    return img


def _op_color_jitter(x, entries, backend):
    # torchvision's adjust_brightness / contrast / saturation / hue (GFPGAN's
    # color_jitter_pt). CPU: per sample in OpenCV (several times faster than one-thread
    # torch on full-size images); elsewhere vectorised over samples sharing an order.
    if x.device.type == "cpu" and not x.requires_grad and x.dtype == torch.float32:
        out = np.empty(tuple(x.shape), dtype=np.float32)
        xn = x.detach().numpy()
        for i, e in enumerate(entries):
            # cv2.merge / cv2.split interleave channels far faster than strided transposes.
            hwc = np.clip(cv2.merge([xn[i, 0], xn[i, 1], xn[i, 2]]), 0, 1)
            for ch, plane in enumerate(cv2.split(_jitter_cpu(hwc, e))):
                out[i, ch] = plane
        return torch.from_numpy(out)
    out = [None] * len(entries)
    by_order: dict[tuple, list[int]] = {}
    for i, e in enumerate(entries):
        by_order.setdefault(tuple(e["order"]), []).append(i)
    for order, idx in by_order.items():
        img = x[idx].clamp(0, 1)
        for name in order:
            f = torch.tensor([entries[i][name] for i in idx], dtype=x.dtype, device=x.device)
            if name == "brightness":
                img = (img * f.view(-1, 1, 1, 1)).clamp_(0, 1)
            elif name == "contrast":
                mean = to_gray(img, _TV_GRAY).mean(dim=(1, 2, 3), keepdim=True)
                img = _blend(img, mean.expand_as(img), f)
            elif name == "saturation":
                img = _blend(img, to_gray(img, _TV_GRAY).expand_as(img), f)
            else:
                img = adjust_hue(img, f)
        for n_, i in enumerate(idx):
            out[i] = img[n_]
    return torch.stack(out)


#: Size-preserving operations, batched over samples of one size: (x, entries, jpeg) -> x.
#: Resizes go through ``resize_many`` (samples of different sizes to one target size).
OPS: dict[str, Callable] = {
    "blur": _op_filter, "sinc": _op_filter, "motion": _op_filter,
    "noise": _op_noise, "jpeg": _op_jpeg,
    "color_shift": _op_color_shift, "gray": _op_gray, "color_jitter": _op_color_jitter,
}

KNOWN_OPS = frozenset(OPS) | {"resize", "one_of"}
