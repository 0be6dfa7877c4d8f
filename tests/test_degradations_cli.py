"""``python -m degradations``: synth (resumable, killable), presets, replay; real photos."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_rgb

from degradations.cli import main
from degradations.pipeline import Degrader
from degradations.synth import list_inputs, pixel_sha256, synth
from reface_core.imageio import load_image, save_image

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, size: int = 64) -> list[Path]:
    paths = []
    for i in range(n):
        p = folder / f"person{i % 3}" / f"img_{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_image(p, make_rgb(size, size, seed=i))
        paths.append(p)
    return paths


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "params.parquet")


def test_synth_writes_one_lq_and_one_row_per_input_and_is_reproducible(tmp_path):
    src = tmp_path / "hq"
    _images(src, 6)
    out = tmp_path / "out"
    assert main(["synth", "--input", str(src), "-o", str(out), "--preset", "mgfr-medium",
                 "--seed", "3", "--quiet"]) == 0
    df = _table(out)
    assert len(df) == 6 and df["image_id"].is_unique and (df["status"] == "ok").all()
    assert sorted(df["image_id"]) == sorted(f"person{i % 3}/img_{i:03d}" for i in range(6))
    assert {"jpeg.quality", "blur.kernel_sigma_x", "resize.scale", "noise.sigma"} <= set(df.columns)
    for _, row in df.iterrows():
        lq = load_image(out / row["lq_path"])
        assert pixel_sha256(lq) == row["lq_sha256"]
        hq = load_image(row["input_path"])
        # (preset, seed, image id) -> the same bytes as the Python API
        expected, rec = Degrader("mgfr-medium")(hq, seed=3, image_id=row["image_id"])
        assert lq.tobytes() == expected.tobytes()
        assert json.loads(row["record"]) == json.loads(json.dumps(rec))
    # a second run skips everything and keeps the table unchanged
    counts = synth(src, out, preset="mgfr-medium", seed=3, progress=False)
    assert counts["skipped"] == 6 and counts["ok"] == 0
    pd.testing.assert_frame_equal(_table(out), df)


def test_synth_reads_manifests_and_reports_bad_images_as_rows(tmp_path):
    data = tmp_path / "ds"
    paths = _images(data / "images", 3)
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [{"face_id": f"f{i}", "image_path": p.relative_to(data).as_posix(), "status": "ok"}
            for i, p in enumerate(paths)]
    rows.append({"face_id": "bad", "image_path": "images/broken.png", "status": "ok"})
    rows.append({"face_id": "dropped", "image_path": "images/missing.png", "status": "duplicate"})
    pd.DataFrame(rows).to_parquet(data / "manifest.parquet")
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    assert [j.image_id for j in list_inputs(data / "manifest.csv")] == ["f0", "f1", "f2", "bad"]
    # numeric-looking ids stay strings in text manifests
    pd.DataFrame({"face_id": ["00001", "007"], "path": [str(p) for p in paths[:2]]}).to_json(
        data / "m.jsonl", orient="records", lines=True)
    assert [j.image_id for j in list_inputs(data / "m.jsonl")] == ["00001", "007"]
    (data / "m.csv").write_text(f"face_id,path\n00001,{paths[0]}\n")
    assert [j.image_id for j in list_inputs(data / "m.csv")] == ["00001"]
    out = tmp_path / "out"
    rc = main(["synth", "--input", str(data / "manifest.parquet"), "-o", str(out), "--quiet"])
    assert rc == 1  # finished, with failures
    df = _table(out).set_index("image_id")
    assert list(df.index) == ["bad", "f0", "f1", "f2"]
    assert df.loc["bad", "status"] == "error" and "broken.png" in df.loc["bad", "error"]
    assert (df.drop(index="bad")["status"] == "ok").all()
    assert (out / "lq" / "f0.png").exists()


def test_synth_input_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("file,x\na.png,1\n")
    assert main(["synth", "--input", str(tmp_path / "m.csv"), "-o", str(tmp_path / "o")]) == 2
    assert "no 'image_path' or 'path' column" in capsys.readouterr().err
    assert main(["synth", "--input", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    src = tmp_path / "hq"
    _images(src, 1)
    assert main(["synth", "--input", str(src), "-o", str(tmp_path / "o2"), "--preset", "gfpgn"]) == 2
    assert "did you mean 'gfpgan'" in capsys.readouterr().err
    # an output folder is tied to its preset and seed
    assert main(["synth", "--input", str(src), "-o", str(tmp_path / "o3"), "--quiet"]) == 0
    assert main(["synth", "--input", str(src), "-o", str(tmp_path / "o3"), "--seed", "9"]) == 2
    assert "Use a new output folder" in capsys.readouterr().err


def test_manifest_ids_cannot_escape_the_output_folder(tmp_path):
    data = tmp_path / "ds"
    p = _images(data, 1)[0]
    pd.DataFrame([{"face_id": "../../evil", "image_path": p.relative_to(data).as_posix()}]).to_csv(
        data / "m.csv", index=False)
    with pytest.raises(ValueError, match="escapes the output folder"):
        synth(data / "m.csv", tmp_path / "out", progress=False)


@pytest.mark.slow
def test_synth_killed_midway_resumes_without_duplicates_or_losses(tmp_path):
    src = tmp_path / "hq"
    n = 120  # enough work that the kill lands midway even on a fast, idle machine
    _images(src, n, size=256)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "degradations", "synth", "--input", str(src), "-o", str(out),
           "--preset", "gfpgan", "--seed", "1", "--workers", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    records = out / "records"
    while time.time() < deadline:
        done = len(list(records.rglob("*.json"))) if records.exists() else 0
        if done >= 5 or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # A kill during an atomic write leaves a ".<id>.xxxx.tmp.json" temporary: not a record
    # (the rerun deletes it), so it must not be counted as a finished image.
    finished = [p for p in records.rglob("*.json") if not p.name.startswith(".")]
    done_at_kill = len(finished)
    assert 0 < done_at_kill < n, "the run must be killed midway for this test to mean anything"
    assert not (out / "params.parquet").exists()
    # every record that exists has its complete image (the image is written first)
    for r in finished:
        row = json.loads(r.read_text())
        assert pixel_sha256(load_image(out / row["lq_path"])) == row["lq_sha256"]

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n - done_at_kill} degraded" in r.stdout and f"{done_at_kill} already done" in r.stdout
    df = _table(out)
    assert len(df) == n and df["image_id"].is_unique and (df["status"] == "ok").all()
    assert len(list((out / "lq").rglob("*.png"))) == n
    assert not list(out.rglob(".*.tmp*"))  # no half-written leftovers
    # resumed output is exactly what an uninterrupted run produces
    for _, row in df.sample(6, random_state=0).iterrows():
        expected, _ = Degrader("gfpgan")(load_image(row["input_path"]), seed=1, image_id=row["image_id"])
        assert load_image(out / row["lq_path"]).tobytes() == expected.tobytes()


def test_presets_and_replay_commands(tmp_path, capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name in ("gfpgan", "diffbir-face", "realesrgan", "mgfr-mild", "mgfr-negative"):
        assert name in listing
    assert main(["presets", "realesrgan", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["out_scale"] == 4
    # a shown preset, edited and saved, is a user preset
    shown["name"] = "my-resrgan"
    shown["stages"][3]["quality"] = [10, 20]
    (tmp_path / "mine.json").write_text(json.dumps(shown))
    src = tmp_path / "hq"
    _images(src, 2)
    out = tmp_path / "out"
    assert main(["synth", "--input", str(src), "-o", str(out), "--preset", str(tmp_path / "mine.json"),
                 "--quiet"]) == 0
    capsys.readouterr()
    df = _table(out)
    assert (df["preset"] == "my-resrgan").all() and df["jpeg.quality"].between(10, 20).all()
    assert (df["output_height"] == 16).all()
    rec = out / "records" / "person0" / "img_000.json"
    assert main(["replay", str(rec), "-o", str(tmp_path / "again.png")]) == 0
    assert "match" in capsys.readouterr().out
    assert load_image(tmp_path / "again.png").tobytes() == load_image(out / "lq/person0/img_000.png").tobytes()
    # a record replayed on the wrong image is caught
    assert main(["replay", str(rec), "--hq", str(src / "person1" / "img_001.png")]) == 1
    assert "MISMATCH" in capsys.readouterr().err


# --- real photos -------------------------------------------------------------------------------

def _psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.realdata
def test_mgfr_presets_lower_psnr_in_order_on_real_faces(data_root):
    gts = sorted((data_root / "identities_512").glob("*/gt.png"))
    assert len(gts) >= 10
    means = {}
    per_image = {}
    for name in ("mgfr-mild", "mgfr-medium", "mgfr-severe", "mgfr-negative"):
        deg = Degrader(name)
        vals = []
        for p in gts:
            hq = load_image(p)
            lq, _ = deg(hq, seed=0, image_id=p.parent.name)
            vals.append(_psnr(hq, lq))
        per_image[name] = np.array(vals)
        means[name] = float(np.mean(vals))
    print("mean PSNR on identities_512 gt.png:", {k: round(v, 2) for k, v in means.items()})
    assert means["mgfr-mild"] > means["mgfr-medium"] > means["mgfr-severe"] > means["mgfr-negative"]
    # and for each face, not only on average
    assert (per_image["mgfr-mild"] > per_image["mgfr-medium"]).all()
    assert (per_image["mgfr-medium"] > per_image["mgfr-severe"]).all()


@pytest.mark.realdata
@pytest.mark.slow
def test_cli_on_real_faces_killed_and_resumed(data_root, tmp_path):
    """The CLI over identities_512 faces from a CSV manifest, killed midway and rerun."""
    files = sorted((data_root / "identities_512").rglob("*.png"))[:80]
    rows = [{"image_path": str(p), "face_id": p.relative_to(data_root).with_suffix("").as_posix()} for p in files]
    manifest = tmp_path / "faces.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "degradations", "synth", "--input", str(manifest), "-o", str(out),
           "--preset", "diffbir-face", "--seed", "0", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "records").exists() and len(list((out / "records").rglob("*.json"))) >= 8:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    assert len(list((out / "records").rglob("*.json"))) < len(files)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    df = _table(out)
    assert len(df) == len(files) and df["image_id"].is_unique and (df["status"] == "ok").all()
    assert len(list((out / "lq").rglob("*.png"))) == len(files)
    assert (df["output_height"] == 512).all()


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path):
    src = tmp_path / "hq"
    _images(src, 3)
    for _ in range(2):
        counts = synth(src, src / "lq_out", preset="mgfr-mild", seed=0, progress=False)
    assert counts["total"] == 3 and counts["skipped"] == 3
    assert len(_table(src / "lq_out")) == 3


@pytest.mark.realdata
def test_synth_overwrite_and_retry_failed(data_root, tmp_path, capsys):
    """Resume skips finished rows (failed ones too); --retry-failed redoes only the failed,
    --overwrite redoes all."""
    photos = sorted((data_root / "identities_512").glob("*/gt.png"))[:2]
    broken = tmp_path / "later.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not yet")
    manifest = tmp_path / "m.csv"
    manifest.write_text("face_id,path\n" + "".join(f"r{i},{p}\n" for i, p in enumerate(photos))
                        + f"late,{broken}\n")
    out = tmp_path / "out"
    args = ["synth", "-i", str(manifest), "-o", str(out), "-q", "--preset", "mgfr-mild"]
    assert main(args) == 1                      # one row failed
    broken.write_bytes(photos[0].read_bytes())  # the input is fixed
    capsys.readouterr()
    assert main(args) == 1                      # plain resume keeps the failed row
    assert "0 degraded, 0 failed, 3 already done" in capsys.readouterr().out
    assert main([*args, "--retry-failed"]) == 0
    assert "1 degraded, 0 failed, 2 already done" in capsys.readouterr().out
    assert (_table(out)["status"] == "ok").all() and len(_table(out)) == 3
    before = (out / "lq" / "r0.png").stat().st_mtime_ns
    assert main([*args, "--overwrite"]) == 0
    assert "3 degraded, 0 failed, 0 already done" in capsys.readouterr().out
    assert (out / "lq" / "r0.png").stat().st_mtime_ns != before
