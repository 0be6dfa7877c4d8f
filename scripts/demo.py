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


# MGFR at demo scale: a pipeline check of the whole flow on a CPU, not the paper's model.
# Steps are few on purpose (the demo runs in minutes on 2 cores); docs/mgfr-training.md has
# the longer CPU runs and what they show.
PRIOR_STEPS = {"vae": 100, "unet": 100}
STAGE_STEPS = {1: 30, 2: 20}
BATCH = {"prior": 8, "stage": 4}
BENCH_FACES = 6
RESTORE_STEPS = 10


def _run(*cmd: str) -> str:
    """Run a toolkit command line the way a user types it; its last line is the summary."""
    import subprocess
    done = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"`python -m {' '.join(cmd)}` failed:\n  " + "\n  ".join(tail))
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _dataset(args) -> Path:
    ds = args.out / "reface_hq" / "dataset"
    if not (ds / "manifest.parquet").is_file():
        raise SystemExit(f"{ds} has no manifest: run the reface_hq step first")
    return ds


def step_mgfr_prior(args) -> str:
    """The tiny preset's frozen prior (VAE + text-conditioned UNet) on the train split."""
    prior = args.out / "mgfr" / "prior"
    _run("mgfr", "pretrain-prior", "-i", str(_dataset(args)), "--base", "tiny",
         "--out", str(prior), "--vae-steps", str(PRIOR_STEPS["vae"]),
         "--unet-steps", str(PRIOR_STEPS["unet"]), "--batch-size", str(BATCH["prior"]), "--resume")
    import pandas as pd
    loss = pd.read_csv(prior / "training" / "loss.csv")
    parts = []
    for phase, rows in loss.groupby("phase", sort=False):
        head, tail = rows["loss"].head(10).mean(), rows["loss"].tail(10).mean()
        parts.append(f"{phase} loss {head:.4f} -> {tail:.4f} over {len(rows)} steps")
    return (f"tiny prior (64 px, random init) pretrained briefly on the demo's train split: "
            f"{'; '.join(parts)} -> {prior}")


def step_mgfr_train(args) -> str:
    """Stage 1 (LQ adapter) then stage 2 (reference adapter), briefly, on the tiny prior."""
    import pandas as pd
    ds, prior = _dataset(args), args.out / "mgfr" / "prior"
    out = []
    for stage in (1, 2):
        run = args.out / "mgfr" / f"stage{stage}"
        cmd = ["mgfr", "train", "--stage", str(stage), "-i", str(ds), "--base", str(prior),
               "--config", str(REPO / "mgfr" / "configs" / f"tiny-stage{stage}.yaml"),
               "--out", str(run), "--max-steps", str(STAGE_STEPS[stage]),
               "--batch-size", str(BATCH["stage"]),
               "--checkpoint-every", "20", "--validate-every", "0",
               "--set", "validation_faces=4", "--set", f"validation_steps={RESTORE_STEPS}"]
        if stage == 2:
            cmd += ["--init", str(args.out / "mgfr" / "stage1")]
        if (run / "checkpoint").is_dir():
            cmd.append("--resume")
        _run(*cmd)
        log = pd.read_csv(run / "train_log.csv")
        val = pd.read_csv(run / "validation.csv").iloc[-1]
        half = len(log) // 2
        out.append(f"stage {stage}: {len(log)} steps, mean loss {log['loss'][:half].mean():.4f} "
                   f"(first half), {log['loss'][half:].mean():.4f} (second half; noisy at "
                   f"batch {BATCH['stage']}), validation PSNR {val['psnr']:.2f} dB "
                   f"(LQ input {val['psnr_lq']:.2f} dB)")
    return ("; ".join(out) + f" (a pipeline check at tiny scale, minutes of CPU; adapters in "
            f"{args.out / 'mgfr' / 'stage2' / 'adapters'})")


def step_mgfr_restore(args) -> str:
    """A real whole photo restored by the shipped mini model (no --base, no --adapters) with
    a reference photo of the same person, pasted back."""
    photo = args.data / "unaligned_named" / "examples" / "obama.jpg"
    refs = args.data / "unaligned_named" / "examples" / "obama2.jpg"
    if not photo.is_file() or not refs.is_file():
        return f"skipped: {photo} or {refs} is not in the photo folder"
    out = args.out / "mgfr" / "restored"
    _run("mgfr", "restore", "--input", str(photo), "--refs", str(refs),
         "--out", str(out), "--seed", "0", "-q")
    import json
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
            if line.strip()]
    row = rows[-1]
    if row["status"] != "done":
        return f"{photo.name}: {row['status']} ({row['error']})"
    return (f"{photo.name}: {row['faces']} face(s) restored by the shipped mini model (64 px) "
            f"with reference {refs.name} and pasted back, the rest of the photo unchanged, "
            f"{row['seconds']:.1f}s -> {out / row['output']}")


def step_benchmark(args) -> str:
    """MGFR (the shipped mini model), CodeFormer (skipped without its weights), bicubic and
    the LQ input on the test split, at mini's 64 px, into DuckDB."""
    results = args.out / "benchmark"
    _run("benchmarks.run", "--methods", "mgfr,codeformer,bicubic,lq",
         "--dataset", "reface-test", "--data", str(_dataset(args)), "--out", str(results),
         "--dataset-option", "size=64", "--dataset-option", "n_references=2",
         "--limit", str(BENCH_FACES), "-q")
    import duckdb
    con = duckdb.connect(str(results / "results.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT restorer, status, coalesce(reason, '') FROM runs "
                           "ORDER BY restorer").fetchall()
        board = dict(con.execute(
            "SELECT restorer || ' ' || metric, value FROM leaderboard "
            "WHERE metric IN ('psnr', 'ids') AND value IS NOT NULL").fetchall())
        unavailable = [r[0] for r in con.execute(
            "SELECT DISTINCT metric FROM leaderboard WHERE value IS NULL ORDER BY metric"
        ).fetchall()]
    finally:
        con.close()
    parts = []
    for restorer, status, reason in runs:
        if status == "done":
            parts.append(f"{restorer}: PSNR {board.get(restorer + ' psnr', float('nan')):.2f} dB,"
                         f" ids {board.get(restorer + ' ids', float('nan')):.3f}")
        else:
            first = reason.splitlines()[0].removesuffix(" Looked in:") if reason else ""
            parts.append(f"{restorer}: {status} ({first}; `reface-assets where {restorer}` "
                         "says where to put it)")
    return (f"{BENCH_FACES} test faces; " + "; ".join(parts)
            + f"; unavailable metrics (weights missing): {', '.join(unavailable) or 'none'}"
            + f" -> {results / 'results.duckdb'}")


def step_publish(args) -> str:
    """Leaderboard CSVs and the static HTML report from the DuckDB store."""
    site = args.out / "report"
    note = ("mgfr here is the shipped mini model (64 px, trained by the toolkit's own recipe, "
            "docs/mgfr-training.md), scored at 64 px on the demo's test faces with mgfr-medium "
            "LQ; the demo's own test identities may overlap the mini model's training "
            "identities (the held-out figures are in docs/mgfr-training.md). Restorers and "
            "metrics without their weights are listed as skipped or unavailable.")
    _run("benchmarks.publish", "-i", str(args.out / "benchmark"), "--out", str(site),
         "--note", note)
    csvs = sorted(p.name for p in site.rglob("*.csv"))
    return f"{len(csvs)} leaderboard CSV(s) ({', '.join(csvs)}); report: {site / 'index.html'}"


# Steps run in this order: what each package does on the real photos.
STEPS = [
    ("assets", step_assets),
    ("photos", step_photos),
    ("faces", _package_step("faces.demo")),                # detect, align, embed, verify
    ("reface_hq", _package_step("reface_hq.demo")),        # build, verify, export a dataset
    ("captioning", _package_step("captioning.demo")),      # attributes and prompts
    ("degradations", _package_step("degradations.demo")),  # seeded LQ synthesis, replay
    ("training_pairs", step_training_pairs),                # dataset -> captions -> LQ pairs
    ("mgfr_prior", step_mgfr_prior),                        # the tiny prior (pipeline check)
    ("mgfr_train", step_mgfr_train),                        # stages 1 and 2, briefly (check)
    ("mgfr_restore", step_mgfr_restore),                    # shipped mini: a whole photo
    ("benchmark", step_benchmark),                          # restorers x metrics -> DuckDB
    ("publish", step_publish),                              # CSVs + HTML report
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
    # The command-line steps run with the repository as their working folder.
    args.data, args.out = Path(args.data).resolve(), args.out.resolve()
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
