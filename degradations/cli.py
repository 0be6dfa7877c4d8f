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
    from reface_core.lock import add_wait_lock_argument
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

    add_asset_commands(sub, package="degradations")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Input problems and Ctrl-C end in one line with the shared exit codes (reface_core.cli).
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
