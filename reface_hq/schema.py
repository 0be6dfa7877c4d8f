"""The one row schema that travels through the dataset pipeline.

Every row carries every column from the start (nulls until a stage fills them), so that
batches from any stage, source or executor concatenate, and Parquet shards written by
different processes share one schema. A row is one source photo until detection, then one
face. ``status`` is ``"ok"`` while a row is alive; a stage that drops a row sets
``status`` to a reason code, ``dropped_at`` to its own name and ``error`` to a sentence.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

OK = "ok"

_F32_LIST = pa.list_(pa.float32())

#: (name, type, description). Data, not code: the manifest, the dataset card and the
#: docs are generated from it.
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("row_id", pa.string(), "id of the source photo (deterministic from source and origin)"),
    ("face_id", pa.string(), "id of the face: <row_id>-<face index>"),
    ("source", pa.string(), "name of the source the photo came from"),
    ("origin", pa.string(), "source URL, or the photo's path relative to the source folder's parent"),
    ("license", pa.string(), "license of the photo when the source states one"),
    ("identity_hint", pa.string(), "identity given by the source (folder, file name, column)"),
    ("alt_identity_hints", pa.list_(pa.string()), "hints of exact/near duplicates merged into this row"),
    ("local_path", pa.string(), "where the photo bytes are read from during the build"),
    ("http_status", pa.int32(), "HTTP status of the last response (URL sources)"),
    ("content_type", pa.string(), "Content-Type of the response (URL sources)"),
    ("sha256", pa.string(), "sha256 of the source file bytes"),
    ("pixel_sha256", pa.string(), "sha256 of the decoded RGB pixels and their shape"),
    ("width", pa.int32(), "source image width"),
    ("height", pa.int32(), "source image height"),
    ("status", pa.string(), "'ok' for live rows, else the reason code of the drop"),
    ("dropped_at", pa.string(), "stage that dropped the row"),
    ("error", pa.string(), "why the row was dropped, in words"),
    ("n_faces", pa.int32(), "faces found in the source photo"),
    ("face_index", pa.int32(), "index of this face among them (by detector score)"),
    ("detector", pa.string(), "face detector backend"),
    ("det_score", pa.float32(), "detector confidence"),
    ("box", _F32_LIST, "face box x0, y0, x1, y1 in source pixels"),
    ("landmarks5", pa.list_(_F32_LIST), "5 landmarks (x, y) in source pixels"),
    ("face_size", pa.float32(), "face size in source pixels (shorter side of the box)"),
    ("aligned_path", pa.string(), "work file of the FFHQ-aligned crop"),
    ("aligned_size", pa.int32(), "side of the aligned crop"),
    ("sharpness", pa.float32(), "variance of the Laplacian of the centre of the aligned crop (256 px scale)"),
    ("grayscale", pa.bool_(), "whether the photo carries no colour"),
    ("colorfulness", pa.float32(), "Hasler-Suesstrunk colourfulness of the aligned crop"),
    ("musiq", pa.float32(), "MUSIQ (KonIQ) no-reference quality, when its weights exist"),
    ("phash", pa.string(), "64-bit perceptual hash of the aligned crop (hex)"),
    ("face_phash", pa.string(), "64-bit perceptual hash of the centre (the face itself) of the "
                                "aligned crop (hex): background-independent"),
    ("embedder", pa.string(), "identity embedder name; never compare vectors of different names"),
    ("embedding", _F32_LIST, "L2-normalised identity embedding"),
    ("duplicate_of", pa.string(), "face_id of the copy kept instead of this one"),
    ("identity", pa.string(), "identity of the face in the dataset"),
    ("identity_distance", pa.float32(), "cosine distance to the identity's robust centre"),
    ("split", pa.string(), "'train' or 'test' (by identity)"),
    ("image_path", pa.string(), "aligned face, relative to the dataset folder"),
    ("image_sha256", pa.string(), "sha256 of the aligned PNG"),
    ("attributes", pa.string(), "JSON attributes (captioning annotate)"),
    ("caption", pa.string(), "caption (captioning annotate)"),
    ("prompt", pa.string(), "attribute prompt (captioning annotate)"),
    ("negative_attribute_prompt", pa.string(), "negative attribute prompt (captioning annotate)"),
    ("negative_quality_prompt", pa.string(), "negative quality prompt (captioning annotate)"),
)

ROW_SCHEMA = pa.schema([pa.field(n, t) for n, t, _ in COLUMNS])
COLUMN_NAMES = tuple(n for n, _, _ in COLUMNS)
DESCRIPTIONS = {n: d for n, _, d in COLUMNS}

#: Columns that only matter while building (machine-local paths); not in the manifest.
WORK_ONLY = ("local_path", "aligned_path")
MANIFEST_COLUMNS = tuple(c for c in COLUMN_NAMES if c not in WORK_ONLY)


def new_row(**values: Any) -> dict:
    unknown = set(values) - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"unknown row columns {sorted(unknown)}; known: {COLUMN_NAMES}")
    row = dict.fromkeys(COLUMN_NAMES)
    row["status"] = OK
    row.update(values)
    return row


def complete(row: dict) -> dict:
    """``row`` with every schema column present (missing ones null)."""
    if len(row) == len(COLUMN_NAMES) and all(c in row for c in COLUMN_NAMES):
        return row
    out = dict.fromkeys(COLUMN_NAMES)
    out["status"] = OK
    out.update({k: v for k, v in row.items() if k in out})
    return out


def drop(row: dict, stage: str, reason: str, message: str) -> dict:
    """A copy of ``row`` marked as dropped by ``stage`` for ``reason``."""
    out = dict(row)
    out.update(status=reason, dropped_at=stage, error=message)
    return out


def is_ok(row: dict) -> bool:
    return row.get("status") == OK


def stable_id(*parts: str, n: int = 16) -> str:
    """A short deterministic hex id from strings (sha256, not Python's salted hash)."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:n]


def rows_digest(rows: list[dict], columns: tuple[str, ...] = COLUMN_NAMES) -> str:
    """sha256 over rows: the cache key of a stage's input."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.get(c) for c in columns], sort_keys=True, default=str)
                 .encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# --- batches ---------------------------------------------------------------------------
# A stage accepts a batch as a list of dicts, a pyarrow Table or a pandas DataFrame (what
# Ray Data hands to map_batches) and answers in the same kind.

def to_rows(batch) -> list[dict]:
    if isinstance(batch, list):
        return [complete(r) for r in batch]
    if isinstance(batch, pa.Table):
        return [complete(r) for r in batch.to_pylist()]
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        table = pa.Table.from_pandas(batch, preserve_index=False)
        return [complete(r) for r in table.to_pylist()]
    if isinstance(batch, dict):  # Ray's "numpy" batch format: column -> array
        names = list(batch)
        n = len(batch[names[0]]) if names else 0
        return [complete({k: _plain(batch[k][i]) for k in names}) for i in range(n)]
    raise TypeError(f"a batch must be a list of dicts, a pyarrow Table or a pandas "
                    f"DataFrame, got {type(batch).__name__}")


def _plain(value):
    import numpy as np
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([complete(r) for r in rows], schema=ROW_SCHEMA)


def like(rows: list[dict], batch):
    """``rows`` in the same batch kind as ``batch``."""
    if isinstance(batch, list):
        return rows
    table = to_table(rows)
    if isinstance(batch, pa.Table):
        return table
    if isinstance(batch, dict):
        return {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names}
    return table.to_pandas()
