"""The degradations step of the end-to-end demo, on the real photos."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def run_demo(data: Path, out: Path) -> str:
    """Degrade the HQ faces of ``data/identities_512`` (``*/gt.png``) and check the results.

    1. ``synth`` with the ``gfpgan`` preset from a manifest of the faces: LQ images,
       per-image records and ``params.parquet`` under ``out/degradations/gfpgan``;
    2. replay every record and compare bytes;
    3. run the batched front end on the same faces and compare with the per-image bytes;
    4. mean PSNR against HQ of each MGFR level.
    """
    import pandas as pd
    import torch

    from reface_core.imageio import load_image

    from .ops import to_tensor, to_uint8
    from .pipeline import BatchDegrader, Degrader
    from .synth import pixel_sha256, synth

    t0 = time.perf_counter()
    gts = sorted(Path(data, "identities_512").glob("*/gt.png"))
    if not gts:
        raise FileNotFoundError(f"no identities_512/*/gt.png faces under {data}")
    root = Path(out, "degradations")
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "hq_faces.csv"
    pd.DataFrame({"face_id": [p.parent.name for p in gts],
                  "image_path": [str(p.resolve()) for p in gts]}).to_csv(manifest, index=False)
    counts = synth(manifest, root / "gfpgan", preset="gfpgan", seed=0, workers=2, progress=False)

    table = pd.read_parquet(root / "gfpgan" / "params.parquet")
    hq = {p.parent.name: load_image(p) for p in gts}
    replayed = 0
    for _, row in table[table["status"] == "ok"].iterrows():
        lq = Degrader.replay(hq[row["image_id"]], json.loads(row["record"]))
        replayed += pixel_sha256(lq) == row["lq_sha256"]

    ids = list(hq)
    batch, _ = BatchDegrader("gfpgan")(torch.cat([to_tensor(hq[i]) for i in ids]), seed=0, image_ids=ids)
    same = sum(pixel_sha256(to_uint8(batch[n])) == table.set_index("image_id").loc[i, "lq_sha256"]
               for n, i in enumerate(ids))

    levels = {}
    for name in ("mgfr-mild", "mgfr-medium", "mgfr-severe", "mgfr-negative"):
        deg = Degrader(name)
        levels[name] = np.mean([_psnr(img, deg(img, seed=0, image_id=i)[0]) for i, img in hq.items()])
    psnrs = "/".join(f"{v:.1f}" for v in levels.values())
    return (f"{counts['total']} faces -> gfpgan LQ + params.parquet in {root / 'gfpgan'} "
            f"({counts['ok']} new, {counts['skipped']} already done, {counts['error']} failed); "
            f"replay exact {replayed}/{len(table)}; batched == per-image {same}/{len(ids)}; "
            f"mean PSNR mild/medium/severe/negative {psnrs} dB ({time.perf_counter() - t0:.0f} s)")
