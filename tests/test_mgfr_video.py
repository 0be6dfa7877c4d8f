"""mgfr restore on videos: tracks, references once per track, paste-back, resume, methods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reface_core.imageio import load_image
from reface_core.video import iter_frames, probe_video
from tests.video_support import cut_clip, make_clip

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.realdata


def _main(argv):
    from mgfr.cli import main
    return main(argv)


@pytest.fixture(scope="module")
def real_cut(tmp_path_factory):
    root = os.environ.get("REFACE_TEST_DATA")
    if not root:
        pytest.skip("REFACE_TEST_DATA is not set")
    return cut_clip(Path(root) / "video" / "real_1.mp4",
                    tmp_path_factory.mktemp("clips") / "real_cut.mp4", 24)


def _chunk_frames(work: Path) -> list[np.ndarray]:
    return [load_image(p) for p in sorted(work.glob("chunks/*/*.png"))]


def test_bicubic_restores_every_frame_once_with_references_once_per_track(
        real_cut, tmp_path, monkeypatch):
    import faces.tracking
    import mgfr.video

    calls = {"select": 0, "restore": 0}
    real_select = faces.tracking.select_reference_frames

    def counting_select(track, k=4):
        calls["select"] += 1
        return real_select(track, k)

    real_restore = mgfr.video.restore_frame

    def counting_restore(*a, **k):
        calls["restore"] += 1
        return real_restore(*a, **k)

    monkeypatch.setattr(faces.tracking, "select_reference_frames", counting_select)
    monkeypatch.setattr(mgfr.video, "restore_frame", counting_restore)
    out = tmp_path / "out"
    assert _main(["restore", "-i", str(real_cut), "-o", str(out), "--method", "bicubic",
                  "--chunk-frames", "10", "--keep-frames", "-q"]) == 0
    work = out / "real_cut.work"
    tracks = json.loads((work / "tracks.json").read_text())["tracks"]
    assert len(tracks) == 1 and len(tracks[0]["frames"]) == 24
    assert calls == {"select": 1, "restore": 24}
    assert len(list((work / "refs").glob("track0_*.png"))) == 4
    info = probe_video(out / "real_cut.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (24, "20", 388, 512)
    # the frame outside the pasted face is the input's, pixel for pixel
    restored = _chunk_frames(work)
    assert len(restored) == 24
    src = list(iter_frames(real_cut))
    from faces.alignment import ffhq_quad
    quad, _ = ffhq_quad(np.asarray(tracks[0]["smoothed"][0]))
    inside = np.zeros(src[0].shape[:2], bool)
    (x0, y0), (x1, y1) = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    inside[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    assert (~inside).sum() > 0.1 * inside.size
    assert np.array_equal(restored[0][~inside], src[0][~inside])
    assert not np.array_equal(restored[0], src[0])  # the face was pasted
    # rerun: nothing to do, same output; other settings are refused
    assert _main(["restore", "-i", str(real_cut), "-o", str(out), "--method", "bicubic",
                  "--chunk-frames", "10", "--keep-frames", "-q"]) == 0
    assert _main(["restore", "-i", str(real_cut), "-o", str(out), "--method", "lq",
                  "--chunk-frames", "10", "-q"]) == 2


def test_smoothing_off_changes_the_crops(real_cut, tmp_path):
    for w in ("1", "9"):
        assert _main(["restore", "-i", str(real_cut), "-o", str(tmp_path / w), "--method",
                      "bicubic", "--smooth-window", w, "-q"]) == 0
    a = json.loads((tmp_path / "1" / "real_cut.work" / "tracks.json").read_text())["tracks"][0]
    b = json.loads((tmp_path / "9" / "real_cut.work" / "tracks.json").read_text())["tracks"][0]
    assert np.allclose(a["smoothed"], a["landmarks"])
    assert not np.allclose(b["smoothed"], b["landmarks"])


@pytest.mark.slow
def test_mgfr_default_pipeline_runs_on_real_and_aligned_clips(real_cut, tmp_path, data_root):
    out = tmp_path / "mgfr"
    short = cut_clip(real_cut, tmp_path / "short.mp4", 3)
    assert _main(["restore", "-i", str(short), "-o", str(out), "--steps", "2", "-q"]) == 0
    assert probe_video(out / "short.mp4").frames == 3
    run = json.loads((out / "short.work" / "run.json").read_text())
    assert run["restorer"]["restorer"] == "mgfr"
    syn = cut_clip(data_root / "video" / "synthetic_1.mp4", tmp_path / "syn.mp4", 4)
    assert _main(["restore", "-i", str(syn), "-o", str(out), "--aligned", "--steps", "2",
                  "--ref-frames", "2", "-q"]) == 0
    info = probe_video(out / "syn.mp4")
    assert (info.frames, info.width, info.height) == (4, 128, 128)
    assert len(list((out / "syn.work" / "refs").glob("*.png"))) == 2


def test_bad_videos_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_text("not a video")
    make_clip(tmp_path / "vfr.mp4", frames=8, timestamps=[0, 1, 2, 4, 5, 7, 8, 9])
    for name, what in (("bad.mp4", "not a readable video"), ("vfr.mp4", "variable frame rate"),
                       ("missing.mp4", "no such file")):
        assert _main(["restore", "-i", str(tmp_path / name), "-o", str(tmp_path / "o"),
                      "--method", "bicubic", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and what in err[0], err
    assert _main(["restore", "-i", str(tmp_path / "vfr.mp4"), "-o", str(tmp_path / "o"),
                  "--method", "nosuch", "-q"]) == 2


@pytest.mark.slow
def test_killed_and_resumed_restore_is_byte_identical(real_cut, tmp_path):
    clip = cut_clip(real_cut, tmp_path / "clip.mp4", 24)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cmd(out):
        return [sys.executable, "-m", "mgfr", "restore", "-i", str(clip), "-o", str(out),
                "--method", "bicubic", "--chunk-frames", "6", "--keep-frames", "-q"]

    whole = tmp_path / "whole"
    subprocess.run(cmd(whole), env=env, check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    chunks = killed / "clip.work" / "chunks"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (chunks / "00001").is_dir():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "clip.mp4").exists()
    assert 2 <= len([p for p in chunks.iterdir() if not p.name.startswith(".")]) < 4
    subprocess.run(cmd(killed), env=env, check=True, capture_output=True, timeout=300)
    a = sorted((whole / "clip.work" / "chunks").glob("*/*.png"))
    b = sorted(chunks.glob("*/*.png"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 24
    assert all(np.array_equal(load_image(x), load_image(y)) for x, y in zip(a, b, strict=False))
    # The encoded streams decode to the same frames within x264's quantisation (its
    # bitstream is not reproducible run to run, so the MP4 bytes are not compared).
    va = list(iter_frames(whole / "clip.mp4"))
    vb = list(iter_frames(killed / "clip.mp4"))
    assert len(va) == len(vb) == 24
    for x, y, png in zip(va, vb, a, strict=False):
        ref = load_image(png).astype(np.int16)
        assert np.abs(x.astype(np.int16) - ref).mean() < 2.5
        assert np.abs(y.astype(np.int16) - ref).mean() < 2.5
        assert np.abs(x.astype(np.int16) - y.astype(np.int16)).mean() < 2.0
