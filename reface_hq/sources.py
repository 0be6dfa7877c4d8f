"""Sources: where raw photos come from, each row with provenance and an identity hint.

* :class:`FolderSource` - a local folder walked recursively in sorted order; identity from
  a folder level (``identity="folder"``, ``folder_level`` counted from the root: 0 is the
  first folder under it, -1 the file's own folder) or a regular expression over the path
  relative to the root (``identity="regex"``: the first non-empty group), or none.
* :class:`HFSource` - anything Hugging Face ``datasets`` reads: a ``save_to_disk`` folder,
  or Parquet files; the image column's bytes are written once under the work folder.
* :class:`URLListSource` - a CSV, Parquet or JSONL table with ``url`` and optional
  ``identity`` and ``license`` columns; the ``download`` stage fetches the bytes.

Source rows are sorted and their ids derive from (source name, origin), so the same
inputs always give the same rows in the same order.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import Path

from reface_core.atomic import safe_child, write_bytes_atomic
from reface_core.fsnames import name_id, path_text
from reface_core.imageio import IMAGE_SUFFIXES, readable_suffixes

from . import schema

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """``text`` as a file/folder name: letters, digits, ``_ . -`` only, never ``.``/``..``."""
    out = _SAFE.sub("_", str(text)).strip("._") or "unnamed"
    return out[:100]


def _pillow_opens(path: Path) -> bool:
    """True when Pillow recognises the file's content (reads the header only)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False


def _walk(root: Path):
    """Every non-hidden file under ``root``, sorted (hidden files and folders skipped)."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            yield p


class SourceError(ValueError):
    """A source is misconfigured or unreadable; the message names it."""


@dataclasses.dataclass
class FolderSource:
    root: str
    name: str | None = None
    identity: str = "none"          # "none" | "folder" | "regex"
    folder_level: int = 0
    pattern: str | None = None
    license: str | None = None
    include: str | None = None      # regex over the relative path: keep matching files only

    def __post_init__(self):
        if self.include is not None:
            try:
                re.compile(self.include)
            except re.error as e:
                raise SourceError(f"folder source {self.root}: bad include pattern "
                                  f"{self.include!r}: {e}") from None
        if self.identity not in ("none", "folder", "regex"):
            raise SourceError(f"folder source {self.root}: identity must be 'none', 'folder' "
                              f"or 'regex', got {self.identity!r}")
        if self.identity == "regex":
            if not self.pattern:
                raise SourceError(f"folder source {self.root}: identity='regex' needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise SourceError(f"folder source {self.root}: bad identity pattern "
                                  f"{self.pattern!r}: {e}") from None
        self.name = self.name or safe_name(Path(self.root).name)

    def _hint(self, rel: Path) -> str | None:
        if self.identity == "folder":
            folders = rel.parts[:-1]
            try:
                return folders[self.folder_level] if folders else None
            except IndexError:
                return None
        if self.identity == "regex":
            m = re.search(self.pattern, rel.as_posix())
            if m:
                groups = [g for g in m.groups() if g] or [m.group(0)]
                return groups[0]
        return None

    def rows(self, work_dir: Path | None = None) -> list[dict]:
        root = Path(self.root)
        if not root.is_dir():
            raise SourceError(f"folder source {self.root}: not a folder")
        out = []
        suffixes = readable_suffixes()
        for path in _walk(root):
            rel = path.relative_to(root)
            if self.include is not None and not re.search(self.include, rel.as_posix()):
                continue
            # A name that is not UTF-8 is kept exactly (path_text is reversible) and shown
            # with %XX escapes; the table and the ids stay valid UTF-8.
            # A named source prefixes its own name, so two sources whose folders share a
            # name never share origins (nor exclusion entries); unnamed, the folder's name.
            prefix = root.name if self.name == safe_name(root.name) else self.name
            origin = name_id(f"{prefix}/{rel.as_posix()}")
            hint = self._hint(rel)
            row = schema.new_row(
                row_id=schema.stable_id(self.name, origin), source=self.name, origin=origin,
                license=self.license, identity_hint=None if hint is None else name_id(hint),
                local_path=path_text(path))
            # Any format Pillow reads is scanned, by suffix or, failing that, by content;
            # every other file gets a status row rather than vanishing from the counts.
            if path.suffix.lower() not in suffixes and not _pillow_opens(path):
                row = schema.drop(row, "source", "not_an_image",
                                  f"{name_id(rel.as_posix())}: not an image format Pillow reads")
            out.append(row)
        if not any(schema.is_ok(r) for r in out):
            raise SourceError(f"folder source {self.root}: no image files found ("
                              f"{len(out)} other files; any format Pillow reads is accepted)")
        return out


def _read_table(path: Path):
    import pandas as pd
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: cannot read the table ({e})") from None
    raise SourceError(f"{path}: a URL list must be .csv, .jsonl or .parquet, got {suffix!r}")


def _text(value) -> str | None:
    if value is None:
        return None
    try:
        import pandas as pd
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


@dataclasses.dataclass
class URLListSource:
    path: str
    name: str | None = None
    url_column: str = "url"
    identity_column: str = "identity"
    license_column: str = "license"

    def __post_init__(self):
        self.name = self.name or safe_name(Path(self.path).stem)

    def rows(self, work_dir: Path | None = None) -> list[dict]:
        path = Path(self.path)
        if not path.is_file():
            raise SourceError(f"URL list {self.path}: file does not exist")
        df = _read_table(path)
        if self.url_column not in df.columns:
            raise SourceError(f"URL list {self.path}: no {self.url_column!r} column (columns: "
                              f"{list(df.columns)})")
        # Blank and repeated URLs get a status row each (never vanish): the table of a
        # build then accounts for every line of the list.
        seen: dict[str, int] = {}
        out = []
        for i, rec in enumerate(df.to_dict("records"), start=1):
            url = _text(rec.get(self.url_column))
            if not url:
                origin = f"{path.name}#row{i}"
                out.append(schema.drop(schema.new_row(
                    row_id=schema.stable_id(self.name, origin), source=self.name,
                    origin=origin), "source", "blank_url", f"row {i}: no URL"))
                continue
            if url in seen:
                out.append(schema.drop(schema.new_row(
                    row_id=schema.stable_id(self.name, url, f"row{i}"), source=self.name,
                    origin=url), "source", "duplicate_url",
                    f"row {i} repeats the URL of row {seen[url]}"))
                continue
            seen[url] = i
            try:
                scheme = urllib.parse.urlsplit(url).scheme.lower()
            except ValueError:  # e.g. "http://[bad": one bad line is a status row
                scheme = ""
            row = schema.new_row(
                row_id=schema.stable_id(self.name, url), source=self.name, origin=url,
                license=_text(rec.get(self.license_column)),
                identity_hint=_text(rec.get(self.identity_column)))
            if scheme not in ("http", "https"):
                row = schema.drop(row, "source", "bad_url",
                                  f"{url!r} is not an http(s) URL")
            out.append(row)
        if not seen:
            raise SourceError(f"URL list {self.path}: no URLs in column {self.url_column!r}")
        return out


@dataclasses.dataclass
class HFSource:
    path: str
    name: str | None = None
    image_column: str = "image"
    identity_column: str | None = None
    license_column: str | None = None
    split: str = "train"

    def __post_init__(self):
        self.name = self.name or safe_name(Path(self.path).stem)

    def _load(self):
        import datasets
        path = Path(self.path)
        try:
            if path.is_dir() and ((path / "dataset_info.json").exists()
                                  or (path / "state.json").exists()
                                  or (path / "dataset_dict.json").exists()):
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if self.split not in ds:
                        raise SourceError(f"dataset {self.path}: no split {self.split!r} "
                                          f"(has {list(ds)})")
                    ds = ds[self.split]
                return ds
            if path.is_dir():
                files = sorted(str(p) for p in path.rglob("*.parquet"))
            elif path.is_file():
                files = [str(path)]
            else:
                raise SourceError(f"dataset {self.path}: no such file or folder")
            if not files:
                raise SourceError(f"dataset {self.path}: no Parquet files and no "
                                  "save_to_disk dataset found")
            import pyarrow.parquet as pq
            if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
                raise SourceError(f"dataset {self.path}: the Parquet files hold no rows")
            return datasets.load_dataset("parquet", data_files=files, split="train")
        except SourceError:
            raise
        except (ValueError, OSError, FileNotFoundError,
                datasets.exceptions.DatasetGenerationError) as e:
            # DatasetGenerationError's own message is generic; its cause says what failed.
            cause = e.__cause__ or e
            raise SourceError(f"dataset {self.path}: cannot load with datasets "
                              f"({type(cause).__name__}: {cause})") from None

    def rows(self, work_dir: Path | None = None) -> list[dict]:
        import datasets
        if work_dir is None:
            raise SourceError("an HF source needs a work folder to write image bytes into")
        ds = self._load()
        if self.image_column not in ds.column_names:
            raise SourceError(f"dataset {self.path}: no image column {self.image_column!r} "
                              f"(columns: {ds.column_names})")
        for col in (self.identity_column, self.license_column):
            if col and col not in ds.column_names:
                raise SourceError(f"dataset {self.path}: no column {col!r} "
                                  f"(columns: {ds.column_names})")
        if isinstance(ds.features[self.image_column], datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        folder = Path(work_dir) / "sources" / self.name
        out = []
        for i, rec in enumerate(ds):
            value = rec[self.image_column]
            data, inner = None, None
            if isinstance(value, dict):
                data, inner = value.get("bytes"), value.get("path")
                if data is None and inner and Path(inner).is_file():
                    data = Path(inner).read_bytes()
            elif isinstance(value, (bytes, bytearray)):
                data = bytes(value)
            origin = f"{Path(self.path).name}#{i}"
            row = schema.new_row(
                row_id=schema.stable_id(self.name, origin), source=self.name, origin=origin,
                license=_text(rec.get(self.license_column)) if self.license_column else None,
                identity_hint=(_text(rec.get(self.identity_column))
                               if self.identity_column else None))
            if not data:
                row = schema.drop(row, "source", "no_image_bytes",
                                  f"row {i}: column {self.image_column!r} holds no image bytes")
            else:
                suffix = Path(inner).suffix.lower() if inner else ""
                dest = safe_child(folder, f"{i:08d}{suffix if suffix in IMAGE_SUFFIXES else '.img'}")
                # Compare contents, not sizes: an edited image of the same size (BMP, TIFF,
                # a same-length re-encode) would otherwise keep its stale copy.
                if not dest.is_file() or dest.stat().st_size != len(data) \
                        or dest.read_bytes() != data:
                    write_bytes_atomic(dest, data)
                row["local_path"] = str(dest)
            out.append(row)
        return out


SOURCES = {"folder": FolderSource, "urls": URLListSource, "hf": HFSource}


def parse_source(spec: str):
    """A source from a command-line spec: ``[KIND:]PATH[?key=value&...]``.

    KIND is ``folder``, ``urls`` or ``hf`` (guessed from PATH when left out). Keys are the
    source's fields, e.g. ``identity=folder&folder_level=0``,
    ``identity=regex&pattern=train/([^/]+)/``, ``license=CC-BY-4.0``, ``name=celeb``.
    """
    kind = None
    head, _, query = spec.partition("?")
    m = re.match(r"^(folder|urls|hf):(.*)$", head)
    if m:
        kind, head = m.group(1), m.group(2)
    path = Path(head).expanduser()
    if kind is None:
        if path.is_dir():
            is_hf = any((path / f).exists() for f in ("dataset_info.json", "state.json",
                                                      "dataset_dict.json"))
            kind = "hf" if is_hf else "folder"
        elif path.suffix.lower() in (".csv", ".jsonl", ".json"):
            kind = "urls"
        elif path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            try:
                names = pq.read_schema(path).names
            except (OSError, ValueError) as e:
                raise SourceError(f"source {spec!r}: cannot read {path} ({e})") from None
            kind = "urls" if "url" in names else "hf"
        else:
            raise SourceError(f"source {spec!r}: {path} is neither a folder nor a .csv, "
                              ".jsonl or .parquet file")
    cls = SOURCES[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key not in fields or key in ("root", "path"):
            raise SourceError(f"source {spec!r}: unknown option {key!r} for a {kind} source "
                              f"(options: {sorted(k for k in fields if k not in ('root', 'path'))})")
        if key == "folder_level":
            try:
                value = int(value)
            except ValueError:
                raise SourceError(f"source {spec!r}: folder_level must be an integer, "
                                  f"got {value!r}") from None
        kwargs[key] = value
    first = "root" if kind == "folder" else "path"
    return cls(**{first: str(path)}, **kwargs)
