"""Blur kernels: pure functions from parameters to a normalised ``(k, k)`` float64 array.

The definitions follow the degradation model used by the face and super-resolution
training recipes of the field (the ``basicsr`` kernels behind GFPGAN, CodeFormer, DiffBIR
and Real-ESRGAN): a kernel is evaluated on the integer grid ``-(k//2) .. k//2`` with
``x`` the column offset and ``y`` the row offset, then divided by its sum. They are written
here from the published formulas because ``basicsr`` no longer installs with current torch.

Every kernel is built from its record alone (``make_kernel(**record)``), so a stored
record rebuilds the exact array.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                "plateau_aniso", "sinc", "motion")


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size!r}")
    return int(size)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets of a ``size`` x ``size`` kernel, centre at 0."""
    size = _check_size(size)
    ax = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy


def inverse_covariance(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Inverse of ``R diag(sigma_x^2, sigma_y^2) R^T``, ``R`` the rotation by ``theta``."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got sigma_x={sigma_x}, sigma_y={sigma_y}")
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T
    return np.linalg.inv(cov)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    xx, yy = grid(size)
    inv = inverse_covariance(sigma_x, sigma_y, theta)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalise(k: np.ndarray) -> np.ndarray:
    total = k.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("kernel sums to zero or is not finite; check its parameters")
    return k / total


def gaussian(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Bivariate Gaussian; isotropic when ``sigma_y`` is None or equal to ``sigma_x``."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian(size: int, sigma_x: float, sigma_y: float, theta: float,
                         beta: float) -> np.ndarray:
    """``exp(-0.5 * q**beta)``: beta < 1 gives heavy tails, beta > 1 a flatter top."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta)))


def plateau(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """``1 / (1 + q**beta)``: a flat top with polynomial fall-off."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(1.0 / (np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0))


def sinc(size: int, omega: float) -> np.ndarray:
    """Circular low-pass (ideal 2-D filter with cutoff ``omega`` rad/pixel): ringing.

    ``omega * J1(omega * r) / (2 pi r)`` with its limit ``omega^2 / (4 pi)`` at ``r = 0``.
    """
    if not 0 < omega <= math.pi:
        raise ValueError(f"sinc cutoff omega must be in (0, pi], got {omega}")
    xx, yy = grid(size)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * special.j1(omega * r) / (2 * math.pi * r)
    k[size // 2, size // 2] = omega ** 2 / (4 * math.pi)
    return _normalise(k)


def motion(size: int, length: float, angle: float) -> np.ndarray:
    """Linear motion blur: a centred segment of ``length`` pixels at ``angle`` radians.

    The segment is rasterised with bilinear splatting of densely spaced points, so short
    and oblique segments keep their exact length and centroid instead of staircasing.
    """
    size = _check_size(size)
    if length < 0:
        raise ValueError(f"motion length must be >= 0, got {length}")
    length = min(float(length), size - 1.0)
    k = np.zeros((size, size), dtype=np.float64)
    n = max(2, math.ceil(length * 8) + 1)
    t = np.linspace(-length / 2, length / 2, n)
    xs = size // 2 + t * math.cos(angle)
    ys = size // 2 - t * math.sin(angle)  # image rows grow downwards
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(k, (yi, xi), w)
    return _normalise(k)


def make_kernel(type: str, size: int, sigma_x: float | None = None, sigma_y: float | None = None,
                theta: float = 0.0, beta: float | None = None, omega: float | None = None,
                length: float | None = None, angle: float | None = None) -> np.ndarray:
    """Build a kernel from its record (the dict ``sample`` stores under ``"kernel"``)."""
    if type in ("iso", "aniso"):
        return gaussian(size, sigma_x, sigma_y, theta)
    if type in ("generalized_iso", "generalized_aniso"):
        return generalized_gaussian(size, sigma_x, sigma_y, theta, beta)
    if type in ("plateau_iso", "plateau_aniso"):
        return plateau(size, sigma_x, sigma_y, theta, beta)
    if type == "sinc":
        return sinc(size, omega)
    if type == "motion":
        return motion(size, length, angle)
    raise ValueError(f"unknown kernel type {type!r}; known: {', '.join(KERNEL_TYPES)}")
