"""Throughput of the reface_hq build: per stage and end to end, on real photos.

Measures, on a fixed sample of real photos (default: 24 = 16 identities_512 + 4 CelebA-HQ
+ 4 unaligned_named), with the library defaults (512 px, FFHQ padding):

* each map stage alone (median over ``--repeats`` runs, images/s);
* a baseline measured in the same run: the same work as plain function calls (load,
  detect, align, save, sharpness, pHash, embed) with no rows, status or shards;
* the end-to-end ``build()`` (fresh work folder each repeat: sources, shards, Parquet,
  global stages, images, manifest), with 1 worker and with ``--workers`` workers.

Ratios are against the baseline, so they hold across machines better than raw rates.

    .venv/bin/python perf/bench_reface_hq.py --data ../shared/data [--n 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample_sources(data: Path, n: int):
    """``n`` photos: two thirds from identities_512, a sixth from each other source (at
    least one each from n = 3 on, so a small sample still covers every source)."""
    from reface_hq.sources import FolderSource
    other = max(1, n // 6) if n >= 3 else 0
    rows = FolderSource(str(data / "identities_512"), identity="folder").rows()
    rows = [r for r in rows if not r["origin"].endswith("degraded.png")][: n - 2 * other]
    rows += FolderSource(str(data / "celeba_hq_1024")).rows()[:other]
    rows += FolderSource(str(data / "unaligned_named"), include=r"^examples/[^/]+$").rows()[:other]
    return rows


def sample_build_sources(data: Path, rows: list[dict]) -> list:
    """Folder sources that read exactly the sampled photos: a source with none is left
    out (an empty include pattern would match every file of its folder)."""
    from reface_hq.sources import FolderSource
    out = []
    for name, options in (("identities_512", {"identity": "folder"}), ("celeba_hq_1024", {}),
                          ("unaligned_named", {})):
        mine = [r["origin"].split("/", 1)[1] for r in rows if r["source"] == name]
        if mine:
            out.append(FolderSource(str(data / name), include="|".join(
                "^" + re.escape(rel) + "$" for rel in mine), **options))
    return out


def bare_loop(rows, folder: Path) -> float:
    """The same per-photo work as direct calls: the baseline."""
    import imagehash
    from PIL import Image

    from faces.alignment import align_ffhq
    from faces.detection import get_detector
    from faces.embedding import get_embedder
    from reface_core.imageio import load_image, save_image
    from reface_hq.stages import laplacian_variance
    det = get_detector("dlib-hog", upsample=0, max_side=1024)
    emb = get_embedder("dlib")
    t0 = time.perf_counter()
    crops = []
    for r in rows:
        img = load_image(r["local_path"])
        for k, d in enumerate(det.detect(img)):
            crop = align_ffhq(img, d.landmarks68, output_size=512)
            path = save_image(folder / f"{r['row_id']}-{k}.png", crop)
            crop = load_image(path)
            laplacian_variance(crop)
            imagehash.phash(Image.fromarray(crop))
            crops.append(crop)
    emb.embed(crops)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("REFACE_TEST_DATA", "../shared/data"))
    ap.add_argument("--n", type=int, default=24, help="photos in the sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "identities_512").is_dir():
        print(f"error: {data} does not hold identities_512/ (pass --data)", file=sys.stderr)
        return 2

    from reface_hq.build import BuildConfig, build
    from reface_hq.sources import FolderSource
    rows = sample_sources(data, args.n)
    n = len(rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench_reface_hq_"))
    results: dict = {"photos": n, "repeats": args.repeats, "stages": {}}
    try:
        config = BuildConfig(sources=[FolderSource(str(data))], out=str(tmp / "out"),
                             work_dir=str(tmp / "work"), progress=False)
        stages = config.map_stages()[1:]   # no download stage for local photos
        # Baseline and stages alternate within each repeat, so drift in machine load
        # (this machine is shared) hits both alike.
        bare, stage_times = [], {s.name: [] for s in stages}
        stage_rows: dict[str, int] = {}
        for _ in range(args.repeats):
            bare.append(bare_loop(rows, tmp / "bare"))
            current = rows
            for stage in stages:
                stage_rows[stage.name] = len(current)
                t0 = time.perf_counter()
                current = stage.process([dict(r) for r in current])
                stage_times[stage.name].append(time.perf_counter() - t0)
        bare_s = statistics.median(bare)
        results["baseline_bare_loop"] = {"seconds": round(bare_s, 3),
                                         "images_per_s": round(n / bare_s, 2)}
        stage_total = 0.0
        for name, times in stage_times.items():
            med = statistics.median(times)
            stage_total += med
            results["stages"][name] = {"seconds": round(med, 3), "rows_in": stage_rows[name],
                                       "images_per_s": round(stage_rows[name] / med, 2)}
        results["stages_sum"] = {"seconds": round(stage_total, 3),
                                 "ratio_to_baseline": round(stage_total / bare_s, 3)}

        def end_to_end(workers: int) -> float:
            times = []
            for i in range(args.repeats if workers == 1 else 1):
                folder = tmp / f"e2e-{workers}-{i}"
                srcs = sample_build_sources(data, rows)
                cfg = BuildConfig(sources=srcs, out=str(folder / "out"),
                                  work_dir=str(folder / "work"), workers=workers,
                                  shard_size=max(1, n // (2 * workers)), progress=False)
                t0 = time.perf_counter()
                build(cfg)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        e1 = end_to_end(1)
        results["end_to_end_1_worker"] = {"seconds": round(e1, 3),
                                          "images_per_s": round(n / e1, 2),
                                          "ratio_to_baseline": round(e1 / bare_s, 3)}
        if args.workers > 1:
            ew = end_to_end(args.workers)
            results[f"end_to_end_{args.workers}_workers"] = {
                "seconds": round(ew, 3), "images_per_s": round(n / ew, 2),
                "ratio_to_baseline": round(ew / bare_s, 3),
                "speedup_vs_1_worker": round(e1 / ew, 3)}
        results["cpu_count"] = os.cpu_count()
        results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
