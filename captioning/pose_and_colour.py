"""What a photo tells reliably without a learned model: grayscale and head pose.

Pure functions of pixels and landmarks, so they are tested with exact geometry.

Head pose: the five landmarks (eye centres, nose tip, mouth corners; insightface order)
are fitted to a generic 3D face with ``cv2.solvePnP`` (a pinhole camera whose focal
length is the image's longer side). The rotation is reported as yaw, pitch and roll in
degrees, in the image's own frame: yaw > 0 when the face turns toward the image's right,
pitch > 0 when it tilts up, roll > 0 when it leans clockwise. On an FFHQ-aligned crop roll
is about 0 by construction (alignment removes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A generic face in millimetres, camera frame (x right, y down, z away from the camera),
# origin at the nose tip. x and y are the ArcFace 5-point template (the mean layout of
# frontal faces that face-recognition alignment uses) scaled to a 63 mm eye spacing, so
# that template reads as yaw = pitch = roll = 0; the depths (eyes 27 mm, mouth corners
# 25 mm behind the nose tip) are average head proportions. An individual face differs
# from it by a few degrees, mostly in pitch.
FACE_MODEL_5 = np.array([
    [-31.5, -36.0, 27.0],   # left eye (as seen in the image)
    [31.5, -36.0, 27.0],    # right eye
    [0.0, 0.0, 0.0],        # nose tip
    [-26.1, 36.75, 25.0],   # left mouth corner
    [26.1, 36.75, 25.0],    # right mouth corner
], dtype=np.float64)


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float
    #: RMS reprojection error relative to the inter-ocular distance (0 = exact fit).
    error: float

    @property
    def confidence(self) -> float:
        # A 5-point fit of 6 unknowns is nearly exact for a real face; a large residual
        # means the points are not a face (bad landmarks), not a strange head pose.
        return float(max(0.0, min(1.0, 1.0 - self.error / 0.25)))


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix (camera frame) for the documented yaw/pitch/roll in degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    # Yaw turns about the vertical axis: a positive yaw brings the nose (in front of the
    # origin... at -z) toward +x, i.e. the face turns to the image's right.
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    # Pitch about the horizontal axis: positive moves the nose up (-y).
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    # Roll about the optical axis: positive is clockwise on screen (y points down).
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_from_angles` (yaw within +-90 degrees)."""
    rot = np.asarray(rot, dtype=np.float64)
    # rot = Rz Ry Rx, whose third row is (sin y, -cos y sin p, cos y cos p).
    yaw = math.asin(max(-1.0, min(1.0, rot[2, 0])))
    pitch = math.atan2(-rot[2, 1], rot[2, 2])
    roll = math.atan2(rot[1, 0], rot[0, 0])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def camera_matrix(width: int, height: int) -> np.ndarray:
    f = float(max(width, height))
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float64)


def project(points3d: np.ndarray, rot: np.ndarray, tvec: np.ndarray, cam: np.ndarray) -> np.ndarray:
    cam_pts = points3d @ rot.T + np.asarray(tvec, dtype=np.float64).reshape(1, 3)
    uv = cam_pts @ cam.T
    return uv[:, :2] / uv[:, 2:3]


def head_pose(landmarks5: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """Yaw/pitch/roll in degrees from five landmarks in an image of (width, height)."""
    import cv2

    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"head pose needs (5, 2) finite landmarks, got shape {pts.shape}")
    width, height = image_size
    cam = camera_matrix(width, height)
    iod = float(np.linalg.norm(pts[1] - pts[0]))
    if iod < 1.0:
        raise ValueError("head pose: the two eye landmarks coincide")
    # Start from a frontal face at the distance its eye spacing implies, so the iterative
    # solver does not settle on the mirror solution behind the camera.
    z0 = cam[0, 0] * 63.0 / iod
    centre = pts.mean(axis=0)
    t0 = np.array([(centre[0] - cam[0, 2]) * z0 / cam[0, 0],
                   (centre[1] - cam[1, 2]) * z0 / cam[1, 1], z0])
    ok, rvec, tvec = cv2.solvePnP(FACE_MODEL_5, pts, cam, None, rvec=np.zeros((3, 1)),
                                  tvec=t0.reshape(3, 1), useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("head pose: solvePnP found no solution for these landmarks")
    rot, _ = cv2.Rodrigues(rvec)
    residual = project(FACE_MODEL_5, rot, tvec, cam) - pts
    error = float(np.sqrt((residual ** 2).sum(axis=1).mean()) / iod)
    yaw, pitch, roll = angles_from_rotation(rot)
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll, error=error)


@dataclass(frozen=True)
class Colourfulness:
    """How much colour an image holds: the 99th percentile of per-pixel chroma."""

    chroma_p99: float
    threshold: float

    @property
    def grayscale(self) -> bool:
        return self.chroma_p99 < self.threshold

    @property
    def confidence(self) -> float:
        # Logistic in the distance from the threshold: 4 levels away is ~0.98 sure.
        return float(1.0 / (1.0 + math.exp(-abs(self.chroma_p99 - self.threshold))))


def colourfulness(image: np.ndarray, threshold: float = 6.0, max_side: int = 256) -> Colourfulness:
    """Grayscale test from the pixels.

    Chroma is the distance of (Cb, Cr) from neutral; a grayscale photo saved as RGB (JPEG
    included) keeps it within a few levels everywhere, so the 99th percentile below
    ``threshold`` means grayscale. A few coloured pixels (a caption, a border) stay above
    the percentile and do not flip a colour photo; a sepia photo counts as colour.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return Colourfulness(0.0, threshold)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    step = max(1, int(math.ceil(max(arr.shape[:2]) / max_side)))
    rgb = arr[::step, ::step, :3].astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    chroma = np.sqrt(cb * cb + cr * cr)
    return Colourfulness(float(np.percentile(chroma, 99)), threshold)
