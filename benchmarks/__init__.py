"""Benchmark restorers (MGFR, CodeFormer, ...) into DuckDB tables and leaderboards.

    from benchmarks import run_benchmark, create_metric, create_restorer, load_dataset
    run_benchmark("bicubic,codeformer:w=0.5", "reface-test", "data/reface", out="results")

Names are imported lazily, so ``python -m benchmarks --help`` starts without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "run_benchmark": "run", "Benchmark": "run", "format_summary": "run",
    "run_sweep": "sweep",
    "create_metric": "metrics", "list_metrics": "metrics", "Sample": "metrics",
    "MetricUnavailable": "metrics",
    "create_restorer": "restorers", "list_restorers": "restorers",
    "RestorerUnavailable": "restorers",
    "load_dataset": "datasets", "DatasetError": "datasets",
    "open_store": "store",
}

__all__ = ["Benchmark", "DatasetError", "MetricUnavailable", "RestorerUnavailable", "Sample",
           "create_metric", "create_restorer", "format_summary", "list_metrics",
           "list_restorers", "load_dataset", "open_store", "run_benchmark", "run_sweep"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
