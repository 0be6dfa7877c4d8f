"""Upper bounds on sizes, counts and seeds, and finite floats: refused at parse time with
one line naming the option (exit 2), before any work starts."""

from __future__ import annotations

import argparse

import pytest

from reface_core.argtypes import MAX_SEED, at_least, between, finite_float, seed


def _refused(main, argv, capsys, option):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument " + option in err
    assert "Traceback" not in err
    return err


def test_types_bound_and_refuse_nan_inf():
    assert between(8, 2048)("512") == 512
    assert seed(str(MAX_SEED)) == MAX_SEED
    assert finite_float("-1.5") == -1.5
    for parse, text in ((between(8, 2048), "100000"), (between(8, 2048), "7"),
                        (seed, str(10 ** 23)), (seed, "-1"), (finite_float, "nan"),
                        (finite_float, "inf"), (finite_float, "-inf"), (at_least(0, float), "inf"),
                        (between(0.0, 1.0, float), "nan"), (at_least(1), "1e3")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_faces_align_size_capped(tmp_path, capsys):
    from faces.cli import main
    err = _refused(main, ["align", str(tmp_path), "-o", str(tmp_path / "out"), "--size", "100000"],
                   capsys, "--size")
    assert "100000" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, option", [
    (["--transform-size", "100000"], "--transform-size"),
    (["--seed", str(10 ** 23)], "--seed"),
    (["--min-sharpness", "nan"], "--min-sharpness"),
    (["--min-face-size", "inf"], "--min-face-size"),
    (["--test-fraction", "nan"], "--test-fraction"),
    (["--workers", "100000"], "--workers"),
])
def test_reface_hq_build_caps(tmp_path, capsys, argv, option):
    from reface_hq.cli import main
    _refused(main, ["build", "-i", f"folder:{tmp_path}", "--out", str(tmp_path / "ds"), *argv],
             capsys, option)
    assert not (tmp_path / "ds").exists()


def test_degradations_synth_seed_capped(tmp_path, capsys):
    from degradations.cli import main
    _refused(main, ["synth", "--input", str(tmp_path), "-o", str(tmp_path / "o"),
                    "--seed", str(10 ** 23)], capsys, "--seed")
    assert not (tmp_path / "o").exists()


@pytest.mark.realdata
@pytest.mark.parametrize("backends, expected", [
    ("vlmm", "unknown attribute backend 'vlmm'; did you mean 'vlm'"),
    ("offline,blip3", "unknown attribute backend 'blip3'"),
    ("vlm", "pretrained asset 'blip-caption-base'"),  # no BLIP weights on this machine
])
def test_caption_backends_checked_before_the_build(data_root, tmp_path, capsys, backends, expected):
    from reface_hq.cli import main
    photos = data_root / "identities_512" / "00001" / "conditioning"
    out = tmp_path / "ds"
    rc = main(["build", "-i", f"folder:{photos}", "--out", str(out), "--captions",
               "--caption-backends", backends, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expected in err, err[:400]
    # Nothing was detected, aligned or written: the check ran before the first stage.
    assert not (out / ".work").exists() and not (out / "manifest.parquet").exists()


@pytest.mark.parametrize("argv, option", [
    (["--min-confidence", "nan"], "--min-confidence"),
    (["--batch-size", "1000000000"], "--batch-size"),
    (["--max-tokens", "100000000"], "--max-tokens"),
])
def test_captioning_annotate_caps(tmp_path, capsys, argv, option):
    from captioning.cli import main
    _refused(main, ["annotate", "-i", str(tmp_path / "m.parquet"), *argv], capsys, option)


def test_python_api_sizes_and_counts_are_bounded(rgb_image):
    """The Python API has the command line's bounds: one ValueError naming the field."""
    import numpy as np

    from degradations.presets import Preset
    from faces.alignment import align_ffhq
    from reface_hq import BuildConfig, FolderSource, build
    src = [FolderSource("photos")]
    marks = np.array([[20, 25], [40, 25], [30, 35], [22, 45], [38, 45]], np.float32)
    with pytest.raises(ValueError, match=r"output_size must be an integer in \[8, 4096\]"):
        align_ffhq(rgb_image, marks, output_size=100_000)
    with pytest.raises(ValueError, match=r"transform_size must be an integer in \[8, 16384\]"):
        align_ffhq(rgb_image, marks, output_size=64, transform_size=10 ** 6)
    for field, value in (("workers", 10 ** 6), ("shard_size", 0), ("seed", 10 ** 23),
                         ("download_threads", 10 ** 5)):
        with pytest.raises(ValueError, match=f"BuildConfig.{field} must be an integer"):
            build(BuildConfig(sources=src, **{field: value}))
    with pytest.raises(ValueError, match="BuildConfig.min_sharpness must be a finite number"):
        build(BuildConfig(sources=src, min_sharpness=float("nan")))
    with pytest.raises(ValueError, match="transform_size must be an integer in"):
        BuildConfig(sources=src, transform_size=100_000).map_stages()
    # A preset (e.g. a user's YAML file) cannot ask for a huge kernel or upscale either.
    for stage, match in (({"kind": "blur", "kernel_size": 1001}, "kernel_size values must be odd"),
                         ({"kind": "motion", "kernel_size": 4097, "length": [3, 15]},
                          "motion kernel_size must be odd and in"),
                         ({"kind": "resize", "scale": [0.5, 100]}, "must not exceed 4.0"),
                         ({"kind": "downsample", "scale": [0.001, 2]}, "must not go below 0.25"),
                         ({"kind": "noise", "sigma": [1, float("nan")]}, "finite")):
        with pytest.raises(ValueError, match=match):
            Preset.from_dict({"name": "user", "stages": [stage]})
