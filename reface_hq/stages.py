"""The per-row (map) stages of the build, in pipeline order.

decode -> detect_align -> quality -> fingerprint -> embed

Each is a dataclass (its fields are its config), runs on a batch of rows, and turns bad
input into status rows. Global stages (dedupe, identity grouping, split) need all rows at
once and live in :mod:`reface_hq.dedupe` and :mod:`reface_hq.identity`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from reface_core.fsnames import path_from_text
from reface_core.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
    save_image,
)
from reface_core.iqa import MusiqScorer  # shared with the benchmark's musiq metric

from . import schema
from .exclusion import row_keys
from .stage_protocol import Stage, process_cache


def pixel_digest(image: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps(list(image.shape)).encode("ascii"))
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def is_grayscale(image: np.ndarray, tolerance: float = 3.0) -> bool:
    """True when the channels agree everywhere but for noise/JPEG chroma residue."""
    small = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    f = small.astype(np.int16)
    spread = np.maximum(np.abs(f[..., 0] - f[..., 1]), np.abs(f[..., 1] - f[..., 2]))
    return float(np.percentile(spread, 99)) <= tolerance


def colorfulness(image: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness: 0 for gray, ~100 for vivid photos."""
    f = image.astype(np.float32)
    rg = f[..., 0] - f[..., 1]
    yb = 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def laplacian_variance(image: np.ndarray, size: int = 256, centre: float = 0.5) -> float:
    """Blur measure: variance of the Laplacian over the central ``centre`` fraction of an
    aligned face, as if the crop were ``size`` px.

    The centre of an FFHQ crop is the face itself, always inside the photo: the
    background (bokeh is not a defect) and the padding FFHQ adds where the crop leaves
    the photo (blurred fill, or black edges without padding) would distort the number.
    A fixed scale makes 256, 512 and 1024 crops comparable; 256 keeps it a downscale.
    """
    import cv2
    h, w = image.shape[:2]
    dy, dx = int(h * (1 - centre) / 2), int(w * (1 - centre) / 2)
    gray = cv2.cvtColor(np.ascontiguousarray(image[dy:h - dy, dx:w - dx]), cv2.COLOR_RGB2GRAY)
    side = max(8, int(round(size * centre)))
    if gray.shape[0] != side or gray.shape[1] != side:
        interp = cv2.INTER_AREA if gray.shape[0] > side else cv2.INTER_CUBIC
        gray = cv2.resize(gray, (side, side), interpolation=interp)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@dataclasses.dataclass
class Decode(Stage):
    """Read and validate the source photo: hashes, size, grayscale; exclusion list.

    ``min_source_side``: a photo whose shorter side is below it cannot hold a face of
    the wanted size, so it is dropped here (``source_too_small``) before detection.
    """

    name = "decode"
    min_source_side: int = 128
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 200_000_000
    exclusion: tuple[str, ...] = ()

    def process_row(self, row: dict) -> list[dict]:
        excluded = set(self.exclusion)
        if row_keys(row) & excluded:
            return [schema.drop(row, self.name, "excluded", "origin or path is on the exclusion list")]
        path = row.get("local_path")
        path = path_from_text(path) if path else None
        if not path or not Path(path).is_file():
            return [schema.drop(row, self.name, "missing_file", f"{path!r} does not exist")]
        size = Path(path).stat().st_size
        if size > self.max_bytes:
            return [schema.drop(row, self.name, "file_too_large",
                                f"{size:,} bytes exceeds max_bytes {self.max_bytes:,}")]
        data = Path(path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in excluded:
            return [schema.drop(dict(row, sha256=sha), self.name, "excluded", "content hash is on the exclusion list")]
        try:
            image = load_image(data, max_pixels=self.max_pixels, name=row.get("origin"))
        except ImageTooLargeError as e:
            return [schema.drop(dict(row, sha256=sha), self.name, "image_too_large", str(e))]
        except ImageLoadError as e:
            return [schema.drop(dict(row, sha256=sha), self.name, "decode_error", str(e))]
        pix = pixel_digest(image)
        h, w = image.shape[:2]
        out = dict(row, sha256=sha, pixel_sha256=pix, width=w, height=h,
                   grayscale=is_grayscale(image))
        if pix in excluded:
            return [schema.drop(out, self.name, "excluded", "pixel hash is on the exclusion list")]
        if min(h, w) < self.min_source_side:
            return [schema.drop(out, self.name, "source_too_small",
                                f"{w}x{h} photo: shorter side below {self.min_source_side} px")]
        return [out]


@dataclasses.dataclass
class DetectAlign(Stage):
    """Detect faces (faces/) and write FFHQ-aligned crops to ``folder``.

    The detector works on a copy downscaled to ``detect_max_side`` (HOG cost grows with
    the pixel count) and maps boxes back; landmarks and the crop come from the
    full-resolution photo. ``upsample=0`` for the dlib detectors finds faces from ~80 px at
    the working scale, which the quality gate (128 px by default) needs anyway.
    One row per face, ``face_id = <row_id>-<index>``; no face -> ``no_face``.
    """

    name = "detect_align"
    folder: str = "aligned"
    detector: str = "dlib-hog"
    output_size: int = 512
    detect_max_side: int = 1024
    transform_size: int | None = None   # None: the FFHQ recipe's 4x output_size
    enable_padding: bool = True          # FFHQ's reflect-and-blur fill outside the photo
    upsample: int = 0
    min_score: float | None = None
    max_faces: int | None = None
    # A photo with no face at ``upsample`` is searched once more at this upsampling (dlib
    # detectors), so a face too small for the first pass is reported as face_too_small by
    # the quality gate, not as no_face. None: no second pass.
    retry_upsample: int | None = 1

    def __post_init__(self):
        if self.output_size not in (256, 512, 1024):
            raise ValueError(f"output_size must be 256, 512 or 1024, got {self.output_size}")
        # Checked here, not at first use: process_row turns a ValueError into a status row,
        # so a misspelt name would drop every photo as "detect_align_error" and exit 0.
        from faces.detection import DETECTORS, get_detector
        if self.detector not in DETECTORS:
            get_detector(self.detector)  # raises the "did you mean" error
        if self.transform_size is not None:
            from faces.alignment import MAX_TRANSFORM_SIZE, _check_size
            _check_size(self.transform_size, "transform_size", MAX_TRANSFORM_SIZE)

    def _detector(self, upsample: int | None = None):
        from faces.detection import get_detector
        options = {"max_side": self.detect_max_side}
        if self.detector.startswith("dlib"):
            options["upsample"] = self.upsample if upsample is None else upsample
        key = f"detector:{self.detector}:{sorted(options.items())}"
        return process_cache(key, lambda: get_detector(self.detector, **options))

    def process_row(self, row: dict) -> list[dict]:
        from faces.alignment import align_ffhq

        image = load_image(path_from_text(row["local_path"]), name=row.get("origin"))
        detections = self._detector().detect(image, min_score=self.min_score)
        if (not detections and self.detector.startswith("dlib")
                and self.retry_upsample is not None and self.retry_upsample > self.upsample):
            detections = self._detector(self.retry_upsample).detect(image,
                                                                    min_score=self.min_score)
        if self.max_faces is not None:
            detections = detections[: self.max_faces]
        if not detections:
            return [schema.drop(dict(row, n_faces=0), self.name, "no_face",
                                f"{self.detector} found no face")]
        out = []
        for k, det in enumerate(detections):
            lm = det.landmarks68 if det.landmarks68 is not None else det.landmarks5
            crop = align_ffhq(image, np.asarray(lm, dtype=np.float32),
                              output_size=self.output_size,
                              transform_size=self.transform_size,
                              enable_padding=self.enable_padding)
            face_id = f"{row['row_id']}-{k}"
            path = Path(self.folder) / f"{face_id}.png"
            save_image(path, crop)
            out.append(dict(
                row, face_id=face_id, face_index=k, n_faces=len(detections),
                detector=det.detector, det_score=float(det.score),
                box=[float(v) for v in det.box],
                landmarks5=np.asarray(det.landmarks5, dtype=np.float32).tolist(),
                face_size=float(det.size), aligned_path=str(path),
                aligned_size=self.output_size))
        return out


@dataclasses.dataclass
class Quality(Stage):
    """Gate faces on size in the source, sharpness, colour, and optionally MUSIQ.

    ``musiq``: ``"auto"`` scores when asset ``pyiqa-musiq-koniq`` resolves (null
    otherwise), ``"off"`` never, ``"on"`` requires it (AssetNotFoundError when missing).
    """

    name = "quality"
    min_face_size: float = 128.0
    min_sharpness: float = 50.0
    drop_grayscale: bool = True
    musiq: str = "auto"
    musiq_path: str | None = None
    min_musiq: float | None = None

    def __post_init__(self):
        if self.musiq not in ("auto", "off", "on"):
            raise ValueError(f"musiq must be 'auto', 'off' or 'on', got {self.musiq!r}")
        if self.min_musiq is not None and self.musiq == "off":
            raise ValueError(f"min_musiq={self.min_musiq} needs MUSIQ scores, but musiq is 'off'")

    def _musiq(self):
        if self.musiq == "off":
            return None
        # A MUSIQ threshold without the model would keep every face without a word.
        required = self.musiq == "on" or self.min_musiq is not None
        from reface_core.assets import AssetIntegrityError, AssetNotFoundError, resolve

        def factory():
            try:
                path = resolve("pyiqa-musiq-koniq", self.musiq_path)
            except AssetNotFoundError as e:
                if required or isinstance(e, AssetIntegrityError):  # corrupt, or a bad override
                    raise
                return None
            return MusiqScorer(str(path))
        return process_cache(f"musiq:{self.musiq_path}:{self.musiq}:{required}", factory)

    def process(self, rows: list[dict]) -> list[dict]:
        # A missing model is a configuration error for the whole run, not a bad row:
        # resolve it here so AssetNotFoundError reaches the caller.
        if any(schema.is_ok(r) for r in rows):
            self._musiq()
        return super().process(rows)

    def process_row(self, row: dict) -> list[dict]:
        crop = load_image(row["aligned_path"])
        out = dict(row, sharpness=laplacian_variance(crop), colorfulness=colorfulness(crop))
        if out.get("grayscale") is None:
            out["grayscale"] = is_grayscale(crop)
        scorer = self._musiq()
        if scorer is not None:
            out["musiq"] = scorer(crop)
        if (out.get("face_size") or 0) < self.min_face_size:
            return [schema.drop(out, self.name, "face_too_small",
                                f"face of {out.get('face_size', 0):.0f} px in the source, "
                                f"below {self.min_face_size:.0f}")]
        if out["sharpness"] < self.min_sharpness:
            return [schema.drop(out, self.name, "blurry",
                                f"Laplacian variance {out['sharpness']:.1f} below "
                                f"{self.min_sharpness}")]
        if self.drop_grayscale and out["grayscale"]:
            return [schema.drop(out, self.name, "grayscale", "photo has no colour")]
        if self.min_musiq is not None and out.get("musiq") is not None \
                and out["musiq"] < self.min_musiq:
            return [schema.drop(out, self.name, "low_musiq",
                                f"MUSIQ {out['musiq']:.1f} below {self.min_musiq}")]
        return [out]


@dataclasses.dataclass
class Fingerprint(Stage):
    """Perceptual hashes of the aligned crop (imagehash pHash, 64 bits as hex): of the whole
    crop (``phash``) and of its centre ``face_fraction`` (``face_phash``), which holds the
    face alone, so the same face on another background or crop hashes alike."""

    name = "fingerprint"
    version = 2
    hash_size: int = 8
    face_fraction: float = 0.5

    def process_row(self, row: dict) -> list[dict]:
        import imagehash
        from PIL import Image
        crop = load_image(row["aligned_path"])
        h, w = crop.shape[:2]
        dy, dx = int(h * (1 - self.face_fraction) / 2), int(w * (1 - self.face_fraction) / 2)
        face = np.ascontiguousarray(crop[dy:h - dy, dx:w - dx])
        return [dict(row, phash=str(imagehash.phash(Image.fromarray(crop),
                                                    hash_size=self.hash_size)),
                     face_phash=str(imagehash.phash(Image.fromarray(face),
                                                    hash_size=self.hash_size)))]


@dataclasses.dataclass
class Embed(Stage):
    """Identity embedding of the aligned crop (faces/ embedder), in batches."""

    name = "embed"
    embedder: str = "dlib"
    batch_size: int = 16

    def __post_init__(self):
        # Fail before the build spends minutes on the stages before this one.
        from faces.embedding import EMBEDDERS, get_embedder
        if self.embedder not in EMBEDDERS:
            get_embedder(self.embedder)  # raises the "did you mean" error
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def _embedder(self):
        from faces.embedding import get_embedder
        return process_cache(f"embedder:{self.embedder}", lambda: get_embedder(self.embedder))

    def process(self, rows: list[dict]) -> list[dict]:
        out = list(rows)
        live = [i for i, r in enumerate(rows) if schema.is_ok(r)]
        if not live:
            return out
        model = self._embedder()
        for start in range(0, len(live), self.batch_size):
            idx = live[start:start + self.batch_size]
            crops, ok_idx = [], []
            for i in idx:
                try:
                    crops.append(load_image(rows[i]["aligned_path"]))
                    ok_idx.append(i)
                except ImageLoadError as e:
                    out[i] = schema.drop(rows[i], self.name, "embed_error", str(e))
            if not crops:
                continue
            vectors = np.asarray(model.embed(crops), dtype=np.float32)
            for i, vec in zip(ok_idx, vectors, strict=False):
                out[i] = dict(rows[i], embedder=model.name, embedding=vec.tolist())
        return out
