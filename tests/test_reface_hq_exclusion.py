"""Removal requests: an exclusion entry matches its photo however the path is spelled,
every entry that matches nothing is reported, and origins are unique per source."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

# the pipeline tests' dataset, written by the real writer
import test_reface_hq_pipeline
from conftest import make_rgb

from reface_core.imageio import save_image
from reface_hq.build import is_excluded
from reface_hq.exclusion import matched_entries
from reface_hq.sources import FolderSource
from reface_hq.stages import Decode

synthetic_dataset = test_reface_hq_pipeline.synthetic_dataset  # a shared fixture

@pytest.fixture
def celebs(tmp_path, monkeypatch):
    for person in ("00001", "00002"):
        save_image(tmp_path / "photos" / "celebs" / person / "gt.png",
                   make_rgb(200, 160, seed=int(person)))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "photos" / "celebs"


@pytest.mark.parametrize("spelling", ["photos/celebs/00001/gt.png", "./photos/celebs/00001/gt.png",
                                      "ABSOLUTE", "celebs/00001/gt.png"])
def test_decode_excludes_a_path_however_it_is_spelled(celebs, spelling):
    entry = str(celebs / "00001" / "gt.png") if spelling == "ABSOLUTE" else spelling
    from reface_hq.exclusion import expand
    rows = FolderSource("photos/celebs").rows()
    out = {r["origin"]: r["status"] for r in Decode(exclusion=expand([entry]))(rows)}
    assert out == {"celebs/00001/gt.png": "excluded", "celebs/00002/gt.png": "ok"}


def test_manifest_rows_match_by_file_content_when_the_layout_is_unknown(celebs):
    # verify and export see only the manifest (origin, hashes): a path to the file still
    # on disk matches by its bytes, even through another folder name
    sha = hashlib.sha256((celebs / "00001" / "gt.png").read_bytes()).hexdigest()
    row = {"origin": "renamed/00001/gt.png", "sha256": sha}
    assert is_excluded(row, {str(celebs / "00001" / "gt.png")})
    assert not is_excluded(row, {str(celebs / "00002" / "gt.png")})
    assert not is_excluded(row, {"celebs/00001/other.png"})


def test_entries_that_match_nothing_are_found(celebs):
    rows = Decode()(FolderSource("photos/celebs").rows())
    entries = {"photos/celebs/00001/gt.png", "photos/celebs/0001/gt.png", "a" * 64}
    assert matched_entries(rows, entries) == {"photos/celebs/00001/gt.png"}


def test_named_sources_with_the_same_folder_name_have_distinct_origins(tmp_path):
    for d in ("a/photos", "b/photos"):
        save_image(tmp_path / d / "x.png", make_rgb(40, 40))
    a = FolderSource(str(tmp_path / "a" / "photos")).rows()
    b = FolderSource(str(tmp_path / "b" / "photos"), name="photos_b").rows()
    assert a[0]["origin"] == "photos/x.png" and b[0]["origin"] == "photos_b/x.png"
    # the entry for one source's photo does not remove the other's
    assert not is_excluded(b[0], {"photos/x.png"})


def test_verify_and_export_warn_on_every_entry_that_matches_nothing(synthetic_dataset, tmp_path,
                                                                   capsys):
    from reface_hq.cli import main
    root, _ = synthetic_dataset
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    victim = rows[0]["origin"]
    lst = tmp_path / "removal.txt"
    lst.write_text(f"{victim}\nnobody/nothing.png\n")
    assert main(["verify", str(root), "--exclude", str(lst)]) == 1
    err = capsys.readouterr().err
    assert f"problem: {rows[0]['face_id']}: on the exclusion list" in err
    assert "warning: exclusion entry 'nobody/nothing.png' matches no photo" in err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and victim not in warned[0]
    assert main(["export", str(root), "--out", str(tmp_path / "exp"), "--exclude", str(lst),
                 "--format", "parquet"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: exclusion entry") == 1 and "nobody/nothing.png" in err
    origins = {r["origin"] for p in (tmp_path / "exp" / "data").glob("*.parquet")
               for r in pq.read_table(p, columns=["origin"]).to_pylist()}
    assert victim not in origins and len(origins) == len(rows) - 1


def test_verify_failure_convention_matches_the_docs(synthetic_dataset, tmp_path, capsys):
    """A check that finds problems prints `problem:` lines and exits 1 (docs say so);
    exporting a dataset that fails verify is an input error: one `error:` line, exit 2."""
    from pathlib import Path

    from reface_hq.cli import main
    root, _ = synthetic_dataset
    docs = (Path(__file__).parents[1] / "docs" / "reface_hq.md").read_text()
    assert "`verify` itself is a check: it prints one `problem: ...` line" in docs
    assert "exits 1 (0 when the dataset is sound)" in docs
    next(root.glob("images/*/*.png")).unlink()
    assert main(["verify", str(root)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("problem: ") and "error:" not in err and "1 problems" in out
    code = main(["export", str(root), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "fails verify" in err
