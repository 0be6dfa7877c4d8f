"""The perf scripts measure what they say: the sampled photos are the ones timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.realdata
@pytest.mark.parametrize("n", [3, 4, 24])
def test_reface_hq_bench_builds_exactly_the_sampled_photos(data_root, n):
    bench = _load("bench_reface_hq")
    rows = bench.sample_sources(data_root, n)
    assert len(rows) == n and len({r["source"] for r in rows}) == 3
    read = [r["local_path"] for src in bench.sample_build_sources(data_root, rows)
            for r in src.rows()]
    assert sorted(read) == sorted(r["local_path"] for r in rows)
