"""Results folders for the publish, study and browser tests.

``handmade_results`` writes a small store with the store's own schema and real faces from
``identities_512`` (gt.png as GT, degraded.png as LQ, a Gaussian blur of the GT as a
"restorer", conditioning photos as references), with exact control over the cases a
report must show: an unavailable metric with its reason, a dataset metric, a failed run.
``real_results`` runs ``benchmarks.run`` (lq, bicubic and tiny MGFR) on the shared
Reface-HQ test split once per session.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.store import open_store

IDENTITIES = ("00001", "00027", "00049")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / mse) if mse > 0 else 100.0


def handmade_results(root: Path, data_root: Path, identities=IDENTITIES) -> Path:
    """A results folder with runs lq, blur (done) and broken (failed) on 3 real faces."""
    root.mkdir(parents=True, exist_ok=True)
    src = data_root / "identities_512"
    store = open_store(root)
    con = store.con
    for metric, direction, kind in (("psnr", "higher", "image"), ("ids", "higher", "image"),
                                    ("musiq", "higher", "image"), ("fid", "lower", "dataset")):
        con.execute("INSERT OR IGNORE INTO metrics (metric, direction, kind, description) "
                    "VALUES (?, ?, ?, ?)", [metric, direction, kind, metric])
    dataset, dhash = "reface-test", "d" * 16
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    runs = {"lq": "run-lq-0001", "blur": "run-blur-0002", "broken": "run-broken-0003"}
    for i, (restorer, run_id) in enumerate(runs.items()):
        status, reason = ("failed", "restorer raised RuntimeError: out of memory") \
            if restorer == "broken" else ("done", None)
        con.execute(
            "INSERT INTO runs (run_id, restorer, restorer_config, config_hash, dataset, "
            "dataset_hash, degradation_preset, degradation_seed, code_version, packages, "
            "device, started_at, finished_at, status, reason, dataset_config) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, restorer, json.dumps({"name": restorer, "sigma": 2.0}),
             f"cfg{restorer}{i}" * 3, dataset, dhash, "mgfr-medium", 0, "abc1234",
             json.dumps({"torch": "2.x"}), "cpu", t0 + timedelta(minutes=i),
             t0 + timedelta(minutes=i + 1), status, reason,
             json.dumps({"kind": "reface-test", "data": str(src)})])
    for ident in identities:
        gt = src / ident / "gt.png"
        lq = src / ident / "degraded.png"
        refs = sorted((src / ident / "conditioning").glob("*.png"))[:2]
        con.execute("INSERT INTO images (dataset_hash, image_id, identity, lq_path, gt_path, "
                    "ref_paths) VALUES (?, ?, ?, ?, ?, ?)",
                    [dhash, ident, ident, str(lq), str(gt), json.dumps([str(r) for r in refs])])
        gt_arr = np.asarray(Image.open(gt).convert("RGB"))
        for restorer, run_id in runs.items():
            if restorer == "broken":
                continue
            out = root / "outputs" / run_id / f"{ident}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            if restorer == "lq":
                shutil.copyfile(lq, out)
            else:
                Image.open(gt).convert("RGB").filter(ImageFilter.GaussianBlur(2.0)).save(out)
            con.execute("INSERT INTO outputs (run_id, image_id, output_path, seconds, status, "
                        "error) VALUES (?, ?, ?, ?, 'ok', NULL)",
                        [run_id, ident, str(out.relative_to(root)), 0.01])
            arr = np.asarray(Image.open(out).convert("RGB"))
            scores = {"psnr": _psnr(arr, gt_arr),
                      "ids": float(0.9 - 0.1 * IDENTITIES.index(ident)
                                   - (0.2 if restorer == "lq" else 0.0))}
            for metric, value in scores.items():
                con.execute("INSERT INTO image_scores (run_id, image_id, metric, value, status, "
                            "reason, embedder) VALUES (?, ?, ?, ?, 'ok', NULL, ?)",
                            [run_id, ident, metric, value,
                             "dlib" if metric == "ids" else None])
            con.execute("INSERT INTO image_scores (run_id, image_id, metric, value, status, "
                        "reason, embedder) VALUES (?, ?, 'musiq', NULL, 'unavailable', ?, NULL)",
                        [run_id, ident, "MUSIQ weights not found (musiq_koniq_ckpt.pth)"])
    for restorer, run_id in runs.items():
        if restorer != "broken":
            con.execute("INSERT INTO dataset_scores (run_id, metric, value, status, reason, "
                        "n_images) VALUES (?, 'fid', NULL, 'unavailable', ?, ?)",
                        [run_id, "FID Inception weights not found", len(identities)])
    con.close()
    return root


_REAL: dict[str, Path] = {}
#: What the real run scores: cheap offline metrics, plus two whose weights no test machine
#: has, so the report's "unavailable" path is exercised on a real run.
REAL_METRICS = ["psnr", "ssim", "ids", "lpips", "fid"]
#: Faces restored: tiny MGFR takes seconds per face on CPU, so a few.
REAL_LIMIT = 3
REAL_RESTORERS = ["bicubic", "lq", "mgfr"]


def real_results(dataset: Path, base: Path) -> Path:
    """``benchmarks.run`` of lq, bicubic and MGFR on the Reface-HQ test split, once a session.

    MGFR is the ``tiny`` preset (random-init prior) with untrained adapters, 2 steps: a
    pipeline check of the whole flow, not a model that restores anything.
    """
    key = str(dataset)
    if key not in _REAL:
        from benchmarks.run import run_benchmark
        from mgfr.base import load_base
        from mgfr.model import MGFRModel
        adapters = base / "real_results_adapters"
        if not (adapters / "mgfr_adapters.json").is_file():
            MGFRModel.from_base(load_base("tiny", seed=0)).save_adapters(
                adapters, base="tiny", stage=1, step=0)
        out = base / "real_results"
        summaries = run_benchmark(
            ["lq", "bicubic", f"mgfr:adapters={adapters},steps=2,prompt=a face"],
            "reface-test", str(dataset), out=out, metrics=REAL_METRICS, limit=REAL_LIMIT,
            progress=False)
        if [s.status for s in summaries] != ["done"] * 3:
            raise RuntimeError(f"benchmark run did not finish: {summaries}")
        _REAL[key] = out
    return _REAL[key]


#: the clip whose name carries markup: every page must show it as text
VIDEO_ODD_CLIP = "syn<i>&1"
VIDEO_FRAMES = 8
VIDEO_METHODS = ["lq", "bicubic"]
_VIDEO: dict[str, Path] = {}


def video_results(data_root: Path, base: Path) -> Path:
    """``benchmarks.run --dataset video`` (lq, bicubic; first 8 frames) on real_1 and on
    synthetic_1 under a name with markup in it, whose GT clip is itself; once a session."""
    key = str(data_root)
    if key not in _VIDEO:
        from benchmarks.run import main
        data = base / "video_data"
        (data / "gt").mkdir(parents=True, exist_ok=True)
        for link, target in (("real_1.mp4", "real_1.mp4"),
                             (f"{VIDEO_ODD_CLIP}.mp4", "synthetic_1.mp4"),
                             (f"gt/{VIDEO_ODD_CLIP}.mp4", "synthetic_1.mp4")):
            if not (data / link).exists():
                (data / link).symlink_to(data_root / "video" / target)
        out = base / "video_results"
        code = main(["--dataset", "video", "--data", str(data), "--methods",
                     ",".join(VIDEO_METHODS), "--dataset-option", f"frames={VIDEO_FRAMES}",
                     "--out", str(out), "-q"])
        if code != 0:
            raise RuntimeError(f"video benchmark exited {code}")
        _VIDEO[key] = out
    return _VIDEO[key]
