"""One writer per output folder (issue 14, item 2): a second run refuses with a line naming
the holder, or waits when asked; a lock of a killed run is taken over; every command that
writes an output folder takes it; a synth rerun with another seed refuses unless
--overwrite."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_rgb

from reface_core.imageio import save_image
from reface_core.lock import LOCK_NAME, FolderLockedError, folder_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\n"
        "from reface_core.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], command='holder --out ' + sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a folder for ``seconds``; yields a starter."""
    procs = []

    def start(folder: Path, seconds: float = 60.0) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)],
                                env=_env(), stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        if proc.stdout.readline().strip() != "locked":
            raise RuntimeError("the holder process did not take the lock")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_run_refuses_naming_the_holder(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out)
    with pytest.raises(FolderLockedError) as info, folder_lock(out):
        pass
    message = str(info.value)
    assert "\n" not in message
    assert f"pid {proc.pid} on {socket.gethostname()}" in message
    assert f"command: holder --out {out}" in message and "started 20" in message
    assert "--wait-lock" in message


def test_waiting_for_the_holder_then_taking_the_lock(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out, seconds=1.5)
    t0 = time.monotonic()
    with folder_lock(out, wait=30):
        waited = time.monotonic() - t0
        holder_info = json.loads((out / LOCK_NAME).read_text())
        assert holder_info["pid"] == os.getpid()
    assert proc.wait(timeout=10) == 0
    assert 0.5 < waited < 15
    assert not (out / LOCK_NAME).exists()  # a finished run leaves no lock file behind
    with pytest.raises(FolderLockedError):  # a bounded wait ends with the same refusal
        holder(out)
        with folder_lock(out, wait=0.5):
            pass


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = json.loads((out / LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid  # the file is still there, naming a dead pid
    with folder_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    # Re-entrant within one process: a command calling another on the same folder.
    with folder_lock(out), folder_lock(out):
        pass


def _hq(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        save_image(folder / f"img_{i}.png", make_rgb(48, 48, seed=i))
    return folder


def _cli(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def test_synth_runs_with_two_seeds_into_one_folder_never_mix(tmp_path):
    src, out = _hq(tmp_path / "hq", 4), tmp_path / "lq"
    cmds = [_cli("degradations") + ["synth", "--input", str(src), "-o", str(out),
                                     "--seed", str(seed), "--quiet"] for seed in (0, 1)]
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    # Refused either by the lock (both at once) or by run.json (one after the other).
    assert "is in use by another run" in err or "was made with" in err, err
    seed = json.loads((out / "run.json").read_text())["seed"]
    table = pd.read_parquet(out / "params.parquet")
    assert len(table) == 4 and set(table["seed"]) == {seed}


def test_synth_rerun_with_another_seed_refuses_unless_overwrite(tmp_path, capsys):
    from degradations.cli import main
    src, out = _hq(tmp_path / "hq"), tmp_path / "lq"
    assert main(["synth", "--input", str(src), "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["synth", "--input", str(src), "-o", str(out), "--seed", "1",
                 "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert set(pd.read_parquet(out / "params.parquet")["seed"]) == {0}
    assert main(["synth", "--input", str(src), "-o", str(out), "--seed", "1",
                 "--overwrite", "--quiet"]) == 0
    table = pd.read_parquet(out / "params.parquet")
    assert len(table) == 3 and set(table["seed"]) == {1}
    assert json.loads((out / "run.json").read_text())["seed"] == 1


def _commands(tmp: Path, out: Path) -> dict:
    src = _hq(tmp / "hq", 1)
    manifest = out / "manifest.parquet"
    return {
        "reface_hq build": ("reface_hq.cli", ["build", "-i", str(src), "--out", str(out),
                                              "-q"]),
        "reface_hq export": ("reface_hq.cli", ["export", str(tmp / "ds"), "--out", str(out)]),
        "degradations synth": ("degradations.cli", ["synth", "--input", str(src),
                                                    "-o", str(out), "--quiet"]),
        "captioning annotate": ("captioning.cli", ["annotate", "-i", str(manifest),
                                                   "--quiet"]),
        "faces align": ("faces.cli", ["align", str(src), "--out", str(out), "-q"]),
        "benchmarks run": ("benchmarks.run", ["--methods", "bicubic", "--dataset", str(src),
                                              "--out", str(out), "-q"]),
        "benchmarks sweep": ("benchmarks.sweep", ["--method", "bicubic", "--grid", "scale=4",
                                                  "--dataset", str(src), "--out", str(out),
                                                  "-q"]),
        "mgfr train": ("mgfr.cli", ["train", "--stage", "1", "-i", str(tmp / "ds"),
                                    "--out", str(out)]),
        "mgfr pretrain-prior": ("mgfr.cli", ["pretrain-prior", "-i", str(tmp / "ds"),
                                             "--out", str(out)]),
        "mgfr restore": ("mgfr.cli", ["restore", "--input", str(src), "--aligned",
                                      "--out", str(out)]),
    }


@pytest.mark.parametrize("command", ["reface_hq build", "reface_hq export",
                                     "degradations synth", "captioning annotate",
                                     "faces align", "benchmarks run", "benchmarks sweep", "mgfr train",
                                     "mgfr pretrain-prior", "mgfr restore"])
def test_every_command_writing_an_output_folder_refuses_a_held_one(tmp_path, holder, capsys,
                                                                   command):
    import importlib
    out = tmp_path / "out"
    proc = holder(out)
    module, argv = _commands(tmp_path, out)[command]
    before = sorted(p.name for p in out.iterdir())
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output folder "), err
    assert f"in use by another run (pid {proc.pid}" in err[0]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_wait_lock_on_the_command_line_waits_for_the_holder(tmp_path, holder, capsys):
    from degradations.cli import main
    src, out = _hq(tmp_path / "hq", 2), tmp_path / "lq"
    proc = holder(out, seconds=1.5)
    t0 = time.monotonic()
    assert main(["synth", "--input", str(src), "-o", str(out), "--quiet",
                 "--wait-lock", "60"]) == 0
    assert proc.wait(timeout=10) == 0 and time.monotonic() - t0 > 0.5
    assert len(pd.read_parquet(out / "params.parquet")) == 2
    assert not (out / LOCK_NAME).exists()


def test_builds_sharing_a_work_folder_take_turns(tmp_path, holder, capsys):
    from reface_hq.cli import main
    src, work = _hq(tmp_path / "hq", 1), tmp_path / "work"
    proc = holder(work)
    assert main(["build", "-i", str(src), "--out", str(tmp_path / "a"),
                 "--work-dir", str(work), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"output folder {work} is in use by another run (pid {proc.pid}" in err
    assert not (tmp_path / "a" / "manifest.parquet").exists()
    assert not (tmp_path / "a" / LOCK_NAME).exists()  # released on the way out


def test_only_rank_0_of_a_distributed_run_locks(tmp_path, holder, monkeypatch):
    import argparse

    from reface_core.lock import lock_for
    out = tmp_path / "run"
    holder(out)
    args = argparse.Namespace(wait_lock=0.0)
    monkeypatch.setenv("RANK", "1")     # the other ranks of `accelerate launch` share OUT
    with lock_for(args, out):
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(FolderLockedError), lock_for(args, out):
        pass
