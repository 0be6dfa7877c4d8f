"""The ``video`` dataset of ``benchmarks.run``: restore a folder of clips with several
methods and score them over time, into the results store (``video_scores``,
``video_series``, per-frame ``image_scores``; see ``benchmarks.store``).

    python -m benchmarks.run --dataset video --data ../shared/data/video \\
        --methods lq,bicubic,mgfr:steps=4 --dataset-option frames=16 --out results/video

``DIR`` holds clips (``*.mp4``, ``*.mov``, ...); a clip with a GT clip of the same name
under ``DIR/gt/`` also gets per-frame image metrics (``image_scores``, ``image_id`` =
``<clip>/<frame>``; PSNR and SSIM unless ``--metrics`` names others). Square clips of at
most 512 px are taken as aligned faces (restored with ``--aligned``, KEEP's synthetic
clips); others are tracked. Dataset options: ``frames=N`` (only the first N frames of each
clip, cut once under ``RESULTS/video/clips/``), ``clips=a+b`` (only these clip names).

Methods: ``lq`` is the LQ clip itself; every other name goes to ``mgfr restore --method``
(``bicubic``, ``codeformer:w=0.7``, ...); ``mgfr`` is ``mgfr restore``'s own pipeline, its
options are that command's flags (``mgfr:steps=4,base=mini``). ``@nosmooth`` after a name
restores with landmark smoothing off (``bicubic@nosmooth``).

Resumable like every dataset: a restored clip is ``RESULTS/outputs/<run_id>/<clip>.mp4``
(``mgfr restore``'s chunks resume a killed restoration), and one transaction per clip
writes its scores with its ``outputs`` row, so a rerun skips the clips already scored.

``python -m benchmarks.video`` is the same run with the older flags (``--clips``,
``--frames``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from reface_core.cli import add_out, add_quiet, exit_with, run_main

#: per-frame image metrics of clips with a GT clip, unless ``--metrics`` says otherwise
DEFAULT_FRAME_METRICS = ("psnr", "ssim")
#: ``NAME@VARIANT``: variants of a method (the restorer is the same, its crops differ)
VARIANTS = {"nosmooth": ["--smooth-window", "1"]}


# ---- the dataset ---------------------------------------------------------------------------

def _clip_files(data: Path) -> list[Path]:
    from reface_core.video import is_video_path

    return sorted(p for p in data.iterdir() if p.is_file() and is_video_path(p))


def load_video(data, results_dir: Path, *, frames: int = 0, clips: str | None = None,
               limit: int | None = None, **unknown):
    """The ``video`` dataset: one item per clip (``image_id`` = the clip's name), its GT
    clip when ``DIR/gt/`` has one. The content hash covers the clips' and GT clips' bytes
    and ``frames``."""
    from reface_core.atomic import safe_child
    from reface_core.video import probe_video

    from . import datasets as D

    D._no_options("video", unknown)
    root = D._need_dir(data, "video")
    try:
        frames = int(frames)
    except (TypeError, ValueError):
        raise D.DatasetError(f"dataset 'video': frames must be a whole number, got {frames!r}") \
            from None
    if frames < 0:
        raise D.DatasetError(f"dataset 'video': frames must be >= 0, got {frames}")
    files = _clip_files(root)
    if not files:
        raise D.DatasetError(f"--data {root}: holds no video clips (.mp4, .mov, .mkv, ...)")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise D.DatasetError(f"--data {root}: two clips named {f.stem!r} "
                                 f"({stems[f.stem].name}, {f.name})")
        stems[f.stem] = f
    if clips:
        wanted = [c.strip() for c in str(clips).replace("+", ",").split(",") if c.strip()]
        missing = [c for c in wanted if c not in stems]
        if missing:
            raise D.DatasetError(f"dataset 'video': clips {', '.join(missing)} not in {root}")
        files = [stems[c] for c in sorted(set(wanted))]
    files = files[:limit] if limit else files
    pairs = [(f, root / "gt" / f.name) for f in files]
    pairs = [(f, g if g.is_file() else None) for f, g in pairs]
    config = {"layout": "video", "frames": frames}
    dataset_hash = D._digest(config, [x for f, g in pairs
                                      for x in [(f.name, f)] + ([("gt/" + f.name, g)] if g else [])])
    items = []
    for f, g in pairs:
        probe_video(f)  # a clip that cannot be read is named now, before any work
        lq = str(f)
        if frames:
            rel = f"video/clips/{dataset_hash[:12]}/{f.name}"
            _cut(f, safe_child(results_dir, rel), frames)
            lq = rel
        items.append(D.Item(f.stem, lq, None if g is None else str(g), [], None))
    return D.BenchmarkDataset("video", root, items, dataset_hash,
                              dict(config, data=str(root), clips=[f.stem for f in files]))


def _cut(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` (re-encoded once at CRF 12, reused on reruns)."""
    from dataclasses import replace

    from reface_core.atomic import atomic_path
    from reface_core.video import VideoWriter, iter_frames, probe_video

    if dst.is_file():
        return dst
    info = probe_video(src)
    n = min(frames, info.frames)
    with atomic_path(dst) as tmp, VideoWriter(tmp, replace(info, frames=n), crf=12) as w:
        for f in iter_frames(src, info=info, stop=n):
            w.write(f)
    return dst


# ---- methods -------------------------------------------------------------------------------

def _restore_flags() -> dict:
    """``mgfr restore``'s long options: option name (``guidance``) -> argparse action."""
    from mgfr.cli import build_parser

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["restore"]
    return {s[2:].replace("-", "_"): a for a in sub._actions for s in a.option_strings
            if s.startswith("--")}


#: flags the harness sets itself
_OWN_FLAGS = {"input", "out", "quiet", "no_progress", "aligned", "method", "overwrite", "help",
              "device"}


def restore_argv(name: str, options: dict) -> list[str]:
    """``mgfr restore`` flags (without ``-i``/``-o``) for a method name (``bicubic@nosmooth``)
    and its options; a bad name or option raises ``ValueError`` naming it."""
    from . import restorers as R

    base, _, variant = name.partition("@")
    if variant and variant not in VARIANTS:
        raise ValueError(f"method {name!r}: unknown variant @{variant} "
                         f"(known: {', '.join('@' + v for v in VARIANTS)})")
    argv: list[str] = []
    if base == "mgfr":
        flags = _restore_flags()
        for key, value in options.items():
            action = flags.get(key)
            if action is None or key in _OWN_FLAGS:
                known = sorted(k for k in flags if k not in _OWN_FLAGS)
                raise ValueError(f"method {name!r}: unknown option {key!r} (the options of "
                                 f"mgfr on video are mgfr restore's flags: {', '.join(known)})")
            flag = "--" + key.replace("_", "-")
            if action.nargs == 0:  # a switch: one_step=1 / one_step=0
                if str(value).lower() in ("1", "true", "yes"):
                    argv.append(flag)
            else:
                argv += [flag, str(value)]
    elif base == "lq":
        if options:
            raise ValueError(f"method {name!r}: lq takes no options")
    else:
        R.create_restorer(base, **options)  # checks the name and the options
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        argv += ["--method", f"{base}:{opts}" if opts else base]
    return argv + (VARIANTS[variant] if variant else [])


# ---- the run -------------------------------------------------------------------------------

def _lq_tracks(out: Path, ds, item, lq: Path, aligned: bool, info) -> list:
    """The LQ clip's raw tracks (every run of the clip is measured on them), cached under
    ``RESULTS/video/clips/<dataset hash>/``."""
    from faces.tracking import FaceTracker, Track
    from reface_core.atomic import safe_child, write_json_atomic
    from reface_core.video import iter_frames

    if aligned:
        return [Track(track_id=0, frames=list(range(info.frames)),
                      boxes=[[0, 0, info.width, info.height]] * info.frames)]
    path = safe_child(out, f"video/clips/{ds.dataset_hash[:12]}/{item.image_id}.lq_tracks.json")
    if path.is_file():
        return [Track.from_dict(d) for d in json.loads(path.read_text())]
    tracks = FaceTracker(key_interval=5).track(iter_frames(lq, info=info))
    write_json_atomic(path, [t.to_dict() for t in tracks], indent=None)
    return tracks


def lq_tracks_path(out: Path, dataset_hash: str, clip: str) -> Path:
    """Where the LQ tracks of a clip are kept (the report's face crops read them)."""
    return out / "video" / "clips" / dataset_hash[:12] / f"{clip}.lq_tracks.json"


def _restore(argv: list[str]) -> str | None:
    """Run ``mgfr restore``; None when it succeeded, else its error line."""
    from mgfr.cli import main as mgfr_main
    from reface_core.cli import EXIT_INTERRUPTED

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = mgfr_main(argv)
    if code == EXIT_INTERRUPTED:  # Ctrl-C stops the benchmark, not just this clip
        raise KeyboardInterrupt
    if code == 0:
        return None
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    return (lines[-1][len("error: "):] if lines else f"mgfr restore exited {code}")[:500]


def run_video_benchmark(ds, specs, out: str | Path, *, metrics: list[str] | None = None,
                        device: str = "cpu", progress: bool = True) -> list:
    """Each method on each clip of ``ds`` (the ``video`` dataset), scored over time and per
    frame; returns one :class:`benchmarks.run.RunSummary` per method."""
    from reface_core.atomic import safe_child
    from reface_core.video import iter_frames, probe_video

    from . import metrics as M
    from . import restorers as R
    from .run import RunSummary, _abs, _now, code_version, package_versions
    from .store import open_store
    from .temporal import TEMPORAL_METRICS, clip_scores

    out = Path(out)
    argvs = {s.label: restore_argv(s.name, s.options) for s in specs}
    frame_metrics = {}
    for name in (metrics or DEFAULT_FRAME_METRICS):
        m = M.create_metric(name, device=device)
        if m.kind != "image":
            print(f"warning: {name} is a dataset metric, not scored per frame of a video",
                  file=sys.stderr)
            continue
        try:
            m.prepare()
        except M.MetricUnavailable as e:
            print(f"warning: {name}: {e}", file=sys.stderr)
            continue
        frame_metrics[name] = m
    summaries = []
    with open_store(out) as store:
        with store.transaction():
            store.upsert("metrics", [{"metric": m, "direction": d, "kind": "temporal",
                                      "description": desc}
                                     for m, (d, desc) in TEMPORAL_METRICS.items()])
            store.upsert("metrics", [{"metric": n, "direction": m.direction, "kind": m.kind,
                                      "description": m.description}
                                     for n, m in frame_metrics.items()])
            store.upsert("images", [it.row(ds.dataset_hash) for it in ds.items])
        for spec in specs:
            t_start = time.perf_counter()
            base = spec.name.partition("@")[0]
            record = {"restorer": spec.name, "options": spec.options,
                      "restore_flags": argvs[spec.label]}
            if base not in ("lq", "mgfr"):
                # what the options resolve to (a folder's content digest, say): a refilled
                # folder is a new run, as on images
                record["restorer_config"] = R.create_restorer(
                    base, **spec.options).config_for_record()
            chash = R.config_hash(record)
            run_id = f"{spec.name}-{chash[:10]}-{ds.dataset_hash[:10]}"
            base_row = {"run_id": run_id, "restorer": spec.name, "restorer_config": record,
                        "config_hash": chash, "dataset": ds.name,
                        "dataset_hash": ds.dataset_hash, "code_version": code_version(),
                        "packages": package_versions(), "device": device,
                        "dataset_config": ds.config, "n_images": len(ds.items)}
            previous = store.run(run_id)
            started = previous["started_at"] if previous and previous.get("started_at") \
                else _now()
            with store.transaction():
                store.upsert("runs", [dict(base_row, started_at=started, status="running")])
            summary = RunSummary(run_id, spec.name, spec.label, "running",
                                 image_ids=tuple(it.image_id for it in ds.items))
            done = store.done_outputs(run_id)
            for item in ds.items:
                lq = Path(_abs(out, item.lq_path))
                out_rel = (item.lq_path if base == "lq"
                           else f"outputs/{run_id}/{Path(item.lq_path).stem}.mp4")
                restored = Path(_abs(out, out_rel))
                if item.image_id in done and restored.is_file():
                    summary.n_ok += 1
                    summary.n_reused += 1
                    continue
                info = probe_video(lq)
                aligned = info.width == info.height <= 512
                t0 = time.perf_counter()
                error = None
                if base != "lq":
                    dest = safe_child(out, f"outputs/{run_id}")
                    if progress:
                        print(f"{spec.label}: restoring {item.image_id}", file=sys.stderr)
                    error = _restore(["restore", "-i", str(lq), "-o", str(dest), "-q",
                                      "--device", device] + (["--aligned"] if aligned else [])
                                     + argvs[spec.label])
                seconds = time.perf_counter() - t0
                if error is not None:
                    summary.n_failed += 1
                    with store.transaction():
                        store.upsert("outputs", [{"run_id": run_id, "image_id": item.image_id,
                                                  "output_path": out_rel, "seconds": seconds,
                                                  "status": "failed", "error": error}])
                    print(f"warning: {spec.label} on {item.image_id}: {error}", file=sys.stderr)
                    continue
                if progress:
                    print(f"{spec.label}: scoring {item.image_id}", file=sys.stderr)
                tracks = _lq_tracks(out, ds, item, lq, aligned, info)
                res = clip_scores(iter_frames(lq), iter_frames(restored), tracks,
                                  aligned=aligned)
                rows = [{"run_id": run_id, "clip": item.image_id, "track_id": tid,
                         "metric": metric, "value": scores[metric],
                         "n_frames": scores["n_frames"]}
                        for tid, scores in res["tracks"].items() for metric in TEMPORAL_METRICS]
                series = [{"run_id": run_id, "clip": item.image_id, "track_id": tid,
                           "frame": f, "metric": m, "value": v}
                          for tid, f, m, v in res["series"]]
                frame_rows = _frame_scores(run_id, item, restored, frame_metrics, summary)
                with store.transaction():
                    store.upsert("video_scores", rows)
                    store.upsert("video_series", series)
                    store.upsert("image_scores", frame_rows)
                    # written with the scores: the clip is done
                    store.upsert("outputs", [{"run_id": run_id, "image_id": item.image_id,
                                              "output_path": out_rel, "seconds": seconds,
                                              "status": "ok", "error": None}])
                summary.n_ok += 1
            summary.status = "done" if summary.n_failed == 0 else "failed"
            summary.reason = (None if summary.status == "done" else
                              f"{summary.n_failed} of {len(ds.items)} clips failed "
                              "(see outputs.error)")
            with store.transaction():
                store.upsert("runs", [dict(base_row, started_at=started, finished_at=_now(),
                                           status=summary.status, reason=summary.reason)])
            summary.seconds_total = time.perf_counter() - t_start
            summaries.append(summary)
    return summaries


def _frame_scores(run_id: str, item, restored: Path, frame_metrics: dict, summary) -> list[dict]:
    """Image metrics of every frame against the GT clip's frame (no-reference metrics on
    every clip, the others only where a GT clip exists)."""
    from reface_core.video import iter_frames

    from . import metrics as M
    from .run import score_one

    wanted = {n: m for n, m in frame_metrics.items() if item.gt_path or m.needs is None}
    if not wanted:
        return []
    rows = []
    gts = iter_frames(item.gt_path) if item.gt_path else None
    for f, out in enumerate(iter_frames(restored)):
        gt = next(gts, None) if gts is not None else None
        if gts is not None and gt is None:
            break  # the GT clip is shorter: frames without GT are not scored
        sample = M.Sample(f"{item.image_id}/{f:06d}", out, gt)
        for name, m in wanted.items():
            value, status, why = score_one(m, sample)
            summary.n_scores_failed += status == "failed"
            rows.append({"run_id": run_id, "image_id": sample.image_id, "metric": name,
                         "value": value, "status": status, "reason": why,
                         "embedder": m.embedder})
    if gts is not None:
        gts.close()
    return rows


def format_video_summary(out: str | Path, summaries: list) -> str:
    """One line per (clip, run): the temporal metrics, mean over the clip's tracks."""
    from .store import open_store

    ids = [s.run_id for s in summaries]
    labels = {s.run_id: s.label for s in summaries}
    with open_store(out, read_only=True) as store:
        rows = store.query(
            "SELECT clip, run_id, metric, avg(value) AS value FROM video_scores WHERE run_id IN ("
            + ", ".join("?" * len(ids)) + ") GROUP BY ALL ORDER BY clip", ids) if ids else []
    by: dict = {}
    for r in rows:
        by.setdefault((r["clip"], r["run_id"]), {})[r["metric"]] = r["value"]
    width = max([len(lb) for lb in labels.values()] + [6]) + 2
    header = (f"{'clip':<14}{'method':<{width}}{'warp_error':>11}{'id_mean':>9}{'id_min':>9}"
              f"{'jitter':>9}")
    lines = [header]

    def num(v, fmt):
        return "n/a" if v is None or not np.isfinite(v) else format(v, fmt)

    for (clip, run_id), m in sorted(by.items(), key=lambda kv: (kv[0][0], ids.index(kv[0][1]))):
        lines.append(f"{clip:<14}{labels[run_id]:<{width}}"
                     f"{num(m.get('warp_error'), '.3f'):>11}{num(m.get('identity_mean'), '.4f'):>9}"
                     f"{num(m.get('identity_min'), '.4f'):>9}"
                     f"{num(m.get('landmark_jitter'), '.4f'):>9}")
    for s in summaries:
        if s.status != "done":
            lines.append(f"{s.label}: {s.reason}")
    return "\n".join(lines)


# ---- the older command line -----------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from .run import run_benchmark

    options = {"frames": args.frames}
    if args.clips:
        options["clips"] = args.clips
    summaries = run_benchmark(args.methods, "video", args.data, out=args.out,
                              dataset_options=options, progress=not args.quiet)
    print(format_video_summary(args.out, summaries))
    return 1 if any(s.status == "failed" or s.n_scores_failed for s in summaries) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.video",
                                description="Restore a folder of clips with several methods "
                                            "and score them over time (the same run as "
                                            "python -m benchmarks.run --dataset video).")
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
