"""The perf scripts measure what they say: the sampled photos are the ones timed."""

from __future__ import annotations

import pytest
from conftest import load_script


def _load(name: str):
    return load_script(f"perf/{name}.py")


@pytest.mark.realdata
@pytest.mark.parametrize("n", [3, 4, 24])
def test_reface_hq_bench_builds_exactly_the_sampled_photos(data_root, n):
    bench = _load("bench_reface_hq")
    rows = bench.sample_sources(data_root, n)
    assert len(rows) == n and len({r["source"] for r in rows}) == 3
    read = [r["local_path"] for src in bench.sample_build_sources(data_root, rows)
            for r in src.rows()]
    assert sorted(read) == sorted(r["local_path"] for r in rows)
