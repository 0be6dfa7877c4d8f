"""Poisson noise against Real-ESRGAN's ``generate_poisson_noise`` formula."""

import cv2
import numpy as np
import pytest
from conftest import make_rgb

from degradations.ops import poisson_noise, to_tensor


def _reference_std(img: np.ndarray, gray: bool, seed: int) -> float:
    # basicsr: gray conversion, then round to 8 bits, then count levels.
    f = img.astype(np.float32) / 255.0
    if gray:
        f = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
    f = np.clip((f * 255.0).round(), 0, 255) / 255.0
    vals = 2 ** np.ceil(np.log2(len(np.unique(f))))
    out = np.random.default_rng(seed).poisson(f * vals) / vals
    return float((out - f).std())


@pytest.mark.parametrize("gray", [False, True])
def test_poisson_noise_strength_matches_real_esrgan(gray):
    # Smooth gradients plus texture: many distinct float gray levels after the mix, which
    # made the gray noise ~20x too weak before the mix was rounded back to 8 bits.
    img = make_rgb(256, 256, seed=3)
    ours = float(poisson_noise(to_tensor(img), seed=1, scale=1.0, gray=gray).std())
    ref = _reference_std(img, gray, seed=1)
    assert ours == pytest.approx(ref, rel=0.1)
