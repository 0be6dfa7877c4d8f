"""The dataset on disk: writing it, checking it, and loading it for training.

Layout of a built dataset ``DIR/``::

    images/<identity>/<face_id>.png   FFHQ-aligned faces
    manifest.parquet                  one row per kept face (see schema.MANIFEST_COLUMNS)
    dropped.parquet                   one status row per dropped photo/face, with reason
    stats.json                        counts dropped per stage and why, splits, timings
    build.json                        the build config; written last (the done-marker)

Everything is plain files plus Parquet: pandas, DuckDB (``SELECT ... FROM
'DIR/manifest.parquet'``) and Hugging Face ``datasets`` read it without our code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reface_core.atomic import (
    atomic_path,
    safe_child,
    write_bytes_atomic,
    write_json_atomic,
)

from . import schema
from .exclusion import ROW_COLUMNS, entry_digest, matched_entries, unmatched_warning

#: Columns every manifest must have (the project's manifest contract).
CONTRACT_COLUMNS = ("face_id", "image_path", "identity", "split", "source", "origin", "license",
                    "sha256", "width", "height", "embedder", "embedding", "status")
MANIFEST_SCHEMA = pa.schema([schema.ROW_SCHEMA.field(c) for c in schema.MANIFEST_COLUMNS])


class DatasetError(ValueError):
    """A dataset folder or manifest is missing or malformed; the message names it."""


def _write_parquet(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist([{c: r.get(c) for c in schema.MANIFEST_COLUMNS} for r in rows],
                                 schema=MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dataset(rows: list[dict], config, *, timings: dict | None = None,
                  seconds: float | None = None, exclusion_applied=()) -> dict:
    """Write images, manifest, dropped rows, stats and build.json (last) into config.out."""
    from tqdm.auto import tqdm

    out = Path(config.out)
    # The done-marker goes first and comes back last: a kill in between leaves no
    # build.json, so verify reports the folder as unfinished until a rerun completes.
    (out / "build.json").unlink(missing_ok=True)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    kept = sorted((r for r in rows if schema.is_ok(r)), key=lambda r: (r["identity"], r["face_id"]))
    wanted: set[Path] = set()
    manifest_rows = []
    for r in tqdm(kept, desc="write images", unit="face", disable=not config.progress):
        rel = f"images/{r['identity']}/{r['face_id']}.png"
        dest = safe_child(out, rel)
        data = Path(r["aligned_path"]).read_bytes()
        digest = _sha256(data)
        if not (dest.is_file() and _sha256(dest.read_bytes()) == digest):
            write_bytes_atomic(dest, data)
        wanted.add(dest)
        manifest_rows.append(dict(r, image_path=rel, image_sha256=digest))
    # Files from an earlier build with another config, or temporaries of a killed one.
    for p in sorted(images.rglob("*"), reverse=True):
        if p.is_file() and p.resolve() not in wanted:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    # Bytes of excluded photos that the build itself wrote (HF source copies, crops of a
    # photo excluded after an earlier build) are deleted; user files are never touched.
    work = config.work.resolve()
    for r in rows:
        if r.get("status") != "excluded":
            continue
        for key in ("aligned_path", "local_path"):
            p = Path(r[key]).resolve() if r.get(key) else None
            if p is not None and work in p.parents:
                p.unlink(missing_ok=True)

    dropped = sorted((r for r in rows if not schema.is_ok(r) and r.get("status") != "excluded"),
                     key=lambda r: (r["row_id"], r.get("face_index") or -1))
    _write_parquet(out / "manifest.parquet", manifest_rows)
    _write_parquet(out / "dropped.parquet", dropped)
    stats = compute_stats(rows, manifest_rows, config, timings=timings, seconds=seconds)
    write_json_atomic(out / "stats.json", stats)
    import reface_hq
    write_json_atomic(out / "build.json", {
        "config": config.to_json(), "complete": True, "reface_hq": reface_hq.__version__,
        "python": platform.python_version(),
        # hashes of the exclusion entries that removed photos (not the names they hold),
        # so verify and export can tell "already removed" from "matches nothing"
        "exclusion_applied": sorted(entry_digest(e) for e in exclusion_applied),
        "map_stages": {s.name: _public_config(s) for s in config.map_stages()},
        "global_stages": {s.name: s.config() for s in config.global_stages()}})
    return stats


def _public_config(stage) -> dict:
    """A stage's config for build.json: no machine paths, no exclusion entries."""
    cfg = {k: v for k, v in stage.config().items() if k != "folder"}
    if "exclusion" in cfg:
        cfg["exclusion"] = len(cfg["exclusion"])
    return cfg


def compute_stats(rows: list[dict], kept: list[dict], config, *, timings=None,
                  seconds=None) -> dict:
    stage_order = ["source", *[s.name for s in config.map_stages()],
                   *[s.name for s in config.global_stages()], "output"]
    dropped: dict[str, dict[str, int]] = {s: {} for s in stage_order}
    for r in rows:
        if not schema.is_ok(r):
            stage = r.get("dropped_at") or "unknown"
            dropped.setdefault(stage, {})
            dropped[stage][r["status"]] = dropped[stage].get(r["status"], 0) + 1
    photos = {r["row_id"] for r in rows}
    splits = {}
    for split in ("train", "test"):
        faces = [r for r in kept if r["split"] == split]
        splits[split] = {"faces": len(faces), "identities": len({r["identity"] for r in faces})}
    return {
        "photos_in": len(photos),
        "photos_per_source": dict(sorted(Counter(
            r["source"] for r in {r["row_id"]: r for r in rows}.values()).items())),
        "faces_kept": len(kept),
        "identities": len({r["identity"] for r in kept}),
        "faces_per_identity": dict(sorted(Counter(r["identity"] for r in kept).items())),
        "splits": splits,
        "kept_per_source": dict(sorted(Counter(r["source"] for r in kept).items())),
        "licenses": dict(sorted(Counter(str(r.get("license")) for r in kept).items())),
        "dropped": {k: v for k, v in dropped.items() if v},
        "dropped_total": sum(sum(v.values()) for v in dropped.values()),
        "embedder": sorted({r["embedder"] for r in kept if r.get("embedder")}),
        "seconds_per_stage": timings or {},
        "seconds_total": seconds,
    }


# --- reading -------------------------------------------------------------------------

def manifest_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.parquet"
    if not p.is_file():
        raise DatasetError(f"{path}: no manifest.parquet (is this a built Reface-HQ folder?)")
    return p


def load_manifest(path: str | os.PathLike):
    """The manifest as a pandas DataFrame (``path``: dataset folder or manifest file)."""
    import pandas as pd
    return pd.read_parquet(manifest_path(path))


def exclusion_warnings(path: str | os.PathLike, exclusion) -> list[str]:
    """One warning per exclusion entry that names no photo of the dataset at ``path`` and
    did not remove one during its build either (most likely misspelled)."""
    if not exclusion:
        return []
    root = manifest_path(path).parent
    rows = pq.read_table(manifest_path(root), columns=list(ROW_COLUMNS)).to_pylist()
    try:
        applied = set(json.loads((root / "build.json").read_text()).get("exclusion_applied", ()))
    except (OSError, ValueError):
        applied = set()
    found = matched_entries(rows, exclusion)
    return [unmatched_warning(e) for e in sorted(exclusion)
            if e not in found and entry_digest(e) not in applied]


def verify(path: str | os.PathLike, exclusion: frozenset[str] | set[str] = frozenset(),
           check_images: bool = True) -> list[str]:
    """Problems found in a built dataset (empty list: it is sound)."""
    problems: list[str] = []
    mpath = manifest_path(path)
    root = mpath.parent
    if not (root / "build.json").is_file():
        problems.append("build.json is missing: the build did not finish")
    table = pq.read_table(mpath)
    missing = [c for c in CONTRACT_COLUMNS if c not in table.column_names]
    if missing:
        return problems + [f"manifest lacks contract columns {missing}"]
    rows = table.to_pylist()
    ids = Counter(r["face_id"] for r in rows)
    problems += [f"face_id {k} appears {n} times" for k, n in ids.items() if n > 1]
    problems += [f"{r['face_id']}: status {r['status']!r}, expected 'ok'"
                 for r in rows if r["status"] != schema.OK]
    problems += [f"{r['face_id']}: split {r['split']!r}" for r in rows
                 if r["split"] not in ("train", "test")]
    by_identity: dict[str, set] = {}
    for r in rows:
        by_identity.setdefault(r["identity"], set()).add(r["split"])
    problems += [f"identity {k} is in both splits" for k, v in by_identity.items() if len(v) > 1]
    embedders = {r["embedder"] for r in rows}
    if len(embedders) > 1:
        problems.append(f"several embedders in one manifest: {sorted(embedders)}")
    dims = {len(r["embedding"] or []) for r in rows}
    if len(dims) > 1 or 0 in dims:
        problems.append(f"embeddings of lengths {sorted(dims)}")
    from .build import is_excluded
    problems += [f"{r['face_id']}: on the exclusion list ({r['origin']})" for r in rows
                 if is_excluded(r, exclusion)]
    if len(embedders) == 1 and len(dims) == 1 and 0 not in dims:
        problems += leakage(rows, **_leak_thresholds(root))
    if check_images:
        listed = set()
        for r in rows:
            try:
                p = safe_child(root, r["image_path"])
            except ValueError as e:
                problems.append(f"{r['face_id']}: {e}")
                continue
            listed.add(p)
            if not p.is_file():
                problems.append(f"{r['face_id']}: image {r['image_path']} is missing")
            elif r.get("image_sha256") and _sha256(p.read_bytes()) != r["image_sha256"]:
                problems.append(f"{r['face_id']}: image {r['image_path']} does not match its "
                                "sha256")
        images = root / "images"
        if images.is_dir():
            extra = [p for p in images.rglob("*") if p.is_file() and p.resolve() not in listed]
            problems += [f"{p.relative_to(root)} is not in the manifest" for p in sorted(extra)]
    return problems


def _leak_thresholds(root: Path) -> dict:
    """The merge distance of the build's embedder: the build's own (build.json) or, when
    that build did not merge (0) or is unreadable, the shipped preset's or the fallback."""
    from .build import FALLBACK_THRESHOLDS
    from .calibrate import CalibrationError, read_preset, shipped_preset
    value, embedder = 0.0, "dlib"
    try:
        info = json.loads((root / "build.json").read_text())
        value = float(info["global_stages"]["identity"]["merge_distance"])
        embedder = str(info["config"]["embedder"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if value <= 0:
        value = FALLBACK_THRESHOLDS["merge_distance"]
        preset = shipped_preset(embedder)
        if preset is not None:
            try:
                value = float(read_preset(preset)["thresholds"]["merge_distance"])
            except (CalibrationError, KeyError):
                pass
    return {"centre_distance": value}


def leakage(rows: list[dict], centre_distance: float, pair_distance: float = 0.02) -> list[str]:
    """One person on both sides of the split, judged by the embeddings, not the names.

    For each identity, its centre (mean of its unit embeddings) and its nearest face of
    the other split: a problem when another split's identity has a centre within
    ``centre_distance`` (the build's merge distance: they would have been merged) or a
    face within ``pair_distance`` of one of its faces (a near copy of the same face).
    """
    from .identity import _unit
    if not rows:
        return []
    emb = _unit(np.asarray([r["embedding"] for r in rows], dtype=np.float64))
    split = np.array([r["split"] for r in rows], dtype=object)
    ident = np.array([r["identity"] for r in rows], dtype=object)
    names, inv = np.unique(ident.astype(str), return_inverse=True)
    names = names.tolist()
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, inv, emb)
    centre_mat = _unit(sums)
    centres = dict(zip(names, centre_mat, strict=False))
    members = {k: np.nonzero(inv == n)[0] for n, k in enumerate(names)} if len(names) < 64 \
        else dict(zip(names, np.split(np.argsort(inv, kind="stable"),
                                      np.cumsum(np.bincount(inv))[:-1]), strict=False))
    side = {k: split[members[k][0]] for k in names}
    # Both tests are symmetric, so the identities of the smaller split are checked against
    # the other split: each leak is reported once, at a cost of O(test faces x faces).
    sides = sorted({*side.values()}, key=lambda v: ((split == v).sum(), v))
    if len(sides) < 2:
        return []
    small = sides[0]
    other = np.nonzero(split != small)[0]
    other_names = [n for n in names if side[n] != small]
    other_centres = np.stack([centres[n] for n in other_names])
    problems = []
    for k in (n for n in names if side[n] == small):
        mine = members[k]
        d = 1.0 - emb[mine] @ emb[other].T
        a, b = np.unravel_index(int(np.argmin(d)), d.shape)
        i, j = int(mine[a]), int(other[b])
        cd = 1.0 - other_centres @ centres[k]
        near = other_names[int(np.argmin(cd))]
        ncd = float(cd.min())
        if ncd <= centre_distance or d[a, b] <= pair_distance:
            twin = near if ncd <= centre_distance else str(ident[j])
            twin_d = float(1.0 - centres[twin] @ centres[k])
            problems.append(
                f"identity {k} ({side[k]}) and {twin} ({side[twin]}) look like one person: "
                f"centres {twin_d:.3f} apart (limit {centre_distance}); nearest faces "
                f"{rows[i]['face_id']} ({k}) and {rows[j]['face_id']} ({ident[j]}) at cosine "
                f"distance {d[a, b]:.3f} (limit {pair_distance})")
    return problems


def to_hf_dataset(path: str | os.PathLike, split: str | None = None):
    """The dataset as a Hugging Face ``datasets.Dataset`` with a decoded ``image`` column."""
    import datasets
    df = load_manifest(path)
    root = manifest_path(path).parent
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        df = df[df["split"] == split]
    df = df.reset_index(drop=True)
    # Paths come from the manifest file: keep them inside the dataset folder.
    df.insert(0, "image", [str(safe_child(root, p)) for p in df["image_path"]])
    ds = datasets.Dataset.from_pandas(df, preserve_index=False)
    return ds.cast_column("image", datasets.Image())


class FaceReferenceDataset:
    """PyTorch dataset of ``(target, references, identity, caption)`` for reference-guided
    restoration training.

    ``target``: (3, S, S) float tensor in [0, 1]; ``references``: (R, 3, S, S), other
    photos of the same identity drawn deterministically from ``seed`` and the index
    (with replacement when the identity has fewer than R others). Faces whose identity has
    no other photo in the split are left out (they cannot have a reference).
    """

    def __init__(self, path: str | os.PathLike, split: str | None = "train",
                 n_references: int = 1, size: int | None = None, seed: int = 0):
        if n_references < 1:
            raise ValueError(f"n_references must be >= 1, got {n_references}")
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        df = load_manifest(path)
        self.root = manifest_path(path).parent
        if split is not None:
            df = df[df["split"] == split]
        counts = df["identity"].value_counts()
        df = df[df["identity"].map(counts) >= 2].sort_values(["identity", "face_id"])
        self.items = df[["face_id", "image_path", "identity"]].to_dict("records")
        captions = df["caption"] if "caption" in df else [None] * len(df)
        for item, cap in zip(self.items, captions, strict=False):
            item["caption"] = cap if isinstance(cap, str) else ""
        self.by_identity: dict[str, list[int]] = {}
        for k, item in enumerate(self.items):
            self.by_identity.setdefault(item["identity"], []).append(k)
        self.n_references = n_references
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def _tensor(self, k: int):
        import torch

        from reface_core.imageio import load_image
        # Paths come from the manifest file: keep them inside the dataset folder.
        img = load_image(safe_child(self.root, self.items[k]["image_path"]))
        if self.size is not None and img.shape[0] != self.size:
            import cv2
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        # load_image may hand back a read-only view; torch wants a writable buffer.
        return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float() / 255.0

    def references_of(self, index: int) -> list[int]:
        item = self.items[index]
        others = [k for k in self.by_identity[item["identity"]] if k != index]
        rng = np.random.default_rng([self.seed, index])
        replace = len(others) < self.n_references
        return [int(k) for k in rng.choice(others, size=self.n_references, replace=replace)]

    def __getitem__(self, index: int):
        import torch
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        refs = torch.stack([self._tensor(k) for k in self.references_of(index)])
        item = self.items[index]
        return self._tensor(index), refs, item["identity"], item["caption"]


def read_stats(path: str | os.PathLike) -> dict:
    p = Path(path)
    p = p / "stats.json" if p.is_dir() else p
    if not p.is_file():
        raise DatasetError(f"{path}: no stats.json")
    try:
        stats = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{p}: cannot read as JSON ({e})") from None
    if not isinstance(stats, dict):
        raise DatasetError(f"{p}: expected a JSON object, got {type(stats).__name__}")
    return stats


# --- training ----------------------------------------------------------------------

#: Cache file of the identity embeddings, inside the cache folder.
IDENTITY_CACHE_FILE = "identity_embeddings.safetensors"


def identity_cache_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / IDENTITY_CACHE_FILE


def load_identity_cache(root: Path, face_rows: list[dict], embedder, cache_dir: str | os.PathLike,
                        *, progress: bool = False) -> tuple[dict[str, np.ndarray], bool]:
    """Identity embedding of every face in ``face_rows``, from the cache or computed.

    The cache (safetensors: one (N, dim) tensor, metadata naming the embedder, its
    dimension and a digest of the face ids and image hashes) is rebuilt when the embedder
    or the faces change, never reused across embedders (their vectors live in different
    spaces). When the manifest's own ``embedding`` column comes from the same embedder it
    is used as is. Returns ``({face_id: vector}, rebuilt)``.
    """
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from reface_core.imageio import load_image

    ids = [r["face_id"] for r in face_rows]
    h = hashlib.sha256()
    for r in face_rows:
        h.update(f"{r['face_id']}\x1f{r.get('image_sha256') or r['image_path']}\n".encode())
    digest = h.hexdigest()
    path = identity_cache_path(cache_dir)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("embedder") == embedder.name and meta.get("faces_sha256") == digest:
                    vectors = f.get_tensor("embeddings").numpy()
                    return dict(zip(json.loads(meta["face_ids"]), vectors, strict=False)), False
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
            pass  # a torn or foreign file is rebuilt, not trusted
    from tqdm.auto import tqdm
    vectors = []
    if all(r.get("embedder") == embedder.name and r.get("embedding") is not None
           and len(r["embedding"]) for r in face_rows):
        # The build embedded these very faces with this embedder (faces/, same crops):
        # copy its vectors rather than decode and embed every image again.
        face_rows, vectors = [], [np.stack([np.asarray(r["embedding"], dtype=np.float32)
                                            for r in face_rows])]
    for i in tqdm(range(0, len(face_rows), 32), desc=f"identity embeddings ({embedder.name})",
                  disable=not progress):
        batch = [load_image(safe_child(root, r["image_path"])) for r in face_rows[i:i + 32]]
        vectors.append(np.asarray(embedder.embed(batch), dtype=np.float32))
    table = (np.concatenate(vectors) if vectors
             else np.zeros((0, int(getattr(embedder, "dim", 0))), dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"embedder": embedder.name, "dim": str(table.shape[1]), "faces_sha256": digest,
            "face_ids": json.dumps(ids)}
    with atomic_path(path) as tmp:
        save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(table))}, str(tmp),
                  metadata=meta)
    return dict(zip(ids, table, strict=False)), True


class FaceTrainingDataset:
    """PyTorch dataset for MGFR training: one dict per face.

    Keys: ``target`` (3, S, S) float in [0, 1]; ``references`` (R, 3, S, S), other photos
    of the same identity; ``reference_embeddings`` (R, dim) identity embeddings of those
    references (from the cache, when an embedder is given); ``face_id``, ``identity``,
    ``prompt``, ``negative_attribute_prompt``, ``negative_quality_prompt``, ``index``,
    ``epoch``, ``flipped``, and ``reference_indices``/``reference_flipped`` (which faces of
    this dataset the references are and whether each is flipped: what the training step's
    latent cache reads).

    References are redrawn every epoch (:meth:`set_epoch`) from ``(seed, epoch, index)``
    without replacement while the identity has enough other photos. ``flip``: a horizontal
    flip of the target (and, independently, of each reference) with probability 0.5,
    seeded the same way. Faces whose identity has a single photo in the split are left out;
    a split with no identity of two photos is an error (no reference can be drawn).

    ``embedder``: a ``faces`` embedder name or instance (None: no embeddings); vectors are
    cached in ``cache_dir`` (default ``DIR/cache``) and rebuilt when the embedder changes.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = "train",
                 n_references: int = 1, size: int | None = None, seed: int = 0,
                 flip: bool = False, embedder=None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False):
        if n_references < 1:
            raise ValueError(f"n_references must be >= 1, got {n_references}")
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        if size is not None and int(size) < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        df = load_manifest(path)
        self.root = manifest_path(path).parent
        all_rows = df.sort_values(["identity", "face_id"]).to_dict("records")
        if split is not None:
            df = df[df["split"] == split]
        counts = df["identity"].value_counts()
        df = df[df["identity"].map(counts) >= 2].sort_values(["identity", "face_id"])
        if df.empty:
            where = f"split {split!r} of " if split else ""
            raise DatasetError(f"{where}{self.root}: no identity has two photos, so no face has "
                               "a reference (Reface-HQ training needs >= 2 photos per identity)")
        from captioning.prompts import DEFAULT_NEGATIVE_QUALITY
        default_nq = ", ".join(DEFAULT_NEGATIVE_QUALITY)
        self.items = []
        def text(r: dict, key: str, default: str = "") -> str:
            return r[key] if isinstance(r.get(key), str) else default

        for r in df.to_dict("records"):
            self.items.append({
                "face_id": r["face_id"], "image_path": r["image_path"], "identity": r["identity"],
                "image_sha256": r.get("image_sha256") if isinstance(r.get("image_sha256"), str)
                else None,
                "prompt": text(r, "prompt", text(r, "caption")),
                "negative_attribute_prompt": text(r, "negative_attribute_prompt"),
                "negative_quality_prompt": text(r, "negative_quality_prompt", default_nq)})
        self.by_identity: dict[str, list[int]] = {}
        for k, item in enumerate(self.items):
            self.by_identity.setdefault(item["identity"], []).append(k)
        self.n_references = int(n_references)
        self.size = None if size is None else int(size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.epoch = 0
        self.embedder_name = None
        self.embedding_dim = None
        self.embeddings: dict[str, np.ndarray] | None = None
        self.cache_rebuilt = False
        if embedder is not None:
            if isinstance(embedder, str):
                from faces.embedding import get_embedder
                embedder = get_embedder(embedder)
            cache = Path(cache_dir) if cache_dir is not None else self.root / "cache"
            # All faces of the folder share one cache, whatever split this dataset reads.
            self.embeddings, self.cache_rebuilt = load_identity_cache(
                self.root, all_rows, embedder, cache, progress=progress)
            self.embedder_name = embedder.name
            self.embedding_dim = int(next(iter(self.embeddings.values())).shape[0])

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw new references (and flips) for ``epoch``; call before each epoch."""
        self.epoch = int(epoch)

    def _rng(self, index: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, purpose])

    #: decoded faces are kept in memory when all of them at the dataset's size fit in this
    #: (a 64 px training run decodes each 512 px PNG once instead of every step)
    IMAGE_CACHE_BYTES = 256 * 2 ** 20

    def image(self, k: int) -> np.ndarray:
        """Face ``k`` as (S, S, 3) uint8 at the dataset's size (read-only when cached)."""
        from reface_core.imageio import load_image
        cache = self.__dict__.setdefault("_image_cache", {})
        if k in cache:
            return cache[k]
        # Paths come from the manifest file: keep them inside the dataset folder.
        img = load_image(safe_child(self.root, self.items[k]["image_path"]))
        if self.size is not None and img.shape[:2] != (self.size, self.size):
            import cv2
            inter = cv2.INTER_AREA if img.shape[0] > self.size else cv2.INTER_CUBIC
            img = cv2.resize(img, (self.size, self.size), interpolation=inter)
        if self.size is not None and self.size ** 2 * 3 * len(self.items) <= self.IMAGE_CACHE_BYTES:
            img = np.ascontiguousarray(img)
            img.flags.writeable = False
            cache[k] = img
        return img

    def _tensor(self, k: int, flip: bool):
        import torch
        img = self.image(k)
        if flip:
            img = img[:, ::-1]
        # load_image may hand back a read-only view; torch wants a writable buffer.
        return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float() / 255.0

    def references_of(self, index: int) -> list[int]:
        """Indices of the references of face ``index`` in the current epoch."""
        item = self.items[index]
        others = [k for k in self.by_identity[item["identity"]] if k != index]
        replace = len(others) < self.n_references
        rng = self._rng(index, 0)
        return [int(k) for k in rng.choice(others, size=self.n_references, replace=replace)]

    def __getitem__(self, index: int) -> dict:
        import torch
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        item = self.items[index]
        refs = self.references_of(index)
        flips = (self._rng(index, 1).random(1 + len(refs)) < 0.5) if self.flip \
            else np.zeros(1 + len(refs), dtype=bool)
        out = {
            "target": self._tensor(index, bool(flips[0])),
            "references": torch.stack([self._tensor(k, bool(f)) for k, f in zip(refs, flips[1:], strict=False)]),
            "face_id": item["face_id"], "identity": item["identity"],
            "prompt": item["prompt"],
            "negative_attribute_prompt": item["negative_attribute_prompt"],
            "negative_quality_prompt": item["negative_quality_prompt"],
            "reference_ids": [self.items[k]["face_id"] for k in refs],
            "reference_indices": [int(k) for k in refs],
            "reference_flipped": [bool(f) for f in flips[1:]],
            "index": index, "epoch": self.epoch, "flipped": bool(flips[0]),
        }
        if self.embeddings is not None:
            out["reference_embeddings"] = torch.from_numpy(np.stack(
                [self.embeddings[self.items[k]["face_id"]] for k in refs]).astype(np.float32))
        return out
