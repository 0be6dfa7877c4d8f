"""Temporal metrics of a restored video, per face track (no network weights beyond dlib's).

=====================  ====================================================================
metric                 what (direction)
=====================  ====================================================================
``warp_error``         flow-warping error on the face region: output frame t-1 warped to
                       frame t along the optical flow of the **LQ** frames (OpenCV Farneback,
                       the same flow for every method, so a flickering method cannot bend
                       its own flow), mean absolute difference in 8-bit levels over the
                       face box, pixels failing the forward-backward flow check left out
                       (lower is better)
``identity_mean``      mean cosine of each frame's face descriptor (dlib 128-d, on the FFHQ
                       crop along the track's raw landmarks) to the track's mean descriptor
                       (higher is better)
``identity_min``       the lowest of those cosines: the frame that drifts most (higher)
``landmark_jitter``    dlib's 68 landmarks re-fitted on the *output* in the track's boxes,
                       mean norm of their second temporal difference in inter-ocular
                       distances (:func:`faces.tracking.landmark_jitter`) (lower)
=====================  ====================================================================

Every run of a clip is measured on the same LQ tracks (raw detections, not any run's
smoothed landmarks), so runs that differ only in smoothing are measured the same way.
Aligned clips (``--aligned``) are one track whose box is the FFHQ face box of the frame.
"""

from __future__ import annotations

import numpy as np

#: name -> (direction, description), for the store's ``metrics`` table
TEMPORAL_METRICS = {
    "warp_error": ("lower", "flow-warping error on the face region, 8-bit levels"),
    "identity_mean": ("higher", "mean cosine of a track's faces to the track's mean identity"),
    "identity_min": ("higher", "lowest cosine of a track's faces to its mean identity"),
    "landmark_jitter": ("lower", "second difference of re-fitted landmarks, eye distances"),
}


def _grey(img):
    import cv2
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _flow(a, b):
    import cv2
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def warp_errors(lq_prev, lq_cur, out_prev, out_cur, box) -> float:
    """One frame pair's warping error inside ``box`` (x0, y0, x1, y1)."""
    import cv2

    g0, g1 = _grey(lq_prev), _grey(lq_cur)
    back = _flow(g1, g0)         # for each pixel of t: where it was at t-1
    fwd = _flow(g0, g1)
    h, w = g1.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    mx, my = xx + back[..., 0], yy + back[..., 1]
    warped = cv2.remap(out_prev, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # forward-backward consistency (Sundaram et al.): occluded pixels do not count
    fw_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cycle = np.linalg.norm(back + fw_at, axis=-1)
    ok = cycle ** 2 < 0.01 * (np.linalg.norm(back, axis=-1) ** 2 +
                              np.linalg.norm(fw_at, axis=-1) ** 2) + 0.5
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region = np.zeros((h, w), bool)
    region[max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)] = True
    m = ok & region
    if not m.any():
        return float("nan")
    diff = np.abs(out_cur.astype(np.float32) - warped.astype(np.float32)).mean(-1)
    return float(diff[m].mean())


def clip_scores(lq_frames, out_frames, tracks, *, aligned: bool = False, embedder=None) -> dict:
    """Temporal metrics per track of one restored clip.

    ``lq_frames``/``out_frames``: iterables of the LQ and restored frames (same length);
    ``tracks``: :class:`faces.tracking.Track` from the LQ. Returns ``{"tracks": {track_id:
    {metric: value, "n_frames": n}}, "series": [(track_id, frame, metric, value), ...]}``.
    """
    from faces.detection import predict_landmarks
    from faces.embedding import FFHQ_FACE_BOX, get_embedder, l2_normalize
    from faces.tracking import landmark_jitter, warp_aligned

    embedder = embedder or get_embedder("dlib")
    state = {t.track_id: {"vecs": [], "lms": [], "frames": [], "warp": []} for t in tracks}
    prev = None
    series = []
    for i, (lq, out) in enumerate(zip(lq_frames, out_frames, strict=False)):
        for t in tracks:
            k = t.index_of(i)
            if k is None:
                continue
            st = state[t.track_id]
            if aligned:
                s = out.shape[0]
                box = [v * s for v in FFHQ_FACE_BOX]
                face = out
            else:
                box = t.boxes[k]
                face = warp_aligned(out, t.landmarks_array(smoothed=False)[k], 256)[0]
            st["vecs"].append(l2_normalize(np.asarray(embedder.embed([face])[0], np.float64)))
            st["lms"].append(predict_landmarks(out, [box], "68")[0])
            st["frames"].append(i)
            if prev is not None and t.index_of(i - 1) is not None:
                e = warp_errors(prev[0], lq, prev[1], out, box)
                st["warp"].append(e)
                series.append((t.track_id, i, "warp_error", e))
        prev = (lq, out)
    result = {}
    for tid, st in state.items():
        if not st["frames"]:
            continue
        vecs = np.asarray(st["vecs"])
        mean = l2_normalize(vecs.mean(0))
        cos = vecs @ mean
        for f, c in zip(st["frames"], cos, strict=False):
            series.append((tid, f, "identity", float(c)))
        warp = [w for w in st["warp"] if np.isfinite(w)]
        result[tid] = {"warp_error": float(np.mean(warp)) if warp else float("nan"),
                       "identity_mean": float(cos.mean()), "identity_min": float(cos.min()),
                       "landmark_jitter": landmark_jitter(np.asarray(st["lms"]), st["frames"]),
                       "n_frames": len(st["frames"])}
    return {"tracks": result, "series": series}
