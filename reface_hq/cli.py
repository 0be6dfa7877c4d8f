"""Command line of ``reface_hq`` (``python -m reface_hq``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reface_core.argtypes import between, finite_float
from reface_core.assets_cli import add_subcommands as add_asset_commands
from reface_core.cli import (
    add_input,
    add_out,
    add_quiet,
    add_resume_flags,
    add_seed,
    add_workers,
    exit_with,
    run_main,
)
from reface_core.lock import add_wait_lock_argument, lock_for

_SOURCE_HELP = (
    "a source: [KIND:]PATH[?key=value&...]. KIND is folder, urls (CSV/JSONL/Parquet with a "
    "url column and optional identity, license) or hf (a datasets save_to_disk folder or "
    "Parquet), guessed from PATH when left out. Folder options: identity=folder&folder_level=N "
    "(N counted from the root, 0 = first folder level), identity=regex&pattern=RE (first "
    "group), license=..., name=.... Repeat -i for a mixed build.")


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build", help="build a dataset from sources (resumable: rerun the same command)",
        description="Sources -> decode -> detect + FFHQ-align -> quality -> fingerprint -> "
                    "embed -> dedupe -> identity grouping -> split -> images/ + "
                    "manifest.parquet + stats.json. Killed builds resume where they stopped.")
    add_input(p, _SOURCE_HELP, dest="source", action="append", metavar="SPEC",
              deprecated=("--source",))
    add_out(p, "dataset folder to write", required=True)
    p.add_argument("--work-dir", help="stage cache folder (default OUT/.work); builds that "
                                      "share it reuse each other's finished stages")
    add_seed(p, help="seed of the split and retry jitter")
    add_workers(p, help="processes for the map stages")
    p.add_argument("--shard-size", type=between(1, 100_000), default=32, help="rows per shard (resume unit)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray Data (pip install '.[ray]')")
    p.add_argument("--no-identity-hints", action="store_true",
                   help="ignore the sources' identity hints and cluster all faces")
    p.add_argument("--min-photos", type=between(1, 100_000), default=3, metavar="K",
                   help="drop identities with fewer than K photos (default 3)")
    p.add_argument("--size", type=int, choices=(512, 1024), default=512,
                   help="side of the aligned faces")
    p.add_argument("--transform-size", type=between(8, 8192), default=None,
                   help="FFHQ recipe's working resolution before the final resize (default "
                        "4x --size); smaller is faster and slightly softer")
    p.add_argument("--no-align-padding", action="store_true",
                   help="skip FFHQ's blurred fill where the crop leaves the photo (faster; "
                        "those areas stay black)")
    p.add_argument("--detector", default="dlib-hog",
                   help="faces detector: dlib-hog (default, offline), dlib-cnn, retinaface, "
                        "scrfd (the last three need their weights, see `assets`)")
    p.add_argument("--embedder", default="dlib",
                   help="faces embedder: dlib (default, offline), arcface-antelopev2, "
                        "arcface-buffalo_l (need weights; thresholds come from the embedder's "
                        "preset: only dlib ships one, run `calibrate` for ArcFace)")
    p.add_argument("--min-face-size", type=finite_float, default=128.0,
                   help="minimum face size in the source photo, pixels")
    p.add_argument("--min-sharpness", type=finite_float, default=50.0,
                   help="minimum variance of the Laplacian of the centre of the aligned face "
                        "(at 256 px)")
    p.add_argument("--keep-grayscale", action="store_true", help="keep photos with no colour")
    p.add_argument("--musiq", choices=("auto", "off", "on"), default="auto",
                   help="MUSIQ scores when asset pyiqa-musiq-koniq resolves (auto)")
    p.add_argument("--min-musiq", type=finite_float,
                   help="drop faces with a lower MUSIQ score (needs the MUSIQ weights: "
                        "without them the build stops with the asset error)")
    p.add_argument("--thresholds", metavar="FILE",
                   help="identity/duplicate thresholds preset written by `calibrate` (default: "
                        "the preset shipped for the embedder); the flags below override it")
    p.add_argument("--max-identity-distance", type=finite_float, default=None,
                   help="cosine distance from an identity's centre beyond which a photo is "
                        "dropped (default: from the preset)")
    p.add_argument("--cluster-threshold", type=finite_float, default=None,
                   help="average-linkage cosine distance cut for clustering unhinted faces "
                        "(default: from the preset)")
    p.add_argument("--assign-distance", type=finite_float, default=None,
                   help="an unhinted face joins a hinted identity within this cosine distance "
                        "(0: never; default: from the preset)")
    p.add_argument("--merge-distance", type=finite_float, default=None,
                   help="identity groups (any source or name) whose centres are within this "
                        "cosine distance are one person (0: never; default: from the preset)")
    p.add_argument("--test-fraction", type=between(0.0, 1.0, float), default=0.1,
                   help="fraction of identities in the test split")
    p.add_argument("--exclude", help="exclusion list: one URL, origin path or sha256 per line")
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="let the downloader fetch from private/loopback/link-local addresses")
    p.add_argument("--download-timeout", type=between(0.1, 3600.0, float), default=10.0,
                   help="seconds per socket operation of a download (default 10)")
    p.add_argument("--download-deadline", type=between(0.1, 86400.0, float), default=60.0,
                   help="wall-clock seconds per URL, headers, body and retries included, "
                        "however slowly the server sends (default 60)")
    p.add_argument("--download-retries", type=between(0, 100), default=2,
                   help="retries of a URL after a transient failure, with backoff (default 2)")
    p.add_argument("--max-bytes", type=between(1, 2**40), default=20_000_000, help="download size cap")
    p.add_argument("--captions", action="store_true",
                   help="run captioning annotate on the manifest as the last stage")
    p.add_argument("--caption-backends", default="offline",
                   help="comma-separated captioning backends (default offline: age, gender, "
                        "pose, colour from the offline models)")
    add_resume_flags(
        p, overwrite_help="recompute every cached shard of the work folder (default: a "
                          "rerun reuses them and resumes)",
        retry_help="on resume, redo the downloads that failed for a reason a retry may fix "
                   "(timeout, connection or DNS error, HTTP 408/425/429/5xx)")
    add_quiet(p, dest="no_progress", help="no progress bars")
    add_wait_lock_argument(p)
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from .build import BuildConfig, build, read_exclusion
    from .sources import parse_source

    sources = [parse_source(s) for s in args.source]
    config = BuildConfig(
        sources=sources, out=args.out, work_dir=args.work_dir, seed=args.seed,
        executor=args.executor, workers=args.workers, shard_size=args.shard_size,
        progress=not args.no_progress, allow_private=args.allow_private_addresses,
        download_timeout=args.download_timeout, download_deadline=args.download_deadline,
        download_retries=args.download_retries,
        max_bytes=args.max_bytes, output_size=args.size, detector=args.detector,
        transform_size=args.transform_size, align_padding=not args.no_align_padding,
        min_face_size=args.min_face_size, min_sharpness=args.min_sharpness,
        drop_grayscale=not args.keep_grayscale, musiq=args.musiq, min_musiq=args.min_musiq,
        embedder=args.embedder, use_identity_hints=not args.no_identity_hints,
        max_identity_distance=args.max_identity_distance,
        cluster_threshold=args.cluster_threshold, min_photos=args.min_photos,
        assign_distance=args.assign_distance, merge_distance=args.merge_distance,
        thresholds=args.thresholds,
        test_fraction=args.test_fraction, exclusion=read_exclusion(args.exclude),
        captions=args.captions,
        caption_backends=tuple(b.strip() for b in args.caption_backends.split(",") if b.strip()))
    import contextlib
    # A --work-dir outside the output folder is written too (its shard caches): held as
    # well, so two builds sharing one work folder take turns instead of racing.
    work, out = config.work.resolve(), Path(args.out).resolve()
    with lock_for(args, args.out), (contextlib.nullcontext() if out in (work, *work.parents)
                                    else lock_for(args, config.work)):
        stats = build(config, overwrite=args.overwrite, retry_failed=args.retry_failed)
    from .exclusion import unmatched_warning
    for entry in stats.pop("exclusion_unmatched", ()):
        print(f"warning: {unmatched_warning(entry)}", file=sys.stderr)
    print(f"{args.out}: {stats['faces_kept']} faces of {stats['identities']} identities from "
          f"{stats['photos_in']} photos (train {stats['splits']['train']['faces']}, test "
          f"{stats['splits']['test']['faces']}); dropped: "
          + (", ".join(f"{stage}/{reason} {n}" for stage, reasons in stats["dropped"].items()
                       for reason, n in reasons.items()) or "none"))
    # Filters (no face, blurry, duplicates) and final download failures (dead links) are
    # a dataset's normal drops; downloads a retry may fix are failed rows: exit 1.
    from .download import TRANSIENT_REASONS
    failed = sum(n for reason, n in stats["dropped"].get("download", {}).items()
                 if reason in TRANSIENT_REASONS)
    if failed:
        print(f"{failed} downloads failed for a reason a retry may fix; rerun with "
              "--retry-failed to try them again", file=sys.stderr)
    return 1 if failed else 0


def cmd_calibrate(args) -> int:
    import tempfile
    from pathlib import Path

    from reface_core.atomic import write_json_atomic

    from .calibrate import CalibrationError, calibrate, embed_labelled
    from .sources import parse_source
    if not 0 < args.target_false_merge < 0.5:   # checked before minutes of embedding
        raise CalibrationError(f"--target-false-merge must be in (0, 0.5), got "
                               f"{args.target_false_merge}")
    sources = []
    for spec in args.source:
        src = parse_source(spec if "?" in spec else f"{spec}?identity=folder&folder_level=0")
        if getattr(src, "identity", None) == "none":
            raise CalibrationError(f"calibration source {spec}: needs identity labels "
                                   "(identity=folder or identity=regex)")
        sources.append(src)
    aliases = {}
    for item in args.alias or []:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            raise CalibrationError(f"--alias {item!r}: expected LABEL=SAME_PERSON_LABEL")
        aliases[a] = b
    with tempfile.TemporaryDirectory(prefix="reface_calibrate_") as tmp:
        rows = embed_labelled(sources, Path(args.work_dir or tmp), embedder=args.embedder,
                              aligned=args.aligned, progress=not args.quiet)
    preset = calibrate(rows, target=args.target_false_merge, seed=args.seed, aliases=aliases,
                       embedder=args.embedder, data=args.data or ", ".join(
                           Path(s.root).name for s in sources))
    write_json_atomic(Path(args.out), preset)
    th, fit, held = preset["thresholds"], preset["fit"], preset["held_out"]
    print(f"{args.out}: {', '.join(f'{k}={v}' for k, v in th.items())}")
    for name, r in (("fit", fit), ("held-out", held)):
        print(f"  {name}: {r['identities']} identities, {r['faces']} faces; outlier false merge "
              f"{r['outlier_false_merge']}, false split {r['outlier_false_split']}; group "
              f"false merge {r['group_false_merge']}, false split {r['group_false_split']}")
    return 0


def cmd_stats(args) -> int:
    import duckdb
    import pyarrow.parquet as pq

    from .dataset import DatasetError, manifest_path, read_stats
    mpath = manifest_path(args.dataset)
    stats = read_stats(mpath.parent)
    missing = [k for k in ("faces_kept", "identities", "photos_in", "dropped") if k not in stats]
    if missing:
        raise DatasetError(f"{mpath.parent / 'stats.json'}: not a build's stats (no {missing})")
    try:
        columns = pq.read_schema(mpath).names
    except (OSError, ValueError) as e:
        raise DatasetError(f"{mpath}: cannot read as Parquet ({e})") from None
    lacking = [c for c in ("split", "identity") if c not in columns]
    if lacking:
        raise DatasetError(f"{mpath}: manifest lacks columns {lacking}")
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print(f"{mpath.parent}: {stats['faces_kept']} faces, {stats['identities']} identities, "
          f"{stats['photos_in']} source photos")
    order = ["source", "download", "decode", "detect_align", "quality", "fingerprint",
             "embed", "dedupe", "identity", "split", "output"]
    stages = sorted(stats["dropped"], key=lambda s: (order.index(s) if s in order else 99, s))
    for stage in stages:
        for reason, n in sorted(stats["dropped"][stage].items()):
            print(f"  dropped at {stage:<13} {reason:<20} {n}")
    # Straight from the Parquet file with DuckDB: the manifest needs no code of ours.
    con = duckdb.connect()
    q = ("SELECT split, count(*) AS faces, count(DISTINCT identity) AS identities "
         "FROM read_parquet(?) GROUP BY split ORDER BY split")
    for split, faces, ids in con.execute(q, [str(mpath)]).fetchall():
        print(f"  {split:<6} {faces} faces, {ids} identities")
    return 0


def cmd_verify(args) -> int:
    from .build import read_exclusion
    from .dataset import exclusion_warnings, verify
    exclusion = frozenset(read_exclusion(args.exclude))
    problems = verify(args.dataset, exclusion=exclusion, check_images=not args.skip_images)
    for w in exclusion_warnings(args.dataset, exclusion):
        print(f"warning: {w}", file=sys.stderr)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"{args.dataset}: {'OK' if not problems else f'{len(problems)} problems'}")
    return 0 if not problems else 1


def cmd_export(args) -> int:
    from .build import read_exclusion
    from .dataset import exclusion_warnings
    from .export import check_face_ids, export, manifest_path, push_to_hub
    exclusion = frozenset(read_exclusion(args.exclude))
    formats = tuple(args.format) if args.format else ("parquet", "webdataset")
    # A manifest with unsafe face ids is refused before the lock creates the export folder
    # (a missing or unreadable manifest is left to export's own message).
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        ids = pq.read_table(manifest_path(args.dataset), columns=["face_id"]).to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException):
        ids = None
    if ids is not None:
        check_face_ids(ids)
    with lock_for(args, args.out):
        done = export(args.dataset, args.out, shard_rows=args.shard_rows, formats=formats,
                      exclusion=exclusion, name=args.name)
    for w in exclusion_warnings(args.dataset, exclusion):
        print(f"warning: {w}", file=sys.stderr)
    for fmt, splits in done.items():
        for split, files in splits.items():
            print(f"{fmt} {split}: {len(files)} shards")
    if args.push_to_hub:
        print(push_to_hub(args.out, args.push_to_hub, private=not args.public))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reface_hq",
        description="Build, verify and export the identity-grouped Reface-HQ face dataset.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_build(sub)
    p = sub.add_parser(
        "calibrate", help="fit identity and duplicate thresholds from labelled photos",
        description="Fit the identity (outlier, clustering, merge) and near-duplicate "
                    "thresholds for an embedder on labelled photos (one folder per person), "
                    "fitting on half the identities and reporting error rates on the other "
                    "half; writes a preset that `build --thresholds` reads.")
    add_input(p, "labelled photos: a folder of one folder per person (or a source spec with "
                 "identity=folder/regex); repeat for several", dest="source", action="append",
              metavar="SPEC", deprecated=("--source",))
    p.add_argument("--embedder", default="dlib", help="faces embedder to calibrate")
    add_out(p, "preset JSON file to write", required=True)
    p.add_argument("--target-false-merge", type=between(0.0, 0.5, float), default=0.01,
                   help="allowed fraction of other people's faces accepted (default 0.01)")
    p.add_argument("--aligned", action="store_true",
                   help="the photos are FFHQ-aligned crops already (skip detection)")
    p.add_argument("--alias", action="append", metavar="A=B",
                   help="label A is the same person as label B (known label noise)")
    add_seed(p, help="seed of the fit/held-out split")
    p.add_argument("--data", help="what the photos are, recorded in the preset")
    p.add_argument("--work-dir", help="keep the aligned crops here (default: a temporary folder)")
    add_quiet(p, help="no progress lines")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("stats", help="counts per split and dropped per stage (DuckDB over "
                                     "the manifest)")
    p.add_argument("dataset", help="dataset folder or manifest.parquet")
    p.add_argument("--json", action="store_true", help="print stats.json")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("verify", help="check a built dataset: images, hashes, splits, exclusions")
    p.add_argument("dataset", help="dataset folder or manifest.parquet")
    p.add_argument("--exclude", help="exclusion list to check against")
    p.add_argument("--skip-images", action="store_true", help="do not hash the images")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("export", help="Hugging Face Parquet shards + dataset card, and "
                                      "WebDataset tar shards")
    p.add_argument("dataset", help="dataset folder")
    add_out(p, "export folder", required=True)
    p.add_argument("--format", action="append", choices=("parquet", "webdataset"),
                   help="formats to write (default both)")
    p.add_argument("--shard-rows", type=between(1, 1_000_000), default=500, help="faces per shard")
    p.add_argument("--exclude", help="exclusion list applied again at export")
    p.add_argument("--name", help="dataset name in the card")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export (needs access)")
    p.add_argument("--public", action="store_true", help="make the hub repository public")
    add_wait_lock_argument(p)
    p.set_defaults(func=cmd_export)
    add_asset_commands(sub, package="reface_hq")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .dataset import DatasetError
    from .sources import SourceError
    # ImportError: an optional extra (Ray) is not installed; the message says how.
    return run_main(build_parser, argv, errors=(SourceError, DatasetError, ImportError))


if __name__ == "__main__":
    exit_with(main)
