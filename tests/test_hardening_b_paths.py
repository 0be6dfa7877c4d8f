"""Names derived from manifests stay inside their folders: export's tar entries and
Parquet image paths come from plain face ids only, and `captioning annotate` refuses image
paths that are absolute or climb out, as the reface_hq loaders do."""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reface_core.imageio import load_image, save_image


@pytest.fixture
def real_dataset(data_root, tmp_path):
    """A dataset written by the real writer from six real aligned faces of two people."""
    import cv2

    from reface_hq import schema
    from reface_hq.build import BuildConfig
    from reface_hq.dataset import write_dataset
    from reface_hq.identity import IdentityGroup, SplitByIdentity
    from reface_hq.sources import FolderSource
    rng = np.random.default_rng(0)
    rows = []
    for p, person in enumerate(("00001", "00027")):
        centre = rng.normal(size=16)
        photos = sorted((data_root / "identities_512" / person / "conditioning").glob("*.png"))[:3]
        for k, photo in enumerate(photos):
            fid = f"p{p}f{k}-0"
            small = cv2.resize(load_image(photo), (64, 64), interpolation=cv2.INTER_AREA)
            path = save_image(tmp_path / "aligned" / f"{fid}.png", small)
            emb = centre + 0.05 * rng.normal(size=16)
            r = schema.new_row(row_id=fid.split("-")[0], face_id=fid, face_index=0, source="s",
                               origin=str(photo.relative_to(data_root)), identity_hint=f"person{p}",
                               sha256=f"sha-{fid}", pixel_sha256=f"pix-{fid}", phash="0" * 16,
                               embedding=list(emb / np.linalg.norm(emb)), face_size=300.0,
                               sharpness=100.0)
            r.update(aligned_path=str(path), width=512, height=512, embedder="test-embedder",
                     box=[1.0, 2.0, 3.0, 4.0], landmarks5=[[1.0, 2.0]] * 5)
            rows.append(r)
    rows = IdentityGroup(max_distance=0.3, min_photos=2)(rows)
    rows = SplitByIdentity(test_fraction=0.5, seed=0)(rows)
    config = BuildConfig(sources=[FolderSource(str(tmp_path / "aligned"))],
                         out=str(tmp_path / "ds"), progress=False)
    write_dataset(rows, config, timings={}, seconds=0.0)
    return tmp_path / "ds"


def _set_face_id(root, index, value):
    table = pq.read_table(root / "manifest.parquet")
    ids = table.column("face_id").to_pylist()
    ids[index] = value
    table = table.set_column(table.column_names.index("face_id"), "face_id", pa.array(ids, pa.string()))
    pq.write_table(table, root / "manifest.parquet")


@pytest.mark.realdata
@pytest.mark.parametrize("face_id", ["../../escaped", "/tmp/escaped-abs", "a/../../b", "x.png/../.."])
def test_export_refuses_face_ids_that_would_escape(real_dataset, tmp_path, capsys, face_id):
    from reface_hq.cli import main
    _set_face_id(real_dataset, 0, face_id)
    out = tmp_path / "export" / "inner"
    assert main(["export", str(real_dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "face_id" in err, err
    assert not out.exists()  # refused before anything was written
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.realdata
def test_exported_tar_extracts_inside_its_folder(real_dataset, tmp_path):
    from reface_hq.export import export
    out = tmp_path / "export"
    files = export(real_dataset, out, shard_rows=4)
    target = tmp_path / "x" / "y"
    target.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    n = 0
    for rel in files["webdataset"]["train"] + files["webdataset"]["test"]:
        with tarfile.open(out / rel) as tar:
            for m in tar.getmembers():
                assert "/" not in m.name and ".." not in m.name and m.isfile(), m.name
            tar.extractall(target)  # no filter: the names themselves must be safe
            n += len(tar.getmembers())
    new = {p for p in tmp_path.rglob("*")} - before
    assert n == 6 * 4 and len(new) == n
    assert all(target in p.parents for p in new)
    # The Parquet image paths are plain names too.
    for rel in files["parquet"]["train"]:
        for image in pq.read_table(out / rel).column("image").to_pylist():
            assert "/" not in image["path"] and image["path"].endswith(".png")


def _annotate_manifest(tmp_path, data_root, paths):
    photo = data_root / "identities_512" / "00001" / "gt.png"
    save_image(tmp_path / "m" / "images" / "ok.png", load_image(photo))
    rows = [{"face_id": f"f{i}", "image_path": p, "status": "ok", "gender_label": "male"}
            for i, p in enumerate(paths)]
    path = tmp_path / "m" / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.realdata
@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_annotate_refuses_image_paths_outside_the_manifest_folder(tmp_path, data_root, capsys, bad):
    from captioning.cli import main
    save_image(tmp_path / "outside.png", np.zeros((8, 8, 3), np.uint8))
    path = _annotate_manifest(tmp_path, data_root, ["images/ok.png", bad])
    before = path.read_bytes()
    rc = main(["annotate", "-i", str(path), "--backend", "labels",
               "--label-columns", "gender_label=gender", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err
    assert "'f1'" in err and repr(bad) in err and "climbs out" in err
    assert path.read_bytes() == before  # nothing annotated, nothing rewritten


@pytest.mark.realdata
def test_annotate_reads_images_under_an_explicit_root(tmp_path, data_root):
    from captioning.cli import main
    photo = data_root / "identities_512" / "00001" / "gt.png"
    path = _annotate_manifest(tmp_path, data_root, [str(photo)])
    rc = main(["annotate", "-i", str(path), "--backend", "labels",
               "--label-columns", "gender_label=gender", "--quiet",
               "--images-root", str(data_root / "identities_512")])
    assert rc == 0
    assert pq.read_table(path).column("caption_status").to_pylist() == ["ok"]
