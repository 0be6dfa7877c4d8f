"""Checks on a degradation record before it is replayed.

Records are files a user may receive from anyone (``degradations replay``, a
``params.parquet`` of another lab), so every field is checked for its type, for being
finite and for a cap before any pixel work: a malformed record gives one
:class:`RecordError` line naming the record and the field (``ops[3].kernel.size``), never
a ``KeyError`` deep in an operation, and a kernel of 100,001 taps or a resize to a
gigapixel image is refused instead of exhausting memory.

The caps are far above what the presets sample (kernels up to 41 taps, resizes up to 1.5x
the current size, outputs no larger than the input).
"""

from __future__ import annotations

import math
from typing import Any

from .kernels import KERNEL_TYPES
from .ops import KNOWN_OPS
from .presets import MAX_KERNEL_SIZE, RESIZE_MODES
from .sampling import RECORD_VERSION

# MAX_KERNEL_SIZE (from presets): largest kernel side (odd) a preset or a record may ask for.
#: Largest image side a record may name (input, output or any resize target).
MAX_SIDE = 16384
#: A resize target may hold at most this many times the input's pixels (the presets stay
#: within 1.5^2), and never more than :data:`MAX_PIXELS`.
MAX_UPSCALE_PIXELS = 16
MAX_PIXELS = 64_000_000  # as reface_core.imageio.DEFAULT_MAX_PIXELS, the cap on inputs
#: Most entries in one record (the presets write at most about 20).
MAX_OPS = 256
#: Noise seeds are fed to NumPy's PCG64: non-negative, and kept to 64 bits.
MAX_NOISE_SEED = 2 ** 64 - 1
MAX_RECORD_BYTES = 1_000_000  # a record file holds a few kB
MAX_SIGMA = 1000.0  # kernel sigmas (pixels) and noise sigmas (8-bit levels)
MAX_FACTOR = 1000.0  # Poisson scale, jitter factors, kernel betas, colour shifts

_JITTER = ("brightness", "contrast", "saturation", "hue")
#: Fields each kernel type takes (as ``kernels.make_kernel`` accepts them).
_KERNEL_FIELDS = {
    "iso": ("sigma_x",), "aniso": ("sigma_x",),
    "generalized_iso": ("sigma_x", "beta"), "generalized_aniso": ("sigma_x", "beta"),
    "plateau_iso": ("sigma_x", "beta"), "plateau_aniso": ("sigma_x", "beta"),
    "sinc": ("omega",), "motion": ("length", "angle"),
}
_KERNEL_OPTIONAL = {"iso": ("sigma_y", "theta"), "aniso": ("sigma_y", "theta")}
for _t in ("generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"):
    _KERNEL_OPTIONAL[_t] = ("sigma_y", "theta")
#: Informational fields the sampler writes that replay does not read.
_RESIZE_INFO = ("scale", "direction")


class RecordError(ValueError):
    """A degradation record that cannot be replayed; the message names record and field."""


def _show(value: Any) -> str:
    """A short, safe picture of a value: never the repr of a deep or huge structure."""
    if isinstance(value, (bool, float)) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10 ** 30 else f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, str):
        return repr(value[:60] + ("..." if len(value) > 60 else ""))
    return f"a {type(value).__name__}"


class _Check:
    def __init__(self, label: str):
        self.label = label

    def fail(self, field: str, what: str, value: Any = ...) -> None:
        got = "" if value is ... else f", got {_show(value)}"
        raise RecordError(f"{self.label}: field {field}: {what}{got}")

    def get(self, d: dict, key: str, field: str) -> Any:
        if key not in d:
            self.fail(field, "missing")
        return d[key]

    def integer(self, value: Any, field: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be a whole number in [{lo}, {hi}]", value)
        if not lo <= value <= hi:
            self.fail(field, f"must be in [{lo}, {hi}]", value)
        return value

    def number(self, value: Any, field: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, "must be a number", value)
        if isinstance(value, int) and abs(value) > 10 ** 30:
            self.fail(field, f"must be in {'(' if open_lo else '['}{lo}, {hi}]", value)
        if not math.isfinite(value):
            self.fail(field, "must be finite", value)
        if not (lo < value <= hi if open_lo else lo <= value <= hi):
            self.fail(field, f"must be in {'(' if open_lo else '['}{lo}, {hi}]", value)
        return float(value)

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, "must be true or false", value)
        return value

    def size(self, value: Any, field: str) -> list[int]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.fail(field, "must be [height, width]", value)
        return [self.integer(v, f"{field}[{i}]", 1, MAX_SIDE) for i, v in enumerate(value)]

    def only(self, d: dict, allowed: tuple[str, ...], field: str) -> None:
        for key in d:
            if key not in allowed:
                self.fail(f"{field}.{key}" if isinstance(key, str) else field,
                          f"unknown field (known: {', '.join(allowed)})")


def _check_kernel(c: _Check, k: Any, field: str) -> None:
    if not isinstance(k, dict):
        c.fail(field, "must be an object", k)
    ktype = c.get(k, "type", f"{field}.type")
    if not isinstance(ktype, str) or ktype not in _KERNEL_FIELDS:
        c.fail(f"{field}.type", f"must be one of {', '.join(KERNEL_TYPES)}", ktype)
    size = c.integer(c.get(k, "size", f"{field}.size"), f"{field}.size", 1, MAX_KERNEL_SIZE)
    if size % 2 == 0:
        c.fail(f"{field}.size", "must be odd", size)
    required = _KERNEL_FIELDS[ktype]
    c.only(k, ("type", "size", *required, *_KERNEL_OPTIONAL.get(ktype, ())), field)
    for name in required + tuple(n for n in _KERNEL_OPTIONAL.get(ktype, ()) if n in k):
        value = c.get(k, name, f"{field}.{name}")
        f = f"{field}.{name}"
        if name in ("sigma_x", "sigma_y"):
            c.number(value, f, 0.0, MAX_SIGMA, open_lo=True)
        elif name == "beta":
            c.number(value, f, 0.0, MAX_FACTOR, open_lo=True)
        elif name == "omega":
            c.number(value, f, 0.0, math.pi, open_lo=True)
        elif name == "length":
            c.number(value, f, 0.0, float(size - 1))
        else:  # theta, angle: radians, any finite value
            c.number(value, f, -1e6, 1e6)


def _check_op(c: _Check, e: Any, field: str, cur: list[int], limit: int) -> list[int]:
    """Check one entry; return the image size after it."""
    if not isinstance(e, dict):
        c.fail(field, "must be an object", e)
    name = c.get(e, "op", f"{field}.op")
    if not isinstance(name, str):
        c.fail(f"{field}.op", "must be a string", name)
    if name not in KNOWN_OPS:
        import difflib
        close = difflib.get_close_matches(name, sorted(KNOWN_OPS), n=1)
        raise RecordError(f"{c.label}: field {field}.op: unknown op {name[:60]!r}"
                          + (f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(KNOWN_OPS))})"))
    if name == "one_of":
        c.only(e, ("op", "branch"), field)
        c.integer(c.get(e, "branch", f"{field}.branch"), f"{field}.branch", 0, MAX_OPS)
        return cur
    if "applied" in e and not c.boolean(e["applied"], f"{field}.applied"):
        c.only(e, ("op", "applied"), field)
        return cur
    if name in ("blur", "sinc", "motion"):
        c.only(e, ("op", "applied", "kernel"), field)
        _check_kernel(c, c.get(e, "kernel", f"{field}.kernel"), f"{field}.kernel")
    elif name == "resize":
        c.only(e, ("op", "applied", "size", "mode", *_RESIZE_INFO), field)
        size = c.size(c.get(e, "size", f"{field}.size"), f"{field}.size")
        if size[0] * size[1] > limit:
            c.fail(f"{field}.size", f"{size[0]}x{size[1]} exceeds the cap of {limit:,} pixels "
                                    f"({MAX_UPSCALE_PIXELS}x the input, at most {MAX_PIXELS:,})")
        mode = c.get(e, "mode", f"{field}.mode")
        if not isinstance(mode, str) or mode not in RESIZE_MODES:
            c.fail(f"{field}.mode", f"must be one of {', '.join(RESIZE_MODES)}", mode)
        if "scale" in e:
            c.number(e["scale"], f"{field}.scale", 0.0, MAX_SIDE)
        if "direction" in e and e["direction"] not in ("up", "down", "keep"):
            c.fail(f"{field}.direction", "must be up, down or keep", e["direction"])
        return size
    elif name == "noise":
        # (both amounts are allowed: a record edited from Poisson to Gaussian keeps its scale)
        c.only(e, ("op", "applied", "type", "sigma", "scale", "gray", "seed"), field)
        ntype = c.get(e, "type", f"{field}.type")
        if ntype not in ("gaussian", "poisson"):
            c.fail(f"{field}.type", "must be gaussian or poisson", ntype)
        needed = "sigma" if ntype == "gaussian" else "scale"
        c.get(e, needed, f"{field}.{needed}")
        if "sigma" in e:
            c.number(e["sigma"], f"{field}.sigma", 0.0, MAX_SIGMA)
        if "scale" in e:
            c.number(e["scale"], f"{field}.scale", 0.0, MAX_FACTOR)
        c.boolean(c.get(e, "gray", f"{field}.gray"), f"{field}.gray")
        c.integer(c.get(e, "seed", f"{field}.seed"), f"{field}.seed", 0, MAX_NOISE_SEED)
    elif name == "jpeg":
        c.only(e, ("op", "applied", "quality"), field)
        c.integer(c.get(e, "quality", f"{field}.quality"), f"{field}.quality", 1, 100)
    elif name == "color_shift":
        c.only(e, ("op", "applied", "shift"), field)
        shift = c.get(e, "shift", f"{field}.shift")
        if not isinstance(shift, list) or len(shift) != 3:
            c.fail(f"{field}.shift", "must be a list of 3 numbers", shift)
        for i, v in enumerate(shift):
            c.number(v, f"{field}.shift[{i}]", -MAX_FACTOR, MAX_FACTOR)
    elif name == "color_jitter":
        c.only(e, ("op", "applied", "order", *_JITTER), field)
        order = c.get(e, "order", f"{field}.order")
        if (not isinstance(order, list) or len(order) != len(_JITTER)
                or not all(isinstance(o, str) for o in order) or sorted(order) != sorted(_JITTER)):
            c.fail(f"{field}.order", f"must list {', '.join(_JITTER)} once each, in any order", order)
        for f in _JITTER:
            lo, hi = (-0.5, 0.5) if f == "hue" else (0.0, MAX_FACTOR)
            c.number(c.get(e, f, f"{field}.{f}"), f"{field}.{f}", lo, hi)
    elif name == "gray":
        c.only(e, ("op", "applied"), field)
    return cur


def validate_record(record: Any, size: tuple[int, int] | None = None, *, where: str | None = None) -> dict:
    """Check ``record`` field by field; raise :class:`RecordError` naming the first bad one.

    ``size``: the (height, width) of the image it will be applied to, when known.
    ``where``: how to name the record in messages (default: its ``image_id``).
    Returns the record unchanged.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where or 'record'}: not a degradation record (expected an object, "
                          f"got {_show(record)})")
    image_id = record.get("image_id")
    label = where or (f"record for image {image_id[:60]!r}" if isinstance(image_id, str) else "record")
    c = _Check(label)
    version = record.get("version", RECORD_VERSION)
    if version != RECORD_VERSION or isinstance(version, bool):
        c.fail("version", f"has version {_show(version)}, this release replays version "
                          f"{RECORD_VERSION} (resample it)")
    if "image_id" in record and not isinstance(image_id, str):
        c.fail("image_id", "must be a string", image_id)
    if "seed" in record:  # not replayed, but stored in int64 table columns
        c.integer(record["seed"], "seed", -(2 ** 63), 2 ** 63 - 1)
    in_size = c.size(c.get(record, "input_size", "input_size"), "input_size")
    if size is not None and in_size != [int(size[0]), int(size[1])]:
        c.fail("input_size", f"was sampled for input size {in_size}, but the image is "
                             f"{[int(size[0]), int(size[1])]}")
    limit = min(MAX_PIXELS, MAX_UPSCALE_PIXELS * in_size[0] * in_size[1])
    ops = c.get(record, "ops", "ops")
    if not isinstance(ops, list):
        c.fail("ops", "must be a list", ops)
    if len(ops) > MAX_OPS:
        c.fail("ops", f"has {len(ops)} entries, more than the cap of {MAX_OPS}")
    cur = in_size
    for j, e in enumerate(ops):
        cur = _check_op(c, e, f"ops[{j}]", cur, limit)
    out = c.size(c.get(record, "output_size", "output_size"), "output_size")
    if out != cur:
        c.fail("output_size", f"is {out}, but the ops end at {cur}")
    return record
