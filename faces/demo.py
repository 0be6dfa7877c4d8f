"""The faces part of the end-to-end demo: real photos in, aligned crops and figures out."""

from __future__ import annotations

import pathlib

# Unaligned photos with one, two and three faces (one photo of each shot).
DEMO_PHOTOS = ["examples/two_people.jpg", "examples/knn_examples/test/kit_with_rose.jpg",
               "examples/knn_examples/test/obama_and_biden.jpg", "examples/obama-720p.jpg",
               "examples/alex-lacamoire.png", "examples/knn_examples/train/rose_leslie/img2.jpg"]


def run_demo(data: pathlib.Path, out: pathlib.Path) -> str:
    """Detect, FFHQ-align, embed and caption faces of real photos; verify identities.

    Writes ``out/faces/aligned/*.png`` (512 crops), ``out/faces/pasted_back.png`` (a crop
    edited and pasted back with the soft mask), and ``out/faces/summary.json``. Returns a
    one-line summary.
    """
    import numpy as np

    import faces
    from faces.verification import pair_scores, roc_auc, tar_at_far
    from reface_core.atomic import safe_child, write_json_atomic
    from reface_core.imageio import load_image, save_image

    data, out = pathlib.Path(data), pathlib.Path(out) / "faces"
    (out / "aligned").mkdir(parents=True, exist_ok=True)
    detector = faces.get_detector("dlib-hog")
    embedder = faces.get_embedder("dlib")
    predictor = faces.get_attribute_predictor()

    # 1. detect + align the unaligned photos, 2. attributes of each crop.
    rows, crops = [], []
    for rel in DEMO_PHOTOS:
        src = data / "unaligned_named" / rel
        image = load_image(src)
        aligned = faces.detect_and_align(image, detector=detector)
        attrs = predictor.predict([a.image for a in aligned])
        for k, (a, at) in enumerate(zip(aligned, attrs, strict=False)):
            name = f"{src.stem}_{k:02d}.png"
            save_image(safe_child(out / "aligned", name), a.image)
            crops.append(a.image)
            rows.append({"photo": rel, "crop": name, "score": round(a.detection.score, 3),
                         "size_px": round(a.detection.size), **at.to_dict()})
    # 3. paste an edited crop back into its photo (grey face, soft mask) to show the inverse.
    image = load_image(data / "unaligned_named" / DEMO_PHOTOS[0])
    first = faces.detect_and_align(image, detector=detector)[0]
    grey = np.repeat(first.image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    save_image(out / "pasted_back.png", faces.paste_back(image, grey, first.matrix))

    # 4. identity verification on FFHQ-aligned photos of several people.
    files, labels = [], []
    for folder in sorted(p for p in (data / "identities_512").iterdir() if p.is_dir())[:8]:
        for f in [folder / "gt.png", *sorted((folder / "conditioning").glob("*.png"))[:4]]:
            files.append(f)
            labels.append(folder.name)
    vecs = embedder.embed([load_image(f) for f in files])
    scores, same = pair_scores(vecs, labels)
    auc = roc_auc(scores, same)
    tar, _ = tar_at_far(scores, same, 0.01)

    summary = {"faces": rows, "verification": {
        "embedder": embedder.name, "photos": len(files), "identities": len(set(labels)),
        "roc_auc": round(auc, 4), "tar_at_far_1pct": round(tar, 4)}}
    write_json_atomic(out / "summary.json", summary)
    genders = sum(r["gender"] == "male" for r in rows)
    return (f"faces: {len(rows)} faces in {len(DEMO_PHOTOS)} photos detected and FFHQ-aligned "
            f"({genders} male / {len(rows) - genders} female), identity verification on "
            f"{len(files)} photos of {len(set(labels))} people: ROC AUC {auc:.3f}, "
            f"TAR {tar:.3f} at 1% FAR -> {out}")
