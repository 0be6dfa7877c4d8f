"""reface_hq's part of the end-to-end demo: build a small Reface-HQ dataset from real photos.

Sources: four identity folders of ``identities_512`` (including 00399 and 00737, which
share four photos), a few CelebA-HQ photos with no labels, ten AT&T faces (too small by
design) and ``unaligned_named`` (file-name hints, the same Obama shot in several files).
The build runs with the library defaults except a 2x FFHQ transform size (speed); the
dataset is verified and exported to HF Parquet and WebDataset shards.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

IDENTITIES = r"^(00001|00052|00399|00737)/"


def run_demo(data: Path, out: Path) -> str:
    """Build, verify and export under ``out/reface_hq``; returns a one-line summary."""
    from .build import BuildConfig, build
    from .dataset import load_manifest, verify
    from .export import export
    from .sources import FolderSource

    data, out = Path(data), Path(out) / "reface_hq"
    needed = [data / d for d in ("identities_512", "celeba_hq_1024", "att_faces_lowres",
                                 "unaligned_named")]
    missing = [str(p) for p in needed if not p.is_dir()]
    if missing:
        return f"skipped: missing {', '.join(missing)}"
    t0 = time.perf_counter()
    config = BuildConfig(
        sources=[
            FolderSource(str(needed[0]), identity="folder", folder_level=0, include=IDENTITIES),
            FolderSource(str(needed[1]), include=r"^src/female/"),
            FolderSource(str(needed[2]), identity="folder", folder_level=1, include=r"/s1/"),
            FolderSource(str(needed[3]), identity="regex", pattern=r"train/([^/]+)/|(obama|biden)"),
        ],
        out=str(out / "dataset"), transform_size=1024, progress=False, musiq="auto")
    stats = build(config)
    problems = verify(config.out)
    exported = export(config.out, out / "export", shard_rows=200)
    man = load_manifest(config.out)
    dropped = Counter()
    for reasons in stats["dropped"].values():
        dropped.update(reasons)
    return (f"{stats['photos_in']} photos -> {stats['faces_kept']} aligned faces of "
            f"{stats['identities']} identities (train {stats['splits']['train']['faces']}, test "
            f"{stats['splits']['test']['faces']}); dropped "
            + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
            + f"; verify {'OK' if not problems else f'{len(problems)} problems'}; "
            f"export {sum(len(v) for v in exported['parquet'].values())} parquet + "
            f"{sum(len(v) for v in exported['webdataset'].values())} tar shards; "
            f"{man.identity.nunique()} identities in manifest; {time.perf_counter() - t0:.0f}s")
