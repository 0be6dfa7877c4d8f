"""faces.alignment: FFHQ recipe, similarity crops, paste-back (geometry and real photos)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_rgb

import faces
from faces.alignment import (
    ffhq_matrix,
    ffhq_quad,
    ffhq_template,
    invert_affine,
    template,
    transform_points,
    umeyama,
)
from reface_core.imageio import load_image

# A frontal face in a 1000x800 image: eye centres, nose, mouth corners.
FACE5 = np.array([[400, 380], [520, 380], [460, 450], [415, 510], [505, 510]], np.float32)


def _rotate(pts, deg, centre=(460, 440)):
    t = np.deg2rad(deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return ((pts - centre) @ r.T + centre).astype(np.float32)


def test_templates_scale_with_size():
    np.testing.assert_allclose(ffhq_template(1024), ffhq_template(512) * 2, rtol=1e-6)
    assert template("arcface").shape == (5, 2)
    with pytest.raises(ValueError, match="unknown alignment template"):
        template("vgg")


def test_quad_is_an_upright_square_for_a_level_face():
    quad, qsize = ffhq_quad(FACE5)
    # Frontal face: eye-to-eye 120, eye-to-mouth 130 -> half side max(240, 234) = 240.
    assert qsize == pytest.approx(480)
    np.testing.assert_allclose(quad[0], [460 - 240, 380 + 13 - 240])
    np.testing.assert_allclose(quad[2], [460 + 240, 380 + 13 + 240])


def test_quad_follows_head_rotation():
    quad, _ = ffhq_quad(_rotate(FACE5, 20))
    top = quad[3] - quad[0]
    assert np.rad2deg(np.arctan2(top[1], top[0])) == pytest.approx(20, abs=1e-4)


def test_68_and_5_point_paths_agree():
    lm68 = np.zeros((68, 2), np.float32)
    lm68[36:42] = FACE5[0]
    lm68[42:48] = FACE5[1]
    lm68[30], lm68[48], lm68[54] = FACE5[2], FACE5[3], FACE5[4]
    np.testing.assert_allclose(ffhq_quad(lm68)[0], ffhq_quad(FACE5)[0])


def test_bad_landmarks_are_rejected():
    with pytest.raises(ValueError, match=r"\(68, 2\) or \(5, 2\)"):
        ffhq_quad(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ffhq_quad(np.full((5, 2), np.nan))


def _dot_image(points, shape=(1000, 800), radius=6):
    """Gray image with a bright dot at each point (to find them again after warping)."""
    img = np.full(shape + (3,), 60, np.uint8)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for x, y in points:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = 255
    return img


def _blob_centres(img, pts_guess, radius=14):
    g = img[..., 0].astype(np.float64)
    out = []
    for x, y in pts_guess:
        x0, y0 = int(max(x - radius, 0)), int(max(y - radius, 0))
        win = g[y0:int(y + radius), x0:int(x + radius)]
        w = np.clip(win - 120, 0, None)
        yy, xx = np.mgrid[:win.shape[0], :win.shape[1]]
        out.append([(w * xx).sum() / w.sum() + x0, (w * yy).sum() / w.sum() + y0])
    return np.array(out)


@pytest.mark.parametrize("deg,size,radius", [(0, 256, 6), (25, 256, 6), (10, 96, 15)])
def test_align_ffhq_matches_its_matrix(deg, size, radius):
    """Pixels land where ffhq_matrix says, with rotation, and (size 96: the quad is 5x the
    output) through the shrink step."""
    pts = _rotate(FACE5, deg)
    img = _dot_image(pts, radius=radius)
    out = faces.align_ffhq(img, pts, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    expected = transform_points(ffhq_matrix(pts, size), pts)
    found = _blob_centres(out, expected, radius=max(6, radius * size // 400 + 4))
    assert np.abs(found - expected).max() < 1.0


def test_align_ffhq_pads_outside_the_image():
    # Face near the corner: the quad leaves the image, the recipe reflect-pads.
    pts = FACE5 - np.array([380, 350], np.float32)
    img = make_rgb(400, 400, seed=1)
    out = faces.align_ffhq(img, pts, 128)
    assert out.shape == (128, 128, 3)
    # The padded region is filled (blurred/faded), not left black.
    assert out[:10, :10].mean() > 20


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    t = np.deg2rad(30)
    m = np.array([[1.5 * np.cos(t), -1.5 * np.sin(t), 10], [1.5 * np.sin(t), 1.5 * np.cos(t), -4]])
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(umeyama(src, dst), m, atol=1e-9)
    np.testing.assert_allclose(invert_affine(invert_affine(m)), m, atol=1e-9)


def test_similarity_align_puts_landmarks_on_the_template():
    pts = _rotate(FACE5, -15)
    img = _dot_image(pts)
    crop, m = faces.similarity_align(img, pts, "arcface", 112)
    assert crop.shape == (112, 112, 3) and m.shape == (2, 3)
    # A frontal face fits the template up to its own proportions.
    assert np.abs(transform_points(m, pts) - template("arcface")).max() < 4
    crop512, _ = faces.similarity_align(img, pts, "ffhq", 512)
    assert crop512.shape == (512, 512, 3)


def test_paste_back_restores_the_face_region_and_leaves_the_rest():
    img = make_rgb(400, 400, seed=2)
    pts = FACE5 * 0.4
    crop, m = faces.similarity_align(img, pts, "ffhq", 256)
    restored = np.full_like(crop, 200)  # a "restored" face: flat colour
    out = faces.paste_back(img, restored, m)
    centre = transform_points(invert_affine(m), [[128, 128]])[0].round().astype(int)
    assert np.abs(out[centre[1], centre[0]].astype(int) - 200).max() <= 1
    assert np.array_equal(out[0:5, 0:5], img[0:5, 0:5])
    # Soft mask: a band of intermediate values between inside and outside.
    hard = faces.paste_back(img, restored, m, soft_mask=False)
    assert np.abs(out.astype(int) - hard.astype(int)).max() > 20
    assert out.shape == img.shape and out.dtype == np.uint8


# ---------------------------------------------------------------------- real photos

@pytest.mark.realdata
def test_ffhq_alignment_of_real_photos_hits_the_template(data_root):
    """Detect + align unaligned photos; landmarks re-detected on the 512 crops sit on the
    FFHQ template, and where ffhq_matrix predicts."""
    names = ["examples/alex-lacamoire.png", "examples/biden.jpg", "examples/obama.jpg",
             "examples/obama-720p.jpg", "examples/two_people.jpg", "examples/lin-manuel-miranda.png",
             "examples/knn_examples/train/rose_leslie/img2.jpg",
             "examples/knn_examples/train/kit_harington/john2.jpeg",
             "examples/knn_examples/test/alex_lacamoire1.jpg"]
    redetect = faces.get_detector("dlib-hog", upsample=0)
    tpl = ffhq_template(512)
    eye_err, mouth_err, matrix_err = [], [], []
    for name in names:
        img = load_image(data_root / "unaligned_named" / name)
        aligned = faces.detect_and_align(img)
        assert aligned, name
        for a in aligned:
            assert a.image.shape == (512, 512, 3)
            found = redetect.detect(a.image)
            assert len(found) == 1, f"{name}: {len(found)} faces on the aligned crop"
            lm = found[0].landmarks5
            eye_err.append(np.linalg.norm(lm[:2] - tpl[:2], axis=1).max())
            mouth_err.append(np.linalg.norm(lm[3:].mean(0) - tpl[3:].mean(0)))
            pred = transform_points(a.matrix, a.detection.landmarks5)
            matrix_err.append(np.linalg.norm(pred[:2] - lm[:2], axis=1).max())
    print(f"FFHQ 512 alignment on {len(eye_err)} faces: eye error median "
          f"{np.median(eye_err):.1f} max {max(eye_err):.1f} px; mouth centre median "
          f"{np.median(mouth_err):.1f} max {max(mouth_err):.1f} px")
    assert max(eye_err) <= 10 and np.median(eye_err) <= 6
    assert max(mouth_err) <= 15
    assert max(matrix_err) <= 3


@pytest.mark.realdata
def test_paste_back_of_an_aligned_crop_reproduces_the_photo(data_root):
    img = load_image(data_root / "unaligned_named/examples/obama-480p.jpg")
    a = faces.detect_and_align(img, output_size=512)[0]
    out = faces.paste_back(img, a.image, a.matrix)
    x0, y0, x1, y1 = a.detection.box.astype(int)
    diff = np.abs(out[y0:y1, x0:x1].astype(int) - img[y0:y1, x0:x1].astype(int))
    assert diff.mean() < 3  # resampling error only: the crop goes back where it came from


def test_padding_blur_equals_the_ffhq_scripts_scipy_filter():
    import scipy.ndimage

    from faces.alignment import _gaussian_blur

    arr = make_rgb(90, 120, seed=9).astype(np.float32)
    for sigma in (0.8, 4.2):
        ref = scipy.ndimage.gaussian_filter(arr, [sigma, sigma, 0])
        assert np.abs(_gaussian_blur(arr, sigma) - ref).max() < 0.01
