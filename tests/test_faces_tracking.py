"""faces.tracking: smoothing, jitter measures, reference frames, association on real clips."""

from __future__ import annotations

import numpy as np
import pytest

from faces.tracking import (
    FaceTracker,
    Track,
    landmark_jitter,
    landmark_motion,
    runs,
    select_reference_frames,
    smooth_landmarks,
    smooth_tracks,
)


def _face(cx=100.0, cy=100.0, s=40.0):
    # five points: eyes, nose, mouth corners
    return np.array([[cx - s / 2, cy - s / 3], [cx + s / 2, cy - s / 3], [cx, cy],
                     [cx - s / 3, cy + s / 2], [cx + s / 3, cy + s / 2]], np.float64)


def test_smoothing_lowers_jitter_and_keeps_steady_motion():
    rng = np.random.default_rng(0)
    T = 60
    clean = np.stack([_face(cx=100 + 0.5 * t) for t in range(T)])   # steady drift
    noisy = clean + rng.normal(0, 1.0, clean.shape)
    smooth = smooth_landmarks(noisy, list(range(T)), window=9)
    assert landmark_jitter(smooth) < 0.3 * landmark_jitter(noisy)
    assert landmark_jitter(clean) == pytest.approx(0.0, abs=1e-9)
    # real motion survives: the smoothed track stays on the clean one
    assert np.abs(smooth - clean).mean() < 0.6 * np.abs(noisy - clean).mean()
    # a static face: all motion is jitter
    static = np.repeat(_face()[None], 30, 0) + rng.normal(0, 1.0, (30, 5, 2))
    assert landmark_motion(smooth_landmarks(static, list(range(30)))) < 0.5 * landmark_motion(static)


def test_runs_are_smoothed_separately():
    frames = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16]
    assert [(s.start, s.stop) for s in runs(frames)] == [(0, 5), (5, 12)]
    lm = np.stack([_face(cx=0.0 if f < 10 else 500.0) for f in frames])
    out = smooth_landmarks(lm, frames, window=9)
    assert np.allclose(out, lm)   # no blur across the gap
    with pytest.raises(ValueError, match="odd"):
        smooth_landmarks(lm, frames, window=8)


def test_reference_frames_are_spread_and_prefer_good_views():
    n = 40
    t = Track(track_id=0, frames=list(range(n)), sharpness=[1.0] * n, frontality=[0.5] * n,
              scores=[1.0] * n, detected=[True] * n)
    t.sharpness[3] = 5.0       # sharpest in the first quarter
    t.frontality[25] = 1.0     # most frontal in the third quarter
    picks = select_reference_frames(t, k=4)
    assert len(picks) == 4 and picks == sorted(picks)
    assert 3 in picks and 25 in picks
    assert [p // 10 for p in picks] == [0, 1, 2, 3]
    assert select_reference_frames(t, k=100) == list(range(n))


def test_track_round_trips_json():
    import json
    t = Track(track_id=3, frames=[0, 1], boxes=[[0, 0, 1, 1]] * 2, landmarks=[_face()] * 2,
              scores=[1.0, 1.0], detected=[True, False], sharpness=[2.0, 3.0],
              frontality=[1.0, 0.9], embeddings=[np.ones(4, np.float32) / 2])
    smooth_tracks([t], window=1)
    back = Track.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.frames == t.frames and np.allclose(back.smoothed, t.smoothed)
    assert np.allclose(back.embedding, t.embedding)


@pytest.mark.realdata
def test_a_face_that_leaves_and_returns_keeps_its_track(data_root):
    """real_1 frames 0-29, then 10 blank frames (the face leaves), then frames 30-49."""
    from reface_core.video import iter_frames

    frames = list(iter_frames(data_root / "video" / "real_1.mp4", stop=50))
    blank = np.full_like(frames[0], 128)
    clip = frames[:30] + [blank] * 10 + frames[30:]
    tracker = FaceTracker(key_interval=5)
    tracks = tracker.track(iter(clip))
    assert len(tracks) == 1, [len(t.frames) for t in tracks]
    t = tracks[0]
    assert t.frames[0] == 0 and t.frames[-1] == 59
    assert not any(30 <= f < 40 for f in t.frames)   # no face where there is none
    assert sum(t.detected) == len(t.embeddings) >= 8
    # without identity, the returning face is a new track
    assert len(FaceTracker(key_interval=5, embedder=None).track(iter(clip))) == 2


@pytest.mark.realdata
def test_smoothing_lowers_landmark_motion_on_a_static_clip(data_root):
    """One real frame repeated with fresh sensor noise: every landmark move is jitter."""
    from reface_core.video import iter_frames

    frame = next(iter(iter_frames(data_root / "video" / "real_1.mp4", stop=1)))
    rng = np.random.default_rng(0)
    clip = [np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
            for _ in range(25)]
    t = FaceTracker(key_interval=5).track(iter(clip))[0]
    raw = landmark_motion(t.landmarks_array(smoothed=False), t.frames)
    smooth_tracks([t], window=9)
    assert raw > 0.002
    assert landmark_motion(t.smoothed, t.frames) < 0.6 * raw
