"""How real does synthetic LQ look? Statistics of LQ faces and a two-sample comparison.

Every face is compared at one aligned size (``size``, 512 by default: FFHQ crops). Per
image, :func:`image_statistics` gives a vector of interpretable statistics (the table
``STATISTICS``): blur (Laplacian variance, spectral slope), noise (Immerkaer's estimator),
JPEG blockiness on the 8x8 grid at native scale (the pixels as stored) and at output scale
(the aligned face), ringing near edges, colour (saturation, Lab cast), contrast and dynamic
range, and NIQE's natural-scene features (GGD/AGGD fits of MSCN coefficients at two
scales). :func:`compare` sets two such tables side by side: per-statistic KS tests and a
standardised Wasserstein-1 distance (the fit's objective, :data:`distance`), and a
classifier two-sample test: the cross-validated ROC AUC of a logistic regression telling
real from synthetic (0.5: indistinguishable), with a bootstrap confidence interval.

Faces come from folders of aligned crops, or from whole photos through an injected
``aligner`` (``degradations`` imports only ``reface_core``; the command line passes the
``faces`` package's detector and FFHQ alignment in). Imports of heavy libraries are local.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: name -> (what it measures, compared on a log scale)
STATISTICS: dict[str, tuple[str, bool]] = {
    "laplacian_var": ("variance of the luma Laplacian (blur: lower is blurrier)", True),
    "spectral_slope": ("slope of the log radial power spectrum, 0.02-0.45 cycles/px (blur)", False),
    "noise_sigma": ("Immerkaer's noise estimate, 0-255 units", True),
    "blockiness_native": ("8x8-grid blockiness at the stored scale (1: none)", False),
    "blockiness_output": ("8x8-grid blockiness of the aligned face (1: none)", False),
    "ringing": ("high-frequency energy 2-5 px from strong edges over flat areas", True),
    "saturation": ("mean HSV saturation, 0-1", False),
    "cast_a": ("mean Lab a* (green-red cast)", False),
    "cast_b": ("mean Lab b* (blue-yellow cast)", False),
    "contrast": ("RMS contrast: luma std / 255", False),
    "dynamic_range": ("luma 99th minus 1st percentile / 255", False),
    "nss_alpha_1": ("NIQE features: GGD shape of MSCN coefficients, full scale", False),
    "nss_sigma_1": ("NIQE features: GGD spread of MSCN coefficients, full scale", False),
    "nss_pair_alpha_1": ("NIQE features: AGGD shape of neighbour products, full scale", False),
    "nss_alpha_2": ("NIQE features: GGD shape of MSCN coefficients, half scale", False),
    "nss_sigma_2": ("NIQE features: GGD spread of MSCN coefficients, half scale", False),
    "nss_pair_alpha_2": ("NIQE features: AGGD shape of neighbour products, half scale", False),
}

DEFAULT_SIZE = 512
MIN_SIZE = 64


# --- per-image statistics --------------------------------------------------------------

def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def blockiness(gray: np.ndarray) -> float:
    """Mean absolute step across 8x8 block boundaries over the mean step inside blocks,
    horizontally and vertically averaged (1.0: no grid; JPEG blocking raises it)."""
    g = gray.astype(np.float32)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):
        n = d.shape[1]
        if n < 16:
            continue
        at = (np.arange(n) % 8) == 7  # the step between pixel 8k+7 and 8k+8
        inside = float(d[:, ~at].mean())
        ratios.append(float(d[:, at].mean()) / max(inside, 1e-3))
    return float(np.mean(ratios)) if ratios else 1.0


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer (1996) fast noise variance estimation: sigma from the |response| of the
    difference of two Laplacians, which cancels smooth image structure."""
    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = cv2.filter2D(gray.astype(np.float32), cv2.CV_32F, m, borderType=cv2.BORDER_REFLECT_101)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(r).mean() / 6.0)


_SPECTRAL_BINS = np.linspace(0.02, 0.45, 24)


@functools.lru_cache(maxsize=8)
def _radial_layout(h: int, w: int):
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    idx = np.digitize(np.hypot(fy, fx).ravel(), _SPECTRAL_BINS)
    counts = np.bincount(idx, minlength=len(_SPECTRAL_BINS) + 1)[1:len(_SPECTRAL_BINS)]
    return win, idx, counts


def spectral_slope(gray: np.ndarray) -> float:
    """Slope of log10 radially averaged power against log10 frequency (0.02-0.45 cycles per
    pixel, Hann window): natural images sit near -2, blur makes it steeper."""
    h, w = gray.shape
    win, idx, counts = _radial_layout(h, w)
    spec = np.fft.rfft2((gray - gray.mean()) * win)
    power = (spec.real ** 2 + spec.imag ** 2).ravel()
    sums = np.bincount(idx, power, minlength=len(_SPECTRAL_BINS) + 1)[1:len(_SPECTRAL_BINS)]
    f = 0.5 * (_SPECTRAL_BINS[1:] + _SPECTRAL_BINS[:-1])
    ok = counts > 0
    p = np.log10(sums[ok] / counts[ok] + 1e-6)
    return float(np.polyfit(np.log10(f[ok]), p, 1)[0])


def ringing(gray: np.ndarray) -> float:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    edges = mag >= max(float(np.percentile(mag, 95)), 1e-3)
    dist = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)
    lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=1))
    near = (dist > 2) & (dist <= 5)
    far = dist > 8
    if near.sum() < 16 or far.sum() < 16:
        return 1.0
    return float(lap[near].mean() / max(float(lap[far].mean()), 1e-2))


def _gamma_table():
    from scipy.special import gamma
    a = np.arange(0.2, 10.0, 0.001)
    ggd = gamma(1 / a) * gamma(3 / a) / gamma(2 / a) ** 2
    aggd = gamma(2 / a) ** 2 / (gamma(1 / a) * gamma(3 / a))
    return a, ggd, aggd


_TABLE = None


def _table():
    global _TABLE
    if _TABLE is None:
        _TABLE = _gamma_table()
    return _TABLE


def _ggd_fit(x: np.ndarray) -> tuple[float, float]:
    a, ggd, _ = _table()
    var = float(np.mean(x * x))
    e = float(np.mean(np.abs(x)))
    rho = var / max(e * e, 1e-12)
    return float(a[np.argmin(np.abs(ggd - rho))]), math.sqrt(var)


def _aggd_alpha(x: np.ndarray) -> float:
    a, _, aggd = _table()
    x2 = x * x
    neg = x < 0
    n_left, n_right = int(np.count_nonzero(neg)), int(np.count_nonzero(x > 0))
    if n_left == 0 or n_right == 0:
        return float(a[-1])
    s_left = float(np.sum(x2, where=neg))
    s_all = float(x2.sum())
    gl, gr = math.sqrt(s_left / n_left), math.sqrt((s_all - s_left) / n_right)
    g = gl / max(gr, 1e-12)
    r = float(np.abs(x).mean()) ** 2 / max(s_all / x.size, 1e-12)
    rn = r * (g ** 3 + 1) * (g + 1) / (g * g + 1) ** 2
    return float(a[np.argmin(np.abs(aggd - rn))])


def nss_features(gray: np.ndarray) -> list[float]:
    """NIQE's natural-scene features (MSCN GGD shape and spread, mean AGGD shape of the four
    neighbour products) at full and half scale, on the whole face."""
    out = []
    g = gray.astype(np.float32)
    for scale in (1, 2):
        if scale == 2:
            g = cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_CUBIC)
        mu = cv2.GaussianBlur(g, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE)
        var = cv2.GaussianBlur(g * g, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE) - mu * mu
        mscn = (g - mu) / (np.sqrt(np.abs(var)) + 1.0)
        alpha, sigma = _ggd_fit(mscn)
        pairs = (mscn[:, :-1] * mscn[:, 1:], mscn[:-1, :] * mscn[1:, :],
                 mscn[:-1, :-1] * mscn[1:, 1:], mscn[1:, :-1] * mscn[:-1, 1:])
        out += [alpha, sigma, float(np.mean([_aggd_alpha(p) for p in pairs]))]
    return out


def image_statistics(face: np.ndarray, native: np.ndarray | None = None) -> dict[str, float]:
    """The ``STATISTICS`` of one aligned face (``(S, S, 3)`` uint8 RGB); ``native``: the
    face's pixels at the scale they were stored (for native blockiness; default ``face``)."""
    gray = _luma(face)
    native_gray = gray if native is None else _luma(native)
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    hsv = cv2.cvtColor(face, cv2.COLOR_RGB2HSV)
    lab = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    p1, p99 = np.percentile(gray, [1, 99])
    values = [float(lap.var()), spectral_slope(gray), noise_sigma(gray), blockiness(native_gray),
              blockiness(gray), ringing(gray), float(hsv[..., 1].mean()) / 255.0,
              float(lab[..., 1].mean()) - 128.0, float(lab[..., 2].mean()) - 128.0,
              float(gray.std()) / 255.0, float(p99 - p1) / 255.0, *nss_features(gray)]
    return dict(zip(STATISTICS, values, strict=True))


# --- the faces ---------------------------------------------------------------------------

@dataclass
class LQFace:
    """One face of a set: ``face`` at the common size, ``native`` its stored-scale pixels."""
    face_id: str
    group: str          # pixel hash of its source image: duplicates and the split share it
    face: np.ndarray
    native: np.ndarray


@dataclass
class FaceSet:
    faces: list[LQFace]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    source: str = ""


#: ``aligner(image, size)`` -> [(aligned face (size, size, 3), box (x0, y0, x1, y1) in the
#: image or None when the image itself is an aligned crop)]
Aligner = Callable[[np.ndarray, int], list[tuple[np.ndarray, tuple[float, float, float, float] | None]]]


def square_crops(image: np.ndarray, size: int):
    """The aligner used without a face detector: a square image is an aligned crop."""
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"{image.shape[1]}x{image.shape[0]} is not square: not an aligned "
                         f"crop (detect and align whole photos, or drop --aligned)")
    return [(resize_face(image, size), None)]


def resize_face(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def _native_region(image: np.ndarray, box) -> np.ndarray:
    if box is None:
        return image
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    # on the 8x8 grid of the stored image, so its JPEG blocks stay where they were
    x0, y0 = max(0, int(x0) // 8 * 8), max(0, int(y0) // 8 * 8)
    x1, y1 = min(w, -(-math.ceil(x1) // 8) * 8), min(h, -(-math.ceil(y1) // 8) * 8)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return image
    return image[y0:y1, x0:x1]


def pixel_group(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()
                          + repr(image.shape).encode()).hexdigest()[:16]


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def image_files(root: str | Path, exclude: Sequence[str] = (), what: str = "folder") -> list[Path]:
    """Image files of a folder (recursive, sorted), less the ``exclude`` globs (matched on
    the path relative to ``root``). A missing or empty folder is an input error."""
    from reface_core.imageio import iter_image_files
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{what} {root}: not a folder")
    files = [p for p in iter_image_files(root) if not _excluded(p.relative_to(root).as_posix(), exclude)]
    if not files:
        raise ValueError(f"{what} {root}: no image files (empty, or all excluded)")
    return files


def split_part(group: str, holdout: float) -> str:
    """``"heldout"`` or ``"fit"``: a fixed function of a source image's pixel hash, so the
    split never changes with file names, order or the other images."""
    u = int(hashlib.sha256(f"realism-split\x1f{group}".encode()).hexdigest()[:8], 16) / 2 ** 32
    return "heldout" if u < holdout else "fit"


def load_faces(root: str | Path, size: int = DEFAULT_SIZE, *, aligner: Aligner | None = None,
               exclude: Sequence[str] = (), part: str = "all", holdout: float = 0.3,
               what: str = "LQ folder", progress: bool = False) -> FaceSet:
    """Aligned faces at ``size`` from every image under ``root``.

    Unreadable files, duplicates (same pixels as an earlier file) and photos with no face
    are listed in ``skipped``; none readable at all is an input error. ``part``: ``all``,
    or the ``fit`` / ``heldout`` side of :func:`split_part`."""
    from tqdm import tqdm

    from reface_core.imageio import ImageLoadError, load_image
    if part not in ("all", "fit", "heldout"):
        raise ValueError(f"part must be all, fit or heldout, got {part!r}")
    root = Path(root)
    files = image_files(root, exclude, what)
    aligner = aligner or square_crops
    out = FaceSet(faces=[], source=str(root))
    seen: dict[str, str] = {}
    loaded = 0
    for path in tqdm(files, desc=f"faces of {root.name}", disable=not progress, unit="img"):
        rel = path.relative_to(root).as_posix()
        try:
            image = load_image(path)
        except ImageLoadError as e:
            out.skipped.append((rel, f"not readable as an image ({e.reason})"))
            continue
        loaded += 1
        group = pixel_group(image)
        if group in seen:
            out.skipped.append((rel, f"duplicate of {seen[group]}"))
            continue
        seen[group] = rel
        if part != "all" and split_part(group, holdout) != part:
            continue
        try:
            found = aligner(image, size)
        except ValueError as e:
            out.skipped.append((rel, str(e)))
            continue
        if not found:
            out.skipped.append((rel, "no face found"))
        for k, (face, box) in enumerate(found):
            out.faces.append(LQFace(face_id=rel if box is None else f"{rel}#{k}", group=group,
                                    face=face, native=_native_region(image, box)))
    if loaded == 0:
        raise ValueError(f"{what} {root}: none of its {len(files)} image files could be read "
                         f"(first: {out.skipped[0][0]}: {out.skipped[0][1]})")
    if not out.faces:
        raise ValueError(f"{what} {root}: no faces ({len(out.skipped)} inputs skipped, e.g. "
                         f"{out.skipped[0][0]}: {out.skipped[0][1]})" if out.skipped else
                         f"{what} {root}: no faces in part {part!r}")
    return out


def load_hq_faces(roots: Iterable[str | Path], size: int = DEFAULT_SIZE, *,
                  exclude: Sequence[str] = (), part: str = "all", holdout: float = 0.3,
                  progress: bool = False) -> list[tuple[str, np.ndarray]]:
    """HQ aligned faces (square images) at ``size`` from one or more folders, as (id, face)."""
    faces: list[tuple[str, np.ndarray]] = []
    for root in roots:
        fs = load_faces(root, size, exclude=exclude, part=part, holdout=holdout,
                        what="HQ folder", progress=progress)
        faces += [(f"{Path(root).name}/{f.face_id}", f.face) for f in fs.faces]
    return faces


def synthesize(preset, hq: Sequence[tuple[str, np.ndarray]], n: int, seed: int,
               size: int = DEFAULT_SIZE, progress: bool = False) -> FaceSet:
    """``n`` synthetic LQ faces: ``preset`` applied to HQ faces taken in a seeded order
    (cycled, with new image ids, when ``n`` exceeds the HQ faces)."""
    from tqdm import tqdm

    from .pipeline import Degrader
    from .presets import get_preset
    preset = get_preset(preset)
    if not hq:
        raise ValueError("no HQ faces to degrade")
    deg = Degrader(preset)
    order = np.random.default_rng(seed).permutation(len(hq))
    faces = []
    for i in tqdm(range(n), desc=f"synthesize {preset.name}", disable=not progress, unit="img"):
        hid, image = hq[order[i % len(hq)]]
        image_id = hid if i < len(hq) else f"{hid}/{i // len(hq)}"
        lq, _ = deg(image, seed=seed, image_id=image_id)
        faces.append(LQFace(face_id=image_id, group=image_id, face=resize_face(lq, size), native=lq))
    return FaceSet(faces=faces, source=f"preset {preset.name}")


def statistics_table(faces: FaceSet | Sequence[LQFace], progress: bool = False, desc: str = "statistics"):
    import pandas as pd
    from tqdm import tqdm
    items = faces.faces if isinstance(faces, FaceSet) else list(faces)
    rows = [{"face_id": f.face_id, **image_statistics(f.face, f.native)}
            for f in tqdm(items, desc=desc, disable=not progress, unit="img")]
    return pd.DataFrame(rows, columns=["face_id", *STATISTICS])


# --- comparing two sets ------------------------------------------------------------------

def _features(table) -> np.ndarray:
    cols = []
    for name, (_, log) in STATISTICS.items():
        v = table[name].to_numpy(np.float64)
        cols.append(np.log10(np.maximum(v, 1e-6)) if log else v)
    return np.stack(cols, axis=1)


@dataclass
class Comparison:
    """The distance between a real and a synthetic statistics table."""
    n_real: int
    n_synthetic: int
    auc: float
    auc_ci: tuple[float, float]
    distance: float
    per_statistic: list[dict]   # statistic, real/synthetic medians, ks, ks_p, w1

    def to_dict(self) -> dict:
        return {"n_real": self.n_real, "n_synthetic": self.n_synthetic, "auc": self.auc,
                "auc_ci": list(self.auc_ci), "distance": self.distance,
                "per_statistic": self.per_statistic}


def marginal_distances(real_x: np.ndarray, synth_x: np.ndarray) -> np.ndarray:
    """Per statistic: Wasserstein-1 distance in units of the real set's spread (its std, or
    a floor for a statistic constant on the real side)."""
    from scipy.stats import wasserstein_distance
    scale = np.maximum(real_x.std(axis=0), 1e-3 * (np.abs(real_x).mean(axis=0) + 1e-3))
    return np.array([wasserstein_distance(real_x[:, j], synth_x[:, j]) / scale[j]
                     for j in range(real_x.shape[1])])


def classifier_auc(real_x: np.ndarray, synth_x: np.ndarray, *, seed: int = 0, repeats: int = 5,
                   n_boot: int = 1000) -> tuple[float, tuple[float, float]]:
    """Classifier two-sample test: out-of-fold ROC AUC of an L2 logistic regression on the
    standardised statistics (stratified k-fold, scores averaged over ``repeats`` splits),
    and a stratified percentile bootstrap interval (95%) over those scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x = np.concatenate([real_x, synth_x])
    y = np.r_[np.zeros(len(real_x)), np.ones(len(synth_x))]
    k = min(5, len(real_x), len(synth_x))
    if k < 2:
        raise ValueError(f"need at least 2 faces on each side, got {len(real_x)} real and "
                         f"{len(synth_x)} synthetic")
    scores = np.zeros(len(y))
    for r in range(repeats):
        for train, test in StratifiedKFold(k, shuffle=True, random_state=seed + r).split(x, y):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
            model.fit(x[train], y[train])
            scores[test] += model.predict_proba(x[test])[:, 1] / repeats
    auc = float(roc_auc_score(y, scores))
    rng = np.random.default_rng(seed)
    i0, i1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    boot = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(i0, len(i0)), rng.choice(i1, len(i1))]
        boot.append(roc_auc_score(y[idx], scores[idx]))
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (auc, auc)
    return auc, (float(lo), float(hi))


def compare(real, synthetic, *, seed: int = 0, n_boot: int = 1000, auc: bool = True) -> Comparison:
    """Compare two statistics tables (:func:`statistics_table`)."""
    from scipy.stats import ks_2samp
    rx, sx = _features(real), _features(synthetic)
    w1 = marginal_distances(rx, sx)
    rows = []
    for j, name in enumerate(STATISTICS):
        ks = ks_2samp(rx[:, j], sx[:, j])
        rows.append({"statistic": name, "real_median": float(np.median(real[name])),
                     "synthetic_median": float(np.median(synthetic[name])),
                     "ks": float(ks.statistic), "ks_p": float(ks.pvalue), "w1": float(w1[j])})
    a, ci = classifier_auc(rx, sx, seed=seed, n_boot=n_boot) if auc else (float("nan"), (float("nan"),) * 2)
    return Comparison(n_real=len(rx), n_synthetic=len(sx), auc=a, auc_ci=ci,
                      distance=float(w1.mean()), per_statistic=rows)


def plot_distributions(real, synthetic, path: str | Path, *, label: str = "synthetic",
                       title: str = "") -> Path:
    """One panel per statistic: the real and synthetic histograms (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reface_core.atomic import atomic_path
    names = list(STATISTICS)
    cols = 6
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows))
    for ax, name in zip(axes.ravel(), names, strict=False):
        log = STATISTICS[name][1]
        r = real[name].to_numpy(float)
        s = synthetic[name].to_numpy(float)
        if log:
            r, s = np.log10(np.maximum(r, 1e-6)), np.log10(np.maximum(s, 1e-6))
        bins = np.histogram_bin_edges(np.r_[r, s], bins=20)
        ax.hist(r, bins=bins, alpha=0.55, density=True, label="real", color="tab:blue")
        ax.hist(s, bins=bins, alpha=0.55, density=True, label=label, color="tab:orange")
        ax.set_title(f"log10 {name}" if log else name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
