"""benchmarks.publish: leaderboard files equal the store's leaderboard view; the report is
self-contained; bad input is refused with one line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from publish_support import REAL_LIMIT, REAL_RESTORERS, handmade_results, real_results

from benchmarks import publish as P
from benchmarks.store import open_store

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def handmade(data_root, tmp_path_factory) -> Path:
    return handmade_results(tmp_path_factory.mktemp("results") / "res", data_root)


@pytest.fixture(scope="module")
def site(handmade, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    assert P.main(["-i", str(handmade), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def view_rows(results: Path) -> list[dict]:
    with open_store(results, read_only=True) as store:
        return store.query("SELECT l.* FROM leaderboard l JOIN runs r USING (run_id) "
                           "WHERE r.status = 'done'")


def check_csv_equals_view(site: Path, results: Path) -> int:
    """Every number of every leaderboard CSV against the view; returns cells compared."""
    view = view_rows(results)
    by_key = {(r["run_id"], r["metric"]): r for r in view}
    compared = 0
    csvs = sorted((site / "leaderboards").glob("*.csv"))
    if not csvs:
        raise AssertionError("no leaderboard CSV written")
    seen_runs = set()
    for path in csvs:
        header, rows = read_csv(path)
        assert header[:5] == ["dataset", "dataset_hash", "restorer", "run_id", "config_hash"]
        metric_cols = [(c, re.fullmatch(r"(.+) \((higher|lower)\)", c)) for c in header[5:]]
        metric_cols = [(c, m.group(1), m.group(2)) for c, m in metric_cols if m]
        assert metric_cols, header
        for row in rows:
            seen_runs.add(row["run_id"])
            for col, metric, direction in metric_cols:
                v = by_key[(row["run_id"], metric)]
                assert v["direction"] == direction
                assert v["dataset"] == row["dataset"] and v["config_hash"] == row["config_hash"]
                assert int(row[f"{metric} n_scored"]) == v["n_scored"]
                assert int(row[f"{metric} n_unavailable"]) == v["n_unavailable"]
                if v["value"] is None:
                    assert row[col] == ""
                else:
                    assert float(row[col]) == round(v["value"], P.DECIMALS), (col, row)
                    assert row[col] == f"{round(v['value'], P.DECIMALS):.{P.DECIMALS}f}"
                compared += 1
    assert seen_runs == {r["run_id"] for r in view}
    return compared


def test_csv_numbers_equal_the_leaderboard_view(site, handmade):
    assert check_csv_equals_view(site, handmade) == 2 * 4  # 2 done runs x 4 metrics


@pytest.mark.slow
def test_publishing_a_real_benchmark_run(identities_dataset, tmp_path_factory, tmp_path):
    """benchmarks.run (lq, bicubic, tiny MGFR) on the Reface-HQ test split, then publish."""
    results = real_results(identities_dataset, tmp_path_factory.getbasetemp())
    out = tmp_path / "site"
    assert P.main(["-i", str(results), "--out", str(out)]) == 0
    assert check_csv_equals_view(out, results) == 3 * 5  # 3 runs x 5 metrics
    (csv_path,) = (out / "leaderboards").glob("*.csv")
    _, rows = read_csv(csv_path)
    assert [r["restorer"] for r in rows] == REAL_RESTORERS
    assert all(r["psnr n_scored"] == str(REAL_LIMIT) for r in rows)
    assert all(r["lpips (lower)"] == "" and r["lpips n_unavailable"] == str(REAL_LIMIT)
               for r in rows)
    md = csv_path.with_suffix(".md").read_text()
    assert (f"- lpips (bicubic: {REAL_LIMIT} images, lq: {REAL_LIMIT} images, "
            f"mgfr: {REAL_LIMIT} images): pretrained asset") in md
    page = (out / csv_path.with_suffix(".html").name).read_text()
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    # Grid: LQ, 3 restorers and GT with eye and mouth crops, plus the references.
    assert sum("-eyes.png" in s for s in srcs) == 5 * min(REAL_LIMIT, 6)
    for src in srcs:
        assert (out / src).is_file(), src


def test_csv_layout_is_stable_and_documented(site):
    header, rows = read_csv(site / "leaderboards" / "reface-test.csv")
    # Documented order: id columns, then per metric in METRIC_ORDER the value with its
    # direction and the two counts; rows by restorer.
    assert header == ["dataset", "dataset_hash", "restorer", "run_id", "config_hash",
                      "psnr (higher)", "psnr n_scored", "psnr n_unavailable",
                      "ids (higher)", "ids n_scored", "ids n_unavailable",
                      "fid (lower)", "fid n_scored", "fid n_unavailable",
                      "musiq (higher)", "musiq n_scored", "musiq n_unavailable"]
    assert [r["restorer"] for r in rows] == ["blur", "lq"]  # the failed run is not ranked
    assert rows[0]["musiq (higher)"] == "" and rows[0]["musiq n_unavailable"] == "3"


def test_parquet_and_markdown_hold_the_same_table(site, handmade):
    table = pd.read_parquet(site / "leaderboards" / "reface-test.parquet")
    header, rows = read_csv(site / "leaderboards" / "reface-test.csv")
    assert list(table.columns) == header
    view = {(r["run_id"], r["metric"]): r["value"] for r in view_rows(handmade)}
    for rec in table.to_dict("records"):
        # Parquet keeps full precision.
        assert rec["psnr (higher)"] == pytest.approx(view[(rec["run_id"], "psnr")], abs=1e-12)
        assert np.isnan(rec["musiq (higher)"])
    md = (site / "leaderboards" / "reface-test.md").read_text()
    for row in rows:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['restorer']} | `"))
        assert row["psnr (higher)"] in line and row["ids (higher)"] in line and "n/a" in line
    assert "- musiq (blur: 3 images, lq: 3 images): MUSIQ weights not found" in md
    assert "- fid (blur, lq): FID Inception weights not found" in md


def test_report_is_self_contained_and_complete(site, handmade):
    index = (site / "index.html").read_text()
    page = (site / "reface-test.html").read_text()
    for run_id in ("run-lq-0001", "run-blur-0002", "run-broken-0003"):  # provenance of all
        assert run_id in index
    assert "out of memory" in index and "mgfr-medium" in index and "abc1234" in index
    for text in (index, page):
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "network reference"
        assert "<script src" not in text and "<link" not in text
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    # 3 faces x (LQ, blur, lq, GT with 2 crops each + 2 references), 2 bar plots, 1 scatter
    assert len(srcs) == 3 * (4 * 3 + 2) + 3
    for src in srcs:
        f = (site / src).resolve()
        assert f.is_file() and site.resolve() in f.parents, src
    assert 'class="sortable leaderboard"' in page and "data-sort=" in page
    assert (site / P.SITE_MARKER).is_file()


def test_crop_boxes_hold_the_template_eyes_and_mouth():
    from faces.alignment import ffhq_template
    for size in (128, 256, 512):
        pts = ffhq_template(size)
        boxes = P.crop_boxes(size, size)
        for name, idx in (("eyes", (0, 1)), ("mouth", (3, 4))):
            x0, y0, x1, y1 = boxes[name]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            for i in idx:
                assert x0 < pts[i][0] < x1 and y0 < pts[i][1] < y1, (size, name)
        assert boxes["eyes"][3] < boxes["mouth"][1] + 0.05 * size  # eyes above the mouth


def test_names_from_the_store_are_escaped(handmade, tmp_path):
    import shutil
    res = tmp_path / "res"
    shutil.copytree(handmade, res)
    with open_store(res) as store:
        store.con.execute("UPDATE runs SET restorer = '<img src=x onerror=alert(1)>|x' "
                          "WHERE run_id = 'run-blur-0002'")
    out = tmp_path / "site"
    assert P.main(["-i", str(res), "--out", str(out)]) == 0
    page = (out / "reface-test.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;|x" in page
    md = (out / "leaderboards" / "reface-test.md").read_text()
    # Escaped for HTML (renderers pass it through) and the pipe cannot split the cell.
    assert "| &lt;img src=x onerror=alert(1)&gt;\\|x | `run-blur-0002`" in md


def test_republish_replaces_its_own_site_only(handmade, tmp_path, capsys):
    out = tmp_path / "site"
    assert P.main(["-i", str(handmade), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from an older publish")
    assert P.main(["-i", str(handmade), "--out", str(out)]) == 0
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]  # no leftovers

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    capsys.readouterr()
    assert P.main(["-i", str(handmade), "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "did not write" in err and err.count("\n") == 1
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_bad_results_folder_is_one_line_error(tmp_path, capsys):
    assert P.main(["-i", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("error: --input")
    (tmp_path / "empty").mkdir()
    assert P.main(["-i", str(tmp_path / "empty"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "no results.duckdb" in err and err.count("\n") == 1
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.duckdb").write_bytes(b"not a database at all" * 100)
    assert P.main(["-i", str(tmp_path / "junk"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_benchmarks_cli_has_publish(handmade, tmp_path):
    from benchmarks.cli import main
    assert main(["publish", "-i", str(handmade), "--out", str(tmp_path / "s")]) == 0
    assert json.loads(json.dumps(sorted(p.name for p in (tmp_path / "s").iterdir())))


def test_one_board_per_dataset_content(handmade, tmp_path):
    """Two runs on a dataset of the same name but other content never share a table."""
    import shutil
    res = tmp_path / "res"
    shutil.copytree(handmade, res)
    with open_store(res) as store:
        store.con.execute("INSERT INTO runs SELECT * REPLACE ('run-lq-seed1' AS run_id, "
                          "'e' || repeat('0', 15) AS dataset_hash, 1 AS degradation_seed) "
                          "FROM runs WHERE run_id = 'run-lq-0001'")
        store.con.execute("INSERT INTO image_scores SELECT * REPLACE ('run-lq-seed1' AS run_id, "
                          "value + 1 AS value) FROM image_scores WHERE run_id = 'run-lq-0001'")
    out = tmp_path / "site"
    assert P.main(["-i", str(res), "--out", str(out)]) == 0
    boards = sorted(p.name for p in (out / "leaderboards").glob("*.csv"))
    assert boards == ["reface-test-dddddddd.csv", "reface-test-e0000000.csv"]
    _, rows = read_csv(out / "leaderboards" / "reface-test-e0000000.csv")
    assert [r["run_id"] for r in rows] == ["run-lq-seed1"]
    assert check_csv_equals_view(out, res) == 2 * 4 + 1 * 3  # the copy has no FID row
    index = (out / "index.html").read_text()
    assert 'href="reface-test-dddddddd.html"' in index and 'href="reface-test-e0000000.html"' in index


@pytest.mark.realdata
def test_note_is_shown_escaped_on_every_page(tmp_path, data_root):
    results = handmade_results(tmp_path / "results", data_root)
    summary = P.publish(results, tmp_path / "site", note="tiny <b>check</b> & more")
    for page in (tmp_path / "site").glob("*.html"):
        text = page.read_text()
        assert "tiny &lt;b&gt;check&lt;/b&gt; &amp; more" in text, page.name
    assert summary["index"].endswith("index.html")
