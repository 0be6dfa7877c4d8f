"""Bad input to ``reface_hq`` fails at once with one clear line (no traceback, no wasted build)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_rgb

from reface_core.imageio import save_image
from reface_hq.build import BuildConfig, build
from reface_hq.cli import main
from reface_hq.export import export
from reface_hq.sources import FolderSource, HFSource, SourceError, parse_source
from reface_hq.stages import DetectAlign, Embed


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for person in ("alice", "bob"):
        save_image(root / person / "a.png", make_rgb(40, 40, seed=len(person)))
    return root


def _stage_folders(work):
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


@pytest.mark.parametrize("option", [{"detector": "dlib-hgo"}, {"embedder": "dlb"},
                                    {"test_fraction": 2.0}, {"min_photos": 0}])
def test_bad_stage_options_fail_before_any_stage_runs(tmp_path, photos, option):
    # An unknown detector used to drop every photo as detect_align_error and exit 0; an
    # unknown embedder or a bad split option surfaced only after the map stages had run.
    config = BuildConfig(sources=[FolderSource(str(photos), identity="folder")],
                         out=str(tmp_path / "out"), progress=False, **option)
    with pytest.raises(ValueError, match="detector|embedder|test_fraction|min_photos"):
        build(config)
    assert _stage_folders(config.work) == []
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_stage_names_are_checked_when_built():
    with pytest.raises(ValueError, match="unknown face detector 'nope'"):
        DetectAlign(detector="nope")
    with pytest.raises(ValueError, match=r"transform_size must be an integer in \[8, 16384\]"):
        DetectAlign(transform_size=-5)  # dropped every photo as detect_align_error
    with pytest.raises(ValueError, match="did you mean 'dlib"):
        Embed(embedder="dlb")
    with pytest.raises(ValueError, match="batch_size"):
        Embed(batch_size=0)


def test_cli_unknown_detector_exits_2_naming_it(tmp_path, photos, capsys):
    rc = main(["build", "-i", str(photos), "--out", str(tmp_path / "o"),
               "--detector", "nope", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown face detector 'nope'")


@pytest.mark.parametrize("flag", ["--out", "--work-dir"])
def test_output_or_work_folder_that_is_a_file(tmp_path, photos, capsys, flag):
    taken = tmp_path / "taken"
    taken.write_text("x")
    folders = {"--out": str(tmp_path / "o"), flag: str(taken)}
    args = ["build", "-i", str(photos), "-q"]
    for name, value in folders.items():
        args += [name, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err and str(taken) in err


def test_export_checks_its_options_and_output(tmp_path, capsys):
    with pytest.raises(ValueError, match="shard_rows must be >= 1"):
        export(tmp_path / "ds", tmp_path / "exp", shard_rows=0)
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["export", str(tmp_path), "--out", str(taken)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_stats_on_a_malformed_dataset_is_a_clear_error(tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    pd.DataFrame({"foo": [1]}).to_parquet(ds / "manifest.parquet")
    (ds / "stats.json").write_text("{}")
    assert main(["stats", str(ds)]) == 2
    assert "not a build's stats" in capsys.readouterr().err
    (ds / "stats.json").write_text(json.dumps(
        {"faces_kept": 1, "identities": 1, "photos_in": 1, "dropped": {}}))
    assert main(["stats", str(ds)]) == 2
    assert "manifest lacks columns ['split', 'identity']" in capsys.readouterr().err
    (ds / "stats.json").write_text("{broken")
    assert main(["stats", str(ds)]) == 2
    assert "cannot read as JSON" in capsys.readouterr().err


def test_source_spec_with_a_non_integer_folder_level(photos):
    with pytest.raises(SourceError, match="folder_level must be an integer, got 'x'"):
        parse_source(f"{photos}?identity=folder&folder_level=x")


def test_hf_source_with_an_empty_parquet_file(tmp_path):
    pd.DataFrame({"image": pd.Series([], dtype=object)}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(SourceError, match="empty.parquet.*no rows"):
        HFSource(str(tmp_path / "empty.parquet")).rows(tmp_path / "work")


@pytest.mark.parametrize("url", ["http://" + "a" * 70 + ".example/x.jpg",
                                 "http://example.com:99999/x.jpg", "http://[bad/x.jpg"])
def test_malformed_url_is_a_status_row_not_a_crash(tmp_path, url):
    # These raised ValueError/UnicodeError out of the download stage and ended the build.
    from reface_hq import schema
    from reface_hq.download import Download
    row = schema.new_row(row_id="r", source="urls", origin=url)
    out = Download(folder=str(tmp_path / "dl"), retries=0)([row])
    assert len(out) == 1 and out[0]["status"] == "bad_url" and out[0]["dropped_at"] == "download"
    assert url in out[0]["error"]


def test_url_list_with_no_urls_or_a_malformed_url(tmp_path):
    from reface_hq.sources import URLListSource
    (tmp_path / "none.csv").write_text("url,identity\n,alice\n")
    with pytest.raises(SourceError, match="none.csv: no URLs in column 'url'"):
        URLListSource(str(tmp_path / "none.csv")).rows()
    (tmp_path / "bad.csv").write_text("url\nhttp://[bad/x.jpg\nhttps://example.com/a.jpg\n")
    rows = URLListSource(str(tmp_path / "bad.csv")).rows()
    assert [r["status"] for r in rows] == ["bad_url", "ok"]


def test_musiq_threshold_without_the_model_is_an_error_not_ignored(tmp_path):
    # With musiq="auto" and no weights, min_musiq used to keep every face silently.
    from reface_core.assets import AssetNotFoundError
    from reface_hq import schema
    from reface_hq.stages import Quality
    path = str(save_image(tmp_path / "a.png", make_rgb(64, 64)))
    row = schema.new_row(row_id="a", source="t", origin="a", aligned_path=path, face_size=300.0)
    missing = str(tmp_path / "no-musiq.pth")
    assert Quality(musiq_path=missing, min_sharpness=0)([row])[0]["status"] == "ok"
    with pytest.raises(AssetNotFoundError, match="pyiqa-musiq-koniq"):
        Quality(musiq_path=missing, min_sharpness=0, min_musiq=40.0)([row])
    with pytest.raises(ValueError, match="musiq is 'off'"):
        Quality(musiq="off", min_musiq=40.0)


def test_identity_hints_that_differ_only_in_unsafe_characters_stay_apart():
    # "刘德华" and "张学友" both became "s-" (and "José"/"Josè" both "s-Jos"): two people
    # filed as one identity, sharing a folder, a split and each other's references.
    import numpy as np

    from reface_hq import schema
    from reface_hq.identity import IdentityGroup
    rng = np.random.default_rng(0)
    rows = []
    for p, hint in enumerate(["刘德华", "张学友", "José", "Josè", "plain"]):
        centre = rng.normal(size=16)
        for k in range(3):
            e = centre + 0.01 * rng.normal(size=16)
            rows.append(schema.new_row(row_id=f"r{p}{k}", face_id=f"r{p}{k}-0", face_index=0,
                                       source="s", origin=f"o/{p}/{k}", identity_hint=hint,
                                       embedding=list(e / np.linalg.norm(e))))
    out = IdentityGroup(min_photos=3)(rows)
    assert all(r["status"] == "ok" for r in out)
    names = [r["identity"] for r in out]
    assert len(set(names)) == 5
    assert names[-1] == "s-plain"  # names that are already safe do not change
    assert all(schema_safe(n) for n in names)


def schema_safe(name: str) -> bool:
    from reface_hq.sources import safe_name
    return safe_name(name) == name


def test_loaders_keep_manifest_paths_inside_the_dataset(tmp_path):
    from reface_hq.dataset import FaceReferenceDataset, to_hf_dataset
    ds = tmp_path / "ds"
    save_image(tmp_path / "outside.png", make_rgb(16, 16))
    save_image(ds / "images" / "p" / "b.png", make_rgb(16, 16, seed=1))
    pd.DataFrame({"face_id": ["a", "b"], "image_path": ["../outside.png", "images/p/b.png"],
                  "identity": ["p", "p"], "split": ["train", "train"]}).to_parquet(
        ds / "manifest.parquet")
    tds = FaceReferenceDataset(ds)
    with pytest.raises(ValueError, match="escapes"):
        tds[0]
    with pytest.raises(ValueError, match="escapes"):
        to_hf_dataset(ds)
    with pytest.raises(ValueError, match="split must be"):
        FaceReferenceDataset(ds, split="validation")


def test_dataset_card_lists_the_stages_in_the_order_they_run():
    # Near-duplicate removal compares embeddings, so the card must not put it first.
    from reface_hq.export import dataset_card
    card = dataset_card([], {"dropped": {}}, {"config": {}}, {"train": [], "test": []}, "x")
    built = card[card.index("## How it was built"):]
    assert built.index("embedding") < built.index("near-duplicate removal") \
        < built.index("identity grouping") < built.index("split by identity")


def test_outputs_inside_a_source_folder_are_not_read_back_as_photos(tmp_path, photos):
    # A rerun with --out inside the source folder used to ingest its own aligned crops
    # (images/ and .work/aligned-*) as new photos: 8 photos became 16 on the second run.
    from reface_hq.build import source_rows
    out = photos / "built"
    save_image(out / "images" / "photos-alice" / "x-0.png", make_rgb(40, 40, seed=5))
    save_image(out / ".work" / "aligned-0123" / "x-0.png", make_rgb(40, 40, seed=6))
    elsewhere = tmp_path / "work"
    save_image(elsewhere / "aligned-0123" / "y-0.png", make_rgb(40, 40, seed=7))
    for work in (None, str(elsewhere)):
        config = BuildConfig(sources=[FolderSource(str(photos), identity="folder"),
                                      FolderSource(str(elsewhere), name="w")],
                             out=str(out), work_dir=work)
        origins = sorted(r["origin"] for r in source_rows(config))
        expected = ["photos/alice/a.png", "photos/bob/a.png"]
        if work is None:  # the "w" folder is then only a source, not the work folder
            expected.append("w/aligned-0123/y-0.png")  # a named source's origins use its name
        assert origins == sorted(expected)


@pytest.mark.parametrize("option", ["--download-timeout=0", "--download-retries=-1",
                                    "--max-bytes=0"])
def test_bad_download_options_are_refused_up_front(tmp_path, photos, capsys, option):
    # Refused by the parser (bounded types), before anything is created.
    with pytest.raises(SystemExit) as e:
        main(["build", "-i", str(photos), "--out", str(tmp_path / "o"), "-q", option])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and f"argument {option.split('=')[0]}: must be" in err[-1]
    assert not (tmp_path / "o").exists()


def test_ray_executor_without_ray_installed_is_one_line(tmp_path, photos, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(["build", "-i", str(photos), "--out", str(tmp_path / "o"), "-q",
               "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: the Ray executor needs Ray Data")


def test_hf_source_refreshes_an_image_replaced_by_one_of_the_same_size(tmp_path):
    import io

    from PIL import Image
    def bmp(seed):
        buf = io.BytesIO()
        Image.fromarray(make_rgb(16, 16, seed=seed)).save(buf, format="BMP")
        return buf.getvalue()
    table = tmp_path / "faces.parquet"
    first, second = bmp(0), bmp(1)
    assert len(first) == len(second) and first != second
    for data in (first, second):
        pd.DataFrame({"image": [{"bytes": data, "path": "a.bmp"}]}).to_parquet(table)
        rows = HFSource(str(table)).rows(tmp_path / "work")
        assert Path(rows[0]["local_path"]).read_bytes() == data


def test_a_photo_replaced_in_place_is_not_served_from_the_stage_cache(tmp_path, photos):
    import os

    from reface_hq.executor import LocalExecutor
    from reface_hq.stages import Decode
    rows = FolderSource(str(photos), identity="folder").rows()
    ex = LocalExecutor(progress=False)
    first, _ = ex.run([Decode(min_source_side=1)], rows, tmp_path / "work")
    path = rows[0]["local_path"]
    save_image(path, make_rgb(48, 48, seed=99))
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file-system clocks
    second, _ = ex.run([Decode(min_source_side=1)], rows, tmp_path / "work")
    assert (first[0]["width"], second[0]["width"]) == (40, 48)
    assert first[0]["sha256"] != second[0]["sha256"] and first[1] == second[1]


def test_a_broken_detector_model_stops_the_build_not_every_row(tmp_path, monkeypatch):
    import faces.detection
    from faces.detection import ModelLoadError
    from reface_hq import schema

    def broken(name, **options):
        raise ModelLoadError(f"{name}.onnx: not a usable model")
    monkeypatch.setattr(faces.detection, "get_detector", broken)
    path = save_image(tmp_path / "a.png", make_rgb(200, 200))
    row = schema.new_row(row_id="a", source="t", origin="a.png", local_path=str(path))
    with pytest.raises(ModelLoadError, match="not a usable model"):
        DetectAlign(folder=str(tmp_path / "al"), detector="scrfd")([row])
