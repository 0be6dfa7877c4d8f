"""faces.embedding: the interface, dlib's descriptor, and identity verification on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_rgb

import faces
from faces.embedding import check_same_embedder
from faces.verification import pair_scores, roc_auc, tar_at_far
from reface_core.imageio import load_image


@pytest.fixture(scope="module")
def dlib_embedder():
    return faces.get_embedder("dlib")


def test_unknown_embedder_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean"):
        faces.get_embedder("arcface-buffalo")


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((64, 80, 3), np.uint8), "square"),
    (np.zeros((64, 64), np.uint8), r"\(S, S, 3\)"),
    ([np.zeros((64, 64, 3), np.float32)], "uint8"),
    ([np.zeros((16, 16, 3), np.uint8)], "too small"),
])
def test_bad_crops_are_clear_errors(dlib_embedder, bad, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        dlib_embedder.embed(bad)


def test_embedding_contract(dlib_embedder):
    crops = [make_rgb(200, 200, seed=s) for s in range(3)]
    v = dlib_embedder.embed(crops)
    assert v.shape == (3, 128) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    # Deterministic, and batching does not change a vector.
    np.testing.assert_allclose(dlib_embedder.embed(crops[1])[0], v[1], atol=1e-6)
    np.testing.assert_allclose(dlib_embedder.embed(np.stack(crops)), v, atol=1e-6)
    assert dlib_embedder.embed([]).shape == (0, 128)
    assert dlib_embedder.name == "dlib-resnet-v1" and dlib_embedder.dim == 128


def test_vectors_of_different_embedders_are_not_compared():
    check_same_embedder("dlib-resnet-v1", "dlib-resnet-v1")
    with pytest.raises(ValueError, match="different embedders"):
        check_same_embedder("dlib-resnet-v1", "arcface-buffalo_l")


def test_verification_metrics_on_known_numbers():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    pos = np.array([1, 1, 0, 1, 0, 0], bool)
    assert roc_auc(scores, pos) == pytest.approx(8 / 9)
    tar, thr = tar_at_far(scores, pos, far=0.0)
    assert thr == 0.7 and tar == pytest.approx(2 / 3)
    s, same = pair_scores(np.eye(3, dtype=np.float32), ["a", "a", "b"])
    assert same.tolist() == [True, False, False] and s.tolist() == [0, 0, 0]


# ---------------------------------------------------------------------- real photos

@pytest.mark.realdata
@pytest.mark.slow
def test_identity_verification_on_identities_512(data_root, dlib_embedder):
    """All same/different pairs among gt.png and conditioning/*.png of 18 identities."""
    files, labels = [], []
    for folder in sorted(p for p in (data_root / "identities_512").iterdir() if p.is_dir()):
        for f in [folder / "gt.png", *sorted((folder / "conditioning").glob("*.png"))]:
            files.append(f)
            labels.append(folder.name)
    vecs = dlib_embedder.embed([load_image(f) for f in files])
    scores, same = pair_scores(vecs, labels)
    auc = roc_auc(scores, same)
    tar, thr = tar_at_far(scores, same, 0.01)
    print(f"dlib-resnet-v1 on identities_512: {len(files)} photos, {same.sum()} same / "
          f"{(~same).sum()} different pairs, ROC AUC {auc:.4f}, TAR {tar:.4f} at 1% FAR "
          f"(cosine > {thr:.3f})")
    assert len(files) == 252
    assert auc >= 0.99
    assert tar >= 0.95
