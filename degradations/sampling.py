"""Draw a preset's random parameters into a JSON-serialisable record.

The generator for one image is derived from ``(preset name, seed, image id)`` by hashing,
never from global RNG state, so a record depends on nothing but those three values and
the input size: the same triple always gives the same record, in any process, on any
worker, in any order. Both front ends (``Degrader`` and ``BatchDegrader``) sample here.

A record lists one entry per stage in preset order (``"applied": false`` for a stage
whose probability did not fire), so records of one preset line up for batching and their
tables have the same columns. Everything an operation needs is in its entry: kernels are
rebuilt from their parameters, noise from a stored 63-bit seed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from . import presets as P

# 2: gray Poisson noise rounds the gray mix to 8 bits before counting levels (as
#    Real-ESRGAN does); version-1 records with gray Poisson noise replay differently.
RECORD_VERSION = 2


def image_rng(preset: str, seed: int, image_id: str) -> np.random.Generator:
    """The per-image generator: PCG64 seeded with SHA-256 of ``[preset, seed, image_id]``."""
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    key = json.dumps([str(preset), int(seed), str(image_id)], separators=(",", ":")).encode()
    return np.random.Generator(np.random.PCG64(int.from_bytes(hashlib.sha256(key).digest()[:16], "little")))


def _uniform(rng, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _beta(rng, lo_hi) -> float:
    # basicsr draws beta below or above 1 with equal odds (shape sharper or flatter than
    # Gaussian); keep that when the range straddles 1.
    lo, hi = lo_hi
    if lo < 1.0 < hi:
        return _uniform(rng, (lo, 1.0)) if rng.uniform() < 0.5 else _uniform(rng, (1.0, hi))
    return _uniform(rng, (lo, hi))


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def _noise_seed(rng) -> int:
    return int(rng.integers(0, 2 ** 63 - 1))


def _sample_kernel(st: P.Blur, rng) -> dict:
    sizes = st.kernel_size if isinstance(st.kernel_size, tuple) else (st.kernel_size,)
    size = int(_choice(rng, sizes))
    if st.sinc_prob > 0 and rng.uniform() < st.sinc_prob:
        omega = _uniform(rng, st.sinc_omega_small if size < 13 else st.sinc_omega_large)
        return {"type": "sinc", "size": size, "omega": omega}
    ktype = st.kernel_list[int(rng.choice(len(st.kernel_list), p=np.asarray(st.kernel_prob)))]
    if ktype.endswith("iso") and not ktype.endswith("aniso"):
        sx = _uniform(rng, st.sigma_x)
        k = {"type": ktype, "size": size, "sigma_x": sx, "sigma_y": sx, "theta": 0.0}
    else:
        k = {"type": ktype, "size": size, "sigma_x": _uniform(rng, st.sigma_x),
             "sigma_y": _uniform(rng, st.sigma_y), "theta": _uniform(rng, st.rotation)}
    if ktype.startswith("generalized"):
        k["beta"] = _beta(rng, st.betag)
    elif ktype.startswith("plateau"):
        k["beta"] = _beta(rng, st.betap)
    return k


def _gate(st, rng) -> bool:
    return st.prob >= 1.0 or rng.uniform() < st.prob


def _sample_stage(st, rng, size: list[int], ctx: dict, out: list[dict]) -> list[int]:
    """Append the entries of stage ``st`` to ``out``; return the image size after it."""
    if isinstance(st, P.OneOf):
        branch = int(rng.choice(len(st.branches), p=np.asarray(st.probs)))
        out.append({"op": "one_of", "branch": branch})
        for sub in st.branches[branch]:
            size = _sample_stage(sub, rng, size, ctx, out)
        return size
    kind = st.kind
    if isinstance(st, (P.ResizeTo,)):
        target = ctx["input_size"] if st.target == "input" else ctx["output_size"]
        out.append({"op": "resize", "applied": True, "size": list(target), "mode": _choice(rng, st.modes)})
        return list(target)
    if not _gate(st, rng):
        out.append({"op": kind, "applied": False})
        return size
    h, w = size
    if isinstance(st, P.Blur):
        out.append({"op": "blur", "applied": True, "kernel": _sample_kernel(st, rng)})
    elif isinstance(st, P.Sinc):
        k = int(_choice(rng, st.kernel_size))
        out.append({"op": "sinc", "applied": True,
                    "kernel": {"type": "sinc", "size": k, "omega": _uniform(rng, st.omega)}})
    elif isinstance(st, P.MotionBlur):
        out.append({"op": "motion", "applied": True,
                    "kernel": {"type": "motion", "size": st.kernel_size,
                               "length": _uniform(rng, st.length), "angle": _uniform(rng, st.angle)}})
    elif isinstance(st, P.Downsample):
        s = _uniform(rng, st.scale)
        # floor(size / s) as GFPGAN's cv2.resize(int(w // scale)); never below one pixel.
        size = [max(1, int(h // s)), max(1, int(w // s))]
        out.append({"op": "resize", "applied": True, "scale": s, "size": size, "mode": st.mode})
    elif isinstance(st, P.Resize):
        direction = ("up", "down", "keep")[int(rng.choice(3, p=np.asarray(st.updown_prob)))]
        s = {"up": lambda: _uniform(rng, (1.0, st.scale[1])),
             "down": lambda: _uniform(rng, (st.scale[0], 1.0)),
             "keep": lambda: 1.0}[direction]()
        bh, bw = size if st.relative_to == "current" else ctx["output_size"]
        size = [max(1, int(bh * s)), max(1, int(bw * s))]
        out.append({"op": "resize", "applied": True, "scale": s, "direction": direction, "size": size,
                    "mode": _choice(rng, st.modes)})
    elif isinstance(st, P.Noise):
        gaussian = st.gaussian_prob >= 1.0 or rng.uniform() < st.gaussian_prob
        gray = st.gray_prob > 0 and rng.uniform() < st.gray_prob
        if gaussian:
            out.append({"op": "noise", "applied": True, "type": "gaussian", "sigma": _uniform(rng, st.sigma),
                        "gray": bool(gray), "seed": _noise_seed(rng)})
        else:
            out.append({"op": "noise", "applied": True, "type": "poisson",
                        "scale": _uniform(rng, st.poisson_scale), "gray": bool(gray), "seed": _noise_seed(rng)})
    elif isinstance(st, P.Jpeg):
        # Integer quality in [lo, hi], uniform: libjpeg takes integers only.
        lo, hi = round(st.quality[0]), round(st.quality[1])
        out.append({"op": "jpeg", "applied": True, "quality": int(rng.integers(lo, hi + 1))})
    elif isinstance(st, P.ColorShift):
        out.append({"op": "color_shift", "applied": True,
                    "shift": [float(v) for v in rng.uniform(-st.shift, st.shift, 3)]})
    elif isinstance(st, P.ColorJitter):
        out.append({"op": "color_jitter", "applied": True,
                    "order": [["brightness", "contrast", "saturation", "hue"][i] for i in rng.permutation(4)],
                    "brightness": _uniform(rng, st.brightness), "contrast": _uniform(rng, st.contrast),
                    "saturation": _uniform(rng, st.saturation), "hue": _uniform(rng, st.hue)})
    elif isinstance(st, P.Gray):
        out.append({"op": "gray", "applied": True})
    else:  # pragma: no cover - Preset validation rejects unknown stages
        raise ValueError(f"no sampler for stage {st!r}")
    return size


def sample_record(preset: P.Preset | str, seed: int, image_id: str, size: tuple[int, int]) -> dict[str, Any]:
    """The record of ``preset`` for one image of ``size = (height, width)``."""
    preset = P.get_preset(preset)
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    if h < preset.out_scale or w < preset.out_scale:
        raise ValueError(f"a {h}x{w} image is smaller than preset {preset.name!r}'s out_scale {preset.out_scale}")
    rng = image_rng(preset.name, seed, image_id)
    ctx = {"input_size": [h, w], "output_size": [h // preset.out_scale, w // preset.out_scale]}
    ops: list[dict] = []
    cur = [h, w]
    for st in preset.stages:
        cur = _sample_stage(st, rng, cur, ctx, ops)
    if cur != ctx["output_size"]:
        raise ValueError(f"preset {preset.name!r} ends at size {cur}, not its output size "
                         f"{ctx['output_size']}: end it with a resize_to stage")
    return {"version": RECORD_VERSION, "preset": preset.name, "preset_fingerprint": preset.fingerprint(),
            "seed": int(seed), "image_id": str(image_id), "input_size": [h, w],
            "output_size": ctx["output_size"], "ops": ops}


def flatten_record(record: dict) -> dict[str, Any]:
    """One flat row for the parameter table: ``<op>[_<n>].<field>`` columns.

    Repeated ops get a 1-based suffix from their second occurrence (``blur``, ``blur_2``).
    Kernel parameters are prefixed ``<op>.kernel_``.
    """
    row: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for op in record["ops"]:
        name = op["op"]
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}_{seen[name]}"
        for f, v in op.items():
            if f == "op":
                continue
            if f == "kernel":
                for kf, kv in v.items():
                    row[f"{key}.kernel_{kf}"] = kv
            elif isinstance(v, list):
                row[f"{key}.{f}"] = json.dumps(v)
            else:
                row[f"{key}.{f}"] = v
    return row
