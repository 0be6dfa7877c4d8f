"""Hardening round 3 (issue 24) in the benchmark and publishing: every dataset kind
publishes, a metric error is one image's row, exit codes, bounded method options, outputs
inside inputs, names that are not UTF-8, duplicate outputs, infinite PSNR, formula cells."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import metrics as M
from benchmarks import publish as P
from benchmarks import restorers as R
from benchmarks import run as B
from benchmarks.store import open_store
from reface_core.imageio import save_image

ROOT = Path(__file__).resolve().parent.parent
IDS = ("00001", "00027", "00049")


def _paired(data_root: Path, root: Path, refs: bool = True) -> Path:
    src = data_root / "identities_512"
    for ident in IDS:
        for sub, name in (("lq", "degraded.png"), ("gt", "gt.png")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / ident / name, root / sub / f"{ident}.png")
        if refs:
            (root / "ref" / ident).mkdir(parents=True)
            for r in sorted((src / ident / "conditioning").glob("*.png"))[:2]:
                shutil.copy(r, root / "ref" / ident / r.name)
    return root


def _scores(out: Path) -> dict:
    with open_store(out, read_only=True) as s:
        return {(r["image_id"], r["metric"]): r for r in s.query("SELECT * FROM image_scores")}


# --- item 1: publish every dataset kind, from a real run of each --------------------------
@pytest.mark.realdata
@pytest.mark.slow
def test_publish_every_dataset_kind_from_a_real_run(data_root, tmp_path, capsys):
    paired = _paired(data_root, tmp_path / "paired")
    lq_only = tmp_path / "lq_only"
    lq_only.mkdir()
    for ident in IDS:
        shutil.copy(data_root / "identities_512" / ident / "degraded.png", lq_only / f"{ident}.png")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(next((data_root / "unaligned_named").rglob("obama-480p.jpg")), photos / "one.jpg")
    out = tmp_path / "results"
    for dataset, data, options in (("paired", paired, []), ("lq-only", lq_only, []),
                                   ("photos", photos, ["--dataset-option", "size=128"])):
        rc = B.main(["--methods", "lq,bicubic", "--dataset", dataset, "--data", str(data),
                     "--out", str(out), "--metrics", "psnr,ssim,niqe-skvideo", "-q", *options])
        assert rc == 0, dataset
    with open_store(out, read_only=True) as s:
        seeds = {r["dataset"]: r["degradation_seed"] for r in s.query("SELECT * FROM runs")}
    assert seeds == {"paired": None, "lq-only": None, "photos": None}
    capsys.readouterr()
    site = tmp_path / "site"
    old = os.umask(0o022)
    try:
        assert P.main(["-i", str(out), "-o", str(site), "-q"]) == 0
    finally:
        os.umask(old)
    assert capsys.readouterr().out == ""  # -q
    # item 11: the site folder follows the umask (was 0700 from a temporary folder)
    assert stat.S_IMODE(site.stat().st_mode) == 0o755
    index = (site / "index.html").read_text()
    # item 11: every dataset's leaderboard is on the overview, with its values
    for n, dataset in enumerate(("lq-only", "paired", "photos"), 1):
        assert f'id="leaderboard-{n}"' in index
        assert f"Leaderboard: <a href=\"{dataset}.html\">" in index
    board = P.read_results(out).leaderboard
    psnr_lq = board[(board["dataset"] == "paired") & (board["restorer"] == "lq")
                    & (board["metric"] == "psnr")]["value"].iloc[0]
    assert P.format_value(psnr_lq) in index
    for dataset in ("paired", "lq-only", "photos"):
        assert (site / f"leaderboards/{dataset}.csv").is_file()
        assert (site / f"{dataset}.html").is_file()


# --- item 2: one metric error is one image's row ------------------------------------------
@pytest.mark.realdata
def test_a_metric_exception_is_a_failed_row_and_exit_1(data_root, tmp_path, monkeypatch, capsys):
    paired = _paired(data_root, tmp_path / "paired", refs=False)
    out = tmp_path / "results"
    # size=1: BRISQUE's OpenCV resize raised cv2.error, which ended the run (issue 24).
    # With its minimum size dropped, that error must become a failed row.
    monkeypatch.setattr(M.BRISQUEPypi, "min_size", 1)
    rc = B.main(["--methods", "bicubic:size=1", "--dataset", "paired", "--data", str(paired),
                 "--out", str(out), "--metrics", "psnr,brisque-pypi", "-q"])
    text = capsys.readouterr().out
    assert rc == 1
    rows = _scores(out)
    assert len(rows) == 6
    for ident in IDS:
        r = rows[(ident, "brisque-pypi")]
        assert r["status"] == "failed" and "error" in r["reason"], r
        assert rows[(ident, "psnr")]["status"] == "unavailable"  # 1x1 output vs 512 GT
    assert "3 scores failed" in text
    with open_store(out, read_only=True) as s:
        assert [r["status"] for r in s.query("SELECT status FROM runs")] == ["done"]


@pytest.mark.realdata
def test_every_metric_states_its_smallest_input(data_root, tmp_path):
    paired = _paired(data_root, tmp_path / "paired", refs=False)
    out = tmp_path / "results"
    # lmd gave 0.0 (the best score) on 1x1 images; BRISQUE raised cv2.error
    (res,) = B.run_benchmark("bicubic:size=1", "paired", str(paired), out=out,
                             metrics=["lmd", "brisque-pypi", "ssim"], progress=False)
    assert res.status == "done"
    rows = _scores(out)
    for ident in IDS:
        for metric, need in (("lmd", 32), ("brisque-pypi", 16), ("ssim", 11)):
            r = rows[(ident, metric)]
            assert r["status"] == "unavailable" and r["value"] is None
            assert f"at least {need} px" in r["reason"]
    for name in M.list_metrics():
        m = M.create_metric(name)
        assert isinstance(m.min_size, int) and m.min_size >= 1


# --- item 3: exit codes ---------------------------------------------------------------------
@pytest.mark.realdata
def test_failed_images_exit_1(data_root, tmp_path, capsys):
    paired = _paired(data_root, tmp_path / "paired", refs=False)
    method = tmp_path / "method"
    shutil.copytree(paired / "gt", method)
    (method / "00027.png").unlink()  # a folder method missing a file
    rc = B.main(["--methods", f"folder:dir={method}", "--dataset", "paired", "--data",
                 str(paired), "--out", str(tmp_path / "r"), "--metrics", "psnr", "-q"])
    assert rc == 1
    assert "1 of 3 images failed" in capsys.readouterr().out


@pytest.mark.parametrize("option, message", [
    ("steps=-1", "steps must be a whole number in [1, 1000]"),
    ("steps=2.5", "steps must be a whole number"),
    ("guidance_scale=nan", "guidance_scale must be a finite number"),
    ("lambda_na=-1", "lambda_na must be a finite number in [0, 100]"),
    ("lambda_nq=inf", "lambda_nq must be a finite number"),
    ("use_references=maybe", "use_references must be true or false"),
    ("seed=-1", "seed must be a whole number"),
    ("rca_scale=-2", "rca_scale must be a finite number in [0, 100]"),
])
def test_mgfr_options_are_checked_before_any_work(tmp_path, capsys, option, message):
    data = tmp_path / "lq"
    data.mkdir()
    save_image(data / "a.png", np.full((64, 64, 3), 128, np.uint8))
    # adapters need not exist: the options are refused before the model would load
    rc = B.main(["--methods", f"mgfr:adapters={tmp_path},{option}", "--dataset", "lq-only",
                 "--data", str(data), "--out", str(tmp_path / "r"), "--metrics", "psnr", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: mgfr: ") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "results.duckdb").exists()


# --- item 4: bounded sizes ------------------------------------------------------------------
@pytest.mark.parametrize("size", ["inf", "1e10", "60000", "1.5", "0", "-3", "nan", "big"])
def test_bicubic_size_is_bounded(size):
    name, options = R.parse_method(f"bicubic:size={size}")
    with pytest.raises(ValueError, match=r"bicubic: size must be a whole number in \[1, 4096\]"):
        R.create_restorer(name, **options)


def test_bicubic_size_within_bounds_is_kept():
    assert R.create_restorer("bicubic", size="64").size == 64
    assert R.create_restorer("bicubic", size="4096").size == 4096


# --- item 5: output inside input ------------------------------------------------------------
@pytest.mark.realdata
def test_results_inside_an_lq_only_folder_are_not_read_as_inputs(data_root, tmp_path):
    data = tmp_path / "faces"
    data.mkdir()
    for ident in IDS[:2]:
        shutil.copy(data_root / "identities_512" / ident / "degraded.png", data / f"{ident}.png")
    out = data / "results"
    counts = []
    for _ in range(3):
        (res,) = B.run_benchmark("bicubic", "lq-only", str(data), out=out, metrics=["psnr"],
                                 progress=False)
        counts.append(res.n_ok)
    assert counts == [2, 2, 2]  # was 2, 6, 18


# --- item 9: smaller ones ---------------------------------------------------------------------
@pytest.mark.realdata
def test_a_file_name_that_is_not_utf8_is_an_item_with_a_percent_id(data_root, tmp_path):
    paired = _paired(data_root, tmp_path / "paired", refs=False)
    bad = os.fsdecode(b"caf\xe9")
    for sub in ("lq", "gt"):
        os.rename(paired / sub / "00001.png", paired / sub / f"{bad}.png")
    out = tmp_path / "results"
    (res,) = B.run_benchmark("lq", "paired", str(paired), out=out, metrics=["psnr"],
                             progress=False)
    assert res.status == "done" and res.n_ok == 3
    with open_store(out, read_only=True) as s:
        ids = {r["image_id"]: r for r in s.query("SELECT * FROM images")}
    assert "caf%E9" in ids
    assert ids["caf%E9"]["lq_path"].startswith("file://")
    from reface_core.fsnames import path_from_text
    assert path_from_text(ids["caf%E9"]["lq_path"]).is_file()
    assert (out / "outputs" / res.run_id / "caf%E9.png").is_file()


def test_folder_method_refuses_two_files_of_one_id(tmp_path):
    save_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_image(tmp_path / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="are both outputs of image id 'a'"):
        R.create_restorer("folder", dir=str(tmp_path))


def test_infinite_psnr_keeps_its_bar(tmp_path):
    # an exact copy has PSNR inf: its mean was dropped (NaN) and its bar hidden as "n/a"
    mean, lo, hi, n = P.mean_ci(np.array([np.inf, np.inf, 30.0]))
    assert mean == np.inf and n == 3
    path = tmp_path / "bars.png"
    stats_rows = [{"run_id": "a", "mean": np.inf, "lo": np.inf, "hi": np.inf, "n": 3},
                  {"run_id": "b", "mean": 21.0, "lo": 20.0, "hi": 22.0, "n": 3}]
    import matplotlib.pyplot as plt
    shown = {}
    real_save = P._save_fig

    def keep(fig, p):
        ax = fig.axes[0]
        shown["heights"] = [b.get_height() for b in ax.patches]
        shown["alpha"] = [b.get_alpha() for b in ax.patches]
        shown["texts"] = [t.get_text() for t in ax.texts]
        real_save(fig, p)
    P._save_fig = keep
    try:
        P.plot_metric_bars(["copy", "lq"], stats_rows, "psnr", "higher", "image", path)
    finally:
        P._save_fig = real_save
        plt.close("all")
    assert path.is_file()
    assert shown["heights"][0] > shown["heights"][1] > 0 and shown["alpha"][0] != 0.0
    assert "+∞" in shown["texts"]


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)",
                                  "\t=1"])
def test_formula_cells_are_neutralised(text):
    assert P.neutralize(text) == "'" + text
    assert P._md_escape(text).startswith("'")
    assert P.neutralize("bicubic") == "bicubic"


@pytest.mark.realdata
def test_csv_from_an_edited_store_has_no_formula(data_root, tmp_path):
    from publish_support import handmade_results
    res = handmade_results(tmp_path / "res", data_root)
    with open_store(res) as s:
        s.con.execute("UPDATE runs SET restorer = '=HYPERLINK(\"http://evil\")' "
                      "WHERE restorer = 'blur'")
    P.publish(res, tmp_path / "site")
    csv = next((tmp_path / "site" / "leaderboards").glob("*.csv")).read_text()
    assert "'=HYPERLINK" in csv and ",=HYPERLINK" not in csv
    md = next((tmp_path / "site" / "leaderboards").glob("*.md")).read_text()
    assert "| '=HYPERLINK" in md


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu:99"], "--device cpu:99: there is one CPU device"),
    (["--wait-lock", "-5"], "argument --wait-lock: must be a number of seconds >= 0"),
    (["--wait-lock", "nan"], "argument --wait-lock: must be a number of seconds >= 0"),
])
def test_device_and_wait_lock_are_checked(tmp_path, capsys, argv, message):
    data = tmp_path / "lq"
    data.mkdir()
    save_image(data / "a.png", np.full((64, 64, 3), 128, np.uint8))
    try:
        rc = B.main(["--methods", "lq", "--dataset", "lq-only", "--data", str(data),
                     "--out", str(tmp_path / "r"), "--metrics", "psnr", "-q", *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_publish_has_quiet():
    out = subprocess.run([sys.executable, "-m", "benchmarks.publish", "-h"], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert re.search(r"-q, --quiet", out.stdout)
