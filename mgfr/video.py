"""``python -m mgfr restore -i clip.mp4 -o OUT``: restore every face of every frame of a video.

The steps, each resumable (files written under temporary names, then renamed):

1. **Tracks** (``OUT/<stem>.work/tracks.json``): one decoding pass; ``faces.tracking``
   detects on key frames, tracks in between, and smooths each track's landmarks
   (Savitzky-Golay, ``--smooth-window``; 1 turns it off).
2. **References per track**, once per track: the user's ``--refs`` (used for every
   track), or by default the track's ``--ref-frames`` best frames (sharp, frontal,
   confident, spread over time), FFHQ-aligned and kept as ``refs/track<id>_<frame>.png``.
3. **Restoration** in chunks of ``--chunk-frames`` frames: each face is cut out along its
   smoothed landmarks (FFHQ alignment, one affine warp), restored with its track's
   references, and pasted back with a feathered mask; pixels outside the pasted faces are
   the decoded input's. A finished chunk is a folder of lossless PNG frames, renamed into
   place, so a killed run redoes at most one chunk and loses or duplicates no frame. The
   sampling noise is seeded from ``--seed`` and the track (``--noise track``, the default:
   every frame of a track starts from the same noise, which keeps a sampled restorer from
   flickering) or the track and frame (``--noise frame``), never from global state, so a
   resumed run writes what an uninterrupted one would.
4. **Encoding** (``OUT/<stem>.mp4``): H.264 (MPEG-4 Part 2 where the FFmpeg build has no
   H.264), the input's frame rate, frame count and rotation, its audio copied.

``--method`` picks the restorer: ``mgfr`` (the default: the pipeline that ``--base`` and
``--adapters`` select, with ``--steps``, ``--guidance``, ...) or any other restorer of the
benchmark registry (``bicubic``, ``lq``, ``codeformer``, ``gfpgan``, ``folder:dir=...``).
``--aligned``: the frames are already aligned faces (KEEP-style synthetic clips): no
detection, the whole frame is restored, references are the clip's best frames.

``OUT/<stem>.work/timings.json`` has the seconds spent on decoding, detection, tracking,
references, restoration, paste-back and encoding (``perf/bench_video.py`` reads it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from reface_core.argtypes import at_least

#: restored faces are made at this size and pasted back from it
FACE_SIZE = 512
TRACKS = "tracks.json"


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video (when -i is a video file: .mp4, .mov, .mkv, .avi, .webm)")
    g.add_argument("--method", default="mgfr",
                   help="restorer: mgfr (default; --base/--adapters) or one of the benchmark "
                        "registry with options, e.g. bicubic, codeformer:w=0.7, "
                        "folder:dir=outputs/x")
    g.add_argument("--key-interval", type=at_least(1), default=5,
                   help="detect faces every N frames, track in between (default 5)")
    g.add_argument("--smooth-window", type=at_least(1), default=9,
                   help="Savitzky-Golay window over landmarks in frames, odd; 1: no smoothing "
                        "(default 9)")
    g.add_argument("--ref-frames", type=at_least(1), default=4,
                   help="without --refs: references per track taken from its best frames "
                        "(default 4)")
    g.add_argument("--chunk-frames", type=at_least(1), default=32,
                   help="frames per resumable chunk (default 32)")
    g.add_argument("--crf", type=at_least(0), default=18,
                   help="H.264 quality of the output video, lower is better (default 18)")
    g.add_argument("--max-hours", type=at_least(0.001, float), default=3.0,
                   help="refuse videos whose header says they are longer (default 3)")
    g.add_argument("--noise", choices=("track", "frame"), default="track",
                   help="MGFR's sampling noise: the same for every frame of a track (track, "
                        "default: less flicker) or drawn anew per frame (frame)")
    g.add_argument("--keep-frames", action="store_true",
                   help="keep the restored PNG frames (OUT/<stem>.work/chunks) after encoding")


# ---- restorers ---------------------------------------------------------------------------

class PipelineFaceRestorer:
    """MGFR on aligned faces with the restorer interface of the benchmark registry
    (``restore(lq, references, image_id=, out_size=)``). Prompts and identity vectors are
    computed once per reference set (per track), not per frame."""

    name = "mgfr"
    uses_references = True

    def __init__(self, pipe, seed: int, options: dict, noise: str = "track"):
        if noise not in ("track", "frame"):
            raise ValueError(f"noise must be 'track' or 'frame', got {noise!r}")
        self.pipe, self.seed, self.options, self.noise = pipe, int(seed), dict(options), noise
        self._per_refs: dict[int, dict] = {}

    def config_for_record(self) -> dict:
        return {"restorer": "mgfr", "noise": self.noise,
                **self.pipe.config_for_record(seed=self.seed, **self.options)}

    def noise_key(self, image_id: str) -> str:
        """What the sampling noise is seeded from: ``track3/frame000012`` -> ``track3`` with
        per-track noise (an aligned clip, ``frame000012``, is one track), else the whole id."""
        if self.noise == "frame":
            return image_id
        head, sep, _ = image_id.rpartition("/")
        return head if sep else "clip"

    def _track_inputs(self, references) -> dict:
        key = id(references)
        if key not in self._per_refs:
            extra: dict = {}
            if references:
                if self.options.get("prompt") is None:
                    p, na, nq = self.pipe.default_prompts(references)
                    extra.update(prompt=p, negative_attribute_prompt=na,
                                 negative_quality_prompt=nq)
                vecs = np.asarray(self.pipe.embedder.embed(list(references)), np.float32)
                extra["id_embeds"] = vecs[None]
            self._per_refs[key] = {"refs": references, "extra": extra}
        return self._per_refs[key]["extra"]

    def restore(self, lq, references, *, image_id, out_size):
        import torch

        from .pipeline import resize_square

        digest = hashlib.sha256(f"{self.seed}\0{self.noise_key(image_id)}".encode()).digest()
        gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        options = {**self.options, **self._track_inputs(references)}
        for k in ("prompt", "negative_attribute_prompt", "negative_quality_prompt"):
            if k in self.options and self.options[k] is not None:
                options[k] = self.options[k]
        out = self.pipe(lq, references=[list(references)] if references else None,
                        generator=gen, output_type="np", **options)
        face = np.asarray(out.images[0])
        return resize_square(face, out_size[0]) if out_size else face


def build_restorer(args: argparse.Namespace):
    """The restorer ``--method`` names, loaded."""
    name, _, rest = args.method.partition(":")
    if name == "mgfr":
        if rest:
            raise ValueError(f"--method {args.method}: give MGFR's settings with --base, "
                             f"--adapters, --steps, --guidance, ... instead of options")
        from .pipeline import load_pipeline

        pipe = load_pipeline(base=args.base, adapters=args.adapters, device=args.device,
                             dtype=args.dtype, scheduler=args.scheduler)
        options = dict(guidance_scale=args.guidance, lambda_na=args.lambda_na,
                       lambda_nq=args.lambda_nq, num_inference_steps=args.steps,
                       strength=args.strength, one_step=True if args.one_step else None,
                       prompt=args.prompt,
                       negative_attribute_prompt=args.negative_attribute_prompt,
                       negative_quality_prompt=args.negative_quality_prompt)
        return PipelineFaceRestorer(pipe, args.seed, options,
                                    noise=getattr(args, "noise", "track"))
    # The other restorers live in the benchmark's registry (imported only here, on demand,
    # so that one registry serves both the benchmark and video restoration).
    from benchmarks.restorers import RestorerUnavailable, create_restorer, parse_method

    name, options = parse_method(args.method)
    restorer = create_restorer(name, **options)
    try:
        restorer.load(args.device)
    except RestorerUnavailable as e:
        raise ValueError(f"--method {args.method}: {e}") from None
    return restorer


# ---- the run -----------------------------------------------------------------------------

def _track_crop_size(track) -> int:
    """One crop side per track (the median FFHQ quad size, 64..512 px, a multiple of 8), so
    a track's crops do not change scale from frame to frame."""
    from faces.alignment import ffhq_quad

    sizes = [ffhq_quad(lm)[1] for lm in track.landmarks_array()]
    return int(np.clip(round(float(np.median(sizes)) / 8) * 8, 64, FACE_SIZE))


def _aligned_track(path, info, progress):
    from faces.tracking import Track, sharpness
    from reface_core.video import iter_frames

    t = Track(track_id=0)
    for i, frame in enumerate(iter_frames(path, info=info)):
        t.frames.append(i)
        t.boxes.append([0.0, 0.0, float(info.width), float(info.height)])
        t.scores.append(10.0)
        t.detected.append(True)
        t.sharpness.append(sharpness(frame))
        t.frontality.append(1.0)
        progress.update(1)
    return t


def _load_user_references(args, pipe_detector: str) -> list[np.ndarray]:
    import faces
    from reface_core.imageio import load_image

    from .pipeline import NoFaceError, check_face
    from .restore import _files

    refs = []
    for p in _files(args.refs, "reference"):
        img = load_image(p)
        if args.aligned:
            refs.append(check_face(img, str(p)))
            continue
        found = faces.detect_and_align(img, detector=pipe_detector, output_size=FACE_SIZE)
        if not found:
            raise NoFaceError(f"{p}: no face found in the reference")
        refs.append(max(found, key=lambda f: f.detection.size).image)
    return refs


def track_references(path, info, tracks, k: int, work: Path, aligned: bool) -> dict[int, list]:
    """Each track's references from its own ``k`` best frames, computed once per track
    (kept as PNGs under ``work/refs``; a resumed run reads them back)."""
    from faces.tracking import select_reference_frames, warp_aligned
    from reface_core.atomic import atomic_path
    from reface_core.imageio import load_image, save_image
    from reface_core.video import iter_frames

    wanted: dict[int, list[tuple[int, Path]]] = {}
    for t in tracks:
        wanted[t.track_id] = [(f, work / "refs" / f"track{t.track_id}_{f:06d}.png")
                              for f in select_reference_frames(t, k)]
    missing = {f for pairs in wanted.values() for f, p in pairs if not p.is_file()}
    if missing:
        by_id = {t.track_id: t for t in tracks}
        for i, frame in enumerate(iter_frames(path, info=info, stop=max(missing) + 1)):
            if i not in missing:
                continue
            for tid, pairs in wanted.items():
                for f, p in pairs:
                    if f != i or p.is_file():
                        continue
                    t = by_id[tid]
                    crop = frame if aligned else warp_aligned(
                        frame, t.landmarks_array()[t.index_of(f)], FACE_SIZE)[0]
                    with atomic_path(p) as tmp:
                        save_image(tmp, crop)
    return {tid: [load_image(p) for _, p in pairs] for tid, pairs in wanted.items()}


def _settings(args, info, restorer, tracker_config) -> dict:
    from reface_core.assets import sha256_file

    return {"input_sha256": sha256_file(args.input), "video": {**info.to_dict(), "path": None},
            "restorer": restorer.config_for_record(), "tracker": tracker_config,
            "aligned": bool(args.aligned), "smooth_window": args.smooth_window,
            "ref_frames": args.ref_frames, "refs": [str(p) for p in args.refs],
            "chunk_frames": args.chunk_frames, "crf": args.crf, "face_size": FACE_SIZE}


def _check_settings(work: Path, record: dict, overwrite: bool) -> None:
    from reface_core.atomic import write_json_atomic

    run_file = work / "run.json"
    if run_file.is_file() and not overwrite:
        old = json.loads(run_file.read_text())
        diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        if diff:
            raise ValueError(f"{work} holds a restore with other settings (they differ in "
                             f"{', '.join(diff)}); use another --out or --overwrite")
    if overwrite and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, record)


def restore_frame(frame: np.ndarray, i: int, tracks, refs: dict, sizes: dict, restorer,
                  aligned: bool, timings: dict) -> np.ndarray:
    """``frame`` with every face of the tracks present at frame ``i`` restored and pasted."""
    import faces
    from faces.tracking import warp_aligned

    if aligned:
        t0 = time.perf_counter()
        out = restorer.restore(frame, refs.get(0, []), image_id=f"frame{i:06d}",
                               out_size=frame.shape[:2])
        timings["restoration"] += time.perf_counter() - t0
        return _resize(np.asarray(out), frame.shape[:2])
    out = frame
    for t in tracks:
        k = t.index_of(i)
        if k is None:
            continue
        t0 = time.perf_counter()
        n = sizes[t.track_id]
        crop, m = warp_aligned(frame, t.landmarks_array()[k], n)
        face = restorer.restore(crop, refs.get(t.track_id, []),
                                image_id=f"track{t.track_id}/frame{i:06d}",
                                out_size=(FACE_SIZE, FACE_SIZE))
        t1 = time.perf_counter()
        out = faces.paste_back(out, np.ascontiguousarray(face),
                               m.astype(np.float64) * (face.shape[0] / n), soft_mask=True)
        timings["restoration"] += t1 - t0
        timings["paste_back"] += time.perf_counter() - t1
    return out


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if img.shape[:2] == tuple(size):
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size[0] else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (size[1], size[0]), interpolation=interp))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """A lossless frame, fast (zlib level 1: 5x faster than level 6 here). The chunk folder
    it goes into is renamed into place when whole, so the file needs no temporary name."""
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]),
                       [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"{path}: could not write the frame")


def run_video_restore(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from faces.tracking import FaceTracker, Track, smooth_tracks
    from reface_core.atomic import write_json_atomic
    from reface_core.imageio import load_image
    from reface_core.video import VideoWriter, iter_frames, probe_video

    src = Path(args.input)
    info = probe_video(src, max_seconds=args.max_hours * 3600)
    if args.smooth_window > 1 and args.smooth_window % 2 == 0:
        raise ValueError(f"--smooth-window must be odd, got {args.smooth_window}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    work, final = out / f"{src.stem}.work", out / f"{src.stem}.mp4"
    quiet = args.no_progress
    timings = dict.fromkeys(("decoding", "detection", "tracking", "references", "restoration",
                             "paste_back", "encoding"), 0.0)
    old_timings = work / "timings.json"

    restorer = build_restorer(args)
    tracker = None if args.aligned else FaceTracker(args.detector, key_interval=args.key_interval)
    record = _settings(args, info, restorer, tracker.config if tracker else None)
    _check_settings(work, record, args.overwrite)
    if old_timings.is_file():
        timings.update(json.loads(old_timings.read_text()))

    # 1. tracks
    tracks_file = work / TRACKS
    if not tracks_file.is_file():
        t0 = time.perf_counter()
        with tqdm(total=info.frames, desc="track", unit="frame", disable=quiet,
                  file=sys.stderr) as bar:
            if args.aligned:
                tracks = [_aligned_track(src, info, bar)]
            else:
                tracks = tracker.track(iter_frames(src, info=info), progress=bar)
                smooth_tracks(tracks, args.smooth_window)
        if tracker is not None:
            timings["detection"] += tracker.timings["detection"]
            timings["tracking"] += tracker.timings["tracking"]
        timings["decoding"] += time.perf_counter() - t0 - (
            (tracker.timings["detection"] + tracker.timings["tracking"]) if tracker else 0.0)
        write_json_atomic(tracks_file, {"video": info.to_dict(), "tracks":
                                        [t.to_dict() for t in tracks]}, indent=None)
    # read back even when just made: a resumed run restores from the file's (rounded)
    # numbers, so this one must too, or the two would differ in the last bits
    tracks = [Track.from_dict(d) for d in json.loads(tracks_file.read_text())["tracks"]]

    # 2. references, once per track
    t0 = time.perf_counter()
    if args.refs:
        user = _load_user_references(args, args.detector)
        refs = {t.track_id: user for t in tracks}
    else:
        refs = track_references(src, info, tracks, args.ref_frames, work, args.aligned)
    timings["references"] += time.perf_counter() - t0
    sizes = {} if args.aligned else {t.track_id: _track_crop_size(t) for t in tracks}

    # 3. restore, chunk by chunk
    chunks = work / "chunks"
    n_chunks = -(-info.frames // args.chunk_frames)
    done = [(chunks / f"{c:05d}").is_dir() for c in range(n_chunks)]
    if not final.is_file() and not all(done):
        first = done.index(False) * args.chunk_frames
        bar = tqdm(total=info.frames, initial=first, desc="restore", unit="frame",
                   disable=quiet, file=sys.stderr)
        frames = iter_frames(src, info=info, start=first)
        tmp_dir = None
        for i in range(first, info.frames):
            c = i // args.chunk_frames
            t0 = time.perf_counter()
            frame = next(frames)
            timings["decoding"] += time.perf_counter() - t0
            if done[c]:
                bar.update(1)
                continue
            if i % args.chunk_frames == 0 or tmp_dir is None:
                tmp_dir = chunks / f".{c:05d}.partial"
                shutil.rmtree(tmp_dir, ignore_errors=True)
                tmp_dir.mkdir(parents=True)
            restored = restore_frame(frame, i, tracks, refs, sizes, restorer, args.aligned,
                                     timings)
            t0 = time.perf_counter()
            _write_png(tmp_dir / f"{i:06d}.png", restored)
            timings["encoding"] += time.perf_counter() - t0
            if (i + 1) % args.chunk_frames == 0 or i + 1 == info.frames:
                tmp_dir.rename(chunks / f"{c:05d}")  # the chunk is done
                tmp_dir = None
                write_json_atomic(old_timings, timings)
            bar.update(1)
        frames.close()
        bar.close()

    # 4. encode
    if not final.is_file():
        t0 = time.perf_counter()
        with VideoWriter(final, info, audio_from=src if info.audio_streams else None,
                         crf=args.crf) as w:
            for c in range(n_chunks):
                for p in sorted((chunks / f"{c:05d}").glob("*.png")):
                    w.write(load_image(p))
        if w.count != info.frames:
            final.unlink()
            raise RuntimeError(f"{work}: the chunks hold {w.count} frames, the video has "
                               f"{info.frames}; rerun with --overwrite")
        timings["encoding"] += time.perf_counter() - t0
        write_json_atomic(old_timings, timings)
        if not args.keep_frames:
            shutil.rmtree(chunks)
    faces_n = sum(len(t.frames) for t in tracks)
    print(f"restored {faces_n} faces in {info.frames} frames ({len(tracks)} tracks) of {src} "
          f"into {final}", file=sys.stderr)
    return 0
