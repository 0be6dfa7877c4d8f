"""faces.attributes: age and gender from the offline ONNX models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_rgb

import faces
from reface_core.imageio import load_image


@pytest.fixture(scope="module")
def predictor():
    return faces.get_attribute_predictor()


def test_unknown_predictor_is_a_clear_error():
    with pytest.raises(ValueError, match="did you mean 'age-gender-onnx'"):
        faces.get_attribute_predictor("age-gender")


def test_contract_on_any_crops(predictor):
    out = predictor.predict([make_rgb(128, 128, seed=s) for s in range(2)])
    assert len(out) == 2
    for a in out:
        assert isinstance(a, faces.FaceAttributes)
        assert a.gender in ("female", "male") and 0.5 <= a.gender_score <= 1
        assert 0.25 <= a.age <= 80
    assert predictor.predict([]) == []
    age_p, gender_p = predictor.probabilities([make_rgb(96, 96)])
    assert age_p.shape == (1, 81) and gender_p.shape == (1, 2)
    np.testing.assert_allclose(age_p.sum(1), 1, atol=1e-4)


def test_bad_input_is_a_clear_error(predictor):
    with pytest.raises(ValueError, match="square"):
        predictor.predict([np.zeros((64, 32, 3), np.uint8)])


def test_missing_model_file_raises_asset_not_found(tmp_path):
    from reface_core.assets import AssetNotFoundError

    p = faces.get_attribute_predictor(gender_path=str(tmp_path / "gender.onnx"))
    with pytest.raises(AssetNotFoundError, match="gender-onnx"):
        p.predict([make_rgb(64, 64)])


@pytest.mark.realdata
def test_gender_agrees_with_celeba_hq_folders(data_root, predictor):
    """celeba_hq_1024/{src,ref}/{female,male}/: the folder names give gender."""
    files = sorted((data_root / "celeba_hq_1024").glob("*/*/*.jpg"))
    truth = [f.parent.name for f in files]
    assert len(files) == 56 and set(truth) == {"female", "male"}
    imgs = [load_image(f) for f in files]
    # CelebA-HQ photos are aligned by a recipe close to FFHQ's, so they go in directly.
    preds = predictor.predict(imgs)
    agree = np.mean([p.gender == t for p, t in zip(preds, truth, strict=False)])
    ages = np.array([p.age for p in preds])
    print(f"age-gender-onnx on celeba_hq_1024: gender agrees on {agree:.1%} of {len(files)} "
          f"photos; age median {np.median(ages):.1f}, range {ages.min():.1f}-{ages.max():.1f}")
    assert agree >= 0.95
    assert 10 <= ages.min() and ages.max() <= 75 and 18 <= np.median(ages) <= 45
    # Our own FFHQ alignment of the same photos gives the same answers.
    sample = list(range(0, len(files), 14))
    realigned = [faces.detect_and_align(imgs[i])[0].image for i in sample]
    for i, p in zip(sample, predictor.predict(realigned), strict=False):
        assert p.gender == preds[i].gender and abs(p.age - preds[i].age) < 5
