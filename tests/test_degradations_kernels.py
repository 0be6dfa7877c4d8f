"""Kernels, presets and parameter sampling of ``degradations``."""

import json
import math

import numpy as np
import pytest

from degradations import kernels as K
from degradations import presets as P
from degradations.sampling import flatten_record, image_rng, sample_record

ALL_TYPES = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]


# --- kernels -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [7, 21, 41])
@pytest.mark.parametrize("ktype", ALL_TYPES)
def test_kernels_have_their_size_sum_to_one_and_are_point_symmetric(size, ktype):
    k = K.make_kernel(ktype, size, sigma_x=2.5, sigma_y=1.2, theta=0.7, beta=1.5)
    assert k.shape == (size, size)
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    assert (k >= 0).all()
    # exp(-q(x)) with a quadratic form: k(x, y) = k(-x, -y); the peak is the centre.
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    assert np.unravel_index(k.argmax(), k.shape) == (size // 2, size // 2)


def test_isotropic_gaussian_matches_the_closed_form_and_is_separable():
    k = K.gaussian(41, 3.0)
    ax = np.arange(-20, 21)
    g = np.exp(-ax ** 2 / (2 * 9.0))
    np.testing.assert_allclose(k, np.outer(g, g) / np.outer(g, g).sum(), rtol=1e-12)
    assert np.linalg.svd(k, compute_uv=False)[1] < 1e-12


def test_anisotropic_gaussian_rotation_turns_the_long_axis():
    # sigma_x > sigma_y at theta = 0: wider along x (columns); at pi/2: along y (rows).
    k0 = K.gaussian(41, 6.0, 1.0, 0.0)
    k90 = K.gaussian(41, 6.0, 1.0, math.pi / 2)
    assert k0[20, 26] > k0[26, 20]
    assert k90[26, 20] > k90[20, 26]
    np.testing.assert_allclose(k90, k0.T, atol=1e-12)


def test_generalized_gaussian_with_beta_one_is_the_gaussian():
    np.testing.assert_allclose(K.generalized_gaussian(21, 2.0, 3.0, 0.4, 1.0), K.gaussian(21, 2.0, 3.0, 0.4),
                               atol=1e-14)


def test_plateau_has_a_flatter_top_than_gaussian():
    p = K.plateau(21, 3.0, 3.0, 0.0, 2.0)
    g = K.gaussian(21, 3.0)
    assert p[10, 11] / p[10, 10] > g[10, 11] / g[10, 10]


def test_sinc_centre_and_ringing():
    omega = math.pi / 3
    k = K.sinc(21, omega)
    assert k.shape == (21, 21) and k.sum() == pytest.approx(1.0)
    # centre is the r -> 0 limit omega^2 / (4 pi), before normalisation
    raw_centre = omega ** 2 / (4 * math.pi)
    raw = k * (raw_centre / k[10, 10])
    from scipy.special import j1
    r = 5.0
    assert raw[10, 15] == pytest.approx(omega * j1(omega * r) / (2 * math.pi * r), rel=1e-9)
    assert k.min() < 0  # ringing lobes are negative


def test_motion_kernel_is_a_centred_segment_of_the_right_length():
    k = K.motion(21, 10.0, 0.0)
    assert k.sum() == pytest.approx(1.0)
    rows = np.nonzero(k.sum(axis=1))[0]
    cols = np.nonzero(k.sum(axis=0))[0]
    assert list(rows) == [10]
    assert cols.min() == 5 and cols.max() == 15
    ys, xs = np.mgrid[0:21, 0:21]
    assert (k * xs).sum() == pytest.approx(10.0) and (k * ys).sum() == pytest.approx(10.0)
    diag = K.motion(21, 10.0, math.pi / 4)
    assert (diag * (xs - 10) * (10 - ys)).sum() > 0  # up-right diagonal


@pytest.mark.parametrize("bad", [
    dict(type="iso", size=4, sigma_x=1.0, sigma_y=1.0),
    dict(type="iso", size=7, sigma_x=0.0, sigma_y=1.0),
    dict(type="sinc", size=7, omega=4.0),
    dict(type="generalized_iso", size=7, sigma_x=1.0, sigma_y=1.0, beta=0.0),
    dict(type="box", size=7),
])
def test_bad_kernel_parameters_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="kernel|sigma|omega|beta"):
        K.make_kernel(**bad)


# --- presets -----------------------------------------------------------------------------

def test_required_presets_exist_and_cite_a_source():
    for name in ["gfpgan", "diffbir-face", "realesrgan", "mgfr-mild", "mgfr-medium", "mgfr-severe",
                 "mgfr-negative", "codeformer"]:
        p = P.get_preset(name)
        assert p.source and p.description


def test_gfpgan_preset_has_the_published_ranges():
    p = P.get_preset("gfpgan")
    blur, down, noise, jpeg = p.stages[:4]
    assert blur.kernel_size == 41 and blur.kernel_list == ("iso", "aniso")
    assert blur.sigma_x == (0.1, 10.0) and down.scale == (0.8, 8.0)
    assert noise.sigma == (0.0, 20.0) and jpeg.quality == (60.0, 100.0)


@pytest.mark.parametrize("name", P.list_presets())
def test_presets_round_trip_through_dicts_yaml_and_json(name, tmp_path):
    import yaml
    p = P.get_preset(name)
    assert P.Preset.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(p.to_dict()))
    assert P.get_preset(str(f)) == p
    assert P.get_preset(str(f)).fingerprint() == p.fingerprint()


def test_user_preset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'gfpgan'"):
        P.get_preset("gfpgn")
    bad = P.get_preset("gfpgan").to_dict()
    bad["stages"][0]["kind"] = "blurr"
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json.*unknown stage kind 'blurr'.*did you mean 'blur'"):
        P.get_preset(str(f))
    bad["stages"][0] = {"kind": "jpeg", "quality": [50, 120]}
    f.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="jpeg quality must be within"):
        P.get_preset(str(f))
    (tmp_path / "broken.yaml").write_text("name: x\nstages: [\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        P.get_preset(str(tmp_path / "broken.yaml"))


# --- sampling ------------------------------------------------------------------------------

def _within(v, lo_hi, tol=1e-12):
    return lo_hi[0] - tol <= v <= lo_hi[1] + tol


def _check_entry(st, e, size):
    """Every sampled value lies inside its stage's range."""
    assert e["op"] in (st.kind, "resize", "blur")
    if not e.get("applied", True):
        return
    if isinstance(st, P.Blur):
        k = e["kernel"]
        sizes = st.kernel_size if isinstance(st.kernel_size, tuple) else (st.kernel_size,)
        assert k["size"] in sizes
        if k["type"] == "sinc":
            assert st.sinc_prob > 0
            assert _within(k["omega"], st.sinc_omega_small if k["size"] < 13 else st.sinc_omega_large)
            return
        assert k["type"] in st.kernel_list
        assert _within(k["sigma_x"], st.sigma_x) and _within(k["sigma_y"], st.sigma_y)
        assert _within(k["theta"], st.rotation)
        if k["type"].endswith("_iso") or k["type"] == "iso":
            assert k["sigma_x"] == k["sigma_y"] and k["theta"] == 0.0
        if k["type"].startswith("generalized"):
            assert _within(k["beta"], st.betag)
        if k["type"].startswith("plateau"):
            assert _within(k["beta"], st.betap)
    elif isinstance(st, P.Sinc):
        assert e["kernel"]["size"] in st.kernel_size and _within(e["kernel"]["omega"], st.omega)
    elif isinstance(st, P.MotionBlur):
        assert _within(e["kernel"]["length"], st.length) and _within(e["kernel"]["angle"], st.angle)
    elif isinstance(st, P.Downsample):
        assert _within(e["scale"], st.scale) and e["mode"] == st.mode
        assert e["size"] == [max(1, int(size[0] // e["scale"])), max(1, int(size[1] // e["scale"]))]
    elif isinstance(st, P.Resize):
        assert _within(e["scale"], st.scale) and e["mode"] in st.modes
        assert {"up": e["scale"] >= 1, "down": e["scale"] <= 1, "keep": e["scale"] == 1}[e["direction"]]
    elif isinstance(st, P.ResizeTo):
        assert e["mode"] in st.modes
    elif isinstance(st, P.Noise):
        if e["type"] == "gaussian":
            assert _within(e["sigma"], st.sigma)
        else:
            assert st.gaussian_prob < 1 and _within(e["scale"], st.poisson_scale)
        assert 0 <= e["seed"] < 2 ** 63
    elif isinstance(st, P.Jpeg):
        assert isinstance(e["quality"], int) and _within(e["quality"], st.quality)
    elif isinstance(st, P.ColorShift):
        assert all(abs(v) <= st.shift for v in e["shift"])
    elif isinstance(st, P.ColorJitter):
        assert sorted(e["order"]) == ["brightness", "contrast", "hue", "saturation"]
        for f in ("brightness", "contrast", "saturation", "hue"):
            assert _within(e[f], getattr(st, f))


def _walk_record(stages, ops, i, size):
    for st in stages:
        if isinstance(st, P.OneOf):
            assert ops[i]["op"] == "one_of"
            branch = st.branches[ops[i]["branch"]]
            i, size = _walk_record(branch, ops, i + 1, size)
            continue
        e = ops[i]
        _check_entry(st, e, size)
        if e.get("size"):
            size = e["size"]
        i += 1
    return i, size


@pytest.mark.parametrize("name", P.list_presets())
def test_sampled_parameters_stay_inside_the_preset_ranges(name):
    preset = P.get_preset(name)
    seen_kernels, seen_applied = set(), set()
    for seed in range(300):
        rec = sample_record(preset, seed, f"img{seed % 7}", (512, 384))
        n, end = _walk_record(preset.stages, rec["ops"], 0, [512, 384])
        assert n == len(rec["ops"])
        assert end == rec["output_size"] == [512 // preset.out_scale, 384 // preset.out_scale]
        for e in rec["ops"]:
            if "kernel" in e:
                seen_kernels.add(e["kernel"]["type"])
            if e.get("applied"):
                seen_applied.add(e["op"])
    blur_types = {t for st in preset.stages if isinstance(st, P.Blur) for t in st.kernel_list}
    assert blur_types <= seen_kernels  # every kernel type of the preset is drawn


def test_gfpgan_probabilities_match_the_config():
    rates = {"color_shift": 0, "color_jitter": 0, "gray": 0}
    kinds = {"iso": 0, "aniso": 0}
    n = 2000
    for seed in range(n):
        for e in sample_record("gfpgan", seed, "a", (64, 64))["ops"]:
            if e["op"] in rates and e["applied"]:
                rates[e["op"]] += 1
            if e["op"] == "blur":
                kinds[e["kernel"]["type"]] += 1
    assert abs(rates["color_shift"] / n - 0.3) < 0.04
    assert abs(rates["color_jitter"] / n - 0.3) < 0.04
    assert rates["gray"] / n < 0.03
    assert abs(kinds["iso"] / n - 0.5) < 0.05


def test_records_are_deterministic_json_and_depend_on_every_key():
    a = sample_record("gfpgan", 7, "00001", (512, 512))
    assert json.loads(json.dumps(a)) == a
    assert sample_record("gfpgan", 7, "00001", (512, 512)) == a
    assert sample_record("gfpgan", 8, "00001", (512, 512))["ops"] != a["ops"]
    assert sample_record("gfpgan", 7, "00002", (512, 512))["ops"] != a["ops"]
    assert sample_record("diffbir-face", 7, "00001", (512, 512))["ops"] != a["ops"]
    # independent of any global RNG state
    np.random.seed(123)
    import random
    random.seed(5)
    assert sample_record("gfpgan", 7, "00001", (512, 512)) == a
    assert image_rng("gfpgan", 7, "x").integers(1 << 62) == image_rng("gfpgan", 7, "x").integers(1 << 62)


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seed must be an integer"):
        sample_record("gfpgan", 1.5, "a", (64, 64))
    with pytest.raises(ValueError, match="smaller than preset 'realesrgan'"):
        sample_record("realesrgan", 0, "a", (3, 64))


def test_flatten_record_names_columns_by_op_and_occurrence():
    row = flatten_record(sample_record("realesrgan", 3, "a", (256, 256)))
    assert "jpeg.quality" in row and "jpeg_2.quality" in row
    assert "blur.kernel_type" in row and "noise.applied" in row


def test_package_exports_the_public_api():
    import degradations
    from degradations import BatchDegrader, Degrader, get_preset, sample_record  # noqa: F401
    assert set(degradations.__all__) >= {"Degrader", "BatchDegrader", "apply_records", "get_preset"}
    with pytest.raises(AttributeError):
        _ = degradations.nothing_here
