"""``python -m benchmarks.video``: restore a folder of clips with several methods and score
them over time, into the results store (``video_scores``, ``video_series``; see
``benchmarks.store``).

    python -m benchmarks.video --data ../shared/data/video --methods lq,bicubic,mgfr \\
        --frames 16 --out results/video

The ``video`` dataset is a folder of clips (``*.mp4``, ``*.mov``, ...); a clip with a GT
clip of the same name under ``DATA/gt/`` also gets per-frame PSNR into ``image_scores``
(``image_id`` = ``<clip>/<frame>``). Square clips of at most 512 px are taken as aligned
faces (restored with ``--aligned``, KEEP's synthetic clips); others are tracked.

Methods: ``lq`` is the LQ clip itself; every other name goes to ``mgfr restore --method``
(``bicubic``, ``codeformer``, ...; ``mgfr`` is ``mgfr restore``'s default pipeline, with
``mgfr:steps=N``); ``@nosmooth`` after a name restores with landmark smoothing off
(``bicubic@nosmooth``). Outputs and their work folders stay under ``OUT/video/``, so a
rerun resumes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from reface_core.cli import add_out, add_quiet, exit_with, run_main


def _clips(data: Path) -> list[Path]:
    from reface_core.video import is_video_path

    if not data.is_dir():
        raise ValueError(f"--data {data} is not a folder")
    clips = sorted(p for p in data.iterdir() if p.is_file() and is_video_path(p))
    if not clips:
        raise ValueError(f"--data {data} holds no video clips")
    return clips


def _restore_argv(method: str, clip: Path, out: Path, aligned: bool) -> list[str]:
    name, _, smooth = method.partition("@")
    base, _, opts = name.partition(":")
    argv = ["restore", "-i", str(clip), "-o", str(out), "-q"]
    if base == "mgfr":
        for part in filter(None, opts.split(",")):
            k, _, v = part.partition("=")
            argv += [f"--{k.replace('_', '-')}", v]
    else:
        argv += ["--method", name]
    if smooth == "nosmooth":
        argv += ["--smooth-window", "1"]
    elif smooth:
        raise ValueError(f"method {method!r}: unknown variant @{smooth} (only @nosmooth)")
    return argv + (["--aligned"] if aligned else [])


def run(args: argparse.Namespace) -> int:
    from faces.tracking import FaceTracker, Track
    from mgfr.cli import main as mgfr_main
    from reface_core.video import iter_frames, probe_video

    from .store import open_store
    from .temporal import TEMPORAL_METRICS, clip_scores

    data, out = Path(args.data), Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    clips = _clips(data)
    if args.clips:
        wanted = {c.strip() for c in args.clips.split(",")}
        missing = wanted - {c.stem for c in clips}
        if missing:
            raise ValueError(f"--clips: {', '.join(sorted(missing))} not in {data}")
        clips = [c for c in clips if c.stem in wanted]
    work = out / "video"
    rows, series, frame_scores, runs = [], [], [], {}
    for clip in clips:
        src = _cut(clip, work / "clips" / clip.name, args.frames) if args.frames else clip
        info = probe_video(src)
        aligned = info.width == info.height <= 512
        # the LQ tracks every run is measured on (raw detections)
        tracks_file = work / "clips" / f"{src.stem}.lq_tracks.json"
        if tracks_file.is_file():
            tracks = [Track.from_dict(d) for d in json.loads(tracks_file.read_text())]
        elif aligned:
            tracks = [Track(track_id=0, frames=list(range(info.frames)),
                            boxes=[[0, 0, info.width, info.height]] * info.frames)]
        else:
            tracks = FaceTracker(key_interval=5).track(iter_frames(src, info=info))
            from reface_core.atomic import write_json_atomic
            write_json_atomic(tracks_file, [t.to_dict() for t in tracks], indent=None)
        gt = data / "gt" / clip.name
        for method in methods:
            label = method.replace(":", "_").replace(",", "_").replace("=", "-")
            if method == "lq":
                restored = src
            else:
                dest = work / label
                code = mgfr_main(_restore_argv(method, src, dest, aligned))
                if code != 0:
                    raise ValueError(f"{method} on {clip.name}: mgfr restore exited {code}")
                restored = dest / f"{src.stem}.mp4"
            run_id = "video-" + label + "-" + hashlib.sha256(
                f"{method}\0{args.frames}".encode()).hexdigest()[:10]
            runs[run_id] = {"run_id": run_id, "restorer": method, "dataset": "video",
                            "dataset_hash": hashlib.sha256(str(data.resolve()).encode()).hexdigest(),
                            "status": "done", "n_images": len(clips)}
            if not args.quiet:
                print(f"scoring {method} on {clip.name}", file=sys.stderr)
            res = clip_scores(iter_frames(src), iter_frames(restored), tracks, aligned=aligned)
            for tid, scores in res["tracks"].items():
                for metric in TEMPORAL_METRICS:
                    rows.append({"run_id": run_id, "clip": clip.stem, "track_id": tid,
                                 "metric": metric, "value": scores[metric],
                                 "n_frames": scores["n_frames"]})
            series += [{"run_id": run_id, "clip": clip.stem, "track_id": tid, "frame": f,
                        "metric": m, "value": v} for tid, f, m, v in res["series"]]
            if gt.is_file():
                for f, (a, b) in enumerate(zip(iter_frames(restored), iter_frames(gt))):
                    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
                    frame_scores.append({"run_id": run_id, "image_id": f"{clip.stem}/{f:06d}",
                                         "metric": "psnr", "status": "ok",
                                         "value": 10 * np.log10(255 ** 2 / max(mse, 1e-10))})
    with open_store(out) as store, store.transaction():
        store.upsert("runs", runs.values())
        store.upsert("metrics", [{"metric": m, "direction": d, "kind": "temporal",
                                  "description": desc}
                                 for m, (d, desc) in TEMPORAL_METRICS.items()])
        store.upsert("video_scores", rows)
        store.upsert("video_series", series)
        store.upsert("image_scores", frame_scores)
    _print_table(rows)
    return 0


def _cut(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` (re-encoded once, reused on reruns)."""
    from dataclasses import replace

    from reface_core.video import VideoWriter, iter_frames, probe_video

    if dst.is_file():
        return dst
    info = probe_video(src)
    n = min(frames, info.frames)
    with VideoWriter(dst, replace(info, frames=n), crf=12) as w:
        for f in iter_frames(src, info=info, stop=n):
            w.write(f)
    return dst


def _print_table(rows: list[dict]) -> None:
    by = {}
    for r in rows:
        by.setdefault((r["clip"], r["run_id"]), {})[r["metric"]] = r["value"]
    print(f"{'clip':<14}{'run':<34}{'warp_error':>11}{'id_mean':>9}{'id_min':>9}{'jitter':>9}")
    for (clip, run_id), m in sorted(by.items()):
        print(f"{clip:<14}{run_id:<34}{m['warp_error']:>11.3f}{m['identity_mean']:>9.4f}"
              f"{m['identity_min']:>9.4f}{m['landmark_jitter']:>9.4f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.video",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder of clips (GT clips in DATA/gt/)")
    p.add_argument("--methods", default="lq,bicubic",
                   help="comma list: lq, bicubic, mgfr, mgfr:steps=N, codeformer, ...; "
                        "NAME@nosmooth turns landmark smoothing off (default lq,bicubic)")
    p.add_argument("--clips", default=None, help="comma list of clip names (default: all)")
    p.add_argument("--frames", type=int, default=0,
                   help="use only the first N frames of each clip (0: all)")
    add_out(p, "results folder (results.duckdb, video/)", required=True)
    add_quiet(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
