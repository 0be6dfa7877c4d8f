"""Metric values against independent computations on the same real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.metrics import (
    MetricUnavailable,
    Sample,
    UnknownMetricError,
    create_metric,
    frechet_distance,
    list_metrics,
    luminance,
)
from reface_core.imageio import load_image

pytestmark = pytest.mark.realdata

IDS = ("00001", "00052", "00479")


@pytest.fixture(scope="module")
def pairs(data_root):
    """(degraded, gt) 512 px pairs of real faces."""
    root = data_root / "identities_512"
    return [(load_image(root / i / "degraded.png"), load_image(root / i / "gt.png")) for i in IDS]


def test_psnr_ssim_match_scikit_image(pairs):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p, s = create_metric("psnr"), create_metric("ssim")
    for lq, gt in pairs:
        sample = Sample("x", lq, gt)
        assert p(sample) == pytest.approx(peak_signal_noise_ratio(gt, lq, data_range=255), abs=1e-9)
        # BasicSR's SSIM = scikit-image's Gaussian SSIM (sigma 1.5, population covariance)
        ref = structural_similarity(gt, lq, data_range=255, channel_axis=2, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert s(sample) == pytest.approx(ref, abs=1e-6)
    # the Y-channel variants use BasicSR's BT.601 Y
    y = create_metric("psnr-y")
    lq, gt = pairs[0]
    ya, yb = luminance(lq), luminance(gt)  # a different Y: the values must differ a little
    assert y(Sample("x", lq, gt)) != pytest.approx(p(Sample("x", lq, gt)), abs=1e-3)
    assert np.isfinite(ya).all() and np.isfinite(yb).all()


def test_niqe_matches_scikit_video(pairs, monkeypatch):
    import scipy.misc
    import skvideo.measure

    from benchmarks.metrics import _pil_half_bicubic

    # skvideo's niqe calls np.int and scipy.misc.imresize, both gone from today's NumPy and
    # SciPy; put back what they were (imresize(mode='F') was PIL's float bicubic).
    monkeypatch.setattr(np, "int", int, raising=False)
    monkeypatch.setattr(scipy.misc, "imresize", lambda img, s, interp, mode: _pil_half_bicubic(img),
                        raising=False)
    m = create_metric("niqe-skvideo")
    m.prepare()
    for lq, gt in pairs:
        for img in (lq, gt):
            y = luminance(img)
            assert m(Sample("x", img)) == pytest.approx(float(skvideo.measure.niqe(y)[0]), rel=1e-5)
    with pytest.raises(MetricUnavailable, match="larger than 193"):
        m(Sample("x", pairs[0][0][:150, :150]))


def test_brisque_matches_the_brisque_package(pairs):
    import cv2
    from brisque import BRISQUE
    from skimage.color import rgb2gray

    m = create_metric("brisque-pypi")
    m.prepare()
    pkg = BRISQUE(url=False)
    for lq, gt in pairs:
        for img in (lq, gt):
            g = rgb2gray(img)
            # BRISQUE.score() breaks on NumPy 2 (float() of a 1-element array); its own
            # feature and scoring steps, with that conversion done, are the reference.
            half = cv2.resize(g, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
            feats = list(pkg.calculate_brisque_features(g, 7, 7 / 6)) + \
                list(pkg.calculate_brisque_features(half, 7, 7 / 6))
            feats = np.array([float(np.ravel(f)[0]) for f in feats], dtype=object)
            assert m(Sample("x", img)) == pytest.approx(pkg.calculate_image_quality_score(feats),
                                                        rel=1e-4, abs=1e-3)
    # quality order: the degraded face scores worse than its GT
    lq, gt = pairs[0]
    assert m(Sample("x", lq)) > m(Sample("x", gt))


def test_fid_matches_a_direct_frechet_distance(pairs):
    import scipy.linalg

    # random Inception weights (no download); the 64-d block keeps the direct sqrtm cheap
    fid = create_metric("fid", random_weights_seed=0, dims=64)
    fid.prepare()
    small = [(lq[::2, ::2], gt[::2, ::2]) for lq, gt in pairs]
    outs = [np.ascontiguousarray(np.roll(lq, k * 16, axis=1)) for lq, _ in small for k in range(4)]
    gts = [np.ascontiguousarray(np.roll(gt, k * 16, axis=0)) for _, gt in small for k in range(4)]
    f1, f2 = fid.features(outs), fid.features(gts)
    assert f1.shape == (12, 64)
    value = fid.compute(f1, f2)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert value == pytest.approx(direct, rel=1e-3)
    assert fid.compute(f2, f2) == pytest.approx(0.0, abs=1e-6 * direct)
    # well-conditioned Gaussians too
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(0.3, 1.5, size=(400, 16))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a.mean(0), sa, b.mean(0), sb) == pytest.approx(ref, rel=1e-8)


def test_identity_matches_faces_directly(pairs, data_root):
    import faces

    emb = faces.get_embedder("dlib")
    ids, deg = create_metric("ids"), create_metric("deg")
    ids.prepare()
    deg.prepare()
    lq, gt = pairs[0]
    a, b = emb.embed([lq, gt])
    cos = float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
    s = Sample("x", lq, gt, gt_key="gt")
    assert ids(s) == pytest.approx(cos, abs=1e-6)
    assert deg(s) == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-4)
    assert ids.embedder == "dlib-resnet-v1"
    # without GT: to the mean of the references (another photo of the same person)
    ref = load_image(min((data_root / "identities_512" / IDS[0] / "conditioning").glob("*.png")))
    (r,) = emb.embed([ref])
    s2 = Sample("x", lq, None, [ref], ref_keys=["r"])
    assert ids(s2) == pytest.approx(float(np.dot(a, r) / np.linalg.norm(a) / np.linalg.norm(r)), abs=1e-6)
    with pytest.raises(MetricUnavailable, match="no GT and no reference"):
        ids(Sample("x", lq))


def test_lmd_is_zero_on_itself_and_grows_with_shift(pairs):
    m = create_metric("lmd")
    m.prepare()
    _lq, gt = pairs[0]
    assert m(Sample("x", gt, gt, gt_key="g")) == 0.0
    shifted = np.ascontiguousarray(np.roll(gt, 8, axis=1))
    d = m(Sample("x", shifted, gt, gt_key="g"))
    assert 4.0 < d < 16.0  # 8 px at 512: the landmarks follow the face


def test_missing_weights_are_unavailable_with_the_resolver_message():
    for name in ("lpips", "musiq", "fid", "clipiqa", "maniqa"):
        m = create_metric(name)
        with pytest.raises(MetricUnavailable, match="was not found"):
            m.prepare()


def test_lpips_random_weights_runs_and_separates(pairs):
    import torch

    m = create_metric("lpips", random_weights_seed=0)
    m.prepare()
    with torch.no_grad():  # LPIPS's trained linear weights are non-negative; random ones not
        for p in m.net.lins.parameters():
            p.abs_()
    lq, gt = pairs[0]
    assert m(Sample("x", gt, gt)) == pytest.approx(0.0, abs=1e-6)
    assert m(Sample("x", lq, gt)) > 0
    with pytest.raises(MetricUnavailable, match="GT is"):
        m(Sample("x", lq[:256, :256], gt))


def test_auto_embedder_prefers_arcface_when_present(monkeypatch):
    from benchmarks import metrics as M
    from reface_core import assets

    assert M.choose_embedder("auto") == "dlib"  # no insightface pack here
    real = assets.find
    monkeypatch.setattr(assets, "find", lambda a, path=None: Path("/x") if a == "insightface-buffalo_l"
                        else real(a, path))
    assert M.choose_embedder("auto") == "arcface-buffalo_l"
    assert M.choose_embedder("dlib") == "dlib"


def test_registry_names_and_errors():
    assert {"psnr", "ssim", "lpips", "fid", "musiq", "ids", "deg", "lmd", "niqe-skvideo",
            "brisque-pypi"} <= set(list_metrics())
    with pytest.raises(UnknownMetricError, match="did you mean 'niqe-skvideo'"):
        create_metric("niqe-skvide")


def test_maniqa_builds_without_downloads():
    m = create_metric("maniqa", random_weights_seed=0, test_sample=1)
    m.prepare()  # timm's ImageNet ViT is not fetched: the checkpoint holds it
    assert sum(p.numel() for p in m.net.vit.parameters()) > 80e6  # ViT-B/8


@pytest.mark.slow
def test_clipiqa_loads_through_the_resolver(pairs, tmp_path, monkeypatch):
    import torch

    from reface_core.assets import reface_home

    _lq, gt = pairs[0]
    small = np.ascontiguousarray(gt[::2, ::2])
    # CLIP-IQA: a random CLIP RN50 saved as a plain state dict where the resolver looks
    # (not the pinned file: the load-time checksum is turned off to test the loader itself)
    monkeypatch.setenv("REFACE_VERIFY_ASSETS", "0")
    rand = create_metric("clipiqa", random_weights_seed=0)
    rand.prepare()
    dest = reface_home() / "clip" / "RN50.pt"
    dest.parent.mkdir(parents=True)
    torch.save(rand.net.clip_model[0].state_dict(), dest)
    m = create_metric("clipiqa")
    m.prepare()
    value = m(Sample("x", small))
    # (CLIP's build_model casts weights to fp16 and we back to fp32: ~1e-4 apart)
    assert 0.0 < value < 1.0 and value == pytest.approx(rand(Sample("x", small)), abs=1e-3)
    # a TorchScript file that is not OpenAI's published one is refused, not loaded
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), dest)
    with pytest.raises(MetricUnavailable, match="not the pinned"):
        create_metric("clipiqa").prepare()
