"""Images per second at 512x512 for every degradation preset, three ways, side by side.

* ``single``: the per-image front end (``Degrader``), one image at a time;
* ``batched``: ``BatchDegrader`` on CPU tensors (libjpeg JPEG, the same bytes as single),
  and ``batched-torchjpeg`` with the differentiable torch JPEG model;
* ``reference`` (gfpgan only): a straightforward per-image NumPy/OpenCV implementation of
  the same pipeline (``cv2.filter2D`` with the full kernel, as the published training
  code does), on the same records.

All paths include parameter sampling. Methods are interleaved within each round so that
they see the same background load; the script reports the median over rounds and the
ratio of each path to the reference measured in the same run, plus the median of
back-to-back gfpgan batched/reference ratios (steadier while the load drifts).

    .venv/bin/python perf/bench_degradations.py [--rounds 5] [--batch 16] [--presets gfpgan ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2
import numpy as np
import torch

from degradations.ops import to_tensor
from degradations.pipeline import BatchDegrader, Degrader
from degradations.presets import get_preset, list_presets
from degradations.reference import reference_apply
from degradations.sampling import sample_record


def load_faces(n: int, size: int = 512) -> list[np.ndarray]:
    """Real 512x512 faces from $REFACE_TEST_DATA/identities_512 when present, else
    deterministic structured images (so the script runs anywhere)."""
    roots = [os.environ.get("REFACE_TEST_DATA"), str(REPO.parent / "shared" / "data")]
    for root in filter(None, roots):
        files = sorted(Path(root).glob("identities_512/*/*.png")) + sorted(
            Path(root).glob("identities_512/*/conditioning/*.png"))
        if files:
            from reface_core.imageio import load_image
            imgs = [load_image(f) for f in files[:n]]
            imgs = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) if i.shape[:2] != (size, size)
                    else i for i in imgs]
            return (imgs * (n // len(imgs) + 1))[:n]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx, yy, (xx + yy) // 2], -1) % 256
    return [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def run_single(preset, imgs, seed):
    deg = Degrader(preset)
    for i, im in enumerate(imgs):
        deg(im, seed, str(i))


def run_batched(preset, batch, seed, jpeg):
    deg = BatchDegrader(preset, jpeg=jpeg)
    deg(batch, seed, [str(i) for i in range(batch.shape[0])])


def run_reference(preset, imgs, seed):
    for i, im in enumerate(imgs):
        rec = sample_record(preset, seed, str(i), im.shape[:2])
        reference_apply(im, rec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (median reported)")
    ap.add_argument("--batch", type=int, default=16, help="images per round (and batch size)")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (default 2)")
    ap.add_argument("--presets", nargs="*", default=None, help="presets (default: all)")
    ap.add_argument("--pairs", type=int, default=3, help="back-to-back gfpgan batched/reference pairs per round")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    names = args.presets or list_presets()
    imgs = load_faces(args.batch)
    batch = torch.cat([to_tensor(i) for i in imgs])
    methods = {}
    for name in names:
        p = get_preset(name)
        methods[(name, "single")] = lambda p=p, s=0: run_single(p, imgs, s)
        methods[(name, "batched")] = lambda p=p, s=0: run_batched(p, batch, s, "libjpeg")
        methods[(name, "batched-torchjpeg")] = lambda p=p, s=0: run_batched(p, batch, s, "torch")
        if name == "gfpgan":
            methods[(name, "reference")] = lambda p=p, s=0: run_reference(p, imgs, s)
    for fn in methods.values():  # warm-up: imports, DFT plans, allocator
        fn()
    times: dict = {k: [] for k in methods}
    paired: list[float] = []  # gfpgan batched / reference, measured back to back
    for r in range(args.rounds):
        for key, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        if ("gfpgan", "reference") in methods:
            # The load of a shared machine drifts between rounds; a ratio of two runs
            # measured seconds apart is steadier than a ratio of two medians.
            for _ in range(args.pairs):
                t0 = time.perf_counter()
                methods[("gfpgan", "reference")]()
                t1 = time.perf_counter()
                methods[("gfpgan", "batched")]()
                t2 = time.perf_counter()
                paired.append((t1 - t0) / (t2 - t1))
    rates = {k: args.batch / statistics.median(v) for k, v in times.items()}
    ref = rates.get(("gfpgan", "reference"))
    print(f"512x512, batch {args.batch}, {args.rounds} rounds, torch threads {torch.get_num_threads()}, "
          f"median images/s")
    print(f"{'preset':14s} {'path':18s} {'img/s':>8s} {'vs ref':>7s}")
    out = []
    for (name, path), rate in rates.items():
        ratio = rate / ref if ref else float("nan")
        print(f"{name:14s} {path:18s} {rate:8.1f} {ratio:7.2f}")
        out.append({"preset": name, "path": path, "images_per_s": rate, "ratio_vs_reference": ratio,
                    "round_seconds": times[(name, path)]})
    if ref:
        b = rates[("gfpgan", "batched")]
        print(f"\ngfpgan: batched {b:.1f} img/s vs per-image OpenCV reference {ref:.1f} img/s "
              f"(ratio of medians {b / ref:.2f}); median of {len(paired)} back-to-back ratios "
              f"{statistics.median(paired):.2f} [min {min(paired):.2f}, max {max(paired):.2f}] (target >= 2)")
        out.append({"preset": "gfpgan", "path": "paired_ratio_batched_vs_reference",
                    "median": statistics.median(paired), "all": paired})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
