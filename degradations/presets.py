"""Degradation presets as data: a preset is a named, ordered tuple of stage dataclasses.

Each stage holds the *ranges* a parameter is drawn from; ``degradations.sampling`` draws
the concrete values into a JSON record, and ``degradations.pipeline`` applies a record.
Presets round-trip through plain dicts (``to_dict`` / ``from_dict``), so users write their
own in YAML or JSON and pass the file wherever a preset name is accepted.

The published presets cite the training configuration they reproduce. Ranges in pixels
and 0-255 intensity units, as in those configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reface_core.registry import Registry

PI = math.pi
#: Largest kernel side a preset (and a record, ``records.MAX_KERNEL_SIZE``) may use; the
#: shipped presets use at most 41. A bigger one costs memory and time for no real blur.
MAX_KERNEL_SIZE = 255
#: Largest upscale factor of one resize stage (records cap a resize at 16x the pixels).
MAX_RESIZE_UP = 4.0
RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest")


def _pair(name: str, value, lo: float | None = None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [low, high] pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be finite numbers, got [{a}, {b}]")
    if a > b:
        raise ValueError(f"{name} must have low <= high, got [{a}, {b}]")
    if lo is not None and a < lo:
        raise ValueError(f"{name} must not go below {lo}, got [{a}, {b}]")
    return (a, b)


def _prob(name: str, p) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def _probs(name: str, ps, n: int) -> tuple[float, ...]:
    ps = tuple(float(p) for p in ps)
    if len(ps) != n or any(p < 0 for p in ps) or not math.isclose(sum(ps), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must be {n} non-negative numbers summing to 1, got {list(ps)}")
    return ps


@dataclass(frozen=True)
class Blur:
    """Convolve with one random kernel (``basicsr.random_mixed_kernels`` family, or sinc).

    ``kernel_size`` is one odd size or a tuple to choose from uniformly. With probability
    ``sinc_prob`` the kernel is a circular low-pass instead, its cutoff drawn from
    ``sinc_omega_small`` for sizes below 13 and ``sinc_omega_large`` otherwise.
    """
    kernel_size: int | tuple[int, ...] = 41
    kernel_list: tuple[str, ...] = ("iso", "aniso")
    kernel_prob: tuple[float, ...] = (0.5, 0.5)
    sigma_x: tuple[float, float] = (0.1, 10.0)
    sigma_y: tuple[float, float] = (0.1, 10.0)
    rotation: tuple[float, float] = (-PI, PI)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.0
    sinc_omega_small: tuple[float, float] = (PI / 3, PI)
    sinc_omega_large: tuple[float, float] = (PI / 5, PI)
    prob: float = 1.0
    kind = "blur"

    def __post_init__(self):
        sizes = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,)
        for s in sizes:
            if int(s) != s or s < 1 or s % 2 == 0 or s > MAX_KERNEL_SIZE:
                raise ValueError(f"blur kernel_size values must be odd integers in [1, "
                                 f"{MAX_KERNEL_SIZE}], got {s!r}")
        from .kernels import KERNEL_TYPES
        for k in self.kernel_list:
            if k not in KERNEL_TYPES[:6]:
                raise ValueError(f"blur kernel_list has unknown type {k!r}; known: {KERNEL_TYPES[:6]}")
        _probs("blur kernel_prob", self.kernel_prob, len(self.kernel_list))
        _pair("blur sigma_x", self.sigma_x, 1e-6)
        _pair("blur sigma_y", self.sigma_y, 1e-6)
        _pair("blur rotation", self.rotation)
        _pair("blur betag", self.betag, 1e-6)
        _pair("blur betap", self.betap, 1e-6)
        _pair("blur sinc_omega_small", self.sinc_omega_small, 1e-6)
        _pair("blur sinc_omega_large", self.sinc_omega_large, 1e-6)
        _prob("blur sinc_prob", self.sinc_prob)
        _prob("blur prob", self.prob)


@dataclass(frozen=True)
class Sinc:
    """Circular low-pass (ringing / overshoot) filter, Real-ESRGAN's final sinc."""
    kernel_size: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    omega: tuple[float, float] = (PI / 3, PI)
    prob: float = 0.8
    kind = "sinc"

    def __post_init__(self):
        for s in self.kernel_size:
            if int(s) != s or s < 1 or s % 2 == 0 or s > MAX_KERNEL_SIZE:
                raise ValueError(f"sinc kernel_size values must be odd integers in [1, "
                                 f"{MAX_KERNEL_SIZE}], got {s!r}")
        _, hi = _pair("sinc omega", self.omega, 1e-6)
        if hi > PI:
            raise ValueError(f"sinc omega must not exceed pi, got {hi}")
        _prob("sinc prob", self.prob)


@dataclass(frozen=True)
class MotionBlur:
    """Linear camera/subject motion: a segment of random length and angle."""
    kernel_size: int = 41
    length: tuple[float, float] = (3.0, 15.0)
    angle: tuple[float, float] = (0.0, PI)
    prob: float = 0.3
    kind = "motion"

    def __post_init__(self):
        if self.kernel_size % 2 == 0 or not 1 <= self.kernel_size <= MAX_KERNEL_SIZE:
            raise ValueError(f"motion kernel_size must be odd and in [1, {MAX_KERNEL_SIZE}], "
                             f"got {self.kernel_size}")
        _, hi = _pair("motion length", self.length, 0.0)
        if hi > self.kernel_size - 1:
            raise ValueError(f"motion length {hi} does not fit kernel_size {self.kernel_size}")
        _pair("motion angle", self.angle)
        _prob("motion prob", self.prob)


@dataclass(frozen=True)
class Downsample:
    """GFPGAN/CodeFormer downsampling: new size ``floor(size / s)``, ``s`` uniform in ``scale``."""
    scale: tuple[float, float] = (0.8, 8.0)
    mode: str = "bilinear"
    prob: float = 1.0
    kind = "downsample"

    def __post_init__(self):
        _pair("downsample scale", self.scale, 1 / MAX_RESIZE_UP)  # below 1: an upscale
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"downsample mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        _prob("downsample prob", self.prob)


@dataclass(frozen=True)
class Resize:
    """Real-ESRGAN random resize: up / down / keep with ``updown_prob``, a random mode.

    The factor is drawn from ``[1, scale[1]]`` (up) or ``[scale[0], 1]`` (down) and
    multiplies the current size (``relative_to="current"``) or the preset's output size
    (``relative_to="output"``, Real-ESRGAN's second stage).
    """
    scale: tuple[float, float] = (0.15, 1.5)
    updown_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    modes: tuple[str, ...] = ("area", "bilinear", "bicubic")
    relative_to: str = "current"
    prob: float = 1.0
    kind = "resize"

    def __post_init__(self):
        lo, hi = _pair("resize scale", self.scale, 1e-3)
        if lo > 1 or hi < 1:
            raise ValueError(f"resize scale must bracket 1 (down below, up above), got [{lo}, {hi}]")
        if hi > MAX_RESIZE_UP:
            raise ValueError(f"resize scale must not exceed {MAX_RESIZE_UP} (an upscale), got "
                             f"[{lo}, {hi}]")
        _probs("resize updown_prob", self.updown_prob, 3)
        for m in self.modes:
            if m not in RESIZE_MODES:
                raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {m!r}")
        if self.relative_to not in ("current", "output"):
            raise ValueError(f"resize relative_to must be 'current' or 'output', got {self.relative_to!r}")
        _prob("resize prob", self.prob)


@dataclass(frozen=True)
class ResizeTo:
    """Resize to the input size (``target="input"``) or the preset's output size."""
    target: str = "input"
    modes: tuple[str, ...] = ("bilinear",)
    kind = "resize_to"

    def __post_init__(self):
        if self.target not in ("input", "output"):
            raise ValueError(f"resize_to target must be 'input' or 'output', got {self.target!r}")
        for m in self.modes:
            if m not in RESIZE_MODES:
                raise ValueError(f"resize_to mode must be one of {RESIZE_MODES}, got {m!r}")


@dataclass(frozen=True)
class Noise:
    """Additive Gaussian noise (sigma in 0-255 units) or, otherwise, Poisson (shot) noise.

    ``gaussian_prob`` chooses Gaussian over Poisson; ``gray_prob`` makes the noise the
    same in all channels (luminance noise). The result is clipped to [0, 1].
    """
    sigma: tuple[float, float] = (0.0, 20.0)
    gaussian_prob: float = 1.0
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.0
    prob: float = 1.0
    kind = "noise"

    def __post_init__(self):
        _pair("noise sigma", self.sigma, 0.0)
        _pair("noise poisson_scale", self.poisson_scale, 0.0)
        _prob("noise gaussian_prob", self.gaussian_prob)
        _prob("noise gray_prob", self.gray_prob)
        _prob("noise prob", self.prob)


@dataclass(frozen=True)
class Jpeg:
    """JPEG compression with an integer quality drawn uniformly from ``quality``."""
    quality: tuple[float, float] = (60.0, 100.0)
    prob: float = 1.0
    kind = "jpeg"

    def __post_init__(self):
        lo, hi = _pair("jpeg quality", self.quality, 1.0)
        if hi > 100:
            raise ValueError(f"jpeg quality must be within [1, 100], got [{lo}, {hi}]")
        _prob("jpeg prob", self.prob)


@dataclass(frozen=True)
class ColorShift:
    """GFPGAN ``color_jitter``: add one uniform offset in [-shift, shift] (0-255) per channel."""
    shift: float = 20.0
    prob: float = 0.3
    kind = "color_shift"

    def __post_init__(self):
        if self.shift < 0:
            raise ValueError(f"color_shift shift must be >= 0, got {self.shift}")
        _prob("color_shift prob", self.prob)


@dataclass(frozen=True)
class ColorJitter:
    """GFPGAN ``color_jitter_pt``: brightness, contrast, saturation, hue in random order."""
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.0, 1.5)
    hue: tuple[float, float] = (-0.1, 0.1)
    prob: float = 0.3
    kind = "color_jitter"

    def __post_init__(self):
        _pair("color_jitter brightness", self.brightness, 0.0)
        _pair("color_jitter contrast", self.contrast, 0.0)
        _pair("color_jitter saturation", self.saturation, 0.0)
        lo, hi = _pair("color_jitter hue", self.hue)
        if lo < -0.5 or hi > 0.5:
            raise ValueError(f"color_jitter hue must be within [-0.5, 0.5], got [{lo}, {hi}]")
        _prob("color_jitter prob", self.prob)


@dataclass(frozen=True)
class Gray:
    """Convert to grayscale (ITU-R BT.601 luma, as OpenCV), kept as three channels."""
    prob: float = 0.01
    kind = "gray"

    def __post_init__(self):
        _prob("gray prob", self.prob)


@dataclass(frozen=True)
class OneOf:
    """Run exactly one of ``branches`` (each a tuple of stages), chosen with ``probs``."""
    branches: tuple[tuple[Any, ...], ...] = ()
    probs: tuple[float, ...] = ()
    kind = "one_of"

    def __post_init__(self):
        if not self.branches:
            raise ValueError("one_of needs at least one branch")
        _probs("one_of probs", self.probs, len(self.branches))


STAGE_TYPES = Registry("stage kind", {cls.kind: cls for cls in (
    Blur, Sinc, MotionBlur, Downsample, Resize, ResizeTo, Noise, Jpeg, ColorShift, ColorJitter, Gray,
    OneOf)})


@dataclass(frozen=True)
class Preset:
    """A named degradation pipeline: ``stages`` run in order on a float RGB image in [0, 1].

    ``out_scale`` is the ratio of input to output size (1: LQ at the HQ size, as face
    restoration trains; 4: Real-ESRGAN x4 LQ). ``source`` says where the ranges come from.
    """
    name: str
    stages: tuple[Any, ...]
    out_scale: int = 1
    description: str = ""
    source: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"preset name must be a non-empty string, got {self.name!r}")
        if int(self.out_scale) != self.out_scale or self.out_scale < 1:
            raise ValueError(f"preset {self.name}: out_scale must be a positive integer, got {self.out_scale}")
        for st in _walk(self.stages):
            if type(st) not in STAGE_TYPES.values():
                raise ValueError(f"preset {self.name}: {st!r} is not a degradation stage")

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "out_scale": self.out_scale, "stages": [_stage_to_dict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        if not isinstance(d, dict) or "name" not in d or "stages" not in d:
            raise ValueError("a preset must be a mapping with at least 'name' and 'stages'")
        unknown = set(d) - {"name", "description", "source", "out_scale", "stages"}
        if unknown:
            raise ValueError(f"preset {d['name']!r}: unknown keys {sorted(unknown)}")
        return cls(name=str(d["name"]), stages=tuple(_stage_from_dict(s, d["name"]) for s in d["stages"]),
                   out_scale=int(d.get("out_scale", 1)), description=d.get("description", ""),
                   source=d.get("source", ""))

    def fingerprint(self) -> str:
        """Short hash of the preset's content, stored with records to catch edited presets."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _walk(stages):
    for st in stages:
        yield st
        if isinstance(st, OneOf):
            for br in st.branches:
                yield from _walk(br)


def _stage_to_dict(st) -> dict:
    out = {"kind": st.kind}
    for f in dataclasses.fields(st):
        v = getattr(st, f.name)
        if isinstance(st, OneOf) and f.name == "branches":
            v = [[_stage_to_dict(s) for s in br] for br in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _tupled(v):
    return tuple(_tupled(x) for x in v) if isinstance(v, list) else v


def _stage_from_dict(d: dict, preset: str):
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"preset {preset!r}: each stage must be a mapping with a 'kind', got {d!r}")
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in STAGE_TYPES:
        raise STAGE_TYPES.error(kind, where=f"preset {preset!r}")
    cls = STAGE_TYPES.get(kind)
    names = {f.name for f in dataclasses.fields(cls)}
    args = {k: v for k, v in d.items() if k != "kind"}
    bad = set(args) - names
    if bad:
        raise ValueError(f"preset {preset!r}: stage {kind!r} has unknown fields {sorted(bad)}; "
                         f"allowed: {sorted(names)}")
    if cls is OneOf:
        args["branches"] = tuple(tuple(_stage_from_dict(s, preset) for s in br)
                                 for br in args.get("branches", ()))
        args["probs"] = tuple(args.get("probs", ()))
    else:
        args = {k: _tupled(v) for k, v in args.items()}
    try:
        return cls(**args)
    except TypeError as e:
        raise ValueError(f"preset {preset!r}: stage {kind!r}: {e}") from None


# --- the presets --------------------------------------------------------------------------

def _gfpgan_family(name, *, sigma, scale, noise, jpeg, description, source, color=True, gray=0.01,
                   kernel_size=41, extra=()):
    stages = [Blur(kernel_size=kernel_size, kernel_list=("iso", "aniso"), kernel_prob=(0.5, 0.5),
                   sigma_x=sigma, sigma_y=sigma, rotation=(-PI, PI)),
              *extra,
              Downsample(scale=scale, mode="bilinear"),
              Noise(sigma=noise, gaussian_prob=1.0),
              Jpeg(quality=jpeg),
              ResizeTo(target="input", modes=("bilinear",))]
    if color:
        stages += [ColorShift(shift=20.0, prob=0.3), Gray(prob=gray), ColorJitter(prob=0.3)]
    return Preset(name=name, stages=tuple(stages), description=description, source=source)


PRESETS = Registry("degradation preset", sort=True, hint="or a .yaml/.json preset file")


def register(preset: Preset) -> Preset:
    # Re-registering a name replaces it (a user may refine a built-in preset).
    return PRESETS.register(preset.name, preset, description=preset.description, overwrite=True)


# GFPGAN options/train_gfpgan_v1.yml with basicsr/data/ffhq_degradation_dataset.py:
# blur_kernel_size 41, kernel_list [iso, aniso] p [0.5, 0.5], blur_sigma [0.1, 10],
# downsample_range [0.8, 8] (cv2 INTER_LINEAR), noise_range [0, 20], jpeg_range [60, 100],
# then resize back to the HQ size; color_jitter_prob 0.3 (shift 20), gray_prob 0.01,
# color_jitter_pt_prob 0.3 (brightness/contrast [0.5, 1.5], saturation [0, 1.5], hue +-0.1).
register(_gfpgan_family(
    "gfpgan", sigma=(0.1, 10.0), scale=(0.8, 8.0), noise=(0.0, 20.0), jpeg=(60.0, 100.0),
    description="GFPGAN/FFHQ blind face degradation: blur -> downsample -> noise -> JPEG -> upsample, "
                "then colour jitter and rare grayscale",
    source="TencentARC/GFPGAN options/train_gfpgan_v1.yml (FFHQDegradationDataset)"))

# CodeFormer options/CodeFormer_stage2.yml (FFHQBlindDataset, "large degradation in
# stageII"): blur_kernel_size 41, kernel_list [iso, aniso], blur_sigma [1, 15],
# downsample_range [4, 30], noise_range [0, 20], jpeg_range [30, 80]; motion kernels off
# (use_motion_kernel false) and no colour jitter or grayscale set.
register(_gfpgan_family(
    "codeformer", sigma=(1.0, 15.0), scale=(4.0, 30.0), noise=(0.0, 20.0), jpeg=(30.0, 80.0),
    color=False,
    description="CodeFormer stage-2 face degradation: heavier blur and downsampling than GFPGAN",
    source="sczhou/CodeFormer options/CodeFormer_stage2.yml (FFHQBlindDataset)"))

# DiffBIR v2 configs/train/train_stage1.yaml (CodeformerDataset, face and general stage 1):
# blur_kernel_size 41, kernel_list [iso, aniso], blur_sigma [0.1, 12], downsample_range
# [1, 12], noise_range [0, 15], jpeg_range [30, 100]; no colour jitter or grayscale.
register(_gfpgan_family(
    "diffbir-face", sigma=(0.1, 12.0), scale=(1.0, 12.0), noise=(0.0, 15.0), jpeg=(30.0, 100.0),
    color=False,
    description="DiffBIR stage-1 degradation (CodeFormer-style, no colour jitter)",
    source="XPixelGroup/DiffBIR configs/train/train_stage1.yaml (CodeformerDataset)"))

# Real-ESRGAN options/train_realesrgan_x4plus.yml with realesrgan_dataset.py and
# realesrnet_model.py: second-order degradation, x4 output.
_RESRGAN_KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_RESRGAN_KPROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_RESRGAN_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
register(Preset(
    name="realesrgan", out_scale=4,
    description="Real-ESRGAN second-order degradation (two rounds of blur/resize/noise/JPEG, "
                "sinc ringing), LQ at 1/4 of the input size",
    source="xinntao/Real-ESRGAN options/train_realesrgan_x4plus.yml",
    stages=(
        # first order: blur_sigma [0.2, 3], betag [0.5, 4], betap [1, 2], sinc_prob 0.1
        Blur(kernel_size=_RESRGAN_SIZES, kernel_list=_RESRGAN_KERNELS, kernel_prob=_RESRGAN_KPROB,
             sigma_x=(0.2, 3.0), sigma_y=(0.2, 3.0), betag=(0.5, 4.0), betap=(1.0, 2.0), sinc_prob=0.1),
        # resize_prob [0.2, 0.7, 0.1], resize_range [0.15, 1.5]
        Resize(scale=(0.15, 1.5), updown_prob=(0.2, 0.7, 0.1), modes=("area", "bilinear", "bicubic")),
        # gaussian_noise_prob 0.5, noise_range [1, 30], poisson_scale_range [0.05, 3], gray_noise_prob 0.4
        Noise(sigma=(1.0, 30.0), gaussian_prob=0.5, poisson_scale=(0.05, 3.0), gray_prob=0.4),
        Jpeg(quality=(30.0, 95.0)),
        # second order: second_blur_prob 0.8, blur_sigma2 [0.2, 1.5], sinc_prob2 0.1
        Blur(kernel_size=_RESRGAN_SIZES, kernel_list=_RESRGAN_KERNELS, kernel_prob=_RESRGAN_KPROB,
             sigma_x=(0.2, 1.5), sigma_y=(0.2, 1.5), betag=(0.5, 4.0), betap=(1.0, 2.0), sinc_prob=0.1,
             prob=0.8),
        # resize_prob2 [0.3, 0.4, 0.3], resize_range2 [0.3, 1.2], relative to the x4 output size
        Resize(scale=(0.3, 1.2), updown_prob=(0.3, 0.4, 0.3), modes=("area", "bilinear", "bicubic"),
               relative_to="output"),
        # gaussian_noise_prob2 0.5, noise_range2 [1, 25], poisson_scale_range2 [0.05, 2.5], gray 0.4
        Noise(sigma=(1.0, 25.0), gaussian_prob=0.5, poisson_scale=(0.05, 2.5), gray_prob=0.4),
        # final: half the time [resize back + sinc (final_sinc_prob 0.8), JPEG], else the reverse
        OneOf(branches=(
            (ResizeTo(target="output", modes=("area", "bilinear", "bicubic")),
             Sinc(kernel_size=_RESRGAN_SIZES, omega=(PI / 3, PI), prob=0.8),
             Jpeg(quality=(30.0, 95.0))),
            (Jpeg(quality=(30.0, 95.0)),
             ResizeTo(target="output", modes=("area", "bilinear", "bicubic")),
             Sinc(kernel_size=_RESRGAN_SIZES, omega=(PI / 3, PI), prob=0.8)),
        ), probs=(0.5, 0.5)),
    )))

# MGFR: the paper does not publish its degradation ranges. These three are this project's
# choice: the GFPGAN pipeline with disjoint, increasing ranges so that the levels are
# ordered by construction (mild keeps faces recognisable, severe approaches the
# "extreme" inputs MGFR targets). No colour jitter, so PSNR measures the degradation level.
register(_gfpgan_family(
    "mgfr-mild", sigma=(0.1, 2.0), scale=(1.0, 2.0), noise=(0.0, 5.0), jpeg=(80.0, 100.0), color=False,
    description="MGFR mild: light blur, up to 2x downsampling, faint noise, high-quality JPEG",
    source="project choice (MGFR does not publish its ranges)"))
register(_gfpgan_family(
    "mgfr-medium", sigma=(2.0, 5.0), scale=(2.0, 6.0), noise=(5.0, 12.0), jpeg=(50.0, 80.0), color=False,
    description="MGFR medium: moderate blur, 2-6x downsampling, visible noise, medium JPEG",
    source="project choice (MGFR does not publish its ranges)"))
register(_gfpgan_family(
    "mgfr-severe", sigma=(5.0, 12.0), scale=(6.0, 16.0), noise=(12.0, 25.0), jpeg=(20.0, 50.0), color=False,
    extra=(MotionBlur(kernel_size=41, length=(3.0, 15.0), prob=0.3),),
    description="MGFR severe: heavy blur (sometimes motion), 6-16x downsampling, strong noise, low JPEG",
    source="project choice (MGFR does not publish its ranges)"))
# Negative-quality samples (MGFR's negative quality prompt is trained against images that
# show exactly the artefacts the prompt names): beyond severe, every artefact at once and
# always visible: heavy blur, extreme downsampling, colour and luminance noise, blocky JPEG,
# ringing, and colour casts.
register(Preset(
    name="mgfr-negative",
    description="MGFR negative-quality samples: extreme blur, 12-32x downsampling, strong noise, "
                "quality 5-25 JPEG, ringing and colour casts",
    source="project choice (MGFR negative-quality training samples)",
    stages=(
        Blur(kernel_size=41, kernel_list=("iso", "aniso", "generalized_aniso", "plateau_aniso"),
             kernel_prob=(0.3, 0.3, 0.2, 0.2), sigma_x=(6.0, 14.0), sigma_y=(6.0, 14.0),
             betag=(0.5, 2.0), betap=(1.0, 2.0)),
        MotionBlur(kernel_size=41, length=(8.0, 25.0), prob=0.5),
        Downsample(scale=(12.0, 32.0), mode="bilinear"),
        Noise(sigma=(20.0, 40.0), gaussian_prob=0.7, poisson_scale=(1.0, 4.0), gray_prob=0.3),
        Jpeg(quality=(5.0, 25.0)),
        ResizeTo(target="input", modes=("bilinear", "bicubic", "nearest")),
        Sinc(kernel_size=(7, 9, 11, 13), omega=(PI / 4, PI / 2), prob=0.5),
        Jpeg(quality=(10.0, 40.0), prob=0.5),
        ColorShift(shift=30.0, prob=0.5),
        Gray(prob=0.05),
    )))


def list_presets() -> list[str]:
    return PRESETS.names()


def load_preset_file(path: str | Path) -> Preset:
    """A user preset from a YAML or JSON file (the ``Preset.to_dict`` layout)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"preset file {path}: cannot read ({e.strerror or e})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # the parsers' errors carry line numbers; keep them, drop the trace
        raise ValueError(f"preset file {path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({e})") from None
    try:
        return Preset.from_dict(data)
    except ValueError as e:
        raise ValueError(f"preset file {path}: {e}") from None


def get_preset(name_or_path: str | Path | Preset) -> Preset:
    """A registered preset by name, a ``Preset``, or a user preset file (.yaml/.yml/.json)."""
    if isinstance(name_or_path, Preset):
        return name_or_path
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    if key.lower().endswith((".yaml", ".yml", ".json")):
        return load_preset_file(key)
    raise PRESETS.error(key)


#: Presets fitted to real LQ faces by ``python -m degradations fit``, shipped as preset
#: files (with their fit reports) and registered like the presets above.
FITTED_DIR = Path(__file__).with_name("fitted")
for _path in sorted(FITTED_DIR.glob("*.yaml")):
    register(load_preset_file(_path))
