import subprocess
import sys

import pytest

PACKAGES = ["faces", "degradations", "captioning", "reface_hq", "mgfr", "benchmarks", "reface_core"]


@pytest.mark.parametrize("package", PACKAGES)
def test_python_m_help(package):
    r = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
