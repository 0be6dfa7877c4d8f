"""Face parsing masks for paste-back (facexlib's ParseNet, user-supplied weights).

``FaceParser.mask(face)`` gives a soft (S, S) mask of the face proper (skin, brows, eyes,
ears, nose, mouth, lips) on an FFHQ-aligned crop, excluding background, hair, hat, neck
and clothes, so a restored face is pasted back without its background square.
``paste_back(..., face_mask=parser.mask(face))`` uses it.

Weights: the ``facexlib-parsenet`` asset, read with ``torch.load(weights_only=True)`` or
safetensors.
"""

from __future__ import annotations

import functools

import numpy as np

# CelebAMask-HQ's 19 classes; 1 = part of the face to paste, 0 = keep the photo's pixels
# (0 background, 14 neck, 16 cloth, 17 hair, 18 hat).
_FACE_CLASSES = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0], np.float32)


@functools.lru_cache(maxsize=2)
def _network(path: str, size: int, device: str):
    import torch
    from facexlib.parsing.parsenet import ParseNet

    from .detection import ModelLoadError
    from .retinaface import load_state_dict

    net = ParseNet(in_size=size, out_size=size, parsing_ch=19)
    try:
        net.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit ParseNet-{size}: {str(e).splitlines()[0]}") from None
    return net.eval().to(torch.device(device))


class FaceParser:
    """Soft face masks from ParseNet; ``size`` is the network's input side (512 released)."""

    name = "parsenet"

    def __init__(self, *, model_path: str | None = None, size: int = 512, device: str = "cpu",
                 blur: float = 0.02, border: float = 0.02):
        if size < 32 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 32, got {size}")
        self.model_path = model_path
        self.size = int(size)
        self.device = device
        self.blur = float(blur)
        self.border = float(border)
        self.config = {"size": self.size, "device": device, "blur": self.blur, "border": self.border}

    def _model(self):
        from reface_core.assets import resolve

        return _network(str(resolve("facexlib-parsenet", self.model_path)), self.size, self.device)

    def labels(self, face: np.ndarray) -> np.ndarray:
        """(S, S) int class map of an FFHQ-aligned RGB crop (at the crop's own size)."""
        import cv2
        import torch

        from .detection import check_image

        face = check_image(face, "face")
        h, w = face.shape[:2]
        x = cv2.resize(face, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            logits = self._model()(x.to(self.device))[0]
        lab = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        return cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)

    def mask(self, face: np.ndarray) -> np.ndarray:
        """(S, S) float32 soft mask in [0, 1]: 1 on the face, feathered edges, 0 at the border."""
        import cv2

        lab = self.labels(face)
        m = _FACE_CLASSES[lab]
        s = m.shape[0]
        sigma = max(self.blur * s, 0.5)
        # Two blurs: a wide, smooth falloff so no parsing edge shows as a seam.
        for _ in range(2):
            m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma)
        b = max(1, int(round(self.border * s)))
        m[:b, :] = 0
        m[-b:, :] = 0
        m[:, :b] = 0
        m[:, -b:] = 0
        return np.clip(m, 0.0, 1.0).astype(np.float32)
