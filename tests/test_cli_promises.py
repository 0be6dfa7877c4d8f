"""Commands keep the promises their docs make: one `error:` line and exit 2 where the
input or the machine cannot serve, counts that describe what is shown, messages that
name what failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# the pipeline tests' dataset, written by the real writer
import test_reface_hq_pipeline

REPO = Path(__file__).resolve().parents[1]

synthetic_dataset = test_reface_hq_pipeline.synthetic_dataset  # a shared fixture


def run_cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """A command line as a user runs it, the repository importable."""
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=full, cwd=cwd or REPO, timeout=600)


def assert_one_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line holding every needle (argparse's
    own errors read `PROG: error: ...` after the usage lines)."""
    err = done.stderr
    assert done.returncode == 2, (done.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error: " in ln]
    assert len(errors) == 1, err[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_push_to_hub_without_network_is_one_line_after_the_export(synthetic_dataset, tmp_path):
    root, _ = synthetic_dataset
    out = tmp_path / "export"
    done = run_cli("-m", "reface_hq", "export", str(root), "--out", str(out),
                   "--format", "parquet", "--push-to-hub", "user/reface-hq",
                   env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_offline_test"})
    line = assert_one_error(done, "user/reface-hq", "local export", str(out))
    assert "Connect" in line or "refused" in line.lower()
    assert (out / "README.md").is_file() and list((out / "data").glob("*.parquet"))


def _absent_cuda() -> str:
    import torch
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("argv", [
    ["restore", "-i", "PHOTO", "--out", "OUT"],
    ["profile", "--preset", "sd21-base", "--repeats", "1"],
])
def test_mgfr_device_that_is_not_here_is_a_usage_error(argv, tmp_path):
    from conftest import make_rgb

    from reface_core.imageio import save_image
    photo = save_image(tmp_path / "p.png", make_rgb(64, 64))
    argv = [str(photo) if a == "PHOTO" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    device = _absent_cuda()
    done = run_cli("-m", "mgfr", *argv, "--device", device)
    assert_one_error(done, "--device", device)
    assert not (tmp_path / "o").exists()


def test_mgfr_train_takes_the_stage_from_the_config(synthetic_dataset, tmp_path):
    # the paper-scale line of the recipe's header, as written: the stage comes from the
    # YAML; on a machine without the SD 2.1 weights it ends at the missing asset
    root, _ = synthetic_dataset
    done = run_cli("-m", "mgfr", "train", "--config", "mgfr/configs/sd21-base-stage1.yaml",
                   "-i", str(root), "--out", str(tmp_path / "runs" / "stage1"),
                   env={"REFACE_HOME": str(tmp_path / "home")})
    line = assert_one_error(done, "sd21-base")
    assert "--stage" not in line
    # no config and no --stage: the flag is still required, in one line
    done = run_cli("-m", "mgfr", "train", "-i", str(root), "--out", str(tmp_path / "r2"))
    assert_one_error(done, "--stage")


def test_benchmark_summary_means_cover_the_images_it_counts(synthetic_dataset, tmp_path, capsys):
    from benchmarks import run as B
    from benchmarks.store import open_store
    root, _ = synthetic_dataset
    out = tmp_path / "results"
    base = ["--methods", "bicubic", "--dataset", "reface-test", "--data", str(root),
            "--out", str(out), "--metrics", "psnr", "-q"]
    assert B.main(base) == 0
    capsys.readouterr()
    assert B.main([*base, "--limit", "2"]) == 0
    text = capsys.readouterr().out
    row = next(ln.split() for ln in text.splitlines() if ln.startswith("bicubic"))
    store = open_store(out, read_only=True)
    try:
        scores = store.query("SELECT image_id, value FROM image_scores WHERE metric = 'psnr' "
                             "ORDER BY image_id")
    finally:
        store.close()
    assert len(scores) > 2
    limited = B.D.load_dataset("reface-test", str(root), results_dir=out, limit=2)
    mine = [r["value"] for r in scores if r["image_id"] in {it.image_id for it in limited.items}]
    assert row[2] == "2" and len(mine) == 2
    assert float(row[3]) == pytest.approx(sum(mine) / 2, rel=1e-3)


@pytest.mark.parametrize("method", ["mgfr:adapters=runs/a/adapters", "codeformer:path=nope.pth",
                                    "folder:dir=no/such/outputs"])
def test_benchmark_method_path_that_does_not_exist_is_a_usage_error(method, synthetic_dataset,
                                                                   tmp_path):
    root, _ = synthetic_dataset
    out = tmp_path / "results"
    done = run_cli("-m", "benchmarks.run", "--methods", f"bicubic,{method}", "--dataset",
                   "reface-test", "--data", str(root), "--out", str(out), "--metrics", "psnr",
                   "-q", cwd=tmp_path)
    assert_one_error(done, method.split(":", 1)[1], "no such file or folder")
    assert not (out / "results.duckdb").exists()


def test_benchmark_missing_downloadable_weights_stay_a_skip(synthetic_dataset, tmp_path):
    root, _ = synthetic_dataset
    done = run_cli("-m", "benchmarks.run", "--methods", "codeformer", "--dataset", "reface-test",
                   "--data", str(root), "--out", str(tmp_path / "r"), "--metrics", "psnr", "-q",
                   env={"REFACE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped codeformer" in done.stdout and "codeformer.pth" in done.stdout


def test_asset_fetch_failure_names_the_asset_and_its_url(monkeypatch, capsys):
    import urllib.error
    import urllib.request

    from reface_core import assets as A
    from reface_core.assets_cli import main

    def refused(*a, **k):
        raise urllib.error.URLError("[Errno 111] Connection refused")
    monkeypatch.setattr(urllib.request, "urlopen", refused)
    assert main(["fetch", "codeformer", "-q"]) == 2  # nothing fetched
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: codeformer: ")
    assert A.get_asset("codeformer").url in err[0] and "Connection refused" in err[0]


def test_casting_an_mgfr_model_prints_no_empty_float32_notice():
    code = ("import sys, torch\n"
            "if sys.argv[1] == 'mgfr': import mgfr\n"
            "from diffusers import AutoencoderKL\n"
            "m = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4)\n"
            "m.to(dtype=torch.float32)\n")
    plain = run_cli("-c", code, "plain")
    assert "should be kept in float32: []" in plain.stderr  # diffusers' notice, unfiltered
    done = run_cli("-c", code, "mgfr")
    assert done.returncode == 0 and "should be kept in float32" not in done.stderr


@pytest.mark.parametrize("module, argv", [
    ("degradations.cli", ["synth", "-i", "x", "-o", "y", "--no-progress"]),
    ("faces.cli", ["detect", "x.png", "-o", "y", "--no-progress"]),
    ("captioning.cli", ["annotate", "-i", "m.parquet", "--no-progress"]),
    ("reface_hq.cli", ["calibrate", "-i", "x", "-o", "p.json", "-q"]),
    ("reface_hq.cli", ["calibrate", "-i", "x", "-o", "p.json", "--no-progress"]),
])
def test_quiet_and_its_old_spelling_are_accepted(module, argv, capsys):
    import importlib
    args = importlib.import_module(module).build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", None) or getattr(args, "no_progress", None)
    assert quiet is True
    err = capsys.readouterr().err
    assert ("deprecated" in err) == ("--no-progress" in argv)


def test_unknown_detector_gets_did_you_mean(tmp_path):
    done = run_cli("-m", "faces", "detect", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                   "--detector", "dlib-hgo")
    assert_one_error(done, "did you mean 'dlib-hog'")


def test_retinaface_missing_weights_do_not_send_the_user_to_pip(tmp_path, monkeypatch):
    pytest.importorskip("facexlib")
    from reface_core import assets as A
    with pytest.raises(A.AssetNotFoundError) as e:
        A.resolve("retinaface-resnet50", allow_download=False)
    text = str(e.value)
    assert "pip install facexlib" not in text
    assert "reface-assets fetch retinaface-resnet50" in text and "not shipped" in text


@pytest.mark.realdata
def test_detect_record_names_match_the_docs(data_root, tmp_path):
    photo = data_root / "unaligned_named" / "examples" / "obama.jpg"
    done = run_cli("-m", "faces", "detect", str(photo), "-o", str(tmp_path / "det"), "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "det" / "obama.jpg.json").is_file()
    assert "out/det/<name>.<ext>.json per photo" in (REPO / "docs" / "faces.md").read_text()
