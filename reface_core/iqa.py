"""Image quality scorers shared by the dataset build (``reface_hq`` quality gate) and the
benchmark (``benchmarks`` metric ``musiq``), so both report the same number for one image.

Weights come through the asset resolver (``pyiqa-musiq-koniq``) and load with
``torch.load(weights_only=True)``; torch and pyiqa import only when a scorer is built.
"""

from __future__ import annotations

import numpy as np


class MusiqScorer:
    """MUSIQ (KonIQ-10k) through pyiqa's architecture, weights loaded safely by us.

    pyiqa's own loader calls ``torch.load(weights_only=False)``; we build the network
    without weights and load the state dict with ``weights_only=True``.
    """

    def __init__(self, path: str, **arch_options):
        import torch
        from pyiqa.archs.musiq_arch import MUSIQ

        self.net = MUSIQ(pretrained=False, num_class=1, **arch_options).eval()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "params" in state:
            state = state["params"]
        self.net.load_state_dict(state)

    def __call__(self, image: np.ndarray) -> float:
        import torch
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            return float(self.net(x).reshape(-1)[0])


__all__ = ["MusiqScorer"]
