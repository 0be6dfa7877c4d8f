"""``perf/gpu_check.sh``: the prepared device check runs on a machine without CUDA too,
saying so in one line and printing the same table from the reduced CPU variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_prints_one_table():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(REPO / "perf" / "gpu_check.sh")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=400, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("CUDA not available: skipping the CUDA check"), lines[:2]
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0] == "| gpu_check | value |"
    values = dict(ln.strip("| ").split(" | ", 1) for ln in table[1:])
    assert values["preset, resolution, dtype"] == "tiny, 64 px, fp32"
    for key in ("denoising step ratio MGFR / bare UNet", "training step ratio MGFR / bare UNet"):
        ratio = float(values[key].split("x")[0])
        assert 0.2 < ratio < 20, (key, values[key])
    assert float(values["peak memory, MGFR training"].split()[0]) > 0
    assert values["training steps (batch 4, checkpointing)"].startswith("3,")
