"""Hardening round 3 (issue 24) outside the harness: adapter and base folders checked
before any allocation, safetensors-only bases, imports that stay offline, the study
server's file, body and session limits, mgfr restore's output folder and names, and the
process tests' tolerance of zombies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    from mgfr.base import load_base
    from mgfr.model import MGFRModel
    out = tmp_path_factory.mktemp("adapters") / "adapters"
    MGFRModel.from_base(load_base("tiny", seed=0)).save_adapters(out, base="tiny", stage=2, step=0)
    return out


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    from mgfr.base import load_base, save_base
    return save_base(load_base("tiny", seed=0), tmp_path_factory.mktemp("base") / "base")


def _edited(src: Path, dest: Path, file: str, **changes) -> Path:
    shutil.copytree(src, dest)
    cfg = json.loads((dest / file).read_text())
    cfg.update(changes)
    (dest / file).write_text(json.dumps(cfg))
    return dest


# --- item 4: numbers in adapter and base folders ------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"block_out_channels": [32000, 64000, 64000]}, "does not fit the weights"),
    ({"layers_per_block": 10 ** 9}, "layers_per_block = 1000000000 is out of bounds"),
    ({"rlf_channels": 1e12}, "rlf_channels = 1000000000000.0 is out of bounds"),
    ({"norm_eps": float("nan")}, "norm_eps = nan is out of bounds"),
    ({"id_tokens": -3}, "does not build a model"),
])
def test_an_edited_adapter_config_is_refused_before_allocation(adapters, tmp_path, changes,
                                                               message):
    import tracemalloc

    from mgfr.model import read_adapter
    bad = _edited(adapters, tmp_path / "a", "config.json", **changes)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="config") as e:
            read_adapter(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(e.value) and "\n" not in str(e.value)
    assert peak < 200 * 2 ** 20  # nothing near the 16 GB the config asks for


@pytest.mark.parametrize("resolution", [-8, 1e9, 10 ** 9, 12, "512", None])
def test_base_resolution_is_bounded(base_folder, tmp_path, resolution):
    from mgfr.base import load_base_folder
    bad = _edited(base_folder, tmp_path / "b", "mgfr_base.json", resolution=resolution)
    with pytest.raises(ValueError, match=r"resolution must be a whole multiple of 8 in \[8, 2048\]"):
        load_base_folder(bad)


def test_an_edited_base_unet_config_is_refused(base_folder, tmp_path):
    from mgfr.base import load_base_folder
    cfg = json.loads((base_folder / "unet" / "config.json").read_text())
    bad = _edited(base_folder, tmp_path / "b", "unet/config.json",
                  block_out_channels=[32000] * len(cfg["block_out_channels"]))
    with pytest.raises(ValueError, match="unet: config.json does not fit the weights"):
        load_base_folder(bad)


# --- item 7: safetensors-only bases ------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickled_base(base_folder: Path, dest: Path) -> Path:
    import torch
    shutil.copytree(base_folder, dest)
    (dest / "text_encoder" / "model.safetensors").unlink()
    torch.save({"weight": _Evil()}, dest / "text_encoder" / "pytorch_model.bin")
    return dest


def test_base_folders_are_safetensors_only_by_default(base_folder, tmp_path, monkeypatch):
    from mgfr.base import load_base_folder
    monkeypatch.delenv("MGFR_ALLOW_PICKLE", raising=False)
    bad = _pickled_base(base_folder, tmp_path / "b")
    with pytest.raises(ValueError, match="no model.safetensors .* only with --allow-pickle"):
        load_base_folder(bad)


def test_a_malicious_pickle_is_refused_in_one_line(base_folder, tmp_path):
    bad = _pickled_base(base_folder, tmp_path / "b")
    faces = tmp_path / "in"
    faces.mkdir()
    from reface_core.imageio import save_image
    save_image(faces / "a.png", np.full((64, 64, 3), 128, np.uint8))
    out = subprocess.run(
        [sys.executable, "-m", "mgfr", "restore", "-i", str(faces), "-o", str(tmp_path / "o"),
         "--base", str(bad), "--aligned", "--steps", "1", "--allow-pickle", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and "refused" in err[-1]
    assert "Traceback" not in out.stderr and "weights_only=False" not in out.stderr
    assert "pwned" not in out.stdout


# --- item 6: imports that reach the network ----------------------------------------------
GUARD = """
import os, socket, sys
_log = os.environ["NET_GUARD_LOG"]
_real = socket.getaddrinfo
_real_connect = socket.socket.connect
def _note(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
def getaddrinfo(host, *a, **k):
    if host not in (None, "localhost", "127.0.0.1", "::1", b"localhost"):
        _note(f"dns {host}")
        raise OSError("network refused by the test guard")
    return _real(host, *a, **k)
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        _note(f"connect {address}")
        raise OSError("network refused by the test guard")
    return _real_connect(self, address)
socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
"""


@pytest.mark.realdata
@pytest.mark.slow
def test_commands_make_no_network_connection(data_root, tmp_path, adapters):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent(GUARD))
    log = tmp_path / "net.log"
    env = dict(os.environ, PYTHONPATH=f"{guard}{os.pathsep}{ROOT}", NET_GUARD_LOG=str(log))
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k, None)
    data = tmp_path / "lq"
    data.mkdir()
    shutil.copy(data_root / "identities_512" / "00001" / "degraded.png", data / "a.png")
    commands = [
        [sys.executable, "-c", "import mgfr.pipeline, diffusers.quantizers, benchmarks.metrics, "
                               "pyiqa, reface_hq.build"],
        [sys.executable, "-m", "mgfr", "restore", "-i", str(data), "-o", str(tmp_path / "m"),
         "--adapters", str(adapters), "--aligned", "--steps", "1", "-q"],
        [sys.executable, "-m", "benchmarks.run", "--methods", "lq", "--dataset", "lq-only",
         "--data", str(data), "--out", str(tmp_path / "r"), "--metrics", "psnr,brisque-pypi",
         "-q"],
        [sys.executable, "-m", "reface_hq", "build", "-i", str(data), "-o", str(tmp_path / "d"),
         "--size", "512", "--musiq", "off", "-q"],
    ]
    for cmd in commands:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode in (0, 1), (cmd, out.stderr[-2000:])
        assert "gemm_4bit" not in out.stderr and "kernels-community" not in out.stderr
    assert not log.exists(), log.read_text()


def test_offline_switch_is_put_back(monkeypatch):
    from reface_core import offline
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as c
    before = c.HF_HUB_OFFLINE
    with offline.hub_offline(("kernels",)):
        assert os.environ["HF_HUB_OFFLINE"] == "1" and c.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and c.HF_HUB_OFFLINE == before
    assert any(isinstance(f, offline._OfflineFinder) for f in sys.meta_path)


# --- item 8: the study server -----------------------------------------------------------------
@pytest.fixture
def study_results(data_root, tmp_path) -> Path:
    from publish_support import handmade_results
    return handmade_results(tmp_path / "res", data_root)


TOKEN = "study-token-for-tests-0123456789"


@pytest.mark.realdata
def test_study_serves_no_file_outside_results_and_dataset(study_results, tmp_path):
    from starlette.testclient import TestClient

    from benchmarks import study as S
    from benchmarks.store import open_store
    secret = tmp_path / "secret.png"
    shutil.copy(study_results / "outputs" / "run-lq-0001" / "00001.png", secret)
    with open_store(study_results) as s:
        s.con.execute("UPDATE images SET lq_path = ? WHERE image_id = '00001'", [str(secret)])
        s.con.execute("UPDATE images SET lq_path = '/etc/passwd' WHERE image_id = '00027'")
    study = S.Study(S.StudyConfig(results=str(study_results), methods=["lq", "blur"], seed=0,
                                  token=TOKEN))
    served = {p.resolve() for p in study.media.values()}
    assert secret.resolve() not in served and Path("/etc/passwd") not in served
    assert [it.image_id for it in study.items] == ["00049"]
    client = TestClient(S.create_app(study), base_url="http://127.0.0.1")
    page = client.get(f"/study/{TOKEN}")
    assert page.status_code == 200 and "00049" not in page.text


@pytest.mark.realdata
def test_a_slow_request_body_is_cut_off(study_results, monkeypatch):
    import asyncio

    from benchmarks import study as S
    study = S.Study(S.StudyConfig(results=str(study_results), methods=["lq", "blur"], seed=0,
                                  token=TOKEN))
    app = S.BodyLimit(S.create_app(study).app, 4096, timeout=0.5)
    sent = []

    async def slow_receive():
        await asyncio.sleep(3600)  # a client that never finishes its body

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": f"/study/{TOKEN}/vote",
             "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, slow_receive, send), 10))
    assert time.monotonic() - t0 < 5
    assert sent[0]["status"] == 408


@pytest.mark.realdata
def test_a_flood_of_page_loads_does_not_evict_a_voter(study_results, monkeypatch):
    import re

    from starlette.testclient import TestClient

    from benchmarks import study as S
    monkeypatch.setattr(S, "MAX_PENDING", 40)
    study = S.Study(S.StudyConfig(results=str(study_results), methods=["lq", "blur"], seed=0,
                                  token=TOKEN))
    app = S.create_app(study)
    honest = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.1", 1000))
    page = honest.get(f"/study/{TOKEN}")
    pid = re.search(r'name="pair_id" value="([^"]+)"', page.text).group(1)
    assert honest.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": "left"},
                       follow_redirects=False).status_code == 303
    waiting = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 1000))
    waiting.get(f"/study/{TOKEN}")  # an honest participant reading the first pair
    flood = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.9", 1000))
    for _ in range(200):
        flood.cookies.clear()
        flood.get(f"/study/{TOKEN}")
    assert len(study.sessions) <= S.MAX_PENDING
    for client in (honest, waiting):
        sid = client.cookies.get(S.COOKIE)
        assert sid in study.sessions
    page = honest.get(f"/study/{TOKEN}")
    pid = re.search(r'name="pair_id" value="([^"]+)"', page.text).group(1)
    assert honest.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": "right"},
                       follow_redirects=False).status_code == 303


# --- items 5 and 9: mgfr restore's output folder and file names --------------------------
@pytest.mark.slow
def test_restore_into_its_input_folder_and_non_utf8_names(adapters, tmp_path):
    from reface_core.imageio import save_image
    faces = tmp_path / "faces"
    faces.mkdir()
    save_image(faces / "plain.png", np.full((64, 64, 3), 100, np.uint8))
    save_image(faces / os.fsdecode(b"caf\xe9.png"), np.full((64, 64, 3), 150, np.uint8))
    out = faces / "restored"
    cmd = [sys.executable, "-m", "mgfr", "restore", "-i", str(faces), "-o", str(out),
           "--adapters", str(adapters), "--aligned", "--steps", "1", "-q"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(2):
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=900)
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # its own outputs were not read as inputs on the rerun
    names = sorted(os.fsencode(p.name) for p in out.glob("*.png"))
    assert names == [b"caf%E9.png", b"plain.png"]


# --- item 10: the process tests and zombies ---------------------------------------------------
def test_worker_listing_survives_a_zombie_child():
    from test_hardening_a_processes import _alive, _workers
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    import psutil
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    try:
        assert _workers(os.getpid()) == []  # raised psutil.ZombieProcess
        assert _alive([psutil.Process(child.pid)]) == []
    finally:
        child.wait()
