"""Command line of ``degradations`` (``python -m degradations``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reface_core.argtypes import at_least
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
from reface_core.lock import add_wait_lock_argument


def _cmd_synth(args) -> int:
    from reface_core.lock import lock_for

    from .synth import synth
    with lock_for(args, args.output):
        counts = synth(args.input, args.output, preset=args.preset, seed=args.seed,
                       workers=args.workers, limit=args.limit, progress=not args.quiet,
                       overwrite=args.overwrite, retry_failed=args.retry_failed)
    print(f"{counts['total']} inputs: {counts['ok']} degraded, {counts['error']} failed, "
          f"{counts['skipped']} already done; table {counts['table']}")
    # Exit 1 while the output holds failed rows, from this run or an earlier one (resume
    # skips them; --retry-failed redoes them).
    import pandas as pd
    table = pd.read_parquet(counts["table"])
    failed = int((table["status"] != "ok").sum()) if "status" in table else 0
    return 0 if failed == 0 else 1


def _cmd_presets(args) -> int:
    from .presets import PRESETS, get_preset, list_presets
    if not args.name:
        for name in list_presets():
            p = PRESETS[name]
            print(f"{name:14s} out_scale={p.out_scale}  {p.description}")
            print(f"{'':14s} source: {p.source}")
        return 0
    d = get_preset(args.name).to_dict()
    if args.format == "json":
        print(json.dumps(d, indent=2))
    else:
        import yaml
        print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0


def _cmd_replay(args) -> int:
    from reface_core.imageio import load_image, save_image

    from .pipeline import Degrader
    from .records import MAX_RECORD_BYTES, validate_record
    from .synth import pixel_sha256
    path = Path(args.record)
    try:
        n_bytes = path.stat().st_size
        # records are a few kB: refuse a huge file before reading it
        text = path.read_text() if n_bytes <= MAX_RECORD_BYTES else None
        data = json.loads(text) if text is not None else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"record {path}: cannot read as JSON ({e})") from None
    except (ValueError, RecursionError) as e:  # 5,000-digit numbers, nesting thousands deep
        raise ValueError(f"record {path}: cannot read as JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if text is None:
        raise ValueError(f"record {path}: {n_bytes:,} bytes, more than the cap of {MAX_RECORD_BYTES:,} "
                         f"for a record file")
    if not isinstance(data, dict):
        raise ValueError(f"record {path}: expected a JSON object, got {type(data).__name__}")  # noqa: TRY004 - input error: main prints it as one line
    # A synth record file wraps the sampled record with its input path and pixel hash.
    record = data.get("record", data)
    if not isinstance(record, dict) or "ops" not in record:
        raise ValueError(f"record {path}: no 'ops' (not a degradation record)")
    validate_record(record, where=f"record {path}")  # before the image is even read
    hq = args.hq or data.get("input")
    if not hq:
        raise ValueError(f"record {path} names no input image; pass --hq PATH")
    if not isinstance(hq, str):
        raise ValueError(f"record {path}: field input must be a path string, got {type(hq).__name__}")  # noqa: TRY004 - input error: main prints it as one line
    lq = Degrader.replay(load_image(hq), record)
    if args.output:
        save_image(args.output, lq)
        print(f"wrote {args.output}")
    expected = data.get("lq_sha256")
    if expected is None:
        print("replayed (the record holds no pixel hash to compare)")
        return 0
    if pixel_sha256(lq) == expected:
        print(f"match: {record.get('image_id')} reproduces its LQ image exactly")
        return 0
    print(f"MISMATCH: {record.get('image_id')} differs from the recorded LQ image", file=sys.stderr)
    return 1


def face_aligner():
    """The aligner realism uses for whole photos: ``faces``' dlib detector and FFHQ alignment.

    ``degradations`` itself imports only ``reface_core``; this command-line wiring is the
    one place that hands the ``faces`` package in (lazily, only when photos need it). A
    square image whose landmarks sit on the FFHQ template is an aligned crop; so is a
    square one in which no face is found at any scale (a crop too degraded for the
    detector). Every other image is a photo: each face found in it is FFHQ-aligned.
    """
    from faces import detect_and_align
    from faces.cli import MAX_ALIGNMENT_ERROR, alignment_error

    from .realism import resize_face

    def align(image, size):
        err = alignment_error(image) if image.shape[0] == image.shape[1] else None
        if err is not None and err <= MAX_ALIGNMENT_ERROR:
            return [(resize_face(image, size), None)]
        found = detect_and_align(image, output_size=size)
        if not found and image.shape[0] == image.shape[1] and err is None:
            return [(resize_face(image, size), None)]  # no face at any scale: a degraded crop
        return [(f.image, tuple(float(v) for v in f.detection.box)) for f in found]
    return align


def _real_faces(args, part: str):
    from .realism import load_faces
    aligner = None if args.aligned else face_aligner()
    real = load_faces(args.input, args.size, aligner=aligner, exclude=args.exclude or (),
                      part=part, holdout=args.holdout, what="real LQ folder", progress=not args.quiet)
    print(f"real LQ: {len(real.faces)} faces from {args.input} (part {part}); "
          f"{len(real.skipped)} inputs skipped", file=sys.stderr)
    for rel, why in real.skipped:
        print(f"  skipped {rel}: {why}", file=sys.stderr)
    return real


def _hq_faces(args, part: str):
    from .realism import load_hq_faces
    hq = load_hq_faces(args.hq, args.size, exclude=args.hq_exclude or (), part=part,
                       holdout=args.holdout, progress=not args.quiet)
    print(f"HQ: {len(hq)} faces from {', '.join(args.hq)} (part {part})", file=sys.stderr)
    return hq


def _cmd_realism(args) -> int:
    from . import realism
    from .presets import get_preset, list_presets
    if not args.preset and not args.synthetic:
        raise ValueError("give --preset NAME (or a preset file, or 'all') and/or --synthetic DIR")
    names = [n for p in (args.preset or []) for n in (list_presets() if p == "all" else [p])]
    presets = [get_preset(n) for n in names]  # bad names and bad preset files fail before any work
    if presets and not args.hq:
        raise ValueError("--preset needs --hq DIR: the HQ faces the preset degrades")
    real = _real_faces(args, args.part)
    args.real_skipped = real.skipped
    real_table = realism.statistics_table(real, progress=not args.quiet, desc="real statistics")
    sets = {}
    if presets:
        hq = _hq_faces(args, args.part)
        for name, preset in zip(names, presets, strict=False):
            label = preset.name if name in list_presets() else Path(name).stem
            sets[label] = realism.synthesize(preset, hq, args.n_synthetic, args.seed, args.size,
                                             progress=not args.quiet)
    for folder in args.synthetic or []:
        sets[Path(folder).name] = realism.load_faces(folder, args.size, aligner=realism.square_crops,
                                                     what="synthetic LQ folder", progress=not args.quiet)
    out = Path(args.out) if args.out else None
    if out:
        from reface_core.lock import lock_for
        with lock_for(args, out):
            return _realism_report(args, real_table, sets, out)
    return _realism_report(args, real_table, sets, None)


def _realism_report(args, real_table, sets, out) -> int:
    import pandas as pd

    from reface_core.atomic import write_json_atomic, write_text_atomic

    from . import realism
    rows, per_stat = [], {}
    for label, faces in sets.items():
        table = realism.statistics_table(faces, progress=not args.quiet, desc=f"{label} statistics")
        c = realism.compare(real_table, table, seed=args.seed, n_boot=args.boot)
        rows.append({"set": label, "n_real": c.n_real, "n_synthetic": c.n_synthetic, "auc": c.auc,
                     "auc_lo": c.auc_ci[0], "auc_hi": c.auc_ci[1], "distance": c.distance})
        per_stat[label] = c.per_statistic
        if out:
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / f"statistics_{label}.csv", index=False)
            realism.plot_distributions(real_table, table, out / f"{label}.png", label=label,
                                       title=f"real LQ ({c.n_real}) vs {label} ({c.n_synthetic}): "
                                             f"AUC {c.auc:.2f}")
    summary = pd.DataFrame(rows)
    lines = ["| set | real | synthetic | two-sample AUC [95% CI] | distance |", "|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['n_real']} | {r['n_synthetic']} | {r['auc']:.3f} "
              f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['distance']:.3f} |" for r in rows]
    labels = list(per_stat)
    lines += ["", "KS statistic per statistic (real median; synthetic median):", "",
              "| statistic | real median | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for j, name in enumerate(realism.STATISTICS):
        real_med = per_stat[labels[0]][j]["real_median"]
        cells = [f"{per_stat[lb][j]['ks']:.2f} ({per_stat[lb][j]['synthetic_median']:.3g})" for lb in labels]
        lines.append(f"| {name} | {real_med:.3g} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        real_table.to_csv(out / "statistics_real.csv", index=False)
        summary.to_csv(out / "realism.csv", index=False)
        write_text_atomic(out / "realism.md", text)
        write_json_atomic(out / "realism.json", {"sets": rows, "per_statistic": per_stat,
                                                 "real": args.input, "part": args.part,
                                                 "skipped": args.real_skipped})
        print(f"wrote {out}/realism.md, realism.csv, realism.json and one plot per set", file=sys.stderr)
    return 0


def _cmd_fit(args) -> int:
    from .fit import SearchSpace, load_space, report_path
    from .presets import get_preset
    space = load_space(args.space)
    if args.template:  # start from this preset's ranges; the parameters must fit its layout
        template = get_preset(args.template).to_dict()
        space = SearchSpace.from_dict({**space.to_dict(), "template": template},
                                      where=f"search space with template {args.template}")
    real = _real_faces(args, args.part)
    hq = _hq_faces(args, args.part)
    from reface_core.lock import lock_for
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with lock_for(args, Path(args.out).parent):  # one fit at a time writes beside OUT
        report = _fit_locked(args, space, real, hq)
    b, a = report["before"], report["after"]
    print(f"wrote {args.out} and {report_path(args.out)}: {report['candidates']} candidates, "
          f"{report['seconds_per_candidate']:.2f} s each (median); distance {b['distance']:.3f} -> "
          f"{a['distance']:.3f}, two-sample AUC {b['auc']:.3f} -> {a['auc']:.3f} on the fit faces")
    return 0


def _fit_locked(args, space, real, hq) -> dict:
    from .fit import fit
    return fit(real, hq, args.out, space=space, name=args.name, budget=args.budget,
                 popsize=args.popsize, n_synthetic=args.n_synthetic, seed=args.seed, size=args.size,
                 overwrite=args.overwrite, progress=not args.quiet, n_boot=args.boot,
               objective=args.objective,
               describe_real=f"{Path(args.input).name}, part {args.part}, {len(real.faces)} faces")


def _add_face_options(p, *, n_synthetic: int) -> None:
    from reface_core.argtypes import between
    p.add_argument("--hq", action="append", metavar="DIR",
                   help="folder of aligned HQ faces to degrade (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help="leave out real LQ files whose path (relative to -i) matches (repeatable)")
    p.add_argument("--hq-exclude", action="append", metavar="GLOB",
                   help="leave out HQ files whose relative path matches, e.g. '*degraded*' (repeatable)")
    p.add_argument("--aligned", action="store_true",
                   help="real inputs are aligned crops: no face detection (non-square files are skipped)")
    p.add_argument("--size", type=between(64, 1024), default=512,
                   help="the aligned size every face is compared at (default 512)")
    p.add_argument("--n-synthetic", type=between(2, 100000), default=n_synthetic,
                   help=f"synthetic faces per preset (default {n_synthetic})")
    p.add_argument("--part", choices=("all", "fit", "heldout"), default="all",
                   help="which side of the fixed split of source images (real and HQ) to use (default all)")
    p.add_argument("--holdout", type=between(0.0, 1.0, float), default=0.3,
                   help="held-out fraction of the split (by source-image pixel hash; default 0.3)")
    p.add_argument("--boot", type=between(0, 100000), default=1000,
                   help="bootstrap resamples for the AUC interval (default 1000)")
    add_seed(p, help="seed of the synthetic faces and the tests")
    add_quiet(p, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m degradations",
        description="Seeded, recorded degradation synthesis (blur, resize, noise, JPEG) for LQ faces.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "synth", help="degrade a folder or manifest of HQ images into LQ images + a Parquet table",
        description="Degrade every image of a folder (recursive) or manifest (Parquet/CSV/JSONL with "
                    "image_path or path) with a preset. Writes OUT/lq/<id>.png, OUT/records/<id>.json and "
                    "OUT/params.parquet. Resumable: rerun the same command after an interruption; finished "
                    "images are skipped and the table never holds duplicates. (preset, seed, image id) "
                    "always gives the same bytes.")
    add_input(p, "folder of images or manifest file", metavar="DIR_OR_MANIFEST")
    add_out(p, "output folder (created)", dest="output", required=True, metavar="DIR",
            deprecated=("--output",))
    p.add_argument("--preset", default="gfpgan", help="preset name (see `presets`) or a .yaml/.json preset file")
    add_seed(p, help="run seed")
    add_workers(p, help="worker processes")
    p.add_argument("--limit", type=at_least(0), default=None, help="only the first N inputs")
    add_resume_flags(p, what="LQ images and records (--overwrite also starts over when OUT "
                             "was made with another preset or seed)")
    add_quiet(p, help="no progress bar")
    add_wait_lock_argument(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("presets", help="list presets, or show one as YAML/JSON",
                       description="Without NAME: list presets and their sources. With NAME: print the preset "
                                   "as data (edit it and pass the file as --preset to make your own).")
    p.add_argument("name", nargs="?", help="preset to show")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("replay", help="regenerate an LQ image from its record and check it is identical",
                       description="Re-apply a record (OUT/records/<id>.json from synth, or a bare record) to its "
                                   "HQ image. Exit 0 when the pixels match the recorded hash, 1 when not.")
    p.add_argument("record", help="record JSON file")
    p.add_argument("--hq", help="HQ image (default: the input path stored in the record)")
    add_out(p, "also write the replayed LQ image here", dest="output", deprecated=("--output",))
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "realism", help="how close synthetic LQ faces come to real ones (statistics, KS, classifier AUC)",
        description="Compare presets (degrading --hq faces) or folders of synthetic LQ faces with a "
                    "folder of real LQ faces: per-face statistics (blur, noise, JPEG blockiness, ringing, "
                    "colour, contrast, NIQE features), KS per statistic, and the cross-validated AUC of a "
                    "classifier telling real from synthetic (0.5: indistinguishable) with a bootstrap "
                    "interval. Whole photos are detected and FFHQ-aligned first.")
    add_input(p, "folder of real LQ images (aligned crops and/or whole photos)", metavar="DIR")
    p.add_argument("--preset", action="append", metavar="NAME",
                   help="preset name or .yaml/.json file, or 'all' for every registered preset (repeatable)")
    p.add_argument("--synthetic", action="append", metavar="DIR",
                   help="a folder of synthetic LQ aligned faces instead of a preset (repeatable)")
    add_out(p, "folder for the table (realism.md/.csv/.json), per-face statistics and plots")
    _add_face_options(p, n_synthetic=64)
    add_wait_lock_argument(p)
    p.set_defaults(func=_cmd_realism)

    p = sub.add_parser(
        "fit", help="fit a preset's ranges to real LQ faces (CMA-ES; seeded, resumable)",
        description="Search the ranges of a template preset (the search space is data: --space) so that "
                    "its LQ faces, made from --hq faces, come closest to the real LQ faces (mean "
                    "standardised Wasserstein distance over the realism statistics). Writes a preset YAML "
                    "that every command accepts, OUT.fit.json (distances and KS per statistic, before "
                    "and after, two-sample AUC) and OUT.fit.jsonl (every candidate; rerun the same "
                    "command to resume).")
    add_input(p, "folder of real LQ images (aligned crops and/or whole photos)", metavar="DIR")
    add_out(p, "the fitted preset file (.yaml)", required=True, metavar="PRESET.yaml")
    p.add_argument("--space", metavar="YAML", help="search space: template preset + parameters "
                                                   "(default: degradations.fit.DEFAULT_SPACE)")
    p.add_argument("--template", metavar="PRESET",
                   help="start from this preset (name or file) instead of the space's template; the "
                        "space's parameters must name its stages")
    p.add_argument("--name", default="real-world", help="name of the fitted preset (default real-world)")
    p.add_argument("--budget", type=at_least(1), default=120, help="candidates to evaluate (default 120)")
    p.add_argument("--popsize", type=at_least(2), default=None, help="CMA-ES population (default 4+3 ln d)")
    p.add_argument("--objective", choices=("distance", "auc", "distance+auc"), default="distance",
                   help="what the search minimises on the fit faces: the mean standardised Wasserstein "
                        "distance (default), the classifier two-sample AUC, or their sum")
    p.add_argument("--overwrite", action="store_true", help="discard a log made with other settings")
    _add_face_options(p, n_synthetic=32)
    add_wait_lock_argument(p)
    p.set_defaults(func=_cmd_fit)

    add_asset_commands(sub, package="degradations")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Input problems and Ctrl-C end in one line with the shared exit codes (reface_core.cli).
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
