"""Identity embeddings of FFHQ-aligned face crops behind one interface.

* ``dlib``: dlib's 128-d ResNet descriptor (``dlib-face-descriptor`` asset, offline);
* ``arcface-antelopev2`` / ``arcface-buffalo_l``: insightface ArcFace ONNX recognisers run
  with onnxruntime (user-supplied packs, see :mod:`faces.arcface`).

Inputs are FFHQ-aligned RGB uint8 square crops of any size, exactly what ``align_ffhq`` /
``detect_and_align`` produce and what the dataset stores. Because the alignment fixes
where the face is, no detector runs here: each backend derives its own crop from the known
face geometry of an FFHQ crop.

Every embedder has a ``name`` recorded with each vector; vectors of different names live
in different spaces and must never be compared (``check_same_embedder``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from reface_core.registry import Registry, load_target

#: Name -> ("module:Class", default options).
EMBEDDERS = Registry("face embedder", {
    "dlib": ("faces.embedding:DlibEmbedder", {}),
    "arcface-antelopev2": ("faces.arcface:ArcFaceEmbedder", {"pack": "antelopev2"}),
    "arcface-buffalo_l": ("faces.arcface:ArcFaceEmbedder", {"pack": "buffalo_l"}),
}, suggestions=2, sort=True)

# Where dlib's HOG detector puts the face box in an FFHQ-aligned crop, as fractions of the
# crop side (mean over 84 aligned photos; spread about 3% of the side). Landmarks are
# predicted inside this box instead of running a detector on every crop.
FFHQ_FACE_BOX = (0.19, 0.30, 0.79, 0.905)


def as_face_batch(faces: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Validate a batch of square RGB uint8 crops; return a list of contiguous arrays."""
    if isinstance(faces, np.ndarray):
        if faces.ndim == 3:
            faces = [faces]
        elif faces.ndim == 4:
            faces = list(faces)
        else:
            raise ValueError(f"faces: expected (S, S, 3) or (N, S, S, 3) uint8, got shape {faces.shape}")
    out = []
    for i, f in enumerate(faces):
        if not isinstance(f, np.ndarray):
            raise TypeError(f"face {i}: expected a numpy array, got {type(f).__name__}")
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"face {i}: expected an (S, S, 3) RGB crop, got shape {f.shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"face {i}: expected dtype uint8, got {f.dtype}")
        if f.shape[0] != f.shape[1]:
            raise ValueError(f"face {i}: expected a square FFHQ-aligned crop, got {f.shape[1]}x{f.shape[0]}")
        if f.shape[0] < 32:
            raise ValueError(f"face {i}: crop of {f.shape[0]} px is too small (need >= 32)")
        out.append(np.ascontiguousarray(f))
    return out


def l2_normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


class FaceEmbedder:
    """Base class: ``embed(faces) -> (N, dim)`` float32, L2-normalised."""

    name: str = ""
    dim: int = 0

    def __init__(self, batch_size: int = 32):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.config: dict = {"batch_size": self.batch_size}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"

    def _embed_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, faces: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        faces = as_face_batch(faces)
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._embed_batch(faces[i:i + self.batch_size])
                 for i in range(0, len(faces), self.batch_size)]
        return l2_normalize(np.concatenate(parts, axis=0))

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between rows of ``a`` and rows of ``b``."""
        return np.atleast_2d(a) @ np.atleast_2d(b).T


def check_same_embedder(name_a: str, name_b: str) -> None:
    """Raise when two vectors come from different embedders (different spaces)."""
    if name_a != name_b:
        raise ValueError(f"embeddings from different embedders cannot be compared: "
                         f"{name_a!r} vs {name_b!r}")


@functools.lru_cache(maxsize=4)
def _dlib_recognizer(path: str):
    import dlib

    from .detection import load_dlib_model

    return load_dlib_model(dlib.face_recognition_model_v1, path, "dlib face descriptor model")


class DlibEmbedder(FaceEmbedder):
    """dlib's 128-d ResNet face descriptor on FFHQ-aligned crops.

    dlib's 5-point predictor runs inside the known face box of the FFHQ crop
    (``face_box``), then dlib's own chip alignment (150 px, padding 0.25) feeds the network,
    as dlib trained it. ``num_jitters`` > 0 averages over random jitters (slower).
    """

    name = "dlib-resnet-v1"
    dim = 128

    def __init__(self, *, model_path: str | None = None, landmarks_path: str | None = None,
                 num_jitters: int = 0, face_box: Sequence[float] = FFHQ_FACE_BOX,
                 batch_size: int = 32):
        super().__init__(batch_size=batch_size)
        if int(num_jitters) < 0:
            raise ValueError(f"num_jitters must be >= 0, got {num_jitters}")
        box = tuple(float(v) for v in face_box)
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(f"face_box must be (x0, y0, x1, y1) fractions in [0, 1], got {face_box!r}")
        self.model_path = model_path
        self.landmarks_path = landmarks_path
        self.num_jitters = int(num_jitters)
        self.face_box = box
        self.config.update(num_jitters=self.num_jitters, face_box=list(box))

    def _model(self):
        from reface_core.assets import resolve

        return _dlib_recognizer(str(resolve("dlib-face-descriptor", self.model_path)))

    def chips(self, faces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The 150x150 dlib chips the network sees (for inspection and tests)."""
        import dlib

        from .detection import load_shape_predictor

        predictor = load_shape_predictor("5", self.landmarks_path)
        out = []
        for f in faces:
            s = f.shape[0]
            rect = dlib.rectangle(*(int(round(v * s)) for v in self.face_box))
            shape = predictor(f, rect)
            out.append(np.asarray(dlib.get_face_chip(f, shape, size=150, padding=0.25)))
        return out

    def _embed_batch(self, faces):
        model = self._model()
        chips = self.chips(faces)
        vecs = model.compute_face_descriptor(chips, self.num_jitters)
        return np.array([np.asarray(v) for v in vecs], dtype=np.float32).reshape(len(faces), self.dim)


def available_embedders() -> list[str]:
    return EMBEDDERS.names()


def get_embedder(name: str = "dlib", **options) -> FaceEmbedder:
    """Build embedder ``name`` ("dlib", "arcface-antelopev2", "arcface-buffalo_l")."""
    path, defaults = EMBEDDERS.get(name)
    from .detection import build_with_options

    return build_with_options(load_target(path), name, {**defaults, **options})
