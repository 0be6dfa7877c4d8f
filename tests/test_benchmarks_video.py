"""benchmarks.temporal and benchmarks.video: temporal metrics and the video dataset."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.temporal import warp_errors


def test_warp_error_is_zero_for_a_steady_output_and_grows_with_flicker():
    rng = np.random.default_rng(0)
    base = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    import cv2
    base = cv2.GaussianBlur(base, (7, 7), 2)
    box = (8, 8, 56, 56)
    assert warp_errors(base, base, base, base, box) == pytest.approx(0.0, abs=1e-6)
    flicker = np.clip(base.astype(int) + 12, 0, 255).astype(np.uint8)
    assert warp_errors(base, base, base, flicker, box) > 10
    # motion the LQ flow explains is not flicker
    moved = np.roll(base, 2, axis=1)
    assert warp_errors(base, moved, base, moved, box) < 0.5 * warp_errors(base, moved, base, base, box)


@pytest.mark.realdata
def test_video_benchmark_fills_the_store(tmp_path, data_root):
    from benchmarks.store import open_store
    from benchmarks.video import main

    assert main(["--data", str(data_root / "video"), "--clips", "real_1,synthetic_1",
                 "--methods", "lq,bicubic", "--frames", "6", "--out", str(tmp_path), "-q"]) == 0
    with open_store(tmp_path, read_only=True) as s:
        rows = s.query("SELECT clip, metric, count(*) AS n FROM video_scores "
                       "GROUP BY clip, metric ORDER BY ALL")
        series = s.query("SELECT count(*) AS n FROM video_series WHERE metric = 'identity'")
        runs = s.query("SELECT count(*) AS n FROM runs WHERE dataset = 'video'")
    assert {(r["clip"], r["metric"]) for r in rows} == {
        (c, m) for c in ("real_1", "synthetic_1")
        for m in ("warp_error", "identity_mean", "identity_min", "landmark_jitter")}
    assert all(r["n"] == 2 for r in rows)          # lq and bicubic, one track each
    assert series[0]["n"] == 2 * 2 * 6 and runs[0]["n"] == 2
    assert main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path), "-q"]) == 2
