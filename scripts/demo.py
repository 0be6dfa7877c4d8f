"""End-to-end demo of the toolkit on real photos, with no downloads.

Runs every step that exists, in order, on the photos in ``--data`` (default:
``$REFACE_TEST_DATA``, else ``../shared/data`` beside the repository) and writes what
each step produces under ``--out``. A step that needs pretrained weights the machine
does not have says so and which asset is missing; no step is ever faked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path | None:
    env = os.environ.get("REFACE_TEST_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand.resolve()
    return None


def step_assets(args) -> str:
    from reface_core import assets as A
    present = [a.name for a in A.list_assets() if A.find(a)]
    missing = [a.name for a in A.list_assets() if not A.find(a)]
    return (f"{len(present)} assets present (offline defaults: {', '.join(present)}); "
            f"{len(missing)} need user-supplied weights: {', '.join(missing)}")


def step_photos(args) -> str:
    from reface_core.imageio import ImageLoadError, iter_image_files, load_image
    n, bad, pixels = 0, 0, 0
    for f in iter_image_files(args.data):
        try:
            img = load_image(f)
        except ImageLoadError as e:
            bad += 1
            print(f"    skipped {e}")
            continue
        n += 1
        pixels += img.shape[0] * img.shape[1]
    return f"loaded {n} real photos ({pixels / 1e6:.1f} MP) through the safe loader, {bad} rejected"


def _package_step(module: str):
    """The ``run_demo(data, out)`` of a package, imported only when its step runs."""
    def run(args) -> str:
        import importlib
        return importlib.import_module(module).run_demo(args.data, args.out)
    return run


def step_training_pairs(args) -> str:
    """The data flow into MGFR training: caption the built Reface-HQ manifest, then
    synthesize seeded LQ inputs for its faces from the same manifest."""
    import pandas as pd

    import captioning
    from degradations.synth import synth

    manifest = args.out / "reface_hq" / "dataset" / "manifest.parquet"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} is missing: run the reface_hq step first")
    report = captioning.annotate(manifest, backends=("offline",), progress=False)
    table = pd.read_parquet(manifest)
    counts = synth(manifest, args.out / "training_pairs" / "lq", preset="mgfr-medium", seed=0,
                   workers=2, progress=False)
    example = table.iloc[0]
    return (f"captioned {report.ok}/{len(table)} Reface-HQ faces (e.g. {example['identity']}: "
            f"{example['prompt']!r}); mgfr-medium LQ inputs: {counts['ok']} new, "
            f"{counts['skipped']} already done, {counts['error']} failed, parameters in "
            f"{Path(counts['table']).name} -> {args.out / 'training_pairs'}")


# Steps run in this order: what each package does on the real photos.
STEPS = [
    ("assets", step_assets),
    ("photos", step_photos),
    ("faces", _package_step("faces.demo")),                # detect, align, embed, verify
    ("reface_hq", _package_step("reface_hq.demo")),        # build, verify, export a dataset
    ("captioning", _package_step("captioning.demo")),      # attributes and prompts
    ("degradations", _package_step("degradations.demo")),  # seeded LQ synthesis, replay
    ("training_pairs", step_training_pairs),                # dataset -> captions -> LQ pairs
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of real photos (default: $REFACE_TEST_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--steps", default=None,
                        help=f"comma-separated subset of: {', '.join(n for n, _ in STEPS)}")
    args = parser.parse_args(argv)
    args.data = args.data or default_data()
    if args.data is None or not Path(args.data).is_dir():
        parser.error("no photo folder: pass --data DIR or set REFACE_TEST_DATA "
                     "(the shared real photos live in ../shared/data)")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.steps.split(",")) if args.steps else None
    print(f"demo: photos from {args.data}, outputs in {args.out.resolve()}")
    for i, (name, fn) in enumerate(STEPS, 1):
        if wanted and name not in wanted:
            continue
        t0 = time.perf_counter()
        print(f"[{i}/{len(STEPS)}] {name} ...", flush=True)
        summary = fn(args)
        print(f"    {summary}  ({time.perf_counter() - t0:.1f}s)", flush=True)
    print("demo finished")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
