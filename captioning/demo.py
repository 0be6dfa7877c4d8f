"""captioning's part of the end-to-end demo: caption real photos offline, into a manifest."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(data: Path, out: Path) -> str:
    """Annotate the CelebA-HQ photos of ``data`` with the offline backend; one-line summary.

    Writes ``out/captioning/manifest.parquet`` (one row per photo, ``image_path`` relative
    to the photo folder, read with ``images_root``, plus the captioning columns) through ``captioning annotate`` itself,
    and scores the gender column against the female/male folder labels.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reface_core.imageio import iter_image_files

    from .attribute_values import attributes_from_json
    from .manifest import ManifestError, annotate_manifest, read_manifest, write_manifest
    from .pipeline import build_captioner

    root = Path(data) / "celeba_hq_1024"
    if not root.is_dir():
        return f"skipped: {root} is missing"
    folder = Path(out) / "captioning"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.parquet"
    files = list(iter_image_files(root))
    rows = [{"face_id": "celeba-" + "-".join(f.relative_to(root).with_suffix("").parts),
             "image_path": f.relative_to(root).as_posix(), "identity": f.stem,
             "split": "test", "source": "celeba_hq_1024", "origin": str(f.relative_to(root)),
             "status": "ok", "folder_gender": f.parent.name} for f in files]
    fresh = pa.Table.from_pylist(rows)
    # A manifest of these very photos from an earlier run is kept, so a rerun resumes
    # (annotate skips the faces done) instead of redoing every photo.
    try:
        old = read_manifest(manifest)
        keep = all(old.column(c).to_pylist() == fresh.column(c).to_pylist()
                   for c in ("face_id", "image_path"))
    except (ManifestError, KeyError):
        keep = False
    if not keep:
        write_manifest(fresh, manifest)

    t0 = time.perf_counter()
    # CelebA-HQ photos are aligned but not to FFHQ's template: detect and re-align them.
    captioner = build_captioner(["offline"], detector_options={"max_side": 512})
    report = annotate_manifest(manifest, captioner, aligned=False, progress=False,
                               images_root=root)
    seconds = time.perf_counter() - t0

    table = pq.read_table(manifest).to_pylist()
    agree = sum(attributes_from_json(r["attributes"]).get("gender") is not None
                and attributes_from_json(r["attributes"])["gender"].value == r["folder_gender"]
                for r in table)
    example = table[0]
    return (f"captioned {report.ok}/{len(files)} CelebA-HQ photos offline in {seconds:.1f}s "
            f"({seconds / max(1, len(files)):.2f}s/photo); gender agrees with the folder labels "
            f"on {agree}/{len(files)} ({agree / max(1, len(files)):.1%}); e.g. "
            f"{example['prompt']!r} / negatives {example['negative_attribute_prompt']!r}; "
            f"manifest: {manifest}")
