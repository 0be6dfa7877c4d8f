"""One safe image loader and one atomic saver for the whole toolkit.

``load_image`` always returns an ``(H, W, 3)`` RGB ``uint8`` array: EXIF orientation is
applied, grayscale / palette / alpha / 16-bit inputs are converted, and the pixel count is
checked *before* decoding so a decompression bomb never allocates its memory. Anything
that is not a readable image raises :class:`ImageLoadError` naming the input.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path

#: Default cap on width*height. 64 MP covers 8K photos and rejects bombs long before
#: they exhaust memory; callers that need more pass ``max_pixels`` explicitly.
DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


class ImageLoadError(ValueError):
    """The input could not be read as an image; the message names the input."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than the configured cap."""


def _describe(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes in memory>"
    return str(src)


def _to_rgb_uint8(img: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data comes in as I;16* or as 32-bit "I" holding 0..65535.
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        # Transparent pixels show the background, not whatever colour hides under alpha 0.
        return np.asarray(Image.alpha_composite(base, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def open_image(src: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Open, check the pixel cap, decode fully and apply EXIF orientation; return PIL."""
    label = _describe(src, name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageLoadError(label, "empty input, not an image")
        fp = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.exists():
            raise ImageLoadError(label, "file does not exist")
        if path.is_dir():
            raise ImageLoadError(label, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(label, "empty file, not an image")
        fp = path
    try:
        with warnings.catch_warnings():
            # Our own cap replaces PIL's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_cap = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = old_cap
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                img.close()
                raise ImageTooLargeError(
                    label, f"{w}x{h} = {w * h:,} pixels exceeds the cap of {max_pixels:,} "
                           "(pass a larger max_pixels if this image is trusted)")
            img.load()
            img = ImageOps.exif_transpose(img) or img
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Truncated JPEG/PNG data surfaces as OSError("image file is truncated ...").
        raise ImageLoadError(label, f"corrupt or truncated image ({e})") from None
    return img


def load_image(src: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> np.ndarray:
    """Load ``src`` (a path or encoded bytes) as an ``(H, W, 3)`` RGB ``uint8`` array."""
    img = open_image(src, max_pixels=max_pixels, name=name)
    try:
        arr = _to_rgb_uint8(img)
    finally:
        img.close()
    return np.ascontiguousarray(arr)


def image_size(src: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding pixels."""
    try:
        with Image.open(src) as img:
            return img.size
    except UnidentifiedImageError:
        raise ImageLoadError(str(src), "not a recognised image format") from None
    except OSError as e:
        raise ImageLoadError(str(src), f"unreadable image ({e})") from None


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF"}


def encode_image(array: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode an RGB/gray ``uint8`` array to bytes in ``fmt``."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    kwargs = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "PNG":
        kwargs = {"compress_level": 6}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def save_image(path: str | os.PathLike, array: np.ndarray, *, quality: int = 95) -> Path:
    """Write ``array`` to ``path`` atomically (temporary name, then rename).

    The format follows the suffix (.png, .jpg/.jpeg, .webp, .bmp, .tif). A reader never
    sees a half-written file, and an existing file is replaced only by a complete one.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r}; "
                         f"use one of {sorted(_FORMATS)}")
    data = encode_image(array, fmt=fmt, quality=quality)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


IMAGE_SUFFIXES = frozenset(_FORMATS) | {".pgm", ".ppm"}


@functools.lru_cache(maxsize=1)
def readable_suffixes() -> frozenset[str]:
    """Suffixes of every format Pillow can open (``.jfif``, ``.gif``, ``.tif``, ``.tga``,
    ...) plus :data:`IMAGE_SUFFIXES`: what a folder scan picks up."""
    from PIL import Image
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN) | IMAGE_SUFFIXES


def iter_image_files(root: str | os.PathLike, recursive: bool = True):
    """Image files under ``root`` (any suffix Pillow reads, see :func:`readable_suffixes`)
    in sorted (deterministic) order, hidden files skipped."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    suffixes = readable_suffixes()
    for p in sorted(root.glob(pattern)):
        if p.is_file() and p.suffix.lower() in suffixes and not any(
                part.startswith(".") for part in p.relative_to(root).parts):
            yield p
