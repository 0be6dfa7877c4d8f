"""Face detection, landmarks, FFHQ alignment, identity embeddings and attributes.

Importing this package loads no model: detectors, predictors and networks load on first use
and are cached per process.

    import faces
    from reface_core.imageio import load_image

    crops = faces.detect_and_align(load_image("photo.jpg"))          # FFHQ-aligned 512 crops
    vectors = faces.get_embedder("dlib").embed([c.image for c in crops])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .alignment import (
    align_ffhq,
    ffhq_matrix,
    ffhq_quad,
    ffhq_template,
    paste_back,
    similarity_align,
    similarity_matrix,
    transform_points,
)
from .attributes import (
    AttributePredictor,
    FaceAttributes,
    available_attribute_predictors,
    get_attribute_predictor,
)
from .detection import (
    FaceDetection,
    FaceDetector,
    ModelLoadError,
    available_detectors,
    get_detector,
    predict_landmarks,
)
from .embedding import FaceEmbedder, available_embedders, check_same_embedder, get_embedder

__all__ = [
    "AlignedFace", "AttributePredictor", "FaceAttributes", "available_attribute_predictors",
    "get_attribute_predictor", "FaceDetection", "FaceDetector", "FaceEmbedder",
    "align_ffhq", "available_detectors", "available_embedders", "check_same_embedder",
    "detect_and_align", "ffhq_matrix", "ffhq_quad", "ffhq_template", "get_detector",
    "get_embedder", "ModelLoadError", "paste_back", "predict_landmarks", "similarity_align",
    "similarity_matrix", "transform_points",
]


@dataclass
class AlignedFace:
    """One FFHQ-aligned crop and the detection it came from (source-image coordinates)."""

    image: np.ndarray          # (S, S, 3) uint8 FFHQ-aligned crop
    detection: FaceDetection   # in source-image coordinates

    @property
    def matrix(self) -> np.ndarray:
        """2x3 source-image -> crop transform (for ``paste_back``)."""
        lm = self.detection.landmarks68 if self.detection.landmarks68 is not None \
            else self.detection.landmarks5
        return ffhq_matrix(lm, self.image.shape[0])


def detect_and_align(image: np.ndarray, *, detector: FaceDetector | str | None = None,
                     output_size: int = 512, min_score: float | None = None,
                     min_size: float = 0) -> list[AlignedFace]:
    """Detect every face in ``image`` and FFHQ-align each to ``output_size``.

    ``detector``: a built detector or a name for ``get_detector`` (default ``dlib-hog``).
    68-point landmarks are used when the detector gives them (the FFHQ script's input),
    otherwise the 5 points. Faces come in detection order (highest score first); [] if none.
    """
    if detector is None or isinstance(detector, str):
        detector = _cached_detector(detector or "dlib-hog")
    dets = detector.detect(image, min_score=min_score, min_size=min_size)
    out = []
    for d in dets:
        lm = d.landmarks68 if d.landmarks68 is not None else d.landmarks5
        out.append(AlignedFace(image=align_ffhq(image, lm, output_size), detection=d))
    return out


_DETECTORS: dict[str, FaceDetector] = {}


def _cached_detector(name: str) -> FaceDetector:
    if name not in _DETECTORS:
        _DETECTORS[name] = get_detector(name)
    return _DETECTORS[name]
