"""Shared test conventions.

* ``@pytest.mark.slow``: long tests; the edit loop runs ``pytest -m "not slow"``.
* ``@pytest.mark.realdata``: reads real photos from ``$REFACE_TEST_DATA``; skipped with a
  reason when it is unset (``.ci/run`` sets it to ``../shared/data``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

_REASON = ("REFACE_TEST_DATA is not set (point it at the shared real-photo folder, e.g. "
           "REFACE_TEST_DATA=../shared/data; `make test` and .ci/run do)")


def test_data_root() -> Path | None:
    value = os.environ.get("REFACE_TEST_DATA")
    if not value:
        return None
    return Path(value).expanduser().resolve()


def pytest_collection_modifyitems(config, items):
    root = test_data_root()
    if root is not None and root.is_dir():
        return
    reason = _REASON if root is None else f"REFACE_TEST_DATA={root} is not a folder"
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-photo folder; tests using it must be marked ``realdata``."""
    root = test_data_root()
    if root is None or not root.is_dir():
        pytest.skip(_REASON)
    return root


@pytest.fixture(autouse=True)
def _isolated_reface_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real asset cache, nor downloads."""
    monkeypatch.setenv("REFACE_HOME", str(tmp_path_factory.mktemp("reface_home")))
    monkeypatch.delenv("REFACE_ALLOW_DOWNLOAD", raising=False)


@pytest.fixture(autouse=True)
def _library_log_handlers_on_real_stderr():
    """diffusers and transformers bind their log handler to the ``sys.stderr`` of the
    moment they are first imported: under ``capsys`` that is a stream closed after the
    test, and every later warning then prints "--- Logging error ---" into another test's
    output. Point those handlers at the process's stderr (still captured by pytest)."""
    yield
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        handler = getattr(sys.modules.get(module), "_default_handler", None)
        if handler is not None and getattr(handler, "stream", None) is not sys.__stderr__:
            handler.stream = sys.__stderr__
            handler.flush = sys.__stderr__.flush


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's thread count (a degradation worker, a benchmark) must
    not leave it changed: later tests compare bits across processes."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def file_server(tmp_path):
    """A loopback HTTP server over a fresh folder: yields (folder, base URL)."""
    import http.server
    import threading

    root = tmp_path / "srv"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def load_script(relpath: str):
    """A script of the repository (``perf/x.py``, ``scripts/y.py``) loaded as a module, so
    a test calls its functions and ``main()`` in process."""
    import importlib.util
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_rgb(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    """A deterministic, structured RGB test image (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                    (xx + yy) * 255 // max(h + w - 2, 1)], axis=-1).astype(np.int32)
    img += rng.integers(-10, 11, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def rgb_image() -> np.ndarray:
    return make_rgb()


@pytest.fixture(scope="session")
def identities_dataset(data_root, tmp_path_factory) -> Path:
    """A Reface-HQ folder built once per test session from ``identities_512``.

    256 px faces, FFHQ alignment without padding (the photos are aligned already), offline
    captions, split by identity with the library's defaults. Used by the model, training
    and benchmark tests; treat it as read-only.
    """
    from reface_hq import BuildConfig, FolderSource, build
    out = tmp_path_factory.mktemp("identities_dataset") / "reface"
    build(BuildConfig(
        sources=[FolderSource(str(data_root / "identities_512"), identity="folder",
                              folder_level=0)],
        out=str(out), output_size=256, transform_size=512, align_padding=False,
        progress=False, musiq="off", captions=True, test_fraction=0.2, seed=0))
    return out


def pytest_terminal_summary(terminalreporter):
    """The docs test's counts: commands run, checked for a clean failure, skipped (each
    with its reason), and every command that broke its promise."""
    import sys
    docs = sys.modules.get("test_docs")
    if docs is not None and docs.OUTCOMES:
        from docs_harness import report
        terminalreporter.write_sep("-", "docs as tests")
        terminalreporter.write_line(report(docs.OUTCOMES))
