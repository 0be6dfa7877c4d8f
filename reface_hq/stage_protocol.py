"""The stage protocol: a stage is a function from a batch of rows to a batch of rows.

A stage is a small dataclass whose fields are its whole configuration (the constructor is
the config), callable on a batch (list of dicts, pyarrow Table or pandas DataFrame) and
answering in the same kind, so the same object runs in the local process pool and in Ray
Data's ``map_batches``. Rows whose ``status`` is not ``"ok"`` pass through untouched; a
row that fails becomes a status row (reason code plus message), never an exception.
Models are loaded lazily, once per process, through :func:`process_cache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from . import schema

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def process_cache(key: str, factory: Callable[[], Any]) -> Any:
    """One object per process for ``key`` (models survive across batches and tasks)."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = factory()
        return _CACHE[key]


@dataclasses.dataclass
class Stage:
    """Base of the per-row (map) stages. Subclasses set ``name`` and implement
    :meth:`process_row` (one live row in, a list of rows out) or :meth:`process`."""

    name: ClassVar[str] = "stage"
    #: Exceptions a stage expects from bad input; anything else is a bug and is raised
    #: (a status row would hide it behind a count in stats.json).
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = (ValueError, OSError)

    def config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def fingerprint(self) -> str:
        """Changes whenever the stage's output could change: name, version, config."""
        blob = json.dumps({"stage": self.name, "version": getattr(self, "version", 1),
                           "config": self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def __call__(self, batch):
        rows = schema.to_rows(batch)
        return schema.like(self.process(rows), batch)

    def process(self, rows: list[dict]) -> list[dict]:
        out: list[dict] = []
        for row in rows:
            if not schema.is_ok(row):
                out.append(row)
                continue
            out.extend(self.safe_process_row(row))
        return out

    def safe_process_row(self, row: dict) -> list[dict]:
        from faces.detection import ModelLoadError
        from reface_core.assets import AssetNotFoundError
        try:
            return self.process_row(row)
        except (AssetNotFoundError, ModelLoadError):
            # A missing or broken model is the run's problem, not this row's (ModelLoadError
            # is a ValueError: caught below it would drop every photo and exit 0).
            raise
        except self.expected_errors as e:
            return [schema.drop(row, self.name, f"{self.name}_error",
                                f"{type(e).__name__}: {e}")]

    def process_row(self, row: dict) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError


def split_ok(rows: list[dict]) -> tuple[list[int], list[dict]]:
    idx = [i for i, r in enumerate(rows) if schema.is_ok(r)]
    return idx, [rows[i] for i in idx]
