"""benchmarks.temporal, the video dataset of benchmarks.run (benchmarks.video) and the
report's clip pages (benchmarks.publish_video)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


# ---- methods and the dataset, no video decoded ------------------------------------------------

def test_restore_argv_maps_methods_to_mgfr_restore_flags():
    from benchmarks.video import restore_argv

    assert restore_argv("lq", {}) == []
    assert restore_argv("bicubic", {}) == ["--method", "bicubic"]
    assert restore_argv("bicubic@nosmooth", {}) == ["--method", "bicubic", "--smooth-window", "1"]
    assert restore_argv("mgfr", {"steps": "4", "guidance": "2"}) == ["--steps", "4",
                                                                    "--guidance", "2"]
    assert restore_argv("mgfr", {"one_step": "1"}) == ["--one-step"]
    with pytest.raises(ValueError, match="unknown variant @smooth"):
        restore_argv("bicubic@smooth", {})
    with pytest.raises(ValueError, match="unknown option 'stepz'"):
        restore_argv("mgfr", {"stepz": "4"})
    with pytest.raises(ValueError, match="unknown option 'out'"):  # the harness sets -o
        restore_argv("mgfr", {"out": "x"})
    with pytest.raises(ValueError):
        restore_argv("nosuchmethod", {})


def test_video_dataset_errors_name_the_input(tmp_path, capsys):
    from benchmarks import datasets as D
    from benchmarks.run import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DatasetError, match="holds no video clips"):
        D.load_dataset("video", empty, results_dir=tmp_path / "r")
    (empty / "a.mp4").write_bytes(b"not a video")
    assert D.is_video_dataset(str(empty)) and D.guess_layout(empty) == "video"
    with pytest.raises(D.DatasetError, match="frames must be >= 0"):
        D.load_dataset("video", empty, results_dir=tmp_path / "r", frames=-1)
    with pytest.raises(D.DatasetError, match="clips nope not in"):
        D.load_dataset("video", empty, results_dir=tmp_path / "r", clips="nope")
    with pytest.raises(D.DatasetError, match="unknown option"):
        D.load_dataset("video", empty, results_dir=tmp_path / "r", size=3)
    # bad input on the command line: one error line naming it, exit 2
    for argv, words in (([str(empty / "a.mp4")], "a.mp4"),
                        ([str(tmp_path / "missing")], "missing")):
        code = main(["--dataset", "video", "--data", *argv, "--methods", "lq",
                     "--out", str(tmp_path / "r"), "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0]
    code = main(["--dataset", "video", "--data", str(empty), "--methods", "bicubic@bogus",
                 "--out", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [("error: method 'bicubic@bogus': unknown variant @bogus "
                                  "(known: @nosmooth)")]


def test_strip_frames_and_crop_boxes():
    from benchmarks.publish_video import crop_box, strip_frames

    assert strip_frames(8, None) == [0, 2, 4, 5, 7]
    assert strip_frames(3, None) == [0, 1, 2]
    assert strip_frames(100, {"frames": [10, 11, 12, 40, 41]}) == [10, 11, 12, 40, 41]
    assert strip_frames(20, {"frames": list(range(5, 30))}) == [5, 9, 12, 15, 19]
    assert strip_frames(0, None) == []
    # a square 1.8x the box, around its centre, pushed inside the frame
    assert crop_box((100, 100, 150, 150), 400, 300) == (80, 80, 170, 170)
    assert crop_box((0, 0, 50, 60), 400, 300) == (0, 0, 108, 108)
    assert crop_box((300, 200, 400, 300), 400, 300) == (220, 120, 400, 300)
    assert crop_box((0, 0, 400, 300), 400, 300) == (50, 0, 350, 300)


def test_temporal_rows_mark_the_best_per_clip_and_track():
    from benchmarks.publish_video import temporal_rows

    rows = []
    for rid, warp, ident in (("a", 2.0, 0.99), ("b", 1.0, 0.98)):
        for tid in (0, 1):
            rows += [{"run_id": rid, "clip": "c", "track_id": tid, "metric": m, "value": v + tid,
                      "n_frames": 8} for m, v in (("warp_error", warp), ("identity_mean", ident),
                                                  ("identity_min", ident),
                                                  ("landmark_jitter", float("nan")))]
    vs = pd.DataFrame(rows)
    per_track = temporal_rows(vs, ["a", "b"], {"a": "A", "b": "B"}, by_track=True)
    assert [(r["label"], r["track"]) for r in per_track] == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    best = {(r["label"], r["track"]): [c["best"] for c in r["cells"]] for r in per_track}
    assert best[("B", 0)] == [True, False, False, False]     # lowest warp error
    assert best[("A", 1)] == [False, True, True, False]      # highest identity; NaN is no one's
    means = temporal_rows(vs, ["a", "b"], {"a": "A", "b": "B"}, by_track=False)
    assert [r["cells"][0]["text"] for r in means] == ["2.500", "1.500"]
    assert means[0]["cells"][3]["text"] == ""


# ---- real clips -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_store(data_root, tmp_path_factory):
    from publish_support import video_results
    return video_results(data_root, tmp_path_factory.getbasetemp())


@pytest.mark.realdata
@pytest.mark.slow
def test_video_dataset_fills_the_store(video_store):
    from publish_support import VIDEO_FRAMES, VIDEO_ODD_CLIP

    from benchmarks.store import open_store

    with open_store(video_store, read_only=True) as s:
        rows = s.query("SELECT clip, metric, count(*) AS n FROM video_scores "
                       "GROUP BY clip, metric ORDER BY ALL")
        series = s.query("SELECT count(*) AS n FROM video_series WHERE metric = 'identity'")
        runs = s.query("SELECT restorer, status, dataset FROM runs ORDER BY restorer")
        outputs = s.query("SELECT image_id, status, output_path FROM outputs")
        frames = s.query("SELECT image_id, metric, value FROM image_scores ORDER BY ALL")
    assert {(r["clip"], r["metric"]) for r in rows} == {
        (c, m) for c in ("real_1", VIDEO_ODD_CLIP)
        for m in ("warp_error", "identity_mean", "identity_min", "landmark_jitter")}
    assert all(r["n"] == 2 for r in rows)          # lq and bicubic, one track each
    assert series[0]["n"] == 2 * 2 * VIDEO_FRAMES
    assert runs == [{"restorer": r, "status": "done", "dataset": "video"}
                    for r in ("bicubic", "lq")]
    assert len(outputs) == 4 and {o["status"] for o in outputs} == {"ok"}
    # per-frame metrics only where a GT clip exists (its GT is the uncut clip itself)
    assert {f["image_id"].split("/")[0] for f in frames} == {VIDEO_ODD_CLIP}
    assert len(frames) == 2 * 2 * VIDEO_FRAMES and {f["metric"] for f in frames} == {"psnr", "ssim"}
    assert all(f["value"] > 30 for f in frames if f["metric"] == "psnr")


@pytest.mark.realdata
@pytest.mark.slow
def test_a_killed_video_run_resumes_without_redoing_finished_clips(data_root, tmp_path,
                                                                   monkeypatch):
    from benchmarks import temporal
    from benchmarks.run import main
    from benchmarks.store import open_store

    data = tmp_path / "data"
    data.mkdir()
    (data / "synthetic_1.mp4").symlink_to(data_root / "video" / "synthetic_1.mp4")
    (data / "synthetic_2.mp4").symlink_to(data_root / "video" / "synthetic_2.mp4")
    argv = ["--dataset", "video", "--data", str(data), "--methods", "lq,bicubic",
            "--dataset-option", "frames=6", "--out", str(tmp_path / "r"), "-q"]
    real, calls = temporal.clip_scores, []

    def dies_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(temporal, "clip_scores", dies_on_the_third)
    assert main(argv) == 130
    with open_store(tmp_path / "r", read_only=True) as s:
        assert len(s.query("SELECT * FROM outputs")) == 2
        first = s.query("SELECT * FROM video_scores ORDER BY ALL")
    calls.clear()
    assert main(argv) == 0
    assert len(calls) == 2                          # only the two clips not yet scored
    with open_store(tmp_path / "r", read_only=True) as s:
        scores = s.query("SELECT * FROM video_scores ORDER BY ALL")
        runs = s.query("SELECT status FROM runs")
    assert len(scores) == 4 * 2 * 2 and all(r in scores for r in first)
    assert [r["status"] for r in runs] == ["done", "done"]
    calls.clear()
    assert main(argv) == 0 and calls == []          # all done: nothing redone


@pytest.mark.realdata
@pytest.mark.slow
def test_benchmarks_video_is_an_alias_of_the_video_dataset(data_root, tmp_path):
    from benchmarks.store import open_store
    from benchmarks.video import main

    assert main(["--data", str(data_root / "video"), "--clips", "synthetic_1",
                 "--methods", "lq", "--frames", "4", "--out", str(tmp_path), "-q"]) == 0
    with open_store(tmp_path, read_only=True) as s:
        rows = s.query("SELECT DISTINCT clip FROM video_scores")
        runs = s.query("SELECT dataset, restorer FROM runs")
    assert rows == [{"clip": "synthetic_1"}] and runs == [{"dataset": "video", "restorer": "lq"}]
    assert main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path), "-q"]) == 2


@pytest.mark.realdata
@pytest.mark.slow
def test_report_has_a_page_per_clip(video_store, tmp_path):
    import re

    from publish_support import VIDEO_FRAMES

    from benchmarks import publish as P

    site = tmp_path / "site"
    assert P.main(["-i", str(video_store), "-o", str(site), "-q"]) == 0
    index = (site / "index.html").read_text()
    pages = sorted(site.glob("clip-*.html"))
    assert len(pages) == 2
    for p in pages:
        assert f'href="{p.name}"' in index
    # names from the store are text: escaped in every page, never part of a file name
    for text in [index, (site / "video.html").read_text()] + [p.read_text() for p in pages]:
        assert "<i>" not in text
    assert "syn&lt;i&gt;&amp;1" in index
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", p.name) for p in site.rglob("*") if p.is_file())
    odd = next(p for p in pages if "syn-i-1" in p.name).read_text()
    # LQ, bicubic (the lq run is the LQ row) and GT, at 5 frames spread over 8
    strip = re.findall(r'<img class="frame" src="([^"]+)"', odd)
    assert len(strip) == 3 * 5 and all((site / s).is_file() for s in strip)
    assert "Frames 0, 2, 4, 5, 7." in odd and "Whole frames" in odd
    real = next(p for p in pages if "real_1" in p.name).read_text()
    assert "Around the main face track" in real
    plots = re.findall(r'<img class="wide" src="([^"]+)"', real)
    assert [p.rsplit("-", 1)[1] for p in plots] == ["warp_error.png", "identity.png"]
    from PIL import Image
    w, h = Image.open(site / strip[0]).size
    assert max(w, h) == 192
    assert VIDEO_FRAMES == 8


@pytest.mark.realdata
@pytest.mark.slow
def test_a_clip_a_method_cannot_restore_is_a_failed_row(data_root, tmp_path, capsys):
    from benchmarks.run import main
    from benchmarks.store import open_store

    data, empty = tmp_path / "data", tmp_path / "no_outputs"
    data.mkdir()
    empty.mkdir()
    (data / "synthetic_1.mp4").symlink_to(data_root / "video" / "synthetic_1.mp4")
    code = main(["--dataset", "video", "--data", str(data), "--methods",
                 f"folder:dir={empty},lq", "--dataset-option", "frames=2",
                 "--out", str(tmp_path / "r"), "-q"])
    assert code == 1                                 # finished, with a failed row
    with open_store(tmp_path / "r", read_only=True) as s:
        runs = {r["restorer"]: r for r in s.query("SELECT * FROM runs")}
        out = s.query("SELECT * FROM outputs WHERE status = 'failed'")
    assert runs["folder"]["status"] == "failed" and runs["lq"]["status"] == "done"
    assert len(out) == 1 and "no output for image id" in out[0]["error"]
    assert ": 1 of 1 clips failed (see outputs.error)" in capsys.readouterr().out
