"""RetinaFace detector (facexlib's network) with user-supplied weights.

Weights: ``retinaface-resnet50`` (facexlib's ``detection_Resnet50_Final.pth``) or, for
``network="mobile0.25"``, ``retinaface-mobilenet0.25``; resolved through
``reface_core.assets`` and read with ``torch.load(weights_only=True)`` (or safetensors), so
a weights file can never run code. The network, prior boxes, decoding and NMS are
facexlib's; this wrapper adds the common interface (RGB input, downscaling, score and
size filters, ``FaceDetection`` records).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from .detection import FaceDetector, ModelLoadError

_ASSETS = {"resnet50": "retinaface-resnet50", "mobile0.25": "retinaface-mobilenet0.25"}


def load_state_dict(path: str) -> dict:
    """A torch state dict from ``path`` without unpickling arbitrary objects."""
    import torch

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe or corrupt pickle: refuse, name the file
            raise ModelLoadError(f"{path}: not a loadable weights-only torch checkpoint ({e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: expected a state dict, got {type(sd).__name__}")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


@functools.lru_cache(maxsize=4)
def _network(path: str, network: str, device: str):
    import torch
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        # facexlib builds ResNet-50 with torchvision's deprecated pretrained=False argument.
        warnings.simplefilter("ignore", UserWarning)
        model = RetinaFace(network_name=network, half=False, phase="test", device=torch.device(device))
    sd = load_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit RetinaFace-{network}: "
                         f"{str(e).splitlines()[0]}") from None
    return model.eval()


class RetinaFaceDetector(FaceDetector):
    """RetinaFace (ResNet-50 or MobileNet-0.25) via facexlib. Score: face probability."""

    name = "retinaface"
    default_min_score = 0.9

    def __init__(self, *, model_path: str | None = None, network: str = "resnet50",
                 device: str = "cpu", nms_threshold: float = 0.4, max_side: int | None = 1024):
        super().__init__(max_side=max_side)
        if network not in _ASSETS:
            raise ValueError(f"network must be one of {sorted(_ASSETS)}, got {network!r}")
        if not 0 < nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        self.model_path = model_path
        self.network = network
        self.device = device
        self.nms_threshold = float(nms_threshold)
        self.config.update(network=network, device=device, nms_threshold=self.nms_threshold)

    def _model(self):
        from reface_core.assets import resolve

        return _network(str(resolve(_ASSETS[self.network], self.model_path)), self.network, self.device)

    def _detect_raw(self, image, min_score):
        import torch

        model = self._model()
        bgr = np.ascontiguousarray(image[..., ::-1])
        with torch.inference_mode():
            out = model.detect_faces(bgr, conf_threshold=float(min_score),
                                     nms_threshold=self.nms_threshold, use_origin_size=True)
        return [(row[:4], float(row[4]), row[5:15].reshape(5, 2)) for row in np.asarray(out)]
