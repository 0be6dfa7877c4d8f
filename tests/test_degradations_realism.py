"""Realism statistics, the two-sample test, the fit's search space and resume, and the
``realism`` / ``fit`` commands on real LQ faces."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from degradations import get_preset
from degradations import realism as R
from degradations.cli import main
from degradations.fit import (
    DEFAULT_SPACE,
    OBJECTIVES,
    SearchSpace,
    fit,
    load_space,
    log_path,
    report_path,
)


def _texture(size=256, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 7 + 3, size // 7 + 3, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 1.5)


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


# --- statistics -----------------------------------------------------------------------------

def test_blockiness_sees_the_8x8_grid_of_jpeg_only():
    img = _texture()
    clean = R.blockiness(R._luma(img))
    blocky = R.blockiness(R._luma(_jpeg(img, 10)))
    assert 0.9 < clean < 1.1
    assert blocky > 1.3
    # shifted by 4 px the grid no longer lines up with the blocks
    assert R.blockiness(R._luma(_jpeg(img, 10)[4:, 4:])) < blocky - 0.2


def test_noise_estimate_recovers_the_sigma_added_to_a_smooth_image():
    base = np.full((256, 256), 128, np.float32) + np.linspace(0, 40, 256)[None, :]
    rng = np.random.default_rng(0)
    for sigma in (2.0, 5.0, 10.0):
        est = R.noise_sigma(base + rng.normal(0, sigma, base.shape).astype(np.float32))
        assert abs(est - sigma) < 0.1 * sigma


def _pink(size=256, seed=0) -> np.ndarray:
    """1/f noise: a natural-image power spectrum (slope about -2)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    spec = np.fft.rfft2(rng.normal(size=(size, size))) / np.maximum(f, 1.0 / size)
    g = np.fft.irfft2(spec, s=(size, size))
    g = (g - g.mean()) / g.std() * 40 + 128
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_blur_lowers_laplacian_variance_and_steepens_the_spectrum():
    img = _pink()
    assert -2.6 < R.spectral_slope(R._luma(img)) < -1.4
    s0 = R.image_statistics(img)
    s1 = R.image_statistics(cv2.GaussianBlur(img, (0, 0), 3))
    assert set(s0) == set(R.STATISTICS) and all(np.isfinite(v) for v in s0.values())
    assert s1["laplacian_var"] < 0.5 * s0["laplacian_var"]
    assert s1["spectral_slope"] < s0["spectral_slope"] - 0.5
    gray = R.image_statistics(np.repeat(R._luma(_texture()).astype(np.uint8)[..., None], 3, axis=2))
    assert gray["saturation"] < 0.01 and abs(gray["cast_a"]) < 1 and abs(gray["cast_b"]) < 1


def test_classifier_auc_is_half_for_one_distribution_and_one_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(60, 5))
    auc, (lo, hi) = R.classifier_auc(a, b, seed=0, n_boot=300)
    assert lo < 0.5 < hi and abs(auc - 0.5) < 0.2
    auc, (lo, hi) = R.classifier_auc(a, b + np.array([3.0, 0, 0, 0, 0]), seed=0, n_boot=300)
    assert auc > 0.95 and lo > 0.85
    assert R.marginal_distances(a, b + 3.0)[0] > 2.5
    assert R.marginal_distances(a, b)[0] < 0.5


def test_split_is_a_fixed_function_of_the_pixels():
    parts = [R.split_part(f"{i:016x}", 0.3) for i in range(400)]
    assert 0.2 < parts.count("heldout") / 400 < 0.4
    assert parts == [R.split_part(f"{i:016x}", 0.3) for i in range(400)]


# --- search space ---------------------------------------------------------------------------

def test_search_space_round_trips_the_template_and_decodes_valid_presets():
    space = SearchSpace.from_dict(DEFAULT_SPACE)
    x0 = space.encode()
    assert x0.shape == (space.dim,) and ((x0 >= 0) & (x0 <= 1)).all()
    assert space.describe(x0)["blur.sigma"] == [2.0, 5.0]
    rng = np.random.default_rng(0)
    for _ in range(20):  # any point of the cube is a valid preset, pairs sorted
        p = space.decode(rng.random(space.dim), name="x")
        blur = p.stages[0]
        assert blur.sigma_x == blur.sigma_y and blur.sigma_x[0] <= blur.sigma_x[1]
        assert 0.2 <= blur.sigma_x[0] and blur.sigma_x[1] <= 12.0


def test_bad_search_spaces_are_refused_with_the_parameter():
    bad = json.loads(json.dumps(DEFAULT_SPACE))
    bad["params"][0]["bounds"] = [5.0, 1.0]
    with pytest.raises(ValueError, match=r"params\[0\].bounds"):
        SearchSpace.from_dict(bad)
    bad = json.loads(json.dumps(DEFAULT_SPACE))
    bad["params"][1]["fields"] = ["sigma"]
    with pytest.raises(ValueError, match="has no field 'sigma'"):
        SearchSpace.from_dict(bad)


# --- bad input on the command line ----------------------------------------------------------

def test_realism_and_fit_input_errors_are_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    hq = tmp_path / "hq"
    hq.mkdir()
    cv2.imwrite(str(hq / "a.png"), _texture(128))
    assert main(["realism", "-i", str(empty), "--preset", "gfpgan", "--hq", str(hq), "--aligned"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: real LQ folder") and "no image files" in err and err.count("\n") == 1
    notimg = tmp_path / "notimg"
    notimg.mkdir()
    (notimg / "x.png").write_text("not a png")
    (notimg / "y.jpg").write_bytes(b"\xff\xd8 garbage")
    assert main(["realism", "-i", str(notimg), "--preset", "gfpgan", "--hq", str(hq), "--aligned"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: real LQ folder") and "none of its 2 image files could be read" in err
    inverted = get_preset("mgfr-medium").to_dict()
    inverted["stages"][1]["scale"] = [6.0, 2.0]
    bad = tmp_path / "inverted.yaml"
    bad.write_text(yaml.safe_dump(inverted))
    for cmd in (["realism", "-i", str(hq), "--preset", str(bad), "--hq", str(hq), "--aligned"],
                ["fit", "-i", str(hq), "--hq", str(hq), "-o", str(tmp_path / "f.yaml"), "--aligned",
                 "--template", str(bad)],
                ["fit", "-i", str(hq), "--hq", str(hq), "-o", str(tmp_path / "f.yaml"), "--aligned",
                 "--space", str(_space_with_template(tmp_path, inverted))]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "downsample scale must have low <= high" in err
        assert "inverted.yaml" in err or "space.yaml" in err
    assert main(["fit", "-i", str(hq), "--hq", str(empty), "-o", str(tmp_path / "f.yaml"), "--aligned"]) == 2
    assert "HQ folder" in capsys.readouterr().err
    assert main(["realism", "-i", str(hq), "--hq", str(hq), "--aligned"]) == 2
    assert "--preset" in capsys.readouterr().err


def _space_with_template(tmp_path, template: dict):
    space = json.loads(json.dumps(DEFAULT_SPACE))
    space["template"] = template
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# --- real data ------------------------------------------------------------------------------

@pytest.mark.realdata
def test_realism_command_on_real_lq_faces(data_root, tmp_path, capsys):
    out = tmp_path / "realism"
    code = main(["realism", "-i", str(data_root / "real_lq" / "gfpgan"), "--exclude", "*/gt/*",
                 "--preset", "mgfr-mild", "--preset", "mgfr-severe",
                 "--hq", str(data_root / "celeba_hq_1024" / "src" / "female"), "--size", "256",
                 "--n-synthetic", "16", "--boot", "200", "-o", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # 4 aligned crops + the faces found in 3 whole photos; the FFHQ gt sample left out
    real = pd.read_csv(out / "statistics_real.csv")
    assert len(real) > 4 and any("#" in f for f in real["face_id"]) and not any("gt/" in f for f in real["face_id"])
    summary = pd.read_csv(out / "realism.csv").set_index("set")
    assert list(summary.index) == ["mgfr-mild", "mgfr-severe"]
    assert ((summary["auc_lo"] <= summary["auc"]) & (summary["auc"] <= summary["auc_hi"])).all()
    mild, severe = (pd.read_csv(out / f"statistics_{n}.csv") for n in ("mgfr-mild", "mgfr-severe"))
    assert severe["laplacian_var"].median() < mild["laplacian_var"].median()
    assert (out / "mgfr-severe.png").stat().st_size > 10_000
    assert "two-sample AUC" in captured.out and "blockiness_output" in captured.out


@pytest.mark.realdata
def test_fit_is_seeded_resumable_and_writes_a_preset_every_command_accepts(data_root, tmp_path):
    real = R.load_faces(data_root / "real_lq" / "gfpgan" / "inputs" / "cropped_faces", 128)
    hq = R.load_hq_faces([data_root / "celeba_hq_1024" / "src" / "female"], 128)[:12]
    kw = {"n_synthetic": 6, "seed": 3, "size": 128, "popsize": 3, "progress": False, "n_boot": 50}
    full = fit(real, hq, tmp_path / "a" / "p.yaml", budget=7, **kw)
    fit(real, hq, tmp_path / "b" / "p.yaml", budget=4, **kw)      # stopped after 4 ...
    resumed = fit(real, hq, tmp_path / "b" / "p.yaml", budget=7, **kw)  # ... and resumed
    rows = [[json.loads(line) for line in log_path(tmp_path / d / "p.yaml").read_text().splitlines()][1:]
            for d in "ab"]
    assert [r["x"] for r in rows[0]] == [r["x"] for r in rows[1]] and len(rows[0]) == 7
    assert [r["distance"] for r in rows[0]] == [r["distance"] for r in rows[1]]
    assert resumed["parameters"] == full["parameters"]
    assert full["after"]["distance"] <= full["before"]["distance"]
    assert (tmp_path / "a" / "p.yaml").read_text() == (tmp_path / "b" / "p.yaml").read_text()
    report = json.loads(report_path(tmp_path / "a" / "p.yaml").read_text())
    assert report["candidates"] == 7 and report["seconds_per_candidate"] > 0
    assert {r["statistic"] for r in report["after"]["per_statistic"]} == set(R.STATISTICS)
    preset = get_preset(str(tmp_path / "a" / "p.yaml"))
    assert preset.name == "real-world"
    from degradations import Degrader
    lq, record = Degrader(preset)(hq[0][1], seed=0, image_id="x")
    assert lq.shape == hq[0][1].shape and (Degrader.replay(hq[0][1], record) == lq).all()
    with pytest.raises(ValueError, match="other settings"):
        fit(real, hq, tmp_path / "a" / "p.yaml", budget=7, **{**kw, "seed": 4})


@pytest.mark.slow
@pytest.mark.realdata
def test_fit_can_minimise_the_two_sample_auc(data_root, tmp_path):
    real = R.load_faces(data_root / "real_lq" / "gfpgan" / "inputs" / "cropped_faces", 128)
    hq = R.load_hq_faces([data_root / "celeba_hq_1024" / "src" / "female"], 128)[:12]
    kw = {"n_synthetic": 6, "seed": 3, "size": 128, "popsize": 3, "progress": False, "n_boot": 50}
    out = tmp_path / "p.yaml"
    report = fit(real, hq, out, budget=5, objective="auc", **kw)
    rows = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert rows[0]["settings"]["objective"] == "auc"
    # the logged score is the classifier AUC of that candidate, the best one is the report's
    assert report["objective"] == "auc" and report["best_score"] == min(r["distance"] for r in rows[1:])
    assert report["after"]["auc"] == pytest.approx(report["best_score"], abs=1e-12)
    assert report["before"]["auc"] == pytest.approx(rows[1]["distance"], abs=1e-12)
    assert all(0.0 <= r["distance"] <= 1.0 for r in rows[1:])
    with pytest.raises(ValueError, match="other settings"):  # another objective is another fit
        fit(real, hq, out, budget=5, objective="distance", **kw)
    with pytest.raises(ValueError, match="objective must be one of"):
        fit(real, hq, tmp_path / "q.yaml", budget=5, objective="psnr", **kw)


def test_fit_objective_is_checked_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "-i", str(tmp_path), "--hq", str(tmp_path), "-o", str(tmp_path / "p.yaml"),
              "--objective", "psnr"])
    assert e.value.code == 2 and "--objective" in capsys.readouterr().err


def test_the_shipped_search_space_decodes_valid_presets():
    from degradations.presets import FITTED_DIR
    space = load_space(FITTED_DIR.parent / "spaces" / "real-world.yaml")
    assert space.dim == 16
    rng = np.random.default_rng(0)
    for x in [space.encode(), *rng.random((10, space.dim))]:
        stages = space.decode(x, name="x").to_dict()["stages"]
        assert [s["kind"] for s in stages][4:6] == ["resize_to", "sinc"]
        lo, hi = stages[7]["contrast"]
        assert 0.4 <= lo <= hi <= 1.2 and stages[7]["brightness"] == [1.0, 1.0]


def test_the_shipped_real_world_preset_is_registered():
    preset = get_preset("real-world")
    assert preset.name == "real-world" and "Fitted to real LQ faces" in preset.description
    from degradations.presets import FITTED_DIR
    report = json.loads((FITTED_DIR / "real-world.fit.json").read_text())
    score = OBJECTIVES[report.get("objective", "distance")]
    before, after = (R.Comparison(**{**report[k], "auc_ci": tuple(report[k]["auc_ci"])})
                     for k in ("before", "after"))
    assert score(after) <= score(before)


@pytest.mark.realdata
def test_square_photo_of_small_faces_is_a_photo_and_aligned_crops_stay_crops(data_root):
    from degradations.cli import face_aligner
    from reface_core.imageio import load_image
    align = face_aligner()
    bfr = data_root / "real_lq" / "diffbir" / "inputs" / "demo" / "bfr"
    queen = align(load_image(bfr / "whole_img" / "Queen.jpeg"), 128)  # 520x520, four faces
    assert len(queen) >= 2 and all(box is not None for _, box in queen)
    crop = align(load_image(bfr / "aligned" / "0427.png"), 128)
    assert len(crop) == 1 and crop[0][1] is None and crop[0][0].shape == (128, 128, 3)
