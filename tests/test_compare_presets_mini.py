"""scripts/compare_presets_mini.py: input checks before any training (the training and
scoring themselves are minutes of CPU; docs/mgfr-training.md gives the measured run)."""

from __future__ import annotations

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/compare_presets_mini.py")


def test_bad_inputs_are_one_line_errors_with_exit_2(script, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "identities_512").mkdir(parents=True)
    (data / "real_lq").mkdir()
    work = str(tmp_path / "work")
    cases = [
        (["--data", str(tmp_path / "nope")], "has no identities_512 folder"),
        (["--data", str(data), "--real", str(tmp_path / "nope")], "real LQ folder"),
        (["--data", str(data), "--presets", "mgfr-medium"], "at least two presets"),
        (["--data", str(data), "--presets", "mgfr-medium,no-such-preset"], "no-such-preset"),
    ]
    for argv, message in cases:
        assert script.main([*argv, "--work", work]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "work").exists()  # nothing written before the inputs are checked


def test_arm_labels_and_finished_runs(script, tmp_path):
    assert script.arm_label("mgfr-medium") == "mgfr-medium"
    assert script.arm_label("runs/x/real-world.yaml") == "real-world"
    run = tmp_path / "stage1-x"
    assert not script.finished(run, 300)
    (run / "adapters").mkdir(parents=True)
    (run / "adapters" / "mgfr_adapters.json").write_text('{"step": 200}')
    assert not script.finished(run, 300) and script.finished(run, 200)
