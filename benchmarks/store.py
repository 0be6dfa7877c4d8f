"""The results store: one DuckDB file per results folder, ``RESULTS_DIR/results.duckdb``.

Tables (the contract read by publishing and the user study; columns are only ever added):

``runs``            one row per (restorer config, dataset): ``run_id`` is derived from the
                    restorer name, its config hash and the dataset hash, so a rerun of the
                    same thing lands on the same row and reuses its outputs and scores.
``images``          the dataset's items: ``(dataset_hash, image_id)`` -> identity, LQ, GT and
                    reference paths. Paths are absolute, except files the harness wrote into
                    the results folder (synthesized LQ, aligned crops), which are relative to
                    the results folder so the folder can be moved.
``outputs``         ``(run_id, image_id)`` -> ``output_path`` (relative to the results folder:
                    ``outputs/<run_id>/<image_id>.png``), seconds spent restoring, status.
``image_scores``    ``(run_id, image_id, metric)`` -> value (NULL when unavailable), status
                    ``ok``/``unavailable``, reason, embedder (identity metrics).
``dataset_scores``  ``(run_id, metric)`` -> value, status, reason, n_images (FID).
``metrics``         the metric registry's data: direction, kind, description.
``video_scores``    ``(run_id, clip, track_id, metric)`` -> value, n_frames: the temporal
                    metrics of ``benchmarks.temporal`` per face track of a clip
                    (``python -m benchmarks.video``); per-frame PSNR/SSIM against GT clips
                    go to ``image_scores`` with ``image_id`` = ``<clip>/<frame>``.
``video_series``    ``(run_id, clip, track_id, frame, metric)`` -> value: the per-frame
                    warping error and identity cosine behind those means.
view ``leaderboard`` one row per (run, metric).

Every write is an ``INSERT OR REPLACE`` on the table's primary key inside a transaction,
so a process killed at any moment leaves either the whole batch or none of it, and a
rerun rewrites the same keys instead of adding rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

STORE_NAME = "results.duckdb"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        restorer VARCHAR,
        restorer_config VARCHAR,
        config_hash VARCHAR,
        dataset VARCHAR,
        dataset_hash VARCHAR,
        degradation_preset VARCHAR,
        degradation_seed BIGINT,
        code_version VARCHAR,
        packages VARCHAR,
        device VARCHAR,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        status VARCHAR,
        reason VARCHAR,
        dataset_config VARCHAR,
        n_images INTEGER)""",
    """CREATE TABLE IF NOT EXISTS images (
        dataset_hash VARCHAR,
        image_id VARCHAR,
        identity VARCHAR,
        lq_path VARCHAR,
        gt_path VARCHAR,
        ref_paths VARCHAR,
        PRIMARY KEY (dataset_hash, image_id))""",
    """CREATE TABLE IF NOT EXISTS outputs (
        run_id VARCHAR,
        image_id VARCHAR,
        output_path VARCHAR,
        seconds DOUBLE,
        status VARCHAR,
        error VARCHAR,
        PRIMARY KEY (run_id, image_id))""",
    """CREATE TABLE IF NOT EXISTS image_scores (
        run_id VARCHAR,
        image_id VARCHAR,
        metric VARCHAR,
        value DOUBLE,
        status VARCHAR,
        reason VARCHAR,
        embedder VARCHAR,
        PRIMARY KEY (run_id, image_id, metric))""",
    """CREATE TABLE IF NOT EXISTS dataset_scores (
        run_id VARCHAR,
        metric VARCHAR,
        value DOUBLE,
        status VARCHAR,
        reason VARCHAR,
        n_images INTEGER,
        PRIMARY KEY (run_id, metric))""",
    """CREATE TABLE IF NOT EXISTS metrics (
        metric VARCHAR PRIMARY KEY,
        direction VARCHAR,
        kind VARCHAR,
        description VARCHAR)""",
    # Video (benchmarks.video): per clip and face track, the temporal metrics of a run, and
    # their per-frame series (for the report's plots).
    """CREATE TABLE IF NOT EXISTS video_scores (
        run_id VARCHAR,
        clip VARCHAR,
        track_id INTEGER,
        metric VARCHAR,
        value DOUBLE,
        n_frames INTEGER,
        PRIMARY KEY (run_id, clip, track_id, metric))""",
    """CREATE TABLE IF NOT EXISTS video_series (
        run_id VARCHAR,
        clip VARCHAR,
        track_id INTEGER,
        frame INTEGER,
        metric VARCHAR,
        value DOUBLE,
        PRIMARY KEY (run_id, clip, track_id, frame, metric))""",
    # Image metrics: the mean over the images scored; unavailable rows are counted, and
    # the first reason is kept so a reader sees why without another query.
    """CREATE OR REPLACE VIEW leaderboard AS
    WITH img AS (
        SELECT run_id, metric,
               avg(value) FILTER (WHERE status = 'ok') AS value,
               count(*) FILTER (WHERE status = 'ok') AS n_scored,
               count(*) FILTER (WHERE status <> 'ok') AS n_unavailable,
               min(reason) FILTER (WHERE status <> 'ok') AS reason
        FROM image_scores GROUP BY run_id, metric),
    ds AS (
        SELECT run_id, metric, value,
               CASE WHEN status = 'ok' THEN n_images ELSE 0 END AS n_scored,
               CASE WHEN status = 'ok' THEN 0 ELSE 1 END AS n_unavailable,
               reason
        FROM dataset_scores),
    scores AS (SELECT * FROM img UNION ALL SELECT * FROM ds)
    SELECT r.dataset, r.dataset_hash, r.restorer, r.config_hash, r.run_id, s.metric,
           m.direction, s.value, s.n_scored, s.n_unavailable, s.reason
    FROM scores s JOIN runs r USING (run_id) LEFT JOIN metrics m USING (metric)""",
]

#: Column order of each table, for the insert helpers.
COLUMNS = {
    "runs": ("run_id", "restorer", "restorer_config", "config_hash", "dataset", "dataset_hash",
             "degradation_preset", "degradation_seed", "code_version", "packages", "device",
             "started_at", "finished_at", "status", "reason", "dataset_config", "n_images"),
    "images": ("dataset_hash", "image_id", "identity", "lq_path", "gt_path", "ref_paths"),
    "outputs": ("run_id", "image_id", "output_path", "seconds", "status", "error"),
    "image_scores": ("run_id", "image_id", "metric", "value", "status", "reason", "embedder"),
    "dataset_scores": ("run_id", "metric", "value", "status", "reason", "n_images"),
    "metrics": ("metric", "direction", "kind", "description"),
    "video_scores": ("run_id", "clip", "track_id", "metric", "value", "n_frames"),
    "video_series": ("run_id", "clip", "track_id", "frame", "metric", "value"),
}


def _arrow_type(column: str):
    import pyarrow as pa
    return {"value": pa.float64(), "seconds": pa.float64(), "n_images": pa.int32(),
            "n_frames": pa.int32(), "track_id": pa.int32(), "frame": pa.int32(),
            "degradation_seed": pa.int64(), "started_at": pa.timestamp("us"),
            "finished_at": pa.timestamp("us")}.get(column, pa.string())


class StoreError(RuntimeError):
    """The results store cannot be opened (locked by another process, not a DuckDB file)."""


def _json(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


class Store:
    """A DuckDB connection with the harness's tables and idempotent writes."""

    def __init__(self, results_dir: str | os.PathLike, *, read_only: bool = False):
        import duckdb

        self.root = Path(results_dir)
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / STORE_NAME
        if read_only and not self.path.is_file():
            raise StoreError(f"{self.path}: no results store here (run `python -m benchmarks.run"
                             f" --out {self.root}` first)")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            raise StoreError(f"{self.path}: cannot open the results store ({e})") from None
        except duckdb.Error as e:
            raise StoreError(f"{self.path}: not a readable DuckDB results store ({e})") from None
        if not read_only:
            for stmt in _SCHEMA:
                self.con.execute(stmt)

    # --- writing ---------------------------------------------------------------------
    @contextmanager
    def transaction(self):
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def upsert(self, table: str, rows: Iterable[dict]) -> int:
        """Insert or replace ``rows`` (dicts) by the table's primary key."""
        cols = COLUMNS[table]
        values = []
        for row in rows:
            unknown = set(row) - set(cols)
            if unknown:
                raise ValueError(f"table {table}: unknown columns {sorted(unknown)}")
            values.append([_json(row.get(c)) if c in ("restorer_config", "packages", "ref_paths",
                                                       "dataset_config") else row.get(c)
                           for c in cols])
        if not values:
            return 0
        sql_cols = ", ".join(cols)
        if len(values) == 1:
            self.con.execute(f"INSERT OR REPLACE INTO {table} ({sql_cols}) "
                             f"VALUES ({', '.join('?' * len(cols))})", values[0])
            return 1
        # Many rows: one INSERT ... SELECT over an Arrow table (executemany costs a
        # statement per row in DuckDB).
        import pyarrow as pa
        # Every column, typed, so a NULL replaces an old value rather than keeping it.
        batch = pa.table({c: pa.array([v[i] for v in values], type=_arrow_type(c))
                          for i, c in enumerate(cols)})
        self.con.register("_upsert_rows", batch)
        try:
            self.con.execute(f"INSERT OR REPLACE INTO {table} ({sql_cols}) "
                             f"SELECT {sql_cols} FROM _upsert_rows")
        finally:
            self.con.unregister("_upsert_rows")
        return len(values)

    def delete_run_scores(self, run_id: str, metrics: Sequence[str]) -> None:
        if metrics:
            marks = ", ".join("?" * len(metrics))
            self.con.execute(f"DELETE FROM image_scores WHERE run_id = ? AND metric IN ({marks})",
                             [run_id, *metrics])

    # --- reading ---------------------------------------------------------------------
    def query(self, sql: str, params: Sequence | None = None) -> list[dict]:
        cur = self.con.execute(sql, list(params or []))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]

    def run(self, run_id: str) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def done_outputs(self, run_id: str) -> dict[str, dict]:
        """image_id -> output row for the images this run has already restored."""
        rows = self.query("SELECT * FROM outputs WHERE run_id = ? AND status = 'ok'", [run_id])
        return {r["image_id"]: r for r in rows}

    def scored(self, run_id: str) -> dict[tuple[str, str], str | None]:
        """(image_id, metric) -> embedder, for the ``ok`` scores of this run."""
        rows = self.con.execute(
            "SELECT image_id, metric, embedder FROM image_scores "
            "WHERE run_id = ? AND status = 'ok'", [run_id]).fetchall()
        return {(a, b): e for a, b, e in rows}

    def leaderboard(self, run_ids: Sequence[str] | None = None) -> list[dict]:
        if run_ids:
            marks = ", ".join("?" * len(run_ids))
            return self.query(f"SELECT * FROM leaderboard WHERE run_id IN ({marks}) "
                              "ORDER BY restorer, run_id, metric", list(run_ids))
        return self.query("SELECT * FROM leaderboard ORDER BY dataset, restorer, run_id, metric")

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(results_dir: str | os.PathLike, *, read_only: bool = False) -> Store:
    """Open (creating when needed) ``results_dir/results.duckdb`` with the harness tables."""
    return Store(results_dir, read_only=read_only)
