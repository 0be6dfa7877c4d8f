"""Speed of the benchmark harness: images/s per metric, and the harness's overhead.

    python perf/bench_benchmarks.py [--data ../shared/data] [--n 18] [--repeats 3]

Dataset: a paired folder built from ``identities_512`` (``degraded.png`` -> LQ, ``gt.png``
-> GT, 512 px). Restorer: ``bicubic`` (identity at this size, so restoring costs nothing and
the overhead is measured against metric compute alone, the hardest case for the goal).

* per metric: one plain call per image on images decoded once (images/s);
* baseline: the same work as plain calls (decode LQ and GT, restore, every metric);
* harness: dataset loading (hashing) plus ``Benchmark.run_method`` into a fresh results
  folder (store rows, PNG outputs, resumability), with the same metrics already loaded.

Repeats interleave baseline and harness; medians are reported. The goal (at most 10%) is
checked two ways: harness / baseline wall time, and inside each harness run, the time not
spent in restorer or metric calls over the time spent in them (decoding counts as
harness time there), which does not drift with the machine's load between the passes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ["psnr", "ssim", "ids", "deg", "lmd", "niqe-skvideo", "brisque-pypi"]


def make_paired(data: Path, root: Path, n: int) -> list[str]:
    ids = sorted(p.name for p in (data / "identities_512").iterdir() if p.is_dir())[:n]
    for sub in ("lq", "gt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(data / "identities_512" / i / "degraded.png", root / "lq" / f"{i}.png")
        shutil.copy(data / "identities_512" / i / "gt.png", root / "gt" / f"{i}.png")
    return ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("REFACE_TEST_DATA", "../shared/data"))
    p.add_argument("--n", type=int, default=18)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "identities_512").is_dir():
        print(f"error: {data}/identities_512 not found (set --data or REFACE_TEST_DATA)",
              file=sys.stderr)
        return 2

    from benchmarks import metrics as M
    from benchmarks import restorers as R
    from benchmarks.datasets import load_dataset
    from benchmarks.run import Benchmark, MethodSpec
    from reface_core.imageio import load_image

    work = Path(tempfile.mkdtemp(prefix="bench_benchmarks_"))
    try:
        ids = make_paired(data, work / "paired", args.n)
        metrics = {n: M.create_metric(n) for n in METRICS}
        for m in metrics.values():
            m.prepare()
        restorer = R.create_restorer("bicubic")

        # warm-up: imports, model files, first calls
        lq0, gt0 = load_image(work / "paired/lq" / f"{ids[0]}.png"), load_image(work / "paired/gt" / f"{ids[0]}.png")
        for m in metrics.values():
            m(M.Sample("w", lq0, gt0, gt_key="w"))

        per_metric: dict[str, list[float]] = {n: [] for n in METRICS}
        base_times, harness_times, in_run = [], [], []
        for rep in range(args.repeats):
            # baseline: plain calls
            t0 = time.perf_counter()
            shared: dict = {}
            for i in ids:
                lq = load_image(work / "paired/lq" / f"{i}.png")
                gt = load_image(work / "paired/gt" / f"{i}.png")
                out = restorer.restore(lq, [], image_id=i, out_size=gt.shape[:2])
                s = M.Sample(i, out, gt, gt_key=f"{rep}:{i}", shared=shared)
                for n, m in metrics.items():
                    t1 = time.perf_counter()
                    m(s)
                    per_metric[n].append(time.perf_counter() - t1)
            base_times.append(time.perf_counter() - t0)

            # harness: the same metric objects, a fresh results folder
            out_dir = work / f"results{rep}"
            t0 = time.perf_counter()
            ds = load_dataset(str(work / "paired"), results_dir=out_dir)
            bench = Benchmark(ds, METRICS, out_dir, progress=False, prepared=metrics)
            summary = bench.run_method(MethodSpec("bicubic"))
            bench.close()
            harness_times.append(time.perf_counter() - t0)
            compute = summary.seconds_restore + sum(summary.seconds_metrics.values())
            in_run.append((time.perf_counter() - t0 - compute) / compute)

        n_img = len(ids)
        print(f"{n_img} images (512 px), {args.repeats} repeats, load average "
              f"{os.getloadavg()[0]:.1f}\n")
        print("| metric | ms/image (median) | images/s |")
        print("|---|---|---|")
        for n in METRICS:
            med = statistics.median(per_metric[n])
            print(f"| {n} | {med * 1000:.1f} | {1 / med:.1f} |")
        b, h = statistics.median(base_times), statistics.median(harness_times)
        print(f"\nbaseline (plain calls): {b:.2f} s ({n_img / b:.2f} images/s)")
        print(f"harness (run_benchmark): {h:.2f} s ({n_img / h:.2f} images/s)")
        print(f"harness / baseline = {h / b:.3f}; per repeat: "
              + ", ".join(f"{hh / bb:.3f}" for bb, hh in zip(base_times, harness_times, strict=False)))
        print(f"overhead inside the run (wall - restore - metrics) / (restore + metrics) = "
              f"{statistics.median(in_run):.3f} (goal <= 0.10); per repeat: "
              + ", ".join(f"{v:.3f}" for v in in_run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
