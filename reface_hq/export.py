"""Publishing: Hugging Face Parquet shards with a dataset card, WebDataset tar shards, and
an upload wrapper.

``export(DIR, OUT)`` writes::

    OUT/README.md                          dataset card (YAML header + counts, provenance)
    OUT/data/<split>-<i>-of-<n>.parquet    image bytes + manifest columns, HF features
    OUT/wds/<split>-<i>.tar                <face_id>.png / .json / .identity.txt /
                                           .caption.txt per face

Every shard is written under a temporary name and renamed. The exclusion list is checked
again here: a photo listed after the build never reaches an export.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

from reface_core.atomic import atomic_path, safe_child, write_text_atomic

from . import schema
from .build import is_excluded
from .dataset import DatasetError, manifest_path, read_stats, verify

_META_COLUMNS = ("face_id", "identity", "split", "source", "origin", "license", "sha256",
                 "width", "height", "face_size", "det_score", "sharpness", "musiq",
                 "embedder", "caption", "prompt", "negative_attribute_prompt",
                 "negative_quality_prompt", "attributes")


#: What a face id may look like in an export: the builder writes ``<row id>-<index>``.
#: No dots (WebDataset splits keys at the first one), no separators, no ``..``, so a tar
#: entry ``<face_id>.png`` or a Parquet image path can never leave the extraction folder.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")


def check_face_ids(rows: list[dict]) -> None:
    """Refuse rows whose ``face_id`` is not a plain name (a tampered or foreign manifest):
    tar entry names and Parquet paths are derived from it."""
    for i, r in enumerate(rows):
        fid = r.get("face_id")
        if not isinstance(fid, str) or not _SAFE_ID.fullmatch(fid):
            shown = repr(fid[:80]) if isinstance(fid, str) else type(fid).__name__
            raise DatasetError(f"manifest row {i}: face_id {shown} is not a plain name (letters, "
                               "digits, '-' and '_', at most 200); refusing to export it as a "
                               "file name")


def _entry_name(face_id: str, ext: str) -> str:
    if not _SAFE_ID.fullmatch(face_id):  # checked for every row before any shard is written
        raise DatasetError(f"face_id {face_id[:80]!r} is not a plain name")
    return f"{face_id}.{ext}"


def _features():
    """HF features: a decoded ``image`` plus every manifest column with its Arrow type."""
    import datasets
    import pyarrow as pa
    columns = [c for c in schema.MANIFEST_COLUMNS if c != "image_path"]
    typed = datasets.Features.from_arrow_schema(
        pa.schema([schema.ROW_SCHEMA.field(c) for c in columns]))
    return datasets.Features({"image": datasets.Image(), **typed})


def _clean_folder(folder: Path, pattern: str) -> None:
    for p in folder.glob(pattern):
        p.unlink()


def export_parquet(rows: list[dict], root: Path, out: Path, shard_rows: int = 500) -> dict:
    import datasets
    import pyarrow.parquet as pq
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    _clean_folder(data, "*.parquet")
    features = _features()
    files = {}
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        n = max(1, -(-len(part) // shard_rows)) if part else 0
        files[split] = []
        for i in range(n):
            chunk = part[i * shard_rows:(i + 1) * shard_rows]
            records = {c: [] for c in features}
            for r in chunk:
                img = safe_child(root, r["image_path"])
                records["image"].append({"bytes": img.read_bytes(),
                                         "path": _entry_name(r["face_id"], "png")})
                for c in features:
                    if c != "image":
                        records[c].append(r.get(c))
            ds = datasets.Dataset.from_dict(records, features=features)
            name = f"{split}-{i:05d}-of-{n:05d}.parquet"
            # The Arrow table carries the HF features in its schema metadata, so the
            # Image column decodes on load_dataset("parquet", ...).
            with atomic_path(data / name) as tmp:
                pq.write_table(ds.data.table, tmp)
            files[split].append(f"data/{name}")
    return files


def export_webdataset(rows: list[dict], root: Path, out: Path, shard_rows: int = 500) -> dict:
    """Tar shards readable by ``webdataset.WebDataset``; keys are face ids."""
    wds = out / "wds"
    wds.mkdir(parents=True, exist_ok=True)
    _clean_folder(wds, "*.tar")
    files = {}
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        files[split] = []
        for i in range(-(-len(part) // shard_rows)):
            name = f"{split}-{i:05d}.tar"
            with atomic_path(wds / name) as tmp, tarfile.open(tmp, "w") as tar:
                for r in part[i * shard_rows:(i + 1) * shard_rows]:
                    meta = {c: r.get(c) for c in _META_COLUMNS}
                    entries = {
                        "png": safe_child(root, r["image_path"]).read_bytes(),
                        "json": json.dumps(meta, sort_keys=True, default=str).encode("utf-8"),
                        "caption.txt": (r.get("caption") or "").encode("utf-8"),
                        "identity.txt": r["identity"].encode("utf-8"),
                    }
                    for ext, payload in entries.items():
                        info = tarfile.TarInfo(_entry_name(r["face_id"], ext))
                        info.size = len(payload)
                        info.mtime = 0  # byte-identical shards for identical data
                        info.mode = 0o644
                        tar.addfile(info, io.BytesIO(payload))
            files[split].append(f"wds/{name}")
    return files


def dataset_card(rows: list[dict], stats: dict, build: dict, files: dict, name: str) -> str:
    identities = Counter(r["identity"] for r in rows)
    licenses = Counter(str(r.get("license")) for r in rows)
    sources = Counter(r["source"] for r in rows)
    lines = ["---",
             "configs:",
             "- config_name: default",
             "  data_files:"]
    for split, paths in files.items():
        if paths:
            lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += ["task_categories:", "- image-to-image", "tags:", "- faces",
              "- face-restoration", "- reference-guided", "---", "",
              f"# {name}", "",
              "Identity-grouped, FFHQ-aligned high-quality face photos for reference-guided "
              "face restoration (Reface-HQ layout): several photos per identity, so one photo "
              "can be restored with the others as references.", "",
              "## Contents", "",
              f"- faces: {len(rows)}",
              f"- identities: {len(identities)}"]
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        lines.append(f"- {split}: {len(part)} faces, {len({r['identity'] for r in part})} "
                     "identities (no identity is in both splits)")
    lines += ["", "| source | faces |", "|---|---|"]
    lines += [f"| {s} | {n} |" for s, n in sorted(sources.items())]
    lines += ["", "## Licenses", "",
              "Each row carries the license its source stated (`license`; `None` when the "
              "source stated none). Respect each photo's license.", "",
              "| license | faces |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(licenses.items())]
    lines += ["", "## Provenance", "",
              "Every row records `source`, `origin` (the URL or the path inside the source), "
              "`sha256` of the source bytes, the detector box and landmarks, quality scores "
              "and the identity embedding (`embedder` names the model).", "",
              "## How it was built", "",
              "Built with `python -m reface_hq build`: decode and validate -> detect and "
              "FFHQ-align -> quality filter (face size in the source, sharpness, colour, "
              "optional MUSIQ) -> perceptual hash and identity embedding -> exact and "
              "near-duplicate removal -> identity grouping and cleaning -> split by identity. Exclusion-list entries "
              "are removed at every output.", "",
              "Rows dropped per stage and why:", "",
              "| stage | reason | rows |", "|---|---|---|"]
    for stage, reasons in stats.get("dropped", {}).items():
        lines += [f"| {stage} | {reason} | {n} |" for reason, n in sorted(reasons.items())]
    cfg = {k: v for k, v in build.get("config", {}).items() if k != "sources"}
    lines += ["", "Build settings:", "", "```json", json.dumps(cfg, indent=2, sort_keys=True),
              "```", "", "## Columns", "", "| column | meaning |", "|---|---|", "| image | the "
              "aligned face (PNG) |"]
    lines += [f"| {c} | {schema.DESCRIPTIONS[c]} |" for c in schema.MANIFEST_COLUMNS
              if c != "image_path"]
    lines += ["", "## Loading", "", "```python", "import datasets",
              "ds = datasets.load_dataset('parquet', data_files={'train': 'data/train-*.parquet'})",
              "import webdataset as wds",
              "for sample in wds.WebDataset('wds/train-00000.tar'): ...", "```", ""]
    return "\n".join(lines)


def export(path: str | os.PathLike, out: str | os.PathLike, *, shard_rows: int = 500,
           exclusion: frozenset[str] | set[str] = frozenset(), formats=("parquet", "webdataset"),
           name: str | None = None) -> dict:
    """Export a built dataset; returns {format: {split: [files]}}. Card written last."""
    if int(shard_rows) < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {out} exists and is not a folder")
    root = manifest_path(path).parent
    problems = verify(root)
    if problems:
        raise DatasetError(f"{root}: refusing to export a dataset that fails verify "
                           f"({len(problems)} problems, first: {problems[0]})")
    import pyarrow.parquet as pq
    # pyarrow keeps nulls as None (pandas would turn null ints into NaN floats).
    rows = [r for r in pq.read_table(manifest_path(root)).to_pylist()
            if not is_excluded(r, exclusion)]
    check_face_ids(rows)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    if "parquet" in formats:
        done["parquet"] = export_parquet(rows, root, out, shard_rows)
    if "webdataset" in formats:
        done["webdataset"] = export_webdataset(rows, root, out, shard_rows)
    stats = read_stats(root)
    build = json.loads((root / "build.json").read_text())
    write_text_atomic(out / "README.md", dataset_card(
        rows, stats, build, done.get("parquet", {"train": [], "test": []}),
        name or f"Reface-HQ ({root.name})"))
    return done


def push_to_hub(export_dir: str | os.PathLike, repo_id: str, *, token: str | None = None,
                private: bool = True) -> str:
    """Upload an exported folder as a Hugging Face dataset repository; returns its URL."""
    from huggingface_hub import HfApi
    folder = Path(export_dir)
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise DatasetError(f"{export_dir}: not an export folder (run `reface_hq export` first)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                          commit_message="Upload Reface-HQ export")
    except _hub_errors() as e:
        # No network, no token, no access: one line naming the repo and the cause; the
        # local export is complete and stays.
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"push to Hugging Face dataset repo {repo_id} failed "
                           f"({type(e).__name__}: {cause}); the local export in "
                           f"{export_dir} is complete") from None
    return f"https://huggingface.co/datasets/{repo_id}"


def _hub_errors() -> tuple[type[BaseException], ...]:
    """The errors huggingface_hub raises for network, token and HTTP failures: OSError and
    the HTTP client's base error (httpx or requests, whichever its version uses)."""
    from huggingface_hub.errors import HfHubHTTPError
    return (OSError, *(c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError"))
