"""Head pose from landmarks and grayscale from pixels: exact geometry, synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.pose_and_colour import (
    FACE_MODEL_5,
    angles_from_rotation,
    camera_matrix,
    colourfulness,
    head_pose,
    project,
    rotation_from_angles,
)


def synthetic_landmarks(yaw, pitch, roll, size=512, distance=700.0):
    cam = camera_matrix(size, size)
    return project(FACE_MODEL_5, rotation_from_angles(yaw, pitch, roll),
                   np.array([0.0, 0.0, distance]), cam)


@pytest.mark.parametrize("yaw, pitch, roll", [
    (0, 0, 0), (25, 0, 0), (-40, 10, 5), (10, -20, -15), (60, 5, 0), (-5, 30, 20)])
def test_head_pose_recovers_known_rotations(yaw, pitch, roll):
    assert angles_from_rotation(rotation_from_angles(yaw, pitch, roll)) == pytest.approx(
        (yaw, pitch, roll), abs=1e-9)
    pose = head_pose(synthetic_landmarks(yaw, pitch, roll), (512, 512))
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=0.05)
    assert pose.error < 1e-3 and pose.confidence > 0.99


def test_head_pose_signs_match_what_the_image_shows():
    right = synthetic_landmarks(30, 0, 0)
    # Face turned toward the image's right: the nose sits right of the eyes' midpoint.
    assert right[2, 0] > right[:2, 0].mean()
    up = synthetic_landmarks(0, 20, 0)
    level = synthetic_landmarks(0, 0, 0)
    # Tilted up: the nose moves up toward the eyes.
    assert up[2, 1] - up[:2, 1].mean() < level[2, 1] - level[:2, 1].mean()
    cw = synthetic_landmarks(0, 0, 20)
    # Clockwise roll on screen (y down): the right eye drops below the left one.
    assert cw[1, 1] > cw[0, 1]


def test_mirrored_landmarks_mirror_yaw_and_roll():
    pts = synthetic_landmarks(22, 8, 6)
    mirrored = pts.copy()
    mirrored[:, 0] = 512 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # left/right swap sides in a mirror
    a, b = head_pose(pts, (512, 512)), head_pose(mirrored, (512, 512))
    assert b.yaw == pytest.approx(-a.yaw, abs=0.1) and b.roll == pytest.approx(-a.roll, abs=0.1)
    assert b.pitch == pytest.approx(a.pitch, abs=0.1)


def test_head_pose_rejects_bad_landmarks():
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        head_pose(np.zeros((68, 2)), (512, 512))
    with pytest.raises(ValueError, match="eye landmarks coincide"):
        head_pose(np.zeros((5, 2)), (512, 512))
    scrambled = synthetic_landmarks(0, 0, 0)[[2, 4, 0, 1, 3]]
    assert head_pose(scrambled, (512, 512)).confidence < 0.5


def test_grayscale_from_pixels():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (120, 100), dtype=np.uint8)
    rgb_gray = np.repeat(gray[..., None], 3, axis=2)
    assert colourfulness(rgb_gray).grayscale and colourfulness(gray).grayscale
    # JPEG-like chroma noise of a level or two does not make it colour.
    noisy = np.clip(rgb_gray.astype(int) + rng.integers(-2, 3, rgb_gray.shape), 0, 255)
    assert colourfulness(noisy.astype(np.uint8)).grayscale
    skin = np.zeros((120, 100, 3), np.uint8)
    skin[...] = (205, 160, 135)
    c = colourfulness(skin)
    assert not c.grayscale and c.confidence > 0.99
    # A small coloured logo on a gray photo stays below the 99th percentile.
    logo = rgb_gray.copy()
    logo[:5, :10] = (255, 0, 0)
    assert colourfulness(logo).grayscale
    with pytest.raises(ValueError, match="shape"):
        colourfulness(np.zeros((4, 4, 2), np.uint8))
