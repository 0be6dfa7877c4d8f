"""Executors run a chain of map stages over rows: a local process pool, or Ray Data.

Local executor, resumable after a kill at any point:

* the input rows are cut into fixed shards (``shard_size`` rows, in source order);
* every stage writes ``<work>/<NN>-<stage>-<key>/shard-<i>.parquet`` (temporary name, then
  rename), then ``shard-<i>.done.json`` (written last: a shard is done only when it
  exists), then ``_SUCCESS.json`` once all shards are done;
* ``key`` chains the digest of the input rows, the shard size and every stage's
  fingerprint (name, version, config), so a changed config never reuses stale shards and
  an unchanged one is never recomputed, even by another build pointing at the same work
  folder;
* a rerun skips done shards and redoes the others; side files (aligned crops) have
  deterministic names and are written atomically, so a redo overwrites, never duplicates.

Stages are run one after another (one progress bar per stage); within a stage shards run
in parallel in ``workers`` processes (spawned: no model state is shared or forked).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reface_core.atomic import atomic_path, write_json_atomic
from reface_core.fsnames import path_from_text
from reface_core.registry import Registry
from reface_core.workers import die_with_parent

from . import schema
from .stage_protocol import Stage


def _chain_key(previous: str, part: str) -> str:
    return hashlib.sha256(f"{previous}|{part}".encode()).hexdigest()


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _status_counts(rows: list[dict], stage_name: str) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("dropped_at") == stage_name:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def write_shard(stage_dir: Path, index: int, rows: list[dict], info: dict) -> None:
    name = _shard_name(index)
    with atomic_path(stage_dir / f"{name}.parquet") as tmp:
        pq.write_table(schema.to_table(rows), tmp)
    write_json_atomic(stage_dir / f"{name}.done.json", info)


def read_shard(stage_dir: Path, index: int) -> list[dict]:
    table = pq.read_table(stage_dir / f"{_shard_name(index)}.parquet", schema=schema.ROW_SCHEMA)
    return table.to_pylist()


def shard_done(stage_dir: Path, index: int) -> bool:
    """True when the shard is finished and readable. A shard damaged since (a bad disk
    block, a copy cut short, an edit) is removed here so that it is redone, not fatal."""
    name = _shard_name(index)
    done, data = stage_dir / f"{name}.done.json", stage_dir / f"{name}.parquet"
    if not (done.is_file() and data.is_file()):
        return False
    try:
        info = json.loads(done.read_text())
        rows = pq.read_table(data, schema=schema.ROW_SCHEMA).num_rows
        if not isinstance(info, dict) or info.get("rows_out", rows) != rows:
            raise ValueError(f"{rows} rows, done file says {info!r}")
        return True
    except (OSError, ValueError, pa.ArrowException) as e:
        warnings.warn(f"cached shard {data} is damaged ({type(e).__name__}: {e}); redoing it",
                      stacklevel=2)
        done.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        return False


def _run_shard(stage: Stage, in_dir: str, out_dir: str, index: int) -> dict:
    """Worker body: read one input shard, run the stage, write the output shard."""
    t0 = time.perf_counter()
    rows = read_shard(Path(in_dir), index)
    out = stage.process([schema.complete(r) for r in rows])
    info = {"rows_in": len(rows), "rows_out": len(out),
            "dropped": _status_counts(out, stage.name),
            "ok_out": sum(1 for r in out if schema.is_ok(r)),
            "seconds": round(time.perf_counter() - t0, 4)}
    write_shard(Path(out_dir), index, out, info)
    return info


def _files_digest(rows: list[dict]) -> str:
    """Size and mtime of every local file: rows name photos by path, so without this a
    photo replaced in place would keep the cached results of the old one."""
    h = hashlib.sha256()
    for row in rows:
        path = row.get("local_path")
        if not path:
            continue
        try:
            st = os.stat(path_from_text(path))
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


def _clean_temporaries(folder: Path) -> None:
    # A kill during atomic_path leaves ".<name>.*.tmp.<ext>" behind; harmless, but tidy.
    for p in folder.glob(".shard-*.tmp*"):
        p.unlink(missing_ok=True)


@dataclasses.dataclass
class StageReport:
    name: str
    folder: str
    rows_in: int
    rows_out: int
    ok_out: int
    dropped: dict
    seconds: float
    reused_shards: int


@dataclasses.dataclass
class LocalExecutor:
    """Run map stages over sharded rows in a local process pool (``workers=1``: inline)."""

    workers: int = 1
    shard_size: int = 32
    progress: bool = True

    def __post_init__(self):
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if int(self.shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    def run(self, stages: Sequence[Stage], rows: list[dict], work_dir: str | os.PathLike,
            *, overwrite: bool = False, redo: Callable[[dict], bool] | None = None
            ) -> tuple[list[dict], list[StageReport]]:
        """Run ``stages`` over ``rows``, reusing the shards cached in ``work_dir``.

        ``overwrite``: recompute every shard of every stage. ``redo``: a cached shard is
        recomputed at a stage when one of its rows dropped there satisfies ``redo`` (e.g. a
        download that timed out), and so at every later stage.
        """
        from tqdm.auto import tqdm

        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        rows = [schema.complete(r) for r in rows]
        n_shards = max(1, -(-len(rows) // self.shard_size))
        key = _chain_key(_chain_key(schema.rows_digest(rows), _files_digest(rows)),
                         f"shard_size={self.shard_size}")
        in_dir = work / f"00-input-{key[:12]}"
        # Checked shard by shard even when marked complete: a damaged one is rewritten.
        in_dir.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(in_dir)
        for i in range(n_shards):
            if not shard_done(in_dir, i):
                part = rows[i * self.shard_size:(i + 1) * self.shard_size]
                write_shard(in_dir, i, part, {"rows_in": len(part), "rows_out": len(part)})
        write_json_atomic(in_dir / "_SUCCESS.json", {"shards": n_shards, "rows": len(rows)})

        # Rows entering each shard of the current stage (progress is shown in rows).
        sizes = [len(rows[i * self.shard_size:(i + 1) * self.shard_size])
                 for i in range(n_shards)]
        reports: list[StageReport] = []
        # Every stage's folder up front: a shard redone at one stage is first marked not
        # done at every later stage too, so a kill in between never leaves a stale shard.
        stage_dirs = []
        for s, stage in enumerate(stages, start=1):
            key = _chain_key(key, stage.fingerprint())
            stage_dirs.append(work / f"{s:02d}-{stage.name}-{key[:12]}")
        redone: set[int] = set()
        pool = None
        try:
            for s, stage in enumerate(stages, start=1):
                out_dir = stage_dirs[s - 1]
                out_dir.mkdir(parents=True, exist_ok=True)
                _clean_temporaries(out_dir)
                todo = {i for i in range(n_shards) if not shard_done(out_dir, i)}
                if overwrite:
                    todo = set(range(n_shards))
                elif redo is not None:
                    todo |= {i for i in range(n_shards) if i not in todo and any(
                        r.get("dropped_at") == stage.name and redo(r)
                        for r in read_shard(out_dir, i))}
                todo |= redone
                for i in todo - redone:
                    for later in stage_dirs[s - 1:]:
                        (later / f"{_shard_name(i)}.done.json").unlink(missing_ok=True)
                redone |= todo
                todo = sorted(todo)
                bar = tqdm(total=sum(sizes), initial=sum(sizes) - sum(sizes[i] for i in todo),
                           unit="row", desc=f"{s}/{len(stages)} {stage.name}",
                           disable=not self.progress)
                if todo and self.workers > 1 and len(todo) > 1:
                    if pool is None:
                        # Workers die with this process: a killed build leaves none
                        # running (they would hold their memory and write on).
                        pool = cf.ProcessPoolExecutor(
                            max_workers=self.workers,
                            mp_context=multiprocessing.get_context("spawn"),
                            initializer=die_with_parent, initargs=(os.getpid(),))
                    futures = {pool.submit(_run_shard, stage, str(in_dir), str(out_dir), i): i
                               for i in todo}
                    for fut in cf.as_completed(futures):
                        fut.result()
                        bar.update(sizes[futures[fut]])
                else:
                    for i in todo:
                        _run_shard(stage, str(in_dir), str(out_dir), i)
                        bar.update(sizes[i])
                bar.close()
                infos = [json.loads((out_dir / f"{_shard_name(i)}.done.json").read_text())
                         for i in range(n_shards)]
                dropped: dict[str, int] = {}
                for info in infos:
                    for k, v in info.get("dropped", {}).items():
                        dropped[k] = dropped.get(k, 0) + v
                report = StageReport(
                    name=stage.name, folder=out_dir.name,
                    rows_in=sum(i["rows_in"] for i in infos),
                    rows_out=sum(i["rows_out"] for i in infos),
                    ok_out=sum(i.get("ok_out", 0) for i in infos), dropped=dropped,
                    seconds=round(sum(i.get("seconds", 0.0) for i in infos), 3),
                    reused_shards=n_shards - len(todo))
                write_json_atomic(out_dir / "_SUCCESS.json", dataclasses.asdict(report))
                reports.append(report)
                sizes = [info["rows_out"] for info in infos]
                in_dir = out_dir
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

        out_rows: list[dict] = []
        for i in range(n_shards):
            out_rows.extend(read_shard(in_dir, i))
        return out_rows, reports


@dataclasses.dataclass
class RayExecutor:
    """Run the same stage objects with Ray Data ``map_batches`` (``pip install '.[ray]'``).

    Ray handles scheduling and task retries on a cluster; shards are not checkpointed by
    us here (a rerun recomputes). ``address=None`` starts or joins a local Ray instance.
    """

    shard_size: int = 32
    num_cpus: int | None = None
    address: str | None = None
    progress: bool = True

    def run(self, stages: Sequence[Stage], rows: list[dict], work_dir: str | os.PathLike,
            *, overwrite: bool = False, redo: Callable[[dict], bool] | None = None
            ) -> tuple[list[dict], list[StageReport]]:
        # Nothing is cached under Ray: every run computes every row, which is what
        # ``overwrite`` and ``redo`` ask of the local executor.
        try:
            import ray
            import ray.data
        except ImportError as e:
            raise ImportError("the Ray executor needs Ray Data: pip install 'reface-toolkit[ray]' "
                              f"(or pip install 'ray[data]'); import failed: {e}") from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = bool(self.progress)
        t0 = time.perf_counter()
        ds = ray.data.from_arrow(schema.to_table(rows))
        for stage in stages:
            ds = ds.map_batches(stage, batch_format="pyarrow", batch_size=self.shard_size)
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        table = pa.concat_tables(tables) if tables else schema.to_table([])
        out_rows = table.cast(schema.ROW_SCHEMA).to_pylist()
        seconds = round(time.perf_counter() - t0, 3)
        reports = []
        for stage in stages:
            dropped = _status_counts(out_rows, stage.name)
            reports.append(StageReport(name=stage.name, folder="ray", rows_in=-1,
                                       rows_out=-1, ok_out=-1, dropped=dropped,
                                       seconds=seconds, reused_shards=0))
        return out_rows, reports


EXECUTORS = Registry("executor", {"local": LocalExecutor, "ray": RayExecutor})


def get_executor(name: str = "local", **options):
    return EXECUTORS.get(name)(**options)
