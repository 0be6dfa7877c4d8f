"""Speed of ``python -m degradations fit``: seconds per candidate, and what a fit costs.

    python perf/bench_degradations_fit.py [--data $REFACE_TEST_DATA] [--n-synthetic 24]
        [--size 512] [--repeats 3] [--budget 100] [--log FIT.jsonl]

A candidate is: decode a point of the search space into a preset, degrade
``--n-synthetic`` HQ faces (``identities_512`` gt/conditioning, ``celeba_hq_1024``) with
it, compute the realism statistics of each, and the distance to the (precomputed) real
statistics. The table gives the median of ``--repeats`` candidates (random points of the
default space, after one warm-up) split into synthesis and statistics, the one-off cost of
the real side (loading and aligning ``real_lq``, its statistics), and the total for
``--budget`` candidates. ``--log`` also summarises the seconds recorded in a fit's
candidate log (``PRESET.fit.jsonl``): what the shipped fit actually took.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("REFACE_TEST_DATA"),
                    help="real-photo folder (default $REFACE_TEST_DATA)")
    ap.add_argument("--n-synthetic", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--log", help="a fit's candidate log (.fit.jsonl) to summarise")
    ap.add_argument("--log-only", action="store_true", help="only summarise --log (no live timing)")
    args = ap.parse_args(argv)
    if args.log:
        _summarise_log(Path(args.log))
        if args.log_only:
            return 0
    if not args.data or not Path(args.data).is_dir():
        print("error: give --data or set REFACE_TEST_DATA to the real-photo folder", file=sys.stderr)
        return 2
    import numpy as np

    from degradations import realism as R
    from degradations.cli import face_aligner
    from degradations.fit import load_space

    data = Path(args.data)
    t = time.perf_counter()
    real = R.load_faces(data / "real_lq", args.size, aligner=face_aligner(), exclude=["*/gt/*"])
    t_align = time.perf_counter() - t
    t = time.perf_counter()
    real_table = R.statistics_table(real)
    t_real = time.perf_counter() - t
    hq = R.load_hq_faces([data / "identities_512", data / "celeba_hq_1024"], args.size,
                         exclude=["*degraded*"])
    space = load_space(None)
    rng = np.random.default_rng(0)
    synth_s, stats_s = [], []
    for i in range(args.repeats + 1):
        preset = space.decode(rng.random(space.dim), name="real-world")
        t = time.perf_counter()
        faces = R.synthesize(preset, hq, args.n_synthetic, seed=0, size=args.size)
        t1 = time.perf_counter()
        R.compare(real_table, R.statistics_table(faces), auc=False)
        t2 = time.perf_counter()
        if i:  # the first is a warm-up
            synth_s.append(t1 - t)
            stats_s.append(t2 - t1)
    synth, stats = statistics.median(synth_s), statistics.median(stats_s)
    per = synth + stats
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"real_lq: {len(real.faces)} faces; load average {load:.1f}; {args.n_synthetic} synthetic "
          f"faces at {args.size} px per candidate")
    print("| what | seconds |")
    print("|---|---|")
    print(f"| load + detect + align real LQ (once) | {t_align:.1f} |")
    print(f"| real statistics (once) | {t_real:.1f} |")
    print(f"| candidate: synthesis | {synth:.2f} |")
    print(f"| candidate: statistics + distance | {stats:.2f} |")
    print(f"| **candidate total** | **{per:.2f}** ({1000 * per / args.n_synthetic:.0f} ms per face) |")
    print(f"| {args.budget} candidates | {args.budget * per:.0f} |")
    return 0


def _summarise_log(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    settings = rows[0].get("settings", {})
    secs = [r["seconds"] for r in rows if "seconds" in r]
    dist = [r["distance"] for r in rows if "distance" in r]
    best = min(range(len(dist)), key=dist.__getitem__)
    print(f"log {path.name}: {len(secs)} candidates of {settings.get('n_synthetic')} synthetic faces at "
          f"{settings.get('size')} px; seconds per candidate: median {statistics.median(secs):.2f}, "
          f"min {min(secs):.2f}, max {max(secs):.2f}; total {sum(secs):.0f} s; "
          f"{settings.get('objective', 'distance')} "
          f"{dist[0]:.3f} (template) -> {dist[best]:.3f} (candidate {best})")


if __name__ == "__main__":
    sys.exit(main())
