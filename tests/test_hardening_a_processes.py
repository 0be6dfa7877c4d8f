"""Interrupted and damaged runs (issue 14, item 9): pool workers die with a killed build;
a damaged cached shard is redone, not fatal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_reface_hq_pipeline import AddLength, _rows

from reface_hq.executor import LocalExecutor

REPO = Path(__file__).resolve().parents[1]


def _is_worker(proc: psutil.Process) -> bool:
    """A pool worker; a child that exited (a zombie, or gone) between listing and asking
    is not one: under load, a child's state changes between two psutil calls."""
    try:
        return "spawn_main" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return False


def _workers(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    return [c for c in children if _is_worker(c)]


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _kill_parent_mid_work(cmd: list[str], busy, what: str) -> None:
    """Start ``cmd`` (two pool workers), SIGKILL the parent only (as the OOM killer would)
    once ``busy()`` says both workers are mid-task, and check no worker outlives it."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Every worker ever seen: a build runs one pool per stage, so workers of a finished
    # stage exit (and show as terminated for a moment) while the next stage's start.
    seen: dict[int, psutil.Process] = {}

    def live_workers() -> list[psutil.Process]:
        live = _alive(_workers(proc.pid))
        seen.update((p.pid, p) for p in live)
        return live

    try:
        deadline = time.monotonic() + 600  # a loaded machine starts workers slowly
        most = 0
        while time.monotonic() < deadline and proc.poll() is None and most < 2:
            most = max(most, len(live_workers()))
            time.sleep(0.1)
        assert most >= 2, f"{what} did not start two workers"
        while time.monotonic() < deadline and proc.poll() is None and not busy():
            live_workers()
            time.sleep(0.05)
        live_workers()
        assert proc.poll() is None, f"{what} ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Workers notice the dead parent at their next poll; on a loaded machine that
        # takes longer than on an idle one.
        gone = time.monotonic() + 15.0
        while _alive(list(seen.values())) and time.monotonic() < gone:
            time.sleep(0.05)
        assert _alive(list(seen.values())) == [], f"workers outlived the killed {what}"
    finally:
        for p in _alive(list(seen.values())):
            p.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.realdata
@pytest.mark.slow
def test_killing_a_build_kills_its_workers(data_root, tmp_path):
    src = f"{data_root / 'identities_512'}?identity=folder&folder_level=0&include=^(00001|00027|00049)/"
    cmd = [sys.executable, "-m", "reface_hq", "build", "-i", src,
           "-o", str(tmp_path / "ds"), "--workers", "2", "--shard-size", "8",
           "--size", "512", "--transform-size", "512", "--no-align-padding",
           "--musiq", "off", "-q"]
    # Killed while both are busy on detection shards (8 faces, seconds each): a worker
    # that is between tasks would notice the closed queue and exit anyway.
    _kill_parent_mid_work(cmd, lambda: list((tmp_path / "ds" / ".work").glob(
        "*-detect_align-*/*.done.json")), "build")


@pytest.mark.parametrize("damage", ["garbage_stage_shard", "truncated_input_shard",
                                    "bad_done_file", "row_count_mismatch"])
def test_a_damaged_cached_shard_is_redone(tmp_path, damage):
    rows = _rows(12)
    def run():
        return LocalExecutor(shard_size=4, progress=False).run([AddLength()], rows,
                                                                      tmp_path / "work")
    ref, _ = run()
    stage_dir = next((tmp_path / "work").glob("01-add_length-*"))
    input_dir = next((tmp_path / "work").glob("00-input-*"))
    if damage == "garbage_stage_shard":
        (stage_dir / "shard-00001.parquet").write_bytes(b"not parquet at all" * 10)
    elif damage == "truncated_input_shard":
        path = input_dir / "shard-00002.parquet"
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "bad_done_file":
        (stage_dir / "shard-00000.done.json").write_text("{trunc")
    else:
        # A valid Parquet file of the wrong shard: 4 rows where the done file says 5.
        (stage_dir / "shard-00000.parquet").write_bytes(
            (stage_dir / "shard-00001.parquet").read_bytes())
    with pytest.warns(UserWarning, match="is damaged"):
        out, reports = run()
    assert out == ref
    expected_reuse = 3 if damage == "truncated_input_shard" else 2
    # A redone input shard changes nothing downstream: its stage shard is still valid.
    assert reports[0].reused_shards == expected_reuse


@pytest.mark.realdata
@pytest.mark.slow
def test_killing_synth_kills_its_workers(data_root, tmp_path):
    import cv2

    from reface_core.imageio import load_image, save_image
    # Large inputs keep each worker busy for seconds on one image.
    face = load_image(data_root / "identities_512/00001/gt.png")
    src = tmp_path / "hq"
    for i in range(6):
        save_image(src / f"big_{i}.jpg", cv2.resize(face, (3500 + i, 3500)), quality=90)
    out = tmp_path / "lq"
    cmd = [sys.executable, "-m", "degradations", "synth", "-i", str(src), "-o", str(out),
           "--preset", "gfpgan", "--workers", "2", "-q"]
    # Both start an image at once; when the first record lands both begin the next.
    _kill_parent_mid_work(cmd, lambda: list((out / "records").glob("*.json")), "synth")
