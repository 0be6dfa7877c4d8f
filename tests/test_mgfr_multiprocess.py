"""Two processes train together: ``accelerate launch --multi_gpu --num_processes 2`` of
``python -m mgfr train`` on the CPU (gloo), tiny preset.

Checked: each rank trains on its own shard (disjoint face ids whose union is the global
batch a single process would draw), both ranks hold the same adapter bytes at the end, and
a run killed with SIGKILL and resumed ends with the same logged losses and the same adapter
bytes as the uninterrupted run."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DIFFUSERS_OFFLINE": "1",
           # Both ranks on the CPU even where a GPU is lent, one thread each (the same float
           # sums in every run, and no oversubscription of a small machine).
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _launch(data: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "-m", "mgfr", "train", "--stage", "1", "-i", str(data), "--base", "tiny",
            "--out", str(out), "--max-steps", str(STEPS), "--batch-size", "1", "--seed", "3",
            "--checkpoint-every", "2", "--cache-dir", str(cache), "--set", "ema_decay=0.9",
            "--set", "validation_faces=2", "--set", "validation_steps=2",
            "--set", "record_ranks=true", *extra]
    return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


# What gloo says when the rendezvous itself fails (a port taken between ``_free_port`` and
# the launch, or a peer's connection dropped on a machine under heavy load): the launch is
# retried on a fresh port. Any other failure is the trainer's and fails the test.
_RENDEZVOUS_ERRORS = ("Connection closed by peer", "Address already in use",
                      "Connection reset by peer", "EADDRINUSE")


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return "" if proc.returncode == 0 else err


def _train(data: Path, out: Path, cache: Path, *extra: str, fresh: bool = False) -> None:
    """Launch and wait; retry (at most twice) when only the rendezvous failed. ``fresh``
    clears the run folder before a retry, for runs that are not resumes."""
    for attempt in range(3):
        err = _finish(_launch(data, out, cache, *extra))
        if not err:
            return
        if attempt == 2 or not any(e in err for e in _RENDEZVOUS_ERRORS):
            raise AssertionError(err[-3000:])
        print(f"retrying after a rendezvous failure: {err.strip().splitlines()[-1]}")
        if fresh:
            shutil.rmtree(out, ignore_errors=True)


def _rank_rows(run: Path, rank: int) -> list[dict]:
    with (run / "ranks" / f"rank{rank}.csv").open() as f:
        return list(csv.DictReader(f))


def _losses(run: Path) -> list[tuple[str, str]]:
    with (run / "train_log.csv").open() as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def _adapter_tensors(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(run / "adapters" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
@pytest.mark.realdata
def test_two_processes_train_together_and_resume(identities_dataset, tmp_path):
    import torch

    from mgfr.data import batch_indices
    from reface_hq.dataset import FaceTrainingDataset
    cache = tmp_path / "cache"
    ref = tmp_path / "uninterrupted"
    t0 = time.perf_counter()
    _train(identities_dataset, ref, cache, fresh=True)
    wall = time.perf_counter() - t0
    print(f"2-process run of {STEPS} steps: {wall:.1f} s wall")

    # Each rank read its own shard; together they read the global batch of every step.
    ds = FaceTrainingDataset(identities_dataset, "train", size=64, seed=3)
    rows = [_rank_rows(ref, r) for r in (0, 1)]
    for r in (0, 1):
        assert [int(x["step"]) for x in rows[r]] == list(range(1, STEPS + 1))
    for step in range(STEPS):
        mine = [set(rows[r][step]["face_ids"].split()) for r in (0, 1)]
        assert len(mine[0]) == len(mine[1]) == 1 and not mine[0] & mine[1]
        _, idx = batch_indices(step, n=len(ds), batch_size=2, seed=3)
        assert mine[0] | mine[1] == {ds.items[i]["face_id"] for i in idx}
    seen = [set().union(*(set(x["face_ids"].split()) for x in rows[r])) for r in (0, 1)]
    assert not seen[0] & seen[1]

    # The same weights on both ranks, and what the main rank saved is what they hold.
    states = [json.loads((ref / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["num_processes"] for s in states] == [2, 2]
    assert [s["process_index"] for s in states] == [0, 1]
    assert states[0]["adapter_sha256"] == states[1]["adapter_sha256"]
    assert states[0]["ema_sha256"] == states[1]["ema_sha256"]
    assert [s for s, _ in _losses(ref)] == [str(i) for i in range(1, STEPS + 1)]
    ckpt = ref / "checkpoint"
    assert {p.name for p in ckpt.glob("random_states_*")} == {"random_states_0.pkl",
                                                              "random_states_1.pkl"}
    info = json.loads((ref / "adapters" / "mgfr_adapters.json").read_text())
    assert info["step"] == STEPS and info["metrics"]["faces"] == 2

    # Killed with SIGKILL after step 3 is logged (the checkpoint holds step 2), resumed. On
    # a loaded machine the test can be descheduled long enough for the 6 steps to end
    # before the kill lands: then nothing was interrupted, and the kill is tried again.
    run = tmp_path / "killed"
    for _attempt in range(3):
        shutil.rmtree(run, ignore_errors=True)
        proc = _launch(identities_dataset, run, cache)
        try:
            t_end = time.time() + 900
            while time.time() < t_end:
                log = run / "train_log.csv"
                if log.is_file() and "\n3," in log.read_text():
                    break
                if proc.poll() is not None:
                    raise AssertionError(f"training ended early: {proc.stderr.read()[-3000:]}")
                time.sleep(0.2)
            else:
                raise AssertionError("timed out waiting for step 3")
            with contextlib.suppress(ProcessLookupError):  # it may have ended already
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if not (run / "adapters").exists():
            break
        print("the run ended before the kill landed; trying again")
    else:
        raise AssertionError("three launches all ended before the kill landed")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert 2 <= state["step"] < STEPS and not (run / "adapters").exists()
    # The killed ranks can hold the run lock for a moment after the launcher is gone.
    _train(identities_dataset, run, cache, "--resume", "--wait-lock", "120")
    assert _losses(run) == _losses(ref)
    for r in (0, 1):
        assert _rank_rows(run, r) == _rank_rows(ref, r)
        assert json.loads((run / "ranks" / f"rank{r}.json").read_text()) == states[r]
    a, b = _adapter_tensors(run), _adapter_tensors(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_launched_world_size(monkeypatch, capsys):
    """The trainer counts the processes its launcher started (torchrun or mpirun), and says
    so when `accelerate launch --cpu --num_processes N` started only one."""
    from mgfr.train import _launched_world_size
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                 "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)
    assert _launched_world_size() == 1 and capsys.readouterr().err == ""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _launched_world_size() == 2
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert _launched_world_size() == 4
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert _launched_world_size() == 1
    err = capsys.readouterr().err
    assert err.startswith("warning: one training process") and err.count("\n") == 1
