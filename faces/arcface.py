"""ArcFace identity embeddings (insightface packs) through onnxruntime.

The recogniser ONNX comes from the user's insightface pack (``insightface-antelopev2`` ->
``glintr100.onnx``, ``insightface-buffalo_l`` -> ``w600k_r50.onnx``) or an explicit
``model_path``. Inputs are FFHQ-aligned crops: the ArcFace 112 crop is a fixed similarity
warp of the FFHQ template onto insightface's ArcFace template, so no detector runs.
Preprocessing (mean/std, RGB order) is insightface's ``ArcFaceONNX``.
"""

from __future__ import annotations

import functools

import numpy as np

from .detection import ModelLoadError
from .embedding import FaceEmbedder

PACK_FILES = {"antelopev2": "glintr100.onnx", "buffalo_l": "w600k_r50.onnx"}


@functools.lru_cache(maxsize=4)
def _model(path: str):
    import onnxruntime as ort
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        model = ArcFaceONNX(model_file=path, session=session)
    except Exception as e:  # onnxruntime/insightface raise many types; name the file
        raise ModelLoadError(f"{path}: not a usable ArcFace ONNX model ({e})") from None
    shape = model.input_shape
    if len(shape) != 4 or shape[2] != shape[3] or not isinstance(shape[2], int):
        raise ModelLoadError(f"{path}: expected a square NCHW input, got {shape}")
    return model


class ArcFaceEmbedder(FaceEmbedder):
    """insightface ArcFace recogniser; ``name`` is ``arcface-<pack>``."""

    def __init__(self, *, pack: str = "antelopev2", model_path: str | None = None,
                 batch_size: int = 32):
        super().__init__(batch_size=batch_size)
        if pack not in PACK_FILES:
            raise ValueError(f"pack must be one of {sorted(PACK_FILES)}, got {pack!r}")
        self.pack = pack
        self.model_path = model_path
        self.name = f"arcface-{pack}"
        self.config.update(pack=pack)
        self._dim: int | None = None

    def _path(self) -> str:
        from reface_core.assets import resolve_member

        return str(resolve_member(f"insightface-{self.pack}", PACK_FILES[self.pack],
                                  self.model_path))

    @property
    def dim(self) -> int:  # known once the model is loaded (512 for the released packs)
        if self._dim is None:
            out = _model(self._path()).output_shape
            self._dim = int(out[-1]) if isinstance(out[-1], int) else 512
        return self._dim

    def crops(self, faces: list[np.ndarray]) -> list[np.ndarray]:
        """The ArcFace-template crops (RGB) the network sees."""
        import cv2

        from .alignment import ffhq_template, template, umeyama

        size = int(_model(self._path()).input_shape[2])
        out = []
        for f in faces:
            m = umeyama(ffhq_template(f.shape[0]), template("arcface", size))
            out.append(cv2.warpAffine(f, m, (size, size), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT_101))
        return out

    def _embed_batch(self, faces):
        model = _model(self._path())
        # insightface takes BGR (it swaps to RGB itself).
        bgr = [np.ascontiguousarray(c[..., ::-1]) for c in self.crops(faces)]
        return np.asarray(model.get_feat(bgr), dtype=np.float32).reshape(len(faces), -1)
