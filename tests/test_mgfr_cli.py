"""``python -m mgfr restore`` and ``profile`` (tiny preset, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_rgb

from mgfr.cli import main
from reface_core.imageio import load_image, save_image

FAST = ["--base", "tiny", "--steps", "2", "-q", "--prompt", "a photo of a man",
        "--negative-attribute-prompt", "woman", "--negative-quality-prompt", "blurry"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # See tests/test_mgfr_model.py: threads only slow tiny models down on a busy machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.realdata
def test_restore_real_photo_end_to_end_and_resume(data_root, tmp_path, capsys):
    ex = data_root / "unaligned_named" / "examples"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ex / "obama.jpg", inputs / "obama.jpg")
    save_image(inputs / "noface.png", make_rgb(120, 160))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["restore", "--input", str(inputs), "--refs", str(ex / "obama2.jpg"),
            "--out", str(out), "--seed", "3", *FAST]
    assert main(args) == 1  # two inputs fail, each with a one-line reason
    err = capsys.readouterr().err
    assert "restored 1/3 inputs" in err
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert rows["obama.jpg"]["status"] == "done" and rows["obama.jpg"]["faces"] == 1
    restored = load_image(out / rows["obama.jpg"]["output"])
    assert restored.shape == load_image(ex / "obama.jpg").shape
    assert rows["noface.png"]["status"] == "failed" and "no face found" in rows["noface.png"]["error"]
    assert rows["broken.jpg"]["status"] == "failed" and "\n" not in rows["broken.jpg"]["error"]
    run = json.loads((out / "run.json").read_text())
    assert run["base"] == "tiny" and run["num_inference_steps"] == 2 and run["seed"] == 3

    # A rerun keeps every row (same file, no duplicate rows): nothing is redone, and it
    # still exits 1 while failed rows stand; --retry-failed redoes the failed ones only.
    before = (out / "obama.png").stat().st_mtime_ns
    # A kill mid-write leaves a cut line behind; the rerun drops it.
    with open(out / "results.jsonl", "a") as f:
        f.write('{"input": "cut')
    assert main(args) == 1
    assert (out / "obama.png").stat().st_mtime_ns == before
    assert "3 already done or failed before" in capsys.readouterr().err
    assert sorted(r["input"].rsplit("/", 1)[-1] for r in _rows(out)) == \
        ["broken.jpg", "noface.png", "obama.jpg"]
    save_image(inputs / "broken.jpg", load_image(ex / "obama2.jpg"))  # the file is fixed
    assert main([*args, "--retry-failed"]) == 1                  # noface.png still fails
    assert "1 already done or failed before" in capsys.readouterr().err
    assert (out / "obama.png").stat().st_mtime_ns == before
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert rows["broken.jpg"]["status"] == "done" and rows["noface.png"]["status"] == "failed"
    assert len(_rows(out)) == 3
    # Same output folder, other settings: refused in one line.
    assert main([*args, "--steps", "3"]) == 2  # the last --steps wins
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "num_inference_steps" in err and "\n" not in err


@pytest.mark.realdata
def test_restore_errors_are_one_line(data_root, tmp_path, capsys):
    photo = data_root / "unaligned_named" / "examples" / "obama.jpg"
    save_image(tmp_path / "noface.png", make_rgb(120, 160))
    cases = [
        (["--refs", str(tmp_path / "noface.png")], "no face found in the reference"),
        (["--refs", str(tmp_path / "missing.jpg")], "does not exist"),
    ]
    for extra, msg in cases:
        code = main(["restore", "--input", str(photo), "--out", str(tmp_path / "o"), *extra,
                     *FAST])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error:") and msg in err and "\n" not in err, err


def test_restore_aligned_faces_and_missing_weights(tmp_path, capsys):
    faces_dir = tmp_path / "faces"
    faces_dir.mkdir()
    save_image(faces_dir / "a.png", make_rgb(96, 96, seed=1))
    save_image(faces_dir / "b.png", make_rgb(80, 64, seed=2))  # not square: fails alone
    out = tmp_path / "out"
    assert main(["restore", "--input", str(faces_dir), "--out", str(out), "--aligned",
                 *FAST]) == 1
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert rows["a.png"]["status"] == "done"
    assert load_image(out / "a.png").shape == (64, 64, 3)
    assert "must be square" in rows["b.png"]["error"]
    capsys.readouterr()
    code = main(["restore", "--input", str(faces_dir), "--out", str(tmp_path / "o2"),
                 "--base", "sd21-base", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "sd21-base" in err and "\n" not in err
    assert main(["restore", "--input", str(tmp_path / "nope"), "--out", str(out), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_tiny_writes_tables(tmp_path, capsys):
    code = main(["profile", "--preset", "tiny", "--repeats", "1", "--branches", "1,2",
                 "--skip-embedder", "--json", str(tmp_path / "p.json"),
                 "--markdown", str(tmp_path / "p.md")])
    assert code == 0
    r = json.loads((tmp_path / "p.json").read_text())
    names = [c["component"] for c in r["components"]]
    assert names[:5] == ["VAE encoder", "VAE decoder", "text encoder", "UNet",
                         "LCA (+ output convs)"]
    assert "RLF" in names and "identity projection" in names
    unet = r["components"][3]
    assert unet["frozen_params"] == 1_489_028 and unet["gflops"] > 0 and unet["seconds"] > 0
    assert r["ratios"]["gflops_mgfr_vs_unet_1_branch"] > 1
    assert "MGFR step / bare-UNet step" in (tmp_path / "p.md").read_text()
    assert np.isfinite(r["per_image"]["seconds"])


@pytest.mark.realdata
def test_restore_rca_scale_weighs_the_references_and_is_recorded(data_root, tmp_path, capsys):
    person = data_root / "identities_512" / "00001"
    refs = sorted((person / "conditioning").glob("*.png"))[:2]
    common = ["restore", "--input", str(person / "degraded.png"), "--refs", *map(str, refs),
              "--aligned", "-q"]  # the shipped mini model: stage 2, which reads references
    outs = {}
    for scale in (None, "0"):
        out = tmp_path / f"rca-{scale}"
        extra = [] if scale is None else ["--rca-scale", scale]
        assert main([*common, "--out", str(out), *extra]) == 0
        assert json.loads((out / "run.json").read_text())["rca_scale"] == float(scale or 1)
        outs[scale] = load_image(out / "degraded.png").astype(np.int16)
    # The reference branch off changes the face (docs/mgfr-training.md: about 13 levels).
    assert np.abs(outs[None] - outs["0"]).mean() > 2
    with pytest.raises(SystemExit) as bad:  # argparse's own one-line usage error
        main([*common, "--out", str(tmp_path / "bad"), "--rca-scale", "-1"])
    assert bad.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--rca-scale" in err and "-1" in err
    assert not (tmp_path / "bad").exists()
