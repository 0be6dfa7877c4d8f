"""reface_core.video: probe, streaming decode, encode with rate, count, rotation and audio."""

from __future__ import annotations

import numpy as np
import pytest

from reface_core.video import VideoError, VideoWriter, iter_frames, probe_video
from tests.video_support import make_clip


def _audio_packets(path):
    import av
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def test_round_trip_keeps_rate_count_rotation_and_audio(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    frames = make_clip(src, frames=15, fps=12, audio=True, rotation=90)
    info = probe_video(src)
    assert (info.frames, info.fps, info.rotation, info.audio_streams) == (15, "12", 90, 1)
    # upright: the stored frame turned by the display rotation (a 48x64 frame shows 64 tall)
    got = list(iter_frames(src, info=info))
    assert len(got) == 15 and got[0].shape == (64, 48, 3)
    assert np.abs(got[5].astype(int) - np.rot90(frames[5], 1)).mean() < 4
    with VideoWriter(dst, info, audio_from=src) as w:
        for f in got:
            w.write(f)
    assert not list(tmp_path.glob(".*tmp*"))
    out = probe_video(dst)
    assert (out.frames, out.fps, out.rotation, out.width, out.height) == (15, "12", 90, 48, 64)
    assert out.codec == "h264"
    back = list(iter_frames(dst))
    assert np.abs(back[7].astype(int) - got[7]).mean() < 4
    assert _audio_packets(dst) == _audio_packets(src)  # copied, not re-encoded


def test_partial_range_and_writer_checks(tmp_path):
    src = tmp_path / "in.mp4"
    make_clip(src, frames=10)
    info = probe_video(src)
    assert len(list(iter_frames(src, info=info, start=3, stop=7))) == 4
    w = VideoWriter(tmp_path / "o.mp4", info)
    with pytest.raises(ValueError, match="expected uint8"):
        w.write(np.zeros((5, 5, 3), np.uint8))
    w.abort()
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".o.tmp*"))


def test_bad_inputs_get_one_line_errors(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoError, match="text.mp4: not a readable video"):
        probe_video(tmp_path / "text.mp4")
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    make_clip(tmp_path / "vfr.mp4", frames=10, timestamps=[0, 1, 2, 3, 5, 6, 7, 9, 10, 11])
    with pytest.raises(VideoError, match="variable frame rate"):
        probe_video(tmp_path / "vfr.mp4")
    make_clip(tmp_path / "long.mp4", frames=3, timestamps=[0, 1, 10 * 3600 * 10])
    with pytest.raises(VideoError, match=r"header says 10.0 h"):
        probe_video(tmp_path / "long.mp4")
    make_clip(tmp_path / "whole.mkv", frames=30)
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mkv: truncated"):
        probe_video(tmp_path / "cut.mkv")
    (tmp_path / "empty.mkv").write_bytes(data[:600])
    with pytest.raises(VideoError, match="zero frames"):
        probe_video(tmp_path / "empty.mkv")
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "long.mp4").read_bytes()[:300])
    with pytest.raises(VideoError, match="cut.mp4"):
        probe_video(tmp_path / "cut.mp4")


@pytest.mark.realdata
def test_real_clips_probe(data_root):
    info = probe_video(data_root / "video" / "real_1.mp4")
    assert (info.width, info.height, info.frames, info.fps) == (388, 512, 248, "20")


def test_mgfr_video_noise_is_seeded_per_track_or_per_frame():
    """``--noise track`` (default): every frame of a track starts from the same noise, so a
    sampled restorer does not flicker from frame to frame; ``--noise frame`` draws anew."""
    import torch

    from mgfr.video import PipelineFaceRestorer

    class DrawPipe:
        """Returns the generator's first draws as the 'restored' face."""
        def config_for_record(self, **kw):
            return dict(kw)

        def __call__(self, lq, *, references, generator, output_type, **options):
            draw = torch.rand(4, generator=generator).numpy()
            return type("Out", (), {"images": [np.tile(draw, (2, 2, 1))[:, :, :3]]})()

    lq = np.zeros((2, 2, 3), np.float32)

    def faces(noise, ids):
        r = PipelineFaceRestorer(DrawPipe(), 7, {}, noise=noise)
        return [r.restore(lq, [], image_id=i, out_size=None) for i in ids]

    a, b, other = faces("track", ["track0/frame000001", "track0/frame000002",
                                  "track1/frame000001"])
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    c, d = faces("frame", ["track0/frame000001", "track0/frame000002"])
    assert not np.array_equal(c, d)
    # The same id gives the same noise in a new process-free rerun (resume), either way.
    assert np.array_equal(faces("frame", ["track0/frame000001"])[0], c)
    # An aligned clip's ids ("frame000003") are one track.
    e, f = faces("track", ["frame000001", "frame000009"])
    assert np.array_equal(e, f)
    assert PipelineFaceRestorer(DrawPipe(), 7, {}).config_for_record()["noise"] == "track"
    with pytest.raises(ValueError, match="noise"):
        PipelineFaceRestorer(DrawPipe(), 7, {}, noise="global")
