"""``python -m faces``: detect / align / embed / attributes on files and folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_rgb

from faces.cli import main
from reface_core.imageio import load_image, save_image


@pytest.mark.parametrize("command", ["detect", "align", "embed", "attributes"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "faces", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "detect" in r.stdout and "attributes" in r.stdout


def _records(out, command):
    return {r["name"]: r for r in map(json.loads, (out / f"{command}.jsonl").read_text().splitlines())}


def test_detect_writes_status_records_and_resumes(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    save_image(src / "sub" / "noface.png", make_rgb(120, 160, seed=1))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    assert main(["detect", str(src), "-o", str(out), "-q"]) == 1   # one row failed
    recs = _records(out, "detect")
    assert recs["sub/noface.png"]["status"] == "ok" and recs["sub/noface.png"]["faces"] == []
    assert recs["broken.jpg"]["status"] == "failed" and "broken.jpg" in recs["broken.jpg"]["error"]
    assert (out / "sub" / "noface.png.json").is_file()
    # No temporary files are left behind.
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    capsys.readouterr()
    # Resume: the second run redoes nothing and reports the same records.
    before = (out / "sub" / "noface.png.json").stat().st_mtime_ns
    assert main(["detect", str(src), "-o", str(out), "-q"]) == 1
    assert "2 already done" in capsys.readouterr().out
    assert (out / "sub" / "noface.png.json").stat().st_mtime_ns == before
    assert _records(out, "detect") == recs


def test_no_inputs_and_bad_options_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    save_image(tmp_path / "a.png", make_rgb(64, 64))
    assert main(["detect", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                 "--detector", "retinaface", "--upsample", "1"]) == 2
    assert "does not take option" in capsys.readouterr().err


def test_missing_weights_stop_with_how_to_get_them(tmp_path, capsys):
    save_image(tmp_path / "a.png", make_rgb(64, 64))
    rc = main(["embed", str(tmp_path / "a.png"), "--aligned", "-o", str(tmp_path / "o"),
               "--embedder", "arcface-buffalo_l", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "insightface-buffalo_l" in err and "fetch" in err


@pytest.mark.realdata
def test_align_then_embed_and_attributes_on_real_photos(tmp_path, data_root):
    import faces

    src = tmp_path / "photos"
    src.mkdir()
    for name in ("two_people.jpg", "obama_small.jpg"):
        shutil.copy(data_root / "unaligned_named/examples" / name, src / name)
    crops = tmp_path / "crops"
    assert main(["align", str(src), "-o", str(crops), "--size", "256", "-q"]) == 0
    files = sorted(p.name for p in crops.glob("*.png"))
    assert files == ["obama_small_00.png", "two_people_00.png", "two_people_01.png"]
    rec = _records(crops, "align")["two_people.jpg"]
    # The stored matrix maps the stored landmarks into the crop near the FFHQ template.
    m = np.array(rec["faces"][0]["matrix"])
    lm = np.array(rec["faces"][0]["landmarks5"])
    tpl = faces.ffhq_template(256)
    assert np.abs(lm @ m[:, :2].T + m[:, 2] - tpl)[:2].max() < 8

    emb_out = tmp_path / "emb"
    assert main(["embed", str(crops), "--aligned", "-o", str(emb_out), "-q"]) == 0
    z = np.load(emb_out / "embeddings.npz")
    assert z["vectors"].shape == (3, 128) and str(z["embedder"]) == "dlib-resnet-v1"
    direct = faces.get_embedder("dlib").embed([load_image(crops / f) for f in files])
    np.testing.assert_allclose(z["vectors"], direct, atol=1e-5)
    sims = z["vectors"] @ z["vectors"].T
    # obama_small and one face of two_people are the same man; the other is not.
    assert max(sims[0, 1], sims[0, 2]) > 0.9 > min(sims[0, 1], sims[0, 2])

    attr_out = tmp_path / "attr"
    assert main(["attributes", str(src), "-o", str(attr_out), "-q"]) == 0
    recs = _records(attr_out, "attributes")
    assert [f["gender"] for f in recs["two_people.jpg"]["faces"]] == ["male", "male"]
    assert all(30 < f["age"] < 80 for f in recs["two_people.jpg"]["faces"])


def test_importing_faces_loads_no_model_library():
    code = ("import sys, faces; heavy = [m for m in ('dlib', 'torch', 'cv2', 'onnxruntime', "
            "'insightface', 'facexlib') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_run_demo_on_real_photos(tmp_path, data_root):
    from faces.demo import run_demo

    line = run_demo(data_root, tmp_path)
    assert line.startswith("faces: 10 faces in 6 photos") and "ROC AUC" in line
    summary = json.loads((tmp_path / "faces" / "summary.json").read_text())
    assert summary["verification"]["roc_auc"] >= 0.99
    assert len(list((tmp_path / "faces" / "aligned").glob("*.png"))) == 10
    assert load_image(tmp_path / "faces" / "pasted_back.png").shape[2] == 3


def test_unusable_paths_are_one_line_errors(tmp_path, capsys):
    save_image(tmp_path / "a.png", make_rgb(64, 64))
    (tmp_path / "file").write_text("x")
    assert main(["detect", str(tmp_path / "a.png"), "-o", str(tmp_path / "file"), "-q"]) == 2
    assert "output folder" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "nothere"), "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "nothere" in err and "no such file" in err
    assert main(["detect", str(tmp_path), "-o", str(tmp_path), "-q"]) == 2
    assert "is also the output folder" in capsys.readouterr().err
    for bad in (["--min-size", "-5"], ["--size", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["align", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *bad])
        assert e.value.code == 2
    # Bad options never leave per-image "failed" records behind to be skipped on resume.
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.json"))


def test_two_inputs_with_one_output_name_are_refused(tmp_path, capsys):
    for person in ("p1", "p2"):
        save_image(tmp_path / person / "img1.png", make_rgb(64, 64, seed=len(person)))
    rc = main(["detect", str(tmp_path / "p1"), str(tmp_path / "p2"), "-o", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "both map to the output name 'img1.png'" in capsys.readouterr().err
    # Their common parent keeps the names apart.
    assert main(["detect", str(tmp_path), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert sorted(_records(tmp_path / "o", "detect")) == ["p1/img1.png", "p2/img1.png"]


def test_rerun_with_other_settings_redoes_and_own_outputs_are_not_inputs(tmp_path, capsys):
    save_image(tmp_path / "a.png", make_rgb(120, 160, seed=1))
    out = tmp_path / "out"   # inside the input folder
    assert main(["embed", str(tmp_path), "-o", str(out), "-q"]) == 0
    z = np.load(out / "embeddings.npz")   # no face anywhere: an empty array, not a crash
    assert z["vectors"].shape == (0, 128)
    capsys.readouterr()
    assert main(["embed", str(tmp_path), "-o", str(out), "-q"]) == 0
    assert "1 images (1 already done)" in capsys.readouterr().out
    assert main(["embed", str(tmp_path), "-o", str(out), "--min-size", "20", "-q"]) == 0
    assert "1 images (0 already done)" in capsys.readouterr().out
    settings = _records(out, "embed")["a.png"]["settings"]
    assert settings["min_size"] == 20
    # Weights files count too: other weights, other results.
    assert {"model_path", "embedder_path"} <= set(settings)


def test_a_broken_model_file_stops_the_run_without_records(tmp_path, capsys):
    save_image(tmp_path / "a.png", make_rgb(64, 64))
    weights = tmp_path / "weights.dat"
    weights.write_bytes(b"not a model")
    for detector in ("dlib-cnn", "retinaface"):
        rc = main(["detect", str(tmp_path / "a.png"), "-o", str(tmp_path / detector),
                   "--detector", detector, "--model-path", str(weights), "-q"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "weights.dat" in err and "Traceback" not in err
        assert not list((tmp_path / detector).glob("*.json"))


@pytest.mark.realdata
def test_crops_of_inputs_differing_in_suffix_do_not_collide(tmp_path, data_root):
    src = tmp_path / "photos"
    src.mkdir()
    image = load_image(data_root / "unaligned_named/examples/obama_small.jpg")
    save_image(src / "a.png", image)
    save_image(src / "a.jpg", image[:, ::-1].copy())
    out = tmp_path / "crops"
    assert main(["align", str(src), "-o", str(out), "--size", "64", "-q"]) == 0
    recs = _records(out, "align")
    files = {recs[n]["faces"][0]["file"] for n in ("a.png", "a.jpg")}
    assert files == {"a.png_00.png", "a.jpg_00.png"}
    assert all((out / f).is_file() for f in files)


def test_retry_failed_redoes_only_failed_records(tmp_path, capsys):
    src = tmp_path / "in"
    save_image(src / "good.png", make_rgb(64, 64))
    (src / "fixed.png").write_bytes(b"not yet an image")
    out = tmp_path / "out"
    assert main(["detect", str(src), "-o", str(out), "-q"]) == 1   # some rows failed
    assert _records(out, "detect")["fixed.png"]["status"] == "failed"
    save_image(src / "fixed.png", make_rgb(64, 64, seed=3))
    assert main(["detect", str(src), "-o", str(out), "-q"]) == 1
    assert _records(out, "detect")["fixed.png"]["status"] == "failed"   # resume keeps it
    capsys.readouterr()
    assert main(["detect", str(src), "-o", str(out), "-q", "--retry-failed"]) == 0
    assert "2 images (1 already done)" in capsys.readouterr().out
    assert _records(out, "detect")["fixed.png"]["status"] == "ok"


@pytest.mark.realdata
def test_a_rerun_with_other_settings_removes_crops_no_longer_made(tmp_path, data_root):
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(data_root / "unaligned_named/examples/obama_small.jpg", src / "obama.jpg")
    out = tmp_path / "crops"
    assert main(["align", str(src), "-o", str(out), "--size", "64", "-q"]) == 0
    assert (out / "obama_00.png").is_file()
    # No face is this large: the rerun finds none, and the old crop must not linger.
    assert main(["align", str(src), "-o", str(out), "--size", "64", "--min-size", "5000", "-q"]) == 0
    assert _records(out, "align")["obama.jpg"]["faces"] == []
    assert not list(out.glob("*.png"))
