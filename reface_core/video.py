"""Video in and out through PyAV (its wheel carries FFmpeg), streaming: one frame in memory.

    info = probe_video("clip.mp4")             # checked: frames, constant rate, length
    for frame in iter_frames("clip.mp4"):      # uint8 (H, W, 3) RGB, upright
        ...
    with VideoWriter("out.mp4", info, audio_from="clip.mp4") as w:
        w.write(frame)                         # H.264 (libx264), else MPEG-4 Part 2

What is kept: the frame rate (the stream's exact rational rate), the frame count, the
rotation (frames are handed out upright; the writer turns them back and sets the same
display rotation, so the output is stored and shown like the input), and every audio
stream (its packets copied, not re-encoded, interleaved with the video as it is written).

The codec is H.264 (``libx264``, ``yuv420p``; ``yuv444p`` when a side is odd, which
4:2:0 cannot hold) when the FFmpeg build has it; otherwise MPEG-4 Part 2 (``mpeg4``), the
encoder every FFmpeg build has. ``VideoInfo.codec`` and the writer's ``codec`` say which.

Refused with :class:`VideoError` (a ``ValueError`` whose one-line message names the file):
a file FFmpeg cannot open or with no video stream, zero frames, a variable frame rate, a
header longer than ``max_seconds`` (checked before reading any packet, so a forged
10-hour header costs nothing), and a file that ends early (truncated).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

#: suffixes read as videos (``mgfr restore`` dispatches on them)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm"})
#: longest video accepted by default (seconds, from the header); callers may raise it
MAX_SECONDS = 3 * 3600.0
#: a frame interval further than this from the median interval means a variable rate
_VFR_TOLERANCE = 0.02


class VideoError(ValueError):
    """A video that cannot be read as a constant-rate clip; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is: ``width``/``height`` upright (after rotation), ``fps`` as a fraction
    string (``"20/1"``), ``frames`` (counted packets), ``rotation`` (degrees, counter-
    clockwise, a multiple of 90), ``audio_streams``, ``codec`` of the video stream."""

    path: str
    width: int
    height: int
    fps: str
    frames: int
    rotation: int
    audio_streams: int
    codec: str

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps)

    @property
    def seconds(self) -> float:
        return self.frames / float(self.rate)

    def to_dict(self) -> dict:
        return asdict(self)


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({_short(e)})") from None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _rotation(stream, first_frame=None) -> int:
    angle = None
    if first_frame is not None:
        angle = getattr(first_frame, "rotation", None)
    if angle is None:
        angle = stream.metadata.get("rotate")
    try:
        angle = int(round(float(angle or 0)))
    except ValueError:
        angle = 0
    return angle % 360 if angle % 90 == 0 else 0


def probe_video(path: str | os.PathLike, *, max_seconds: float = MAX_SECONDS) -> VideoInfo:
    """Check ``path`` and describe it (reads packets, decodes one frame)."""
    import av

    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path}: has no video stream")
        s = c.streams.video[0]
        claimed = []
        if c.duration:
            claimed.append(c.duration / 1_000_000)
        if s.duration and s.time_base:
            claimed.append(float(s.duration * s.time_base))
        if claimed and max(claimed) > max_seconds:
            raise VideoError(f"{path}: its header says {max(claimed) / 3600:.1f} h, above the "
                             f"limit of {max_seconds / 3600:.1f} h")
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate or rate <= 0:
            raise VideoError(f"{path}: the video stream has no frame rate")
        pts = []
        try:
            for packet in c.demux(s):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
                    if len(pts) > max_seconds * float(rate) * 1.5:
                        raise VideoError(f"{path}: more frames than {max_seconds / 3600:.1f} h "
                                         f"at {float(rate):g} fps")
        except av.FFmpegError as e:
            raise VideoError(f"{path}: truncated or corrupt after {len(pts)} frames "
                             f"({_short(e)})") from None
        if not pts:
            raise VideoError(f"{path}: has zero frames")
        if s.frames and len(pts) < s.frames:
            raise VideoError(f"{path}: truncated: the header lists {s.frames} frames, the file "
                             f"holds {len(pts)}")
        pts.sort()
        _check_constant_rate(path, pts, s.time_base)
        # Containers that know their length up front (Matroska's header, a stream duration)
        # reveal a cut file: the packets stop well before the stated end. Audio may outlast
        # the video, so the container's length counts only for a clip without audio.
        stated = float(s.duration * s.time_base) if (s.duration and s.time_base) else \
            (c.duration / 1_000_000 if (c.duration and not c.streams.audio) else None)
        held = (pts[-1] - pts[0]) * float(s.time_base) + 1 / float(rate)
        if stated is not None and held < stated - max(3 / float(rate), 0.1 * stated):
            raise VideoError(f"{path}: truncated: its header says {stated:.2f} s, the frames "
                             f"stop at {held:.2f} s")
        c.seek(0)
        first = None
        try:
            first = next(c.decode(s))
        except (av.FFmpegError, StopIteration) as e:
            raise VideoError(f"{path}: its first frame cannot be decoded ({_short(e)})") from None
        rot = _rotation(s, first)
        w, h = (first.width, first.height) if rot % 180 == 0 else (first.height, first.width)
        return VideoInfo(path=str(path), width=w, height=h, fps=str(Fraction(rate)),
                         frames=len(pts), rotation=rot,
                         audio_streams=len(c.streams.audio), codec=s.codec_context.name)


def _check_constant_rate(path: Path, pts: list[int], time_base) -> None:
    if len(pts) < 3:
        return
    d = np.diff(np.asarray(pts, dtype=np.float64))
    med = float(np.median(d))
    if med <= 0:
        raise VideoError(f"{path}: frames share timestamps (broken timing)")
    # one tick of rounding is not a rate change
    tol = max(med * _VFR_TOLERANCE, 1.0)
    bad = np.abs(d - med) > tol
    if bad.any():
        tb = float(time_base)
        raise VideoError(
            f"{path}: variable frame rate (frame intervals from {d.min() * tb * 1000:.1f} to "
            f"{d.max() * tb * 1000:.1f} ms); re-encode at a constant rate first, e.g. "
            f"ffmpeg -i IN -vf fps=25 OUT.mp4")


def _upright(arr: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(arr, k)) if k else arr


def iter_frames(path: str | os.PathLike, *, info: VideoInfo | None = None,
                start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Frames ``start``..``stop`` (exclusive) of ``path`` as upright uint8 RGB arrays, decoded
    one at a time. A clip that ends before ``info.frames`` raises :class:`VideoError`."""
    import av

    path = Path(path)
    info = info or probe_video(path)
    stop = info.frames if stop is None else min(stop, info.frames)
    i = 0
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for frame in c.decode(s):
                if i >= stop:
                    break
                if i >= start:
                    yield _upright(frame.to_ndarray(format="rgb24"), info.rotation)
                i += 1
        except av.FFmpegError as e:
            raise VideoError(f"{path}: truncated or corrupt at frame {i} ({_short(e)})") from None
    if i < stop:
        raise VideoError(f"{path}: truncated: decoded {i} of {info.frames} frames")


def best_codec() -> tuple[str, str]:
    """(encoder, note): ``libx264`` when this FFmpeg build has it, else ``mpeg4``."""
    import av

    if "libx264" in av.codecs_available:
        try:
            av.codec.Codec("libx264", "w")
            return "libx264", "H.264"
        except av.FFmpegError:
            pass
    return "mpeg4", "MPEG-4 Part 2 (this FFmpeg build has no H.264 encoder)"


class VideoWriter:
    """Encode upright RGB frames to ``path`` (temporary name, renamed on ``close``), at
    ``info``'s rate and rotation, copying the audio streams of ``audio_from``.

    ``crf``: H.264 quality (lower is better; 18 is visually lossless). Two encodes of the
    same frames decode alike but need not be the same bytes: the x264 in PyAV's wheels is
    not bit-reproducible run to run, even with one thread.
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo, *,
                 audio_from: str | os.PathLike | None = None, crf: int = 18,
                 codec: str | None = None):
        import av

        self.path = Path(path)
        self.info = info
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.codec = codec or best_codec()[0]
        self.count = 0
        self._c = av.open(str(self.tmp), "w")
        rot = info.rotation
        w, h = (info.width, info.height) if rot % 180 == 0 else (info.height, info.width)
        opts = {"crf": str(crf), "preset": "medium"} if self.codec == "libx264" else {}
        self._v = self._c.add_stream(self.codec, rate=info.rate, options=opts)
        self._v.width, self._v.height = w, h
        odd = w % 2 or h % 2
        self._v.pix_fmt = "yuv444p" if (odd and self.codec == "libx264") else "yuv420p"
        if self.codec == "mpeg4":
            self._v.bit_rate = max(1_000_000, w * h * 8)
        if odd and self.codec != "libx264":
            raise VideoError(f"{self.path}: {w}x{h} has an odd side, which {self.codec} cannot "
                             f"encode")
        self._v.codec_context.time_base = Fraction(1, 1) / info.rate
        if rot:
            self._v.set_display_rotation(rot)
        self._audio_in = None
        self._audio_packets = None
        self._pending = None
        self._audio_map = {}
        if audio_from is not None and info.audio_streams:
            self._audio_in = av.open(str(audio_from))
            for a in self._audio_in.streams.audio:
                self._audio_map[a.index] = self._c.add_stream_from_template(a)
            self._audio_packets = self._audio_in.demux(*self._audio_in.streams.audio)

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy audio packets whose time is before ``seconds`` (all when None)."""
        if self._audio_packets is None:
            return
        while True:
            pkt = self._pending
            if pkt is None:
                pkt = next(self._audio_packets, None)
                if pkt is None:
                    self._audio_packets = None
                    return
            if pkt.dts is None or not pkt.size:  # the demuxer's flush packets
                self._pending = None
                continue
            if seconds is not None and pkt.pts is not None and \
                    float(pkt.pts * pkt.time_base) > seconds:
                self._pending = pkt
                return
            self._pending = None
            pkt.stream = self._audio_map[pkt.stream.index]
            self._c.mux(pkt)

    def write(self, frame: np.ndarray) -> None:
        import av

        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.shape != (self.info.height, self.info.width, 3):
            raise ValueError(f"frame {self.count}: expected uint8 ({self.info.height}, "
                             f"{self.info.width}, 3), got {arr.dtype} {arr.shape}")
        k = (self.info.rotation // 90) % 4
        if k:
            arr = np.ascontiguousarray(np.rot90(arr, -k))
        vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
        vf.pts = self.count
        vf.time_base = self._v.codec_context.time_base
        self._mux_audio_until(self.count / float(self.info.rate))
        for pkt in self._v.encode(vf):
            self._c.mux(pkt)
        self.count += 1

    def close(self) -> Path:
        for pkt in self._v.encode(None):
            self._c.mux(pkt)
        self._mux_audio_until(None)
        self._c.close()
        if self._audio_in is not None:
            self._audio_in.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._c.close()
        except Exception:  # noqa: BLE001 - already failing; the temporary goes either way
            pass
        if self._audio_in is not None:
            self._audio_in.close()
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

