"""Throughput of video restoration (``mgfr restore -i clip.mp4``), whole pipeline, in frames
per second, with the share of time spent on each stage (from ``OUT/<stem>.work/timings.json``).

    python perf/bench_video.py --clip ../shared/data/video/real_1.mp4 --frames 48 \\
        --methods bicubic,mgfr:steps=4 --out /tmp/bench_video

Each method restores a fresh copy of the first ``--frames`` frames (no resume), single
process, on the CPU unless ``--device`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reface_core.argtypes import torch_device  # noqa: E402

STAGES = ("decoding", "detection", "tracking", "references", "restoration", "paste_back",
          "encoding")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--methods", default="bicubic,mgfr:steps=4")
    p.add_argument("--device", default="cpu", type=torch_device)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from benchmarks.video import _cut, _restore_argv
    from mgfr.cli import main as mgfr_main

    out = Path(args.out)
    clip = _cut(Path(args.clip), out / "clip" / Path(args.clip).name, args.frames)
    print(f"{'method':<18}{'fps':>8}  " + "  ".join(f"{s:>11}" for s in STAGES))
    for method in args.methods.split(","):
        dest = out / method.replace(":", "_")
        shutil.rmtree(dest, ignore_errors=True)
        argv = _restore_argv(method, clip, dest, aligned=False) + ["--device", args.device]
        t0 = time.perf_counter()
        if mgfr_main(argv) != 0:
            return 1
        wall = time.perf_counter() - t0
        timings = json.loads((dest / f"{clip.stem}.work" / "timings.json").read_text())
        total = sum(timings.values())
        shares = "  ".join(f"{100 * timings[s] / total:>10.1f}%" for s in STAGES)
        print(f"{method:<18}{args.frames / wall:>8.2f}  {shares}   (wall {wall:.1f} s, "
              f"staged {total:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
