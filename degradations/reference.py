"""A straightforward per-image NumPy/OpenCV implementation of the ``gfpgan``-family pipeline.

This is how the published training code degrades one image (``cv2.filter2D`` with the
full 41x41 kernel, ``cv2.resize``, NumPy noise, ``cv2.imencode`` JPEG, resize back). It
exists for two jobs: the baseline that ``perf/bench_degradations.py`` times the fast
paths against, and an independent check (tests) that our FFT/torch implementation
computes the same images from the same records.
"""

from __future__ import annotations

import cv2
import numpy as np

from .kernels import make_kernel

_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
           "area": cv2.INTER_AREA}
SUPPORTED_OPS = ("blur", "motion", "resize", "noise", "jpeg", "color_shift", "gray", "color_jitter")


_TV_GRAY = np.array([0.2989, 0.587, 0.114], np.float32)  # torchvision's grayscale weights


def _color_jitter(img: np.ndarray, op: dict) -> np.ndarray:
    """torchvision's adjust_brightness/contrast/saturation/hue on an HWC float image."""
    for fn in op["order"]:
        f = np.float32(op[fn])
        if fn == "brightness":
            img = np.clip(img * f, 0, 1)
        elif fn == "contrast":
            mean = np.float32((img @ _TV_GRAY).mean())
            img = np.clip(f * img + (1 - f) * mean, 0, 1)
        elif fn == "saturation":
            gray = (img @ _TV_GRAY)[..., None]
            img = np.clip(f * img + (1 - f) * gray, 0, 1)
        else:
            hsv = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = np.mod(hsv[..., 0] + f * 360.0, 360.0)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img


def reference_apply(image: np.ndarray, record: dict) -> np.ndarray:
    """Apply a ``gfpgan``-family record to an RGB ``uint8`` image with OpenCV, per image.

    Supports Gaussian noise, bilinear/bicubic resizes, colour shift, gray, and
    ``color_jitter`` (torchvision's formulas, in NumPy/OpenCV). Poisson noise and sinc
    filters (Real-ESRGAN) are not part of it.
    """
    img = image.astype(np.float32) / 255.0
    for op in record["ops"]:
        if not op.get("applied", True):
            continue
        name = op["op"]
        if name in ("blur", "motion"):
            k = make_kernel(**op["kernel"]).astype(np.float32)
            img = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
        elif name == "resize":
            h, w = op["size"]
            img = cv2.resize(img, (w, h), interpolation=_INTERP[op["mode"]])
        elif name == "noise" and op["type"] == "gaussian":
            c = 1 if op["gray"] else 3
            z = np.random.Generator(np.random.PCG64(op["seed"])).standard_normal(
                (c,) + img.shape[:2], dtype=np.float32)
            img = np.clip(img + z.transpose(1, 2, 0) * np.float32(op["sigma"] / 255.0), 0, 1)
        elif name == "jpeg":
            u8 = np.clip(np.round(np.clip(img, 0, 1) * 255.0), 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(op["quality"])])
            if not ok:
                raise RuntimeError(f"OpenCV failed to JPEG-encode a {u8.shape} image")
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        elif name == "color_shift":
            img = np.clip(img + np.asarray(op["shift"], np.float32) / 255.0, 0, 1)
        elif name == "gray":
            g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
            img = np.repeat(g[..., None], 3, axis=2)
        elif name == "color_jitter":
            img = _color_jitter(np.clip(img, 0, 1), op)
        else:
            raise ValueError(f"the OpenCV reference does not implement op {name!r} "
                             f"(supported: {', '.join(SUPPORTED_OPS)})")
    return np.clip(np.round(np.clip(img, 0, 1) * 255.0), 0, 255).astype(np.uint8)
