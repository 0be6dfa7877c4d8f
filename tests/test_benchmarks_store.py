"""The results store: idempotent writes and the leaderboard view."""

from __future__ import annotations

import pytest

from benchmarks.store import StoreError, open_store


def _scores(store, values):
    store.upsert("image_scores", [{"run_id": "r1", "image_id": i, "metric": "psnr", "value": v,
                                       "status": "ok" if v is not None else "unavailable",
                                       "reason": None if v is not None else "no GT"}
                                  for i, v in values])


def test_upsert_replaces_by_key_and_leaderboard_means(tmp_path):
    s = open_store(tmp_path)
    with s.transaction():
        s.upsert("runs", [{"run_id": "r1", "restorer": "bicubic", "restorer_config": {"size": None},
                               "config_hash": "abc", "dataset": "reface-test", "dataset_hash": "d1",
                               "status": "done"}])
        s.upsert("metrics", [{"metric": "psnr", "direction": "higher", "kind": "image", "description": ""}])
        _scores(s, [("a", 20.0), ("b", 30.0), ("c", None)])
    with s.transaction():  # a rerun writes the same keys again
        _scores(s, [("a", 22.0), ("b", 30.0), ("c", None)])
    s.close()
    s = open_store(tmp_path)
    assert s.query("SELECT count(*) AS n FROM image_scores")[0]["n"] == 3
    (row,) = s.leaderboard()
    assert row["value"] == pytest.approx(26.0)
    assert (row["n_scored"], row["n_unavailable"], row["reason"]) == (2, 1, "no GT")
    assert row["direction"] == "higher" and row["restorer"] == "bicubic"
    s.close()


def test_rolled_back_transaction_leaves_nothing(tmp_path):
    s = open_store(tmp_path)
    with pytest.raises(RuntimeError), s.transaction():
        _scores(s, [("a", 1.0)])
        raise RuntimeError("killed")
    assert s.query("SELECT count(*) AS n FROM image_scores")[0]["n"] == 0
    s.close()


def test_unknown_column_and_missing_store_are_errors(tmp_path):
    s = open_store(tmp_path)
    with pytest.raises(ValueError, match="unknown columns"):
        s.upsert("outputs", [{"run_id": "r", "image_id": "a", "colour": "red"}])
    s.close()
    with pytest.raises(StoreError, match="no results store"):
        open_store(tmp_path / "elsewhere", read_only=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.duckdb").write_bytes(b"not a database")
    with pytest.raises(StoreError, match="results.duckdb"):
        open_store(tmp_path / "bad")


def test_batch_upsert_replaces_every_column(tmp_path):
    s = open_store(tmp_path)
    rows = [{"run_id": "r", "image_id": i, "metric": "ssim", "value": None, "status": "unavailable",
                 "reason": "weights missing", "embedder": None} for i in "abc"]
    s.upsert("image_scores", rows)
    s.upsert("image_scores", [dict(r, value=0.5, status="ok", reason=None) for r in rows])
    got = s.query("SELECT value, status, reason FROM image_scores")
    assert got == [{"value": 0.5, "status": "ok", "reason": None}] * 3
    s.close()
