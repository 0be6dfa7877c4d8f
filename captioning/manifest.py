"""Annotate a Reface-HQ manifest in place: resumable, with a progress bar, atomic rewrite.

``annotate_manifest`` adds the columns of :data:`captioning.pipeline.OUTPUT_COLUMNS` to a
manifest (Parquet, CSV or JSONL). How it survives a kill:

1. every batch's raw backend results are appended to a progress file beside the manifest
   (``.<manifest name>.captioning.jsonl``, one JSON line per face, flushed and fsynced);
   its first line records the backend settings, and a rerun with other settings refuses
   to mix them (pass ``restart=True`` to start over);
2. a rerun skips faces already in the progress file, and faces the manifest already has
   annotated (``caption_status`` set) unless ``overwrite=True``;
3. at the end the whole manifest is written to a temporary name and renamed over the
   original, then the progress file is removed. A kill at any point leaves either the old
   manifest or the new one, never half of one, and no face is done twice or lost.

Raw per-backend results are stored (not the combined ones), so the precedence and the
prompt settings apply at merge time; changing them never needs the models again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reface_core.atomic import atomic_path, safe_child

from .attribute_values import attributes_from_json, attributes_to_json
from .extractors import FaceSample
from .pipeline import OUTPUT_COLUMNS, Captioner, fingerprint_of

KEY_COLUMNS = ("face_id", "image_path", "path")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}


class ManifestError(ValueError):
    """The manifest cannot be annotated; the message names the file and the problem."""


def manifest_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ManifestError(f"{path}: unsupported manifest type {path.suffix!r}; use "
                            f"{', '.join(sorted(FORMATS))}")
    return fmt


def read_manifest(path: str | os.PathLike):
    """The manifest as a pyarrow Table (Parquet read as is; CSV and JSONL through pandas)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; name the manifest file inside it "
                            "(e.g. manifest.parquet)")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest does not exist")
    fmt = manifest_format(path)
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        df = pd.read_csv(path) if fmt == "csv" else pd.read_json(path, lines=True)
        return pa.Table.from_pandas(df, preserve_index=False)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ManifestError(f"{path}: cannot read as {fmt} ({type(e).__name__}: {e})") from None


def write_manifest(table, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``table`` to ``path`` in the format its suffix says, atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = manifest_format(path)
    if fmt == "parquet" and metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): json.dumps(v, sort_keys=True).encode()
                     for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            table.to_pandas().to_csv(tmp, index=False)
        else:
            table.to_pandas().to_json(tmp, orient="records", lines=True, force_ascii=False)
    return path


def progress_path(manifest: Path) -> Path:
    return manifest.with_name(f".{manifest.name}.captioning.jsonl")


def _read_progress(path: Path, fingerprint: str) -> dict[str, dict]:
    """Done faces from the progress file; the last line may be cut short by a kill."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != fingerprint:
        raise ManifestError(
            f"{path}: progress of an earlier run with other backend settings "
            f"({header.get('fingerprint', 'unreadable')}); rerun with the same settings to "
            "resume it, or pass --restart to discard it")
    done: dict[str, dict] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            if number >= len(lines) - 1:
                break  # the line being written when the job was killed
            raise ManifestError(f"{path}, line {number}: corrupt progress line") from None
        done[item["key"]] = item
    return done


def _append(path: Path, items: Iterable[dict], fingerprint: str) -> None:
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        for item in items:
            f.write(json.dumps(item, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class AnnotateReport:
    manifest: Path
    rows: int              # rows in the manifest
    eligible: int          # rows with status "ok" (or all, without a status column)
    already_done: int      # skipped: annotated before or in the progress file
    processed: int         # faces run through the backends in this call
    ok: int                # eligible rows annotated with status "ok" after this call
    failed: int            # eligible rows whose annotation failed
    seconds: float

    def summary(self) -> str:
        return (f"{self.manifest}: {self.ok}/{self.eligible} faces annotated ok, "
                f"{self.failed} failed, {self.processed} processed now, "
                f"{self.already_done} already done ({self.seconds:.1f}s)")


def _is_set(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _recorded_config(table) -> dict | None:
    """The ``Captioner.config()`` an earlier run recorded in the Parquet metadata, if any."""
    raw = (table.schema.metadata or {}).get(b"captioning")
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _rebuild_prompts(captioner: Captioner, row: dict, values: dict, i: int) -> None:
    """New prompt settings applied to a face annotated before (no model runs)."""
    prompts = captioner.prompt_builder.build(attributes_from_json(row["attributes"]))
    values["prompt"][i] = prompts.positive
    values["negative_attribute_prompt"][i] = prompts.negative_attribute
    values["negative_quality_prompt"][i] = prompts.negative_quality
    if row.get("caption_source") == "template":
        values["caption"][i] = prompts.positive


def annotate_manifest(manifest: str | os.PathLike, captioner: Captioner, *,
                      batch_size: int = 16, overwrite: bool = False, restart: bool = False,
                      retry_failed: bool = False, limit: int | None = None,
                      aligned: bool = True, progress: bool = True,
                      images_root: str | os.PathLike | None = None) -> AnnotateReport:
    """Add attribute, caption and prompt columns to ``manifest`` (see module docstring).

    Image paths are read relative to ``images_root`` (default: the manifest's folder) and
    must stay inside it, as the ``reface_hq`` loaders require: an absolute path elsewhere or
    one that climbs out (``../``) is refused before any work, naming the row.

    ``aligned``: the manifest's images are FFHQ-aligned crops (Reface-HQ's are); False
    detects and aligns the largest face of each image first. ``limit`` stops after that
    many faces (the rest stay for the next run).
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    manifest = Path(manifest)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    table = read_manifest(manifest)
    columns = table.column_names
    key_column = next((c for c in KEY_COLUMNS if c in columns), None)
    path_column = next((c for c in ("image_path", "path") if c in columns), None)
    if path_column is None and any(e.needs_pixels for e in captioner.extractors):
        raise ManifestError(f"{manifest}: no 'image_path' (or 'path') column; columns are "
                            f"{', '.join(columns)}")
    if key_column is None:
        raise ManifestError(f"{manifest}: no 'face_id', 'image_path' or 'path' column to "
                            "identify faces")
    heavy = {"embedding"}  # never needed here; skip converting big list columns
    rows = table.select([c for c in columns if c not in heavy]).to_pylist()
    keys = [str(r[key_column]) for r in rows]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ManifestError(f"{manifest}: column {key_column!r} has duplicate values, e.g. "
                            f"{dupes}; faces must be identifiable to resume")
    for extractor in captioner.extractors:
        missing = [c for c in extractor.required_columns if c not in columns]
        if missing:
            raise ManifestError(f"{manifest}: backend {extractor.name!r} reads column(s) "
                                f"{missing}, which the manifest lacks; columns are "
                                f"{', '.join(columns)}")
    eligible = [i for i, r in enumerate(rows) if r.get("status", "ok") == "ok"]
    base = Path(images_root) if images_root is not None else manifest.parent
    if images_root is not None and not base.is_dir():
        raise ManifestError(f"images root {base} is not a folder")
    if path_column:
        for i in eligible:
            rel = rows[i].get(path_column)
            if not _is_set(rel):
                continue
            try:
                safe_child(base, str(rel))
            except ValueError:
                raise ManifestError(
                    f"{manifest}: row {keys[i][:80]!r}: {path_column} {str(rel)[:120]!r} is absolute "
                    f"or climbs out of the image folder {base} (paths are read relative to it; "
                    "pass --images-root to read images from another folder)") from None

    fingerprint = captioner.fingerprint()
    # Rows annotated by an earlier run are skipped; that is only right when that run used the
    # same backends. A Parquet manifest records its settings, so a change is caught here
    # instead of leaving old and new annotations mixed.
    previous = _recorded_config(table)
    rebuild_prompts = False
    if previous is not None and not overwrite and any(
            _is_set(rows[i].get("caption_status")) for i in eligible):
        changed_merge = (len(captioner.extractors) > 1
                         and list(previous.get("precedence", [])) != list(captioner.precedence))
        if fingerprint_of(previous) != fingerprint or changed_merge:
            now = json.loads(json.dumps(captioner.config(), sort_keys=True))
            differ = sorted(k for k in set(previous) | set(now)
                            if k != "prompts" and previous.get(k) != now.get(k))
            raise ManifestError(
                f"{manifest}: annotated before with other settings ({', '.join(differ)} "
                f"differ: was {', '.join(f'{k}={json.dumps(previous.get(k))}' for k in differ)}); "
                "pass --overwrite to redo its faces with the new ones")
        # Prompt settings alone changed: prompts are rebuilt from the stored attributes.
        rebuild_prompts = previous.get("prompts") != json.loads(
            json.dumps(captioner.config()["prompts"], sort_keys=True))
    ppath = progress_path(manifest)
    if restart and ppath.exists():
        ppath.unlink()
    done = _read_progress(ppath, fingerprint)

    def annotated_before(row) -> bool:
        status = row.get("caption_status")
        if overwrite or not _is_set(status):
            return False
        return not (retry_failed and status != "ok")

    todo = [i for i in eligible if keys[i] not in done and not annotated_before(rows[i])]
    already = len(eligible) - len(todo)
    if limit is not None:
        todo = todo[:max(0, int(limit))]

    with tqdm(total=len(todo), desc=f"captioning {manifest.name}", unit="face",
              disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            samples = []
            for i in chunk:
                row = rows[i]
                rel = row.get(path_column) if path_column else None
                path = safe_child(base, str(rel)) if _is_set(rel) else None
                samples.append(FaceSample(key=keys[i], path=path, aligned=aligned, row=row,
                                          error=None if (path or not path_column) else
                                          f"{keys[i]}: empty {path_column}"))
            per_backend, captions, errors = captioner.extract(samples)
            items = [{"key": s.key,
                      "backends": {b: json.loads(attributes_to_json(a)) for b, a in p.items()},
                      "captions": c, "errors": e}
                     for s, p, c, e in zip(samples, per_backend, captions, errors, strict=False)]
            _append(ppath, items, fingerprint)
            done.update({it["key"]: it for it in items})
            bar.update(len(chunk))

    # Merge: new results, else what the manifest had, else nothing.
    values = {c: [r.get(c) for r in rows] for c in OUTPUT_COLUMNS}
    todo_keys = {keys[j] for j in todo}
    processed = 0
    for i in eligible:
        item = done.get(keys[i])
        if item is None:
            if rebuild_prompts and _is_set(rows[i].get("attributes")):
                _rebuild_prompts(captioner, rows[i], values, i)
            continue
        processed += keys[i] in todo_keys
        ann = captioner.finish(keys[i], {b: attributes_from_json(a)
                                         for b, a in item["backends"].items()},
                               item["captions"], item["errors"])
        for c, v in ann.to_row().items():
            values[c][i] = v
    for c in OUTPUT_COLUMNS:
        array = pa.array([v if _is_set(v) else None for v in values[c]], pa.string())
        if c in table.column_names:
            table = table.set_column(table.column_names.index(c), c, array)
        else:
            table = table.append_column(c, array)
    write_manifest(table, manifest, metadata={"captioning": captioner.config()})
    if ppath.exists():
        ppath.unlink()
    statuses = [values["caption_status"][i] for i in eligible]
    return AnnotateReport(manifest=manifest, rows=len(rows), eligible=len(eligible),
                          already_done=already, processed=processed,
                          ok=sum(s == "ok" for s in statuses),
                          failed=sum(s == "failed" for s in statuses),
                          seconds=time.perf_counter() - t0)
