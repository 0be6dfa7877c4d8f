"""The one interface every attribute backend implements, and the face sample it reads."""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..attribute_values import Attributes


@dataclass
class FaceSample:
    """One face to annotate.

    ``key`` identifies it (the manifest's ``face_id``, else the image path). Pixels come
    from ``image`` or, loaded on first use through the safe loader, from ``path``.
    ``aligned`` says the image already is an FFHQ-aligned face crop (Reface-HQ rows are);
    otherwise the caption pipeline detects and aligns the largest face first and fills
    ``face`` and ``detection``. ``row`` is the manifest row, for backends that read labels.
    """

    key: str
    path: Path | None = None
    image: np.ndarray | None = None
    aligned: bool = False
    row: Mapping[str, Any] = field(default_factory=dict)
    face: np.ndarray | None = None       # the FFHQ-aligned crop models look at
    detection: Any = None                # faces.FaceDetection in ``image`` coordinates
    error: str | None = None             # why pixels could not be had, if they could not

    def load(self) -> np.ndarray:
        if self.image is None:
            if self.path is None:
                raise ValueError(f"face {self.key!r} has neither an image nor a path")
            from reface_core.imageio import load_image
            self.image = load_image(self.path)
        return self.image

    def names(self) -> list[str]:
        """File-name keys this face may be listed under in a label file, most specific first."""
        out = [str(self.key)]
        candidates = [self.path, self.row.get("origin"), self.row.get("image_path"),
                      self.row.get("path")]
        for c in candidates:
            if c is None or (isinstance(c, float) and np.isnan(c)):
                continue
            base = os.path.basename(str(c).rstrip("/").split("?")[0])
            if base:
                out += [base, os.path.splitext(base)[0]]
        out.append(os.path.splitext(str(self.key))[0])
        return list(dict.fromkeys(out))


@dataclass
class ExtractionResult:
    """What a backend found for one face: attributes, maybe a caption, maybe an error.

    A failure is a result with ``error`` set (and usually no attributes), never an
    exception: one bad photo must not stop a long annotation job.
    """

    attributes: Attributes = field(default_factory=dict)
    caption: str | None = None
    error: str | None = None


class AttributeExtractor(abc.ABC):
    """A backend: faces in, per-face attributes with confidences out.

    ``name`` is the backend name used as the attributes' ``source`` and in the combining
    precedence. ``needs_pixels`` is False for backends that only read labels, so the
    pipeline does not load or detect anything for them.
    """

    name: str = ""
    needs_pixels: bool = True

    @abc.abstractmethod
    def extract(self, samples: Sequence[FaceSample]) -> list[ExtractionResult]:
        """One result per sample, in order."""

    #: Manifest columns this backend reads; a manifest without one is refused up front.
    required_columns: tuple[str, ...] = ()

    def config(self) -> dict:
        """JSON-able settings that change results (recorded to make resume safe)."""
        return {"name": self.name}
