"""Speed of the captioning package: medians and ratios against same-run baselines.

    python perf/bench_captioning.py [--data $REFACE_TEST_DATA] [--repeats 3] [--photos 12]

Rows (seconds per face, median of ``--repeats`` timed runs after one warm-up):

* offline:  the offline backend on CelebA-HQ photos as ``caption``/``annotate
            --not-aligned`` run it (detection at 512 px, similarity warp onto the FFHQ
            template) against the baseline of the full FFHQ recipe at the detector's
            default 1024 px;
* vlm:      the BLIP backend (16 VQA questions + a caption) batched 8 images per pass
            against one image per pass, on a tiny random-weight BLIP (CPU); with the
            Salesforce weights the absolute numbers are larger and the ratio depends on
            the device;
* prompts:  building the three prompts with the CLIP tokenizer against the word-level
            estimate (no baseline ratio wanted: both are far below a millisecond's worth
            of model time per face).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_offline(data: Path, photos: int, repeats: int) -> list[dict]:
    from captioning.extractors import FaceSample
    from captioning.pipeline import build_captioner
    from reface_core.imageio import iter_image_files, load_image

    files = list(iter_image_files(data / "celeba_hq_1024"))[:photos]
    images = [load_image(f) for f in files]

    def run(captioner):
        def go():
            captioner.annotate([FaceSample(key=str(i), image=img) for i, img in enumerate(images)])
        return go

    ours = build_captioner(["offline"], detector_options={"max_side": 512})
    base = build_captioner(["offline"], alignment="ffhq")
    t_ours = timed(run(ours), repeats) / len(images)
    t_base = timed(run(base), repeats) / len(images)
    return [{"stage": "offline (per photo)", "ours_s": t_ours, "baseline_s": t_base,
             "baseline": "FFHQ recipe, detect at 1024 px", "speedup": t_base / t_ours}]


def bench_vlm(repeats: int) -> list[dict]:
    import numpy as np

    from captioning.extractors import FaceSample
    from captioning.extractors.vlm import BlipExtractor
    from captioning.testing import build_tiny_blip

    rng = np.random.default_rng(0)
    samples = [FaceSample(key=str(i), image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                          aligned=True) for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        vqa, cap = build_tiny_blip(tmp)
        batched = BlipExtractor(vqa, cap, batch_size=8, device="cpu", max_new_tokens=12)
        single = BlipExtractor(vqa, cap, batch_size=1, device="cpu", max_new_tokens=12)
        t_b = timed(lambda: batched.extract(samples), repeats) / len(samples)
        t_s = timed(lambda: single.extract(samples), repeats) / len(samples)
    return [{"stage": "vlm tiny BLIP (per face)", "ours_s": t_b, "baseline_s": t_s,
             "baseline": "one image per forward pass", "speedup": t_s / t_b}]


def bench_prompts(repeats: int) -> list[dict]:
    import random

    from captioning.attribute_values import AttributeValue
    from captioning.prompts import PromptBuilder
    from captioning.vocabulary import ATTRIBUTES

    rng = random.Random(0)
    sets = []
    for _ in range(200):
        attrs = {}
        for spec in ATTRIBUTES:
            if spec.kind == "binary":
                attrs[spec.name] = AttributeValue(rng.random() < 0.5, 1.0, "b")
            elif spec.kind == "categorical":
                attrs[spec.name] = AttributeValue(rng.choice(spec.values), 1.0, "b")
        sets.append(attrs)
    clip = PromptBuilder(tokenizer="clip")
    words = PromptBuilder(tokenizer="words")
    t_c = timed(lambda: [clip.build(a) for a in sets], repeats) / len(sets)
    t_w = timed(lambda: [words.build(a) for a in sets], repeats) / len(sets)
    return [{"stage": "prompts (per face)", "ours_s": t_c, "baseline_s": t_w,
             "baseline": "word-level token estimate", "speedup": t_w / t_c}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("REFACE_TEST_DATA"),
                    help="real-photo folder (default $REFACE_TEST_DATA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photos", type=int, default=12, help="CelebA-HQ photos for the offline row")
    ap.add_argument("--json", help="also write the table as JSON to this file")
    args = ap.parse_args(argv)
    if not args.data or not (Path(args.data) / "celeba_hq_1024").is_dir():
        print("error: pass --data or set REFACE_TEST_DATA to the real-photo folder "
              "(it needs celeba_hq_1024/)", file=sys.stderr)
        return 2
    rows = (bench_offline(Path(args.data), args.photos, args.repeats)
            + bench_vlm(args.repeats) + bench_prompts(args.repeats))
    print(f"{'stage':28s} {'ours ms':>9s} {'baseline ms':>12s} {'ratio':>7s}  baseline")
    for r in rows:
        print(f"{r['stage']:28s} {r['ours_s'] * 1e3:9.2f} {r['baseline_s'] * 1e3:12.2f} "
              f"{r['speedup']:6.2f}x  {r['baseline']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
