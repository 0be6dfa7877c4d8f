"""insightface SCRFD detector (antelopev2 / buffalo_l packs) through onnxruntime.

The ONNX file comes from the user's insightface pack (``insightface-antelopev2`` ->
``scrfd_10g_bnkps.onnx``, ``insightface-buffalo_l`` -> ``det_10g.onnx``) or an explicit
``model_path``. Decoding, NMS and letterboxing are insightface's own ``SCRFD`` class; this
wrapper adds the common interface.
"""

from __future__ import annotations

import functools

import numpy as np

from .detection import FaceDetector, ModelLoadError

PACK_FILES = {"antelopev2": "scrfd_10g_bnkps.onnx", "buffalo_l": "det_10g.onnx"}


@functools.lru_cache(maxsize=4)
def _model(path: str, input_size: tuple[int, int], nms_threshold: float):
    import onnxruntime as ort
    from insightface.model_zoo.scrfd import SCRFD

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        model = SCRFD(model_file=path, session=session)
    except Exception as e:  # onnxruntime/insightface raise many types; name the file
        raise ModelLoadError(f"{path}: not a usable SCRFD ONNX model ({e})") from None
    if not model.use_kps:
        raise ModelLoadError(f"{path}: this SCRFD model has no keypoint outputs; a *_bnkps model is needed")
    model.prepare(-1, input_size=input_size, nms_thresh=nms_threshold)
    return model


class ScrfdDetector(FaceDetector):
    """SCRFD with 5 keypoints. Score: face probability."""

    name = "scrfd"
    default_min_score = 0.5

    def __init__(self, *, model_path: str | None = None, pack: str = "antelopev2",
                 input_size: tuple[int, int] = (640, 640), nms_threshold: float = 0.4,
                 max_side: int | None = None):
        super().__init__(max_side=max_side)
        if pack not in PACK_FILES:
            raise ValueError(f"pack must be one of {sorted(PACK_FILES)}, got {pack!r}")
        size = tuple(int(v) for v in input_size)
        if len(size) != 2 or min(size) < 32 or any(v % 32 for v in size):
            raise ValueError(f"input_size must be (width, height), multiples of 32, got {input_size!r}")
        self.model_path = model_path
        self.pack = pack
        self.input_size = size
        self.nms_threshold = float(nms_threshold)
        self.config.update(pack=pack, input_size=list(size), nms_threshold=self.nms_threshold)

    def _path(self) -> str:
        from reface_core.assets import resolve_member

        return str(resolve_member(f"insightface-{self.pack}", PACK_FILES[self.pack],
                                  self.model_path))

    def _detect_raw(self, image, min_score):
        model = _model(self._path(), self.input_size, self.nms_threshold)
        bgr = np.ascontiguousarray(image[..., ::-1])
        det, kps = model.detect(bgr, input_size=self.input_size, det_thresh=float(min_score))
        return [(d[:4], float(d[4]), k) for d, k in zip(det, kps, strict=False)]
