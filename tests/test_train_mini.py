"""scripts/train_mini.py's extra-faces steps: the listed photos (checked by sha256, fetched
only when asked, written atomically) and the combined build (held-out split kept, extra
people train, refused when an extra person looks like a held-out one)."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, load_script


@pytest.fixture(scope="module")
def tm():
    return load_script("scripts/train_mini.py")


def test_the_shipped_list_names_every_extra_face_once_with_its_source(tm):
    rows = tm.extra_faces()
    assert len(rows) == 402
    assert len({r["file"] for r in rows}) == len(rows)
    assert len({r["sha256"] for r in rows}) == len(rows)
    people = {tuple(r["file"].split("/")[:2]) for r in rows}
    assert len(people) == 35
    for r in rows:
        assert len(r["commit"]) == 40 and len(r["sha256"]) == 64
        assert r["repository"].count("/") == 1 and r["path"]
    # The recipe's config names the list it trains on.
    assert "mini-extra-faces.csv" in (REPO / "mgfr/configs/mini-stage2-more.yaml").read_text()


@pytest.fixture
def small_list(tm, tmp_path, monkeypatch, file_server):
    """Two photos served from a loopback server, listed like the shipped list."""
    srv, base = file_server
    payloads = {"a b/1.jpg": b"first photo" * 50, "c/2.jpg": b"second photo" * 50}
    rows = []
    for k, (path, data) in enumerate(payloads.items()):
        f = srv / "o/r/c0ffee" / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        rows.append({"file": f"src/person{k}/{k}.jpg", "repository": "o/r", "commit": "c0ffee",
                     "path": path, "sha256": hashlib.sha256(data).hexdigest()})
    listed = tmp_path / "list.csv"
    with listed.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    monkeypatch.setattr(tm, "EXTRA_LIST", listed)
    return rows, base + "/{repository}/{commit}/{path}", srv


def test_fetch_downloads_what_is_missing_checks_sha256_and_resumes(tm, small_list, tmp_path):
    rows, url, srv = small_list
    dest = tmp_path / "extra"
    assert len(tm.missing_extra_faces(dest)) == 2
    assert tm.fetch_extra_faces(dest, url=url) == 2
    assert tm.missing_extra_faces(dest) == []
    assert not list(dest.rglob(".*tmp*"))
    assert tm.fetch_extra_faces(dest, url=url) == 0           # a rerun fetches nothing
    # Other bytes on disk count as missing; other bytes on the server are refused.
    (dest / rows[0]["file"]).write_bytes(b"edited")
    assert [r["file"] for r in tm.missing_extra_faces(dest)] == [rows[0]["file"]]
    (srv / "o/r/c0ffee/a b/1.jpg").write_bytes(b"tampered")
    with pytest.raises(SystemExit, match=r"error: .*does not have the listed sha256 of src/person0"):
        tm.fetch_extra_faces(dest, url=url)
    assert (dest / rows[0]["file"]).read_bytes() == b"edited"  # nothing half-written


def test_fetch_failure_names_the_photo_and_its_url(tm, small_list, tmp_path):
    rows, url, _ = small_list
    with pytest.raises(SystemExit, match=r"error: cannot download src/person0/0\.jpg from "
                                         r"http://127\.0\.0\.1:\d+/o/r/c0ffee/nope/a%20b/1\.jpg "
                                         r"\(File not found\)"):
        tm.fetch_extra_faces(tmp_path / "x", url=url.replace("{path}", "nope/{path}"))


def test_missing_extra_faces_is_one_error_line_and_exit_2(tm, small_list, tmp_path, capsys,
                                                          data_root_or_dummy):
    code = tm.main(["--data", str(data_root_or_dummy), "--work", str(tmp_path / "w"),
                    "--extra-faces", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --extra-faces ") and "lacks 2 of the 2" in err[0]
    assert "o/r@c0ffee:a b/1.jpg" in err[0] and "--fetch-extra-faces" in err[0]
    assert not (tmp_path / "w").exists()


@pytest.fixture
def data_root_or_dummy(tmp_path):
    d = tmp_path / "data"
    (d / "identities_512").mkdir(parents=True)
    return d


def _build(root, people, split, rng, centre=None):
    rows = []
    for p in people:
        c = rng.normal(size=8) if centre is None else centre[p]
        for k in range(3):
            rel = f"images/{split}/{p}-{k}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(f"{p}{k}".encode())
            rows.append({"face_id": f"{root.name}-{p}-{k}", "image_path": rel, "identity": p,
                         "identity_hint": p, "split": split,
                         "embedding": (c + 0.01 * rng.normal(size=8)).tolist()})
    return rows


def test_combine_keeps_the_held_out_split_and_makes_every_extra_face_train(tm, tmp_path):
    rng = np.random.default_rng(0)
    base, extra = tmp_path / "base", tmp_path / "extra"
    base.mkdir()
    extra.mkdir()
    pd.DataFrame(_build(base, ["a", "b"], "train", rng) + _build(base, ["t"], "test", rng)
                 ).to_parquet(base / "manifest.parquet")
    # The extra build put a person in test (its own split); the combination overrides it.
    pd.DataFrame(_build(extra, ["x", "y"], "test", rng)).to_parquet(extra / "manifest.parquet")
    counts = tm.combine(base, extra, tmp_path / "both")
    assert counts == {"train": {"faces": 12, "identities": 4}, "test": {"faces": 3, "identities": 1}}
    m = pd.read_parquet(tmp_path / "both/manifest.parquet")
    assert set(m[m.split == "test"].identity) == {"t"}
    assert set(m[m.identity.str.startswith("extra-")].identity) == {"extra-x", "extra-y"}
    for rel in m.image_path:
        assert (tmp_path / "both" / rel).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".both.")]


def test_combine_refuses_an_extra_person_who_looks_held_out(tm, tmp_path):
    rng = np.random.default_rng(1)
    base, extra = tmp_path / "base", tmp_path / "extra"
    base.mkdir()
    extra.mkdir()
    centres = {"a": rng.normal(size=8), "t": rng.normal(size=8)}
    pd.DataFrame(_build(base, ["a"], "train", rng, centres) + _build(base, ["t"], "test", rng, centres)
                 ).to_parquet(base / "manifest.parquet")
    # "z" of the extra faces is the held-out "t" under another name.
    pd.DataFrame(_build(extra, ["z"], "train", rng, {"z": centres["t"]})
                 ).to_parquet(extra / "manifest.parquet")
    with pytest.raises(SystemExit, match="error: an extra person looks like a held-out one"):
        tm.combine(base, extra, tmp_path / "both")
    assert not (tmp_path / "both").exists()
