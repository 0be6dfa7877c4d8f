"""Face tracks in a video: detect on key frames, track in between, smooth landmarks over time.

    tracker = FaceTracker(detector="dlib-hog", key_interval=5)
    tracks = tracker.track(iter_frames("clip.mp4"))      # list[Track], one per person
    smooth_tracks(tracks, window=9)                       # Savitzky-Golay on the landmarks
    refs = select_reference_frames(tracks[0], k=4)        # frame numbers of its best views

**Between key frames** each live track is carried forward by pyramidal Lucas-Kanade flow of
its landmarks (OpenCV): the median landmark motion moves the last detector box, and the
68-point predictor is run again in the moved box (for 5-point detectors the flowed points
are kept). A track whose points mostly fail to flow, or that no detection confirms on two
key frames in a row, is *lost*.

**On key frames** detections are matched to live tracks by box overlap (IoU) and identity
(cosine of dlib's 128-d descriptors; a pair needs IoU >= ``min_iou`` and, when both have a
descriptor, cosine >= ``min_identity``), one to one (Hungarian). A detection left over is
compared with the lost tracks by identity alone: the same person re-entering the frame gets
their old track back; anyone else starts a new one. ``min_identity`` = 0.82 is dlib's own
same-person rule (Euclidean distance 0.6 between unit descriptors).

**Smoothing** is Savitzky-Golay (``scipy.signal.savgol_filter``, quadratic, 9 frames by
default), run over each contiguous run of a track's frames. It is chosen over One-Euro and
Kalman filters because restoration sees the whole track before pasting anything, so a
zero-lag two-sided filter is possible; a quadratic fit keeps real motion (turns, nods)
while averaging out the per-frame landmark noise that makes aligned crops jitter.

**Jitter** (:func:`landmark_jitter`) is the mean norm of the second temporal difference of
the landmarks, in units of the inter-ocular distance: constant-velocity motion counts zero,
frame-to-frame shaking does not. :func:`landmark_motion` (first difference) is the measure
for a static clip, where any motion is jitter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .alignment import ffhq_matrix
from .detection import FaceDetector, get_detector, predict_landmarks

#: aligned crop side used for descriptors and sharpness while tracking
_PROBE_SIZE = 160


@dataclass
class Track:
    """One person through the video. Per observation (one per frame it is in): the frame
    number, box, raw landmarks (68 or 5 points), confidence (the detector score on key
    frames; carried forward in between), whether a detection confirmed it, sharpness of its
    aligned crop and frontality in [0, 1]. ``smoothed`` holds the smoothed landmarks after
    :func:`smooth_tracks`; ``embedding`` the mean unit descriptor of its key frames."""

    track_id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    frontality: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    smoothed: np.ndarray | None = None

    @property
    def embedding(self) -> np.ndarray | None:
        if not self.embeddings:
            return None
        m = np.mean(self.embeddings, axis=0)
        return m / max(float(np.linalg.norm(m)), 1e-12)

    def landmarks_array(self, smoothed: bool = True) -> np.ndarray:
        if smoothed and self.smoothed is not None:
            return self.smoothed
        return np.asarray(self.landmarks, dtype=np.float64)

    def index_of(self, frame: int) -> int | None:
        if not hasattr(self, "_index") or len(self._index) != len(self.frames):
            self._index = {f: i for i, f in enumerate(self.frames)}
        return self._index.get(frame)

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "frames": list(map(int, self.frames)),
                "boxes": [[float(v) for v in b] for b in self.boxes],
                "landmarks": np.asarray(self.landmarks, float).round(3).tolist(),
                "scores": [float(s) for s in self.scores],
                "detected": [bool(d) for d in self.detected],
                "sharpness": [float(s) for s in self.sharpness],
                "frontality": [float(s) for s in self.frontality],
                "embeddings": [np.asarray(e, float).round(6).tolist() for e in self.embeddings],
                "smoothed": None if self.smoothed is None
                else np.asarray(self.smoothed, float).round(3).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Track:
        t = cls(track_id=int(d["track_id"]), frames=[int(f) for f in d["frames"]],
                boxes=[list(map(float, b)) for b in d["boxes"]],
                landmarks=[np.asarray(p, np.float64) for p in d["landmarks"]],
                scores=list(map(float, d["scores"])), detected=list(map(bool, d["detected"])),
                sharpness=list(map(float, d["sharpness"])),
                frontality=list(map(float, d["frontality"])),
                embeddings=[np.asarray(e, np.float32) for e in d["embeddings"]])
        if d.get("smoothed") is not None:
            t.smoothed = np.asarray(d["smoothed"], np.float64)
        return t


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def frontality(landmarks: np.ndarray) -> float:
    """1 for a frontal, level face, falling with yaw (nose off the eye midline) and roll."""
    from .alignment import _five_points

    le, re, nose, _, _ = _five_points(landmarks)
    eye = re - le
    d = float(np.hypot(*eye))
    if d < 1e-6:
        return 0.0
    mid = (le + re) / 2
    # nose offset along the eye line, as a fraction of the eye distance
    yaw = abs(float(np.dot(nose - mid, eye / d))) / d
    roll = abs(float(np.arctan2(eye[1], eye[0])))
    return float(np.clip(1.0 - 2.0 * yaw, 0, 1) * np.clip(1.0 - roll / (np.pi / 4), 0, 1))


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop (higher is sharper)."""
    import cv2

    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def warp_aligned(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The FFHQ-aligned crop of ``image`` at ``size`` by one affine warp (cv2; the FFHQ
    script's PIL quad recipe is about 20x slower on video frames) and its 2x3 matrix."""
    import cv2

    m = ffhq_matrix(landmarks, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT_101)
    return crop, m


class FaceTracker:
    """Detect on key frames, flow in between, associate by overlap and identity.

    The constructor is the config (``config``). ``detector``: a name for
    :func:`faces.get_detector` or a built detector; ``embedder``: a name for
    :func:`faces.get_embedder` (``None``: associate by overlap only, no re-entry by
    identity).
    """

    def __init__(self, detector: str | FaceDetector = "dlib-hog", *, key_interval: int = 5,
                 min_iou: float = 0.3, min_identity: float = 0.82, embedder: str | None = "dlib",
                 max_missed_keys: int = 1, min_face: float = 24.0):
        if int(key_interval) < 1:
            raise ValueError(f"key_interval must be >= 1, got {key_interval}")
        if not 0 <= float(min_iou) <= 1 or not -1 <= float(min_identity) <= 1:
            raise ValueError(f"min_iou must be in [0, 1] and min_identity in [-1, 1], got "
                             f"{min_iou} and {min_identity}")
        self.detector = get_detector(detector) if isinstance(detector, str) else detector
        self.embedder_name = embedder
        self.key_interval = int(key_interval)
        self.min_iou = float(min_iou)
        self.min_identity = float(min_identity)
        self.max_missed_keys = int(max_missed_keys)
        self.min_face = float(min_face)
        self.config = {"detector": getattr(self.detector, "name", str(detector)),
                       "key_interval": self.key_interval, "min_iou": self.min_iou,
                       "min_identity": self.min_identity, "embedder": embedder,
                       "max_missed_keys": self.max_missed_keys, "min_face": self.min_face}
        self.timings = {"detection": 0.0, "tracking": 0.0}

    def _embedder(self):
        if self.embedder_name is None:
            return None
        if not hasattr(self, "_emb"):
            from .embedding import get_embedder
            self._emb = get_embedder(self.embedder_name)
        return self._emb

    def track(self, frames: Iterable[np.ndarray], progress=None) -> list[Track]:
        """Run over ``frames`` (an iterator: one frame in memory at a time)."""
        import time

        import cv2

        tracks: list[Track] = []
        live: dict[int, dict] = {}   # track_id -> {"box", "lm", "score", "missed"}
        prev_grey = None
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            # 1. carry the live tracks forward by optical flow
            for tid in list(live):
                moved = self._flow(prev_grey, grey, frame, live[tid])
                if moved is None:
                    del live[tid]
                else:
                    live[tid].update(moved, detected=False)
            t1 = time.perf_counter()
            self.timings["tracking"] += t1 - t0
            # 2. on key frames, detect and associate
            if i % self.key_interval == 0:
                self._associate(frame, i, tracks, live)
            t2 = time.perf_counter()
            self.timings["detection"] += t2 - t1
            # 3. record every live track at this frame
            for tid, st in live.items():
                self._record(tracks[tid], frame, i, st)
            self.timings["tracking"] += time.perf_counter() - t2
            prev_grey = grey
            if progress is not None:
                progress.update(1)
        return [t for t in tracks if t.frames]

    def _flow(self, prev_grey, grey, frame, st) -> dict | None:
        import cv2

        if prev_grey is None:
            return None
        pts = np.asarray(st["lm"], np.float32).reshape(-1, 1, 2)
        new, status, _ = cv2.calcOpticalFlowPyrLK(prev_grey, grey, pts, None, winSize=(21, 21),
                                                  maxLevel=3)
        ok = status.reshape(-1) == 1
        if ok.mean() < 0.5:
            return None
        shift = np.median((new - pts).reshape(-1, 2)[ok], axis=0)
        box = np.asarray(st["box"], np.float64) + np.array([*shift, *shift])
        h, w = grey.shape
        if box[2] < 0 or box[3] < 0 or box[0] > w or box[1] > h:
            return None  # carried out of the frame
        if len(st["lm"]) == 68:
            lm = predict_landmarks(frame, [box], "68")[0].astype(np.float64)
        else:
            lm = new.reshape(-1, 2).astype(np.float64)
        return {"box": box, "lm": lm}

    def _associate(self, frame, i, tracks: list[Track], live: dict[int, dict]) -> None:
        from scipy.optimize import linear_sum_assignment

        dets = [d for d in self.detector.detect(frame) if d.size >= self.min_face]
        lms = [np.asarray(d.landmarks68 if d.landmarks68 is not None else d.landmarks5,
                          np.float64) for d in dets]
        emb = self._embedder()
        vecs = [None] * len(dets)
        if emb is not None and dets:
            crops = [warp_aligned(frame, lm, _PROBE_SIZE)[0] for lm in lms]
            raw = emb.embed(crops)
            vecs = [v / max(float(np.linalg.norm(v)), 1e-12) for v in raw]
        ids = list(live)
        matched_d, matched_t = set(), set()
        if ids and dets:
            cost = np.full((len(ids), len(dets)), 10.0)
            for a, tid in enumerate(ids):
                ref = tracks[tid].embedding
                for b, d in enumerate(dets):
                    iou = _iou(live[tid]["box"], d.box)
                    cos = 1.0 if (ref is None or vecs[b] is None) else float(ref @ vecs[b])
                    if iou >= self.min_iou and cos >= self.min_identity:
                        cost[a, b] = -(iou + cos)
            for a, b in zip(*linear_sum_assignment(cost), strict=False):
                if cost[a, b] < 10.0:
                    matched_t.add(ids[a])
                    matched_d.add(b)
                    live[ids[a]] = {"box": np.asarray(dets[b].box, np.float64), "lm": lms[b],
                                    "score": float(dets[b].score), "missed": 0,
                                    "detected": True, "vec": vecs[b]}
        for tid in ids:
            if tid not in matched_t:
                live[tid]["missed"] = live[tid].get("missed", 0) + 1
                if live[tid]["missed"] > self.max_missed_keys:
                    del live[tid]
        for b, d in enumerate(dets):
            if b in matched_d:
                continue
            tid = None
            if vecs[b] is not None:  # the same person coming back keeps their track
                best = -2.0
                for t in tracks:
                    if t.track_id in live or t.embedding is None:
                        continue
                    cos = float(t.embedding @ vecs[b])
                    if cos >= self.min_identity and cos > best:
                        tid, best = t.track_id, cos
            if tid is None:
                tid = len(tracks)
                tracks.append(Track(track_id=tid))
            live[tid] = {"box": np.asarray(d.box, np.float64), "lm": lms[b],
                         "score": float(d.score), "missed": 0, "detected": True, "vec": vecs[b]}

    @staticmethod
    def _record(t: Track, frame, i, st) -> None:
        crop, _ = warp_aligned(frame, st["lm"], _PROBE_SIZE)
        t.frames.append(i)
        t.boxes.append([float(v) for v in st["box"]])
        t.landmarks.append(np.asarray(st["lm"], np.float64))
        t.scores.append(float(st.get("score", 0.0)))
        t.detected.append(bool(st.get("detected", False)))
        t.sharpness.append(sharpness(crop))
        t.frontality.append(frontality(st["lm"]))
        if st.get("detected") and st.get("vec") is not None:
            t.embeddings.append(np.asarray(st["vec"], np.float32))
        st["detected"] = False
        st["vec"] = None


def runs(frames: list[int]) -> list[slice]:
    """Index slices of consecutive frame numbers."""
    out, start = [], 0
    for k in range(1, len(frames) + 1):
        if k == len(frames) or frames[k] != frames[k - 1] + 1:
            out.append(slice(start, k))
            start = k
    return out


def smooth_landmarks(landmarks: np.ndarray, frames: list[int], window: int = 9,
                     polyorder: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing of (T, L, 2) ``landmarks`` over each run of consecutive
    ``frames``; a run shorter than ``polyorder + 2`` frames is left as it is."""
    from scipy.signal import savgol_filter

    if int(window) < 3 or int(window) % 2 == 0 or not 0 <= int(polyorder) < int(window):
        raise ValueError(f"window must be odd and >= 3 with 0 <= polyorder < window, got "
                         f"window={window} polyorder={polyorder}")
    lm = np.asarray(landmarks, np.float64)
    out = lm.copy()
    for s in runs(list(frames)):
        n = s.stop - s.start
        w = min(int(window), n if n % 2 else n - 1)
        if w <= polyorder or w < 3:
            continue
        out[s] = savgol_filter(lm[s], w, polyorder, axis=0, mode="interp")
    return out


def smooth_tracks(tracks: list[Track], window: int = 9, polyorder: int = 2) -> list[Track]:
    """Fill ``Track.smoothed`` for each track (``window`` 1 or 0: no smoothing)."""
    for t in tracks:
        raw = t.landmarks_array(smoothed=False)
        t.smoothed = raw.copy() if window <= 1 else smooth_landmarks(raw, t.frames, window, polyorder)
    return tracks


def _eye_distance(lm: np.ndarray) -> np.ndarray:
    from .alignment import _five_points

    d = [np.hypot(*(p[1] - p[0])) for p in (_five_points(x) for x in lm)]
    return np.maximum(np.asarray(d), 1e-6)


def landmark_motion(landmarks: np.ndarray, frames: list[int] | None = None) -> float:
    """Mean landmark displacement between consecutive frames, in inter-ocular distances
    (on a static clip, all of it is jitter)."""
    return _difference_norm(landmarks, frames, order=1)


def landmark_jitter(landmarks: np.ndarray, frames: list[int] | None = None) -> float:
    """Mean norm of the second temporal difference of the landmarks, in inter-ocular
    distances (constant-velocity motion counts zero). NaN under 3 consecutive frames."""
    return _difference_norm(landmarks, frames, order=2)


def _difference_norm(landmarks, frames, order: int) -> float:
    lm = np.asarray(landmarks, np.float64)
    frames = list(range(len(lm))) if frames is None else list(frames)
    vals = []
    for s in runs(frames):
        seg = lm[s]
        if len(seg) <= order:
            continue
        scale = _eye_distance(seg)[order:, None]
        vals.append((np.linalg.norm(np.diff(seg, n=order, axis=0), axis=-1) / scale).ravel())
    return float(np.concatenate(vals).mean()) if vals else float("nan")


def select_reference_frames(track: Track, k: int = 4) -> list[int]:
    """Frame numbers of the track's ``k`` best views: sharp, frontal, confident, and spread
    over time (the track is cut into ``k`` equal spans and each span gives its best frame).

    The score of an observation is sharpness (relative to the track's sharpest) x
    frontality x confidence (the detector score squashed to (0, 1); observations no
    detection confirmed count half).
    """
    n = len(track.frames)
    if n == 0 or k < 1:
        return []
    sharp = np.asarray(track.sharpness, np.float64)
    sharp = sharp / max(float(sharp.max()), 1e-12)
    conf = 1.0 / (1.0 + np.exp(-np.asarray(track.scores, np.float64)))
    conf = conf * np.where(np.asarray(track.detected), 1.0, 0.5)
    score = sharp * np.asarray(track.frontality, np.float64) * conf
    picks = []
    for span in np.array_split(np.arange(n), min(k, n)):
        if len(span):
            picks.append(int(track.frames[int(span[np.argmax(score[span])])]))
    return picks
