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
