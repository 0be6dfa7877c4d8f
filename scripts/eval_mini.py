"""Held-out evaluation of the mini MGFR model: the table and grid of docs/mgfr-training.md.

    python scripts/eval_mini.py --data runs/mini/reface-hq --out runs/mini/eval

On the test split of the Reface-HQ build the mini model was trained on (identities it
never saw), for each LQ preset (``mgfr-medium``, ``mgfr-severe``; seeded, the final resize
bicubic, so the LQ input at 64 px *is* the bicubic upsampling of the small degraded face):

* ``bicubic``: the LQ input itself;
* ``stage 1``: the shipped stage-1 adapters (no reference);
* ``stage 2``: the shipped stage-2 adapters with two other photos of the same person;
* ``stage 2, other person``: the same, with two photos of another held-out person;
* ``stage 2, lambda_nq 0``: stage 2 with the negative-quality guidance off (the
  ``lambda_nq`` check: sharpness and BRISQUE against the default);
* one-step estimates of stages 1 and 2 (deterministic, for fidelity).

All with the preset's default inference settings unless said. Metrics: PSNR and SSIM to
the HQ face, ``ids`` (dlib identity cosine to the HQ face), sharpness (variance of the
Laplacian) and BRISQUE (no reference, lower is better). Writes ``results.json``,
``table.md`` and ``grid-<preset>.png`` (LQ | stage 1 | stage 2 | stage 2 other person |
HQ | reference, 3x nearest-neighbour) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


#: the rows of the table, by short name
ROWS = {"bicubic": "bicubic", "stage1": "stage 1", "stage2": "stage 2 (same person)",
        "other": "stage 2 (other person)", "nq0": "stage 2, lambda_nq 0",
        "onestep1": "stage 1, one step", "onestep2": "stage 2, one step"}


def lq_faces(hq: np.ndarray, ids: list[str], preset: str, seed: int) -> np.ndarray:
    from mgfr.train import bicubic_degrader
    deg = bicubic_degrader(preset)
    return np.stack([deg(h, seed=seed, image_id=i)[0] for h, i in zip(hq, ids, strict=False)])


def sharpness(img: np.ndarray) -> float:
    import cv2
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the Reface-HQ build the model was trained on")
    p.add_argument("--out", required=True, help="folder for results.json, table.md, grids")
    p.add_argument("--presets", default="mgfr-medium,mgfr-severe")
    p.add_argument("--faces", type=int, default=0, help="first N test faces (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="a mini weights folder (default: the shipped asset mgfr-mini)")
    p.add_argument("--stage2", default=None,
                   help="stage-2 adapters folder to score instead of WEIGHTS/adapters-stage2 "
                        "(a candidate before it is shipped)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated subset of the rows: " + ", ".join(ROWS)
                        + " (the grid needs stage1, stage2 and other)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an inference setting for every row, over the preset's default "
                        "(repeatable), e.g. --set rca_scale=2")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--split", default="test",
                   help="split of the build to score (train: for choosing settings)")
    p.add_argument("--strengths", default=None,
                   help="instead of the table: PSNR/ids of stages 1 and 2 at these comma-"
                        "separated strengths (how the default strength was chosen)")
    args = p.parse_args(argv)
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows_wanted if r not in ROWS]
    if bad or not rows_wanted:
        print(f"error: --rows {args.rows!r}: choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2

    overrides = {}
    for item in args.overrides:
        key, _, value = (x.strip() for x in item.partition("="))
        try:
            if not key:
                raise ValueError
            overrides[key] = float(value)
        except ValueError:
            print(f"error: --set {item!r}: expected KEY=NUMBER", file=sys.stderr)
            return 2

    import torch

    from benchmarks.metrics import Sample, create_metric
    from faces.embedding import get_embedder
    from mgfr.pipeline import load_pipeline
    from mgfr.train import psnr, ssim, to_uint8
    from reface_core.assets import resolve
    from reface_hq.dataset import FaceTrainingDataset
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else resolve("mgfr-mini")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    ds = FaceTrainingDataset(args.data, args.split, n_references=2, size=64, seed=args.seed,
                             embedder="dlib")
    order = sorted(range(len(ds)), key=lambda i: ds.items[i]["face_id"])
    if args.faces:
        order = order[:args.faces]
    items = [ds[i] for i in order]
    hq = np.stack([to_uint8(it["target"][None])[0] for it in items])
    refs = np.stack([to_uint8(it["references"]) for it in items])
    ref_ids = np.stack([it["reference_embeddings"].numpy() for it in items])
    identity = [it["identity"] for it in items]
    face_ids = [it["face_id"] for it in items]
    # Another held-out person's references: the next face (in order) of another identity.
    other = []
    for i, ident in enumerate(identity):
        j = next(k for k in list(range(i + 1, len(items))) + list(range(i))
                 if identity[k] != ident)
        other.append(j)
    emb = get_embedder("dlib")
    target_vecs = np.stack([ds.embeddings[f] for f in face_ids])
    brisque = create_metric("brisque-pypi")
    brisque.prepare()

    def scores(imgs: np.ndarray) -> dict:
        v = emb.embed(list(imgs))
        per_face = np.sum(v * target_vecs, axis=1)
        return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(imgs, hq, strict=False)])),
                "ssim": float(np.mean([ssim(a, b) for a, b in zip(imgs, hq, strict=False)])),
                "ids": float(np.mean(per_face)),
                "ids_per_face": [round(float(x), 5) for x in per_face],
                "sharpness": float(np.mean([sharpness(a) for a in imgs])),
                "brisque": float(np.mean([brisque(Sample(image_id=str(k), output=a))
                                          for k, a in enumerate(imgs)]))}

    stage1 = load_pipeline(base=str(weights), adapters=str(weights / "adapters-stage1"))
    stage2 = load_pipeline(base=str(weights), adapters=str(
        Path(args.stage2) if args.stage2 else weights / "adapters-stage2"))
    defaults = stage2.call_defaults
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        print(f"error: --set {', '.join(unknown)}: not an inference setting; choose from "
              f"{', '.join(sorted(defaults))}", file=sys.stderr)
        return 2

    def run(pipe, lq, references=None, vecs=None, **kw):
        outs = []
        for i in range(len(lq)):
            r = None if references is None else [list(references[i])]
            e = None if vecs is None else vecs[i:i + 1]
            g = torch.Generator().manual_seed(args.seed + i)
            outs.append(pipe(lq[i], references=r, id_embeds=e, generator=g,
                             **{**overrides, **kw}).images[0])
        return np.stack(outs)

    if args.strengths:
        lines = [f"{len(items)} {args.split}-split faces; other settings the defaults", "",
                 "| preset | strength | stage 1 PSNR | stage 1 ids | stage 2 PSNR | stage 2 ids |",
                 "|---|---|---|---|---|---|"]
        for preset in args.presets.split(","):
            lq = lq_faces(hq, face_ids, preset, args.seed)
            for st in (float(x) for x in args.strengths.split(",")):
                a = scores(run(stage1, lq, strength=st))
                b = scores(run(stage2, lq, refs, ref_ids, strength=st))
                lines.append(f"| {preset} | {st:g} | {a['psnr']:.2f} | {a['ids']:.3f} | "
                             f"{b['psnr']:.2f} | {b['ids']:.3f} |")
                print(lines[-1], flush=True)
        (out_dir / f"strengths-{args.split}.md").write_text("\n".join(lines) + "\n")
        return 0

    def produce(key: str, lq: np.ndarray) -> np.ndarray:
        if key == "bicubic":
            return lq
        if key == "stage1":
            return run(stage1, lq)
        if key == "stage2":
            return run(stage2, lq, refs, ref_ids)
        if key == "other":
            return run(stage2, lq, refs[other], ref_ids[other])
        if key == "nq0":
            return run(stage2, lq, refs, ref_ids, lambda_nq=0.0)
        if key == "onestep1":
            return run(stage1, lq, one_step=True)
        return run(stage2, lq, refs, ref_ids, one_step=True)

    results = {"faces": len(items), "identities": sorted(set(identity)),
               "defaults": {k: v for k, v in defaults.items()}, "overrides": overrides,
               "presets": {}}
    hq_scores = scores(hq)
    for preset in args.presets.split(","):
        t0 = time.perf_counter()
        lq = lq_faces(hq, face_ids, preset, args.seed)
        rows, outs = {}, {}
        for key, name in ROWS.items():
            if key in rows_wanted:
                outs[key] = produce(key, lq)
                rows[name] = scores(outs[key])
        rows["HQ (ceiling)"] = hq_scores
        results["presets"][preset] = {"rows": rows, "seconds": time.perf_counter() - t0}
        if all(k in outs for k in ("stage1", "stage2", "other")):
            n = min(8, len(items))
            pick = np.linspace(0, len(items) - 1, n).round().astype(int)
            tiles = [np.concatenate([lq[i], outs["stage1"][i], outs["stage2"][i],
                                     outs["other"][i], hq[i], refs[i, 0]], axis=1)
                     for i in pick]
            grid = np.concatenate(tiles, axis=0).repeat(3, axis=0).repeat(3, axis=1)
            from PIL import Image
            Image.fromarray(grid).save(out_dir / f"grid-{preset}.png", optimize=True)
        print(f"{preset}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    lines = [f"{len(items)} faces of {len(set(identity))} held-out identities; defaults: "
             + ", ".join(f"{k}={v}" for k, v in defaults.items())
             + ("; set: " + ", ".join(f"{k}={v:g}" for k, v in overrides.items())
                if overrides else ""), ""]
    for preset, res in results["presets"].items():
        lines += [f"**{preset}**", "",
                  "| | PSNR dB | SSIM | ids | sharpness | BRISQUE |", "|---|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['ids']:.3f} | "
                         f"{r['sharpness']:.0f} | {r['brisque']:.1f} |")
        lines.append("")
    (out_dir / "table.md").write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
