"""Small clips made with PyAV for the video tests (no files in the repository)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def make_clip(path: Path, frames: int = 12, size: tuple[int, int] = (48, 64), fps: int = 10,
              audio: bool = False, rotation: int = 0, timestamps: list[int] | None = None,
              seed: int = 0) -> list[np.ndarray]:
    """Write a clip of moving noise to ``path`` (H.264 or MPEG-4) and return its frames.

    ``timestamps``: packet times in 1/fps units (a variable rate when uneven)."""
    import av

    rng = np.random.default_rng(seed)
    h, w = size
    # smooth content (4:2:0 chroma keeps it) with a bright corner that shows orientation
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     np.full_like(xx, int(rng.integers(0, 256)))], -1).astype(np.uint8)
    base[: h // 4, : w // 4] = 255
    out = []
    c = av.open(str(path), "w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    v = c.add_stream(codec, rate=fps, options={"crf": "0"} if codec == "libx264" else {})
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    v.codec_context.time_base = Fraction(1, fps)
    if rotation:
        v.set_display_rotation(rotation)
    a = c.add_stream("aac", rate=8000) if audio else None
    for i in range(frames):
        img = base.copy()
        img[h // 2:h // 2 + 4, (2 * i) % w] = 0  # a moving mark
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts = timestamps[i] if timestamps else i
        vf.time_base = Fraction(1, fps)
        for p in v.encode(vf):
            c.mux(p)
        out.append(img)
    for p in v.encode(None):
        c.mux(p)
    if a is not None:
        samples = int(8000 * frames / fps)
        t = np.arange(samples) / 8000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        step = 1024
        for j in range(0, samples, step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, j:j + step]),
                                            format="fltp", layout="mono")
            af.sample_rate = 8000
            af.pts = j
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    c.close()
    return out


def cut_clip(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` re-encoded into ``dst`` (short test clips)."""
    from dataclasses import replace

    from reface_core.video import VideoWriter, iter_frames, probe_video

    info = probe_video(src)
    with VideoWriter(dst, replace(info, frames=frames), crf=12) as w:
        for f in iter_frames(src, info=info, stop=frames):
            w.write(f)
    return dst
