"""Benchmark datasets: a registry of layouts, each item an LQ face with optional GT and references.

=============  =========================================================================
name           layout of ``--data DIR``
=============  =========================================================================
reface-test    a Reface-HQ folder (``manifest.parquet``): its ``test`` split is the GT; LQ
               is synthesized with a named ``degradations`` preset and seed (records kept
               beside the LQ); references are other faces of the same identity in the split
               (rule ``same-identity-next-k``: the k faces that follow this one in face_id
               order, cyclically).
paired         ``DIR/lq/`` and ``DIR/gt/`` matched by relative path without suffix (the
               CelebA-Test layout); optional ``DIR/ref/<identity>/`` (CelebRef-HQ style),
               where the identity is the first folder under ``lq/`` (or the file stem).
lq-only        a folder of aligned LQ faces (WebPhoto-, LFW-, WIDER-, CelebChild-Test), or
               ``DIR/lq/`` with an optional ``DIR/ref/<identity>/``; no GT.
photos         whole (unaligned) photos: every face is detected and FFHQ-aligned by
               ``faces`` (crops cached under the results folder), restored, and pasted back.
video          a folder of clips, GT clips of the same names in ``DIR/gt/`` when there are
               some: each item is a clip, restored whole and scored over time and per
               frame (``benchmarks.video``).
=============  =========================================================================

Every dataset has a content hash over the bytes of its inputs and the settings that make
its items (preset, seed, reference rule, detector, size): two runs share a ``dataset_hash``
only when they saw the same pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from reface_core.atomic import safe_child, write_json_atomic
from reface_core.fsnames import name_id, path_text, shown
from reface_core.imageio import iter_image_files, load_image, save_image
from reface_core.registry import Registry, UnknownNameError


class DatasetError(ValueError):
    """A dataset name, folder or option is wrong; the message names it."""


class UnknownDatasetError(UnknownNameError, DatasetError):
    """Neither a registered dataset name nor an existing folder."""


@dataclasses.dataclass
class Item:
    """One benchmark input. Paths are absolute, or relative to the results folder when the
    harness wrote the file (synthesized LQ, aligned crops)."""

    image_id: str
    lq_path: str
    gt_path: str | None = None
    ref_paths: list[str] = dataclasses.field(default_factory=list)
    identity: str | None = None
    photo: dict | None = None  # whole photos: {"path", "face_index", "matrix"}

    def row(self, dataset_hash: str) -> dict:
        """The store's row; a path that is not UTF-8 is stored as a ``file://`` URI
        (``reface_core.fsnames.path_from_text`` reads it back)."""
        return {"dataset_hash": dataset_hash, "image_id": self.image_id,
                "identity": self.identity, "lq_path": path_text(self.lq_path),
                "gt_path": None if self.gt_path is None else path_text(self.gt_path),
                "ref_paths": [path_text(p) for p in self.ref_paths]}


@dataclasses.dataclass
class BenchmarkDataset:
    name: str
    root: Path
    items: list[Item]
    dataset_hash: str
    config: dict
    degradation_preset: str | None = None
    degradation_seed: int | None = None

    @property
    def has_gt(self) -> bool:
        return any(i.gt_path for i in self.items)


def _sha_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _digest(config: dict, files: list[tuple[str, Path | None]]) -> str:
    """sha256 over the config (JSON) and every (id, file bytes) pair, in order."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key, path in files:
        h.update(b"\0" + key.encode() + b"\0")
        if path is not None:
            _sha_file(path, h)
    return h.hexdigest()


def _image_id(root: Path, path: Path) -> str:
    """The relative path without suffix; bytes that are not UTF-8 as ``%XX``."""
    return name_id(path.relative_to(root).with_suffix("").as_posix())


def _images_by_id(folder: Path, skip: Path | None = None) -> dict[str, Path]:
    """Images under ``folder`` by id; those under ``skip`` (a results folder) left out."""
    out: dict[str, Path] = {}
    for p in iter_image_files(folder):
        if skip is not None and p.resolve().is_relative_to(skip):
            continue
        key = _image_id(folder, p)
        if key in out:
            raise DatasetError(f"{folder}: {shown(out[key].name)} and {shown(p.name)} have the "
                               f"same image id "
                               f"{key!r} (they differ only in suffix); keep one")
        out[key] = p
    return out


def _refs_for(ref_root: Path | None, identity: str) -> list[Path]:
    if ref_root is None:
        return []
    folder = ref_root / identity
    return list(iter_image_files(folder)) if folder.is_dir() else []


def _identity_of(image_id: str) -> str:
    """The first folder of the id (``<identity>/<file>``), or the whole id (a file stem)."""
    return image_id.split("/")[0]


def _need_dir(data: str | Path | None, name: str) -> Path:
    if data is None:
        raise DatasetError(f"dataset {name!r} needs --data DIR (the folder to read)")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DatasetError(f"--data {data}: folder does not exist")
    return root.resolve()


def _limit(items: list[Item], limit: int | None) -> list[Item]:
    return items if limit is None else items[:limit]


# --- reface-test ---------------------------------------------------------------------
def load_reface_test(data, results_dir: Path, *, preset: str = "mgfr-medium", seed: int = 0,
                     n_references: int = 1, split: str = "test", limit: int | None = None,
                     size: int | None = None, **unknown) -> BenchmarkDataset:
    """``size``: score at this side (the GT face resized with INTER_AREA, the LQ
    synthesized from it), e.g. 64 for a 64 px model such as MGFR ``mini``; default: the
    dataset's own size."""
    _no_options("reface-test", unknown)
    import pyarrow.parquet as pq

    from degradations.pipeline import Degrader
    from degradations.presets import get_preset

    root = _need_dir(data, "reface-test")
    manifest = root / "manifest.parquet"
    if not manifest.is_file():
        raise DatasetError(f"--data {data}: not a Reface-HQ folder (no manifest.parquet); "
                           "build one with `python -m reface_hq build`")
    if int(n_references) < 0:
        raise DatasetError(f"n_references must be >= 0, got {n_references}")
    if size is not None and not (16 <= int(size) <= 4096):
        raise DatasetError(f"size must be between 16 and 4096, got {size}")
    try:
        preset_obj = get_preset(preset)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    table = pq.read_table(manifest, columns=["face_id", "identity", "split", "image_path",
                                             "image_sha256", "status"]).to_pylist()
    rows = sorted((r for r in table if r["split"] == split and r.get("status") in (None, "ok")),
                  key=lambda r: (r["identity"], r["face_id"]))
    if not rows:
        splits = sorted({r["split"] for r in table})
        raise DatasetError(f"--data {data}: no faces in split {split!r} (splits: {splits})")
    by_identity: dict[str, list[dict]] = {}
    for r in rows:
        by_identity.setdefault(r["identity"], []).append(r)
    config = {"kind": "reface-test", "split": split, "preset": preset_obj.name,
              "preset_fingerprint": preset_obj.fingerprint(), "seed": int(seed),
              "reference_rule": "same-identity-next-k", "n_references": int(n_references)}
    if size is not None:
        config["size"] = int(size)
    # The manifest's per-image sha256 stands for the bytes (checked below for the images used).
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for r in rows:
        h.update(f"\0{r['face_id']}\0{r['identity']}\0{r['image_sha256']}".encode())
    dataset_hash = h.hexdigest()
    cache = results_dir / "datasets" / f"reface-test-{dataset_hash[:12]}"
    items = []
    chosen = _limit(rows, limit)
    degrader = None
    for r in chosen:
        group = by_identity[r["identity"]]
        k = group.index(r)
        refs = [group[(k + j) % len(group)] for j in range(1, len(group))][:int(n_references)]
        gt = safe_child(root, r["image_path"])
        gt_used = gt
        if size is not None:
            gt_used = safe_child(results_dir, f"datasets/{cache.name}/gt/{r['face_id']}.png")
        lq_rel = f"datasets/{cache.name}/lq/{r['face_id']}.png"
        lq_abs = safe_child(results_dir, lq_rel)
        record_path = safe_child(results_dir, f"datasets/{cache.name}/records/{r['face_id']}.json")
        if not (lq_abs.is_file() and record_path.is_file() and gt_used.is_file()):
            data_bytes = gt.read_bytes()
            if hashlib.sha256(data_bytes).hexdigest() != r["image_sha256"]:
                raise DatasetError(f"{gt}: bytes differ from the manifest's image_sha256 "
                                   "(the dataset folder was edited; rebuild or verify it)")
            degrader = degrader or Degrader(preset_obj)
            hq = load_image(data_bytes, name=str(gt))
            if size is not None:
                import cv2
                hq = cv2.resize(hq, (int(size), int(size)), interpolation=cv2.INTER_AREA)
                save_image(gt_used, hq)
            lq, record = degrader(hq, int(seed), r["face_id"])
            save_image(lq_abs, lq)
            write_json_atomic(record_path, record)  # written last: marks the LQ done
        items.append(Item(image_id=r["face_id"], lq_path=lq_rel, gt_path=str(gt_used),
                          ref_paths=[str(safe_child(root, x["image_path"])) for x in refs],
                          identity=r["identity"]))
    return BenchmarkDataset("reface-test", root, items, dataset_hash, dict(config, data=path_text(root)),
                            degradation_preset=preset_obj.name, degradation_seed=int(seed))


# --- paired / lq-only folders --------------------------------------------------------
def load_paired(data, results_dir: Path, *, limit: int | None = None, **unknown) -> BenchmarkDataset:
    _no_options("paired", unknown)
    root = _need_dir(data, "paired")
    lq_dir, gt_dir = root / "lq", root / "gt"
    if not (lq_dir.is_dir() and gt_dir.is_dir()):
        raise DatasetError(f"--data {data}: a paired dataset needs lq/ and gt/ folders")
    skip = Path(results_dir).resolve()
    lq, gt = _images_by_id(lq_dir, skip), _images_by_id(gt_dir, skip)
    missing = sorted(set(lq) - set(gt))
    if missing:
        raise DatasetError(f"{gt_dir}: no GT for {len(missing)} LQ image(s), e.g. {missing[0]!r}")
    if not lq:
        raise DatasetError(f"{lq_dir}: no images")
    ref_root = root / "ref" if (root / "ref").is_dir() else None
    items, files = [], []
    for key in sorted(lq):
        ident = _identity_of(key)
        refs = _refs_for(ref_root, ident)
        items.append(Item(key, str(lq[key]), str(gt[key]), [str(p) for p in refs], ident))
        files += [(f"lq:{key}", lq[key]), (f"gt:{key}", gt[key])]
        files += [(f"ref:{key}:{name_id(p.name)}", p) for p in refs]
    config = {"kind": "paired", "reference_rule": "ref/<identity>/*" if ref_root else None}
    items = _limit(items, limit)
    return BenchmarkDataset("paired", root, items, _digest(config, files), dict(config, data=path_text(root)))


def load_lq_only(data, results_dir: Path, *, limit: int | None = None, **unknown) -> BenchmarkDataset:
    _no_options("lq-only", unknown)
    root = _need_dir(data, "lq-only")
    lq_dir = root / "lq" if (root / "lq").is_dir() else root
    ref_root = root / "ref" if (root / "ref").is_dir() and lq_dir != root else None
    lq = _images_by_id(lq_dir, skip=Path(results_dir).resolve())
    if not lq:
        raise DatasetError(f"{lq_dir}: no images")
    items, files = [], []
    for key in sorted(lq):
        ident = _identity_of(key)
        refs = _refs_for(ref_root, ident)
        items.append(Item(key, str(lq[key]), None, [str(p) for p in refs], ident))
        files += [(f"lq:{key}", lq[key])] + [(f"ref:{key}:{name_id(p.name)}", p) for p in refs]
    config = {"kind": "lq-only", "reference_rule": "ref/<identity>/*" if ref_root else None}
    items = _limit(items, limit)
    return BenchmarkDataset("lq-only", root, items, _digest(config, files), dict(config, data=path_text(root)))


# --- whole photos --------------------------------------------------------------------
def load_photos(data, results_dir: Path, *, size: int = 512, detector: str = "dlib-hog",
                limit: int | None = None, **unknown) -> BenchmarkDataset:
    """Every face of every photo, FFHQ-aligned at ``size``; ``limit`` counts photos."""
    _no_options("photos", unknown)
    import numpy as np

    import faces

    root = _need_dir(data, "photos")
    photos = _images_by_id(root, skip=Path(results_dir).resolve())
    if not photos:
        raise DatasetError(f"--data {data}: no images")
    keys = sorted(photos)
    config = {"kind": "photos", "size": int(size), "detector": detector, "align": "ffhq"}
    dataset_hash = _digest(config, [(k, photos[k]) for k in keys])
    if limit is not None:
        keys = keys[:limit]
    cache = f"datasets/photos-{dataset_hash[:12]}"
    items = []
    for key in keys:
        index_path = safe_child(results_dir, f"{cache}/faces/{key}.json")
        if index_path.is_file():
            found = json.loads(index_path.read_text())
        else:
            image = load_image(photos[key])
            found = []
            for n, face in enumerate(faces.detect_and_align(image, detector=detector,
                                                             output_size=int(size))):
                rel = f"{cache}/faces/{key}_{n:02d}.png"
                save_image(safe_child(results_dir, rel), face.image)
                found.append({"crop": rel, "matrix": np.asarray(face.matrix).tolist()})
            write_json_atomic(index_path, found)  # written last: the photo is done
        for n, f in enumerate(found):
            items.append(Item(f"{key}_{n:02d}", f["crop"], None, [], None,
                              photo={"path": str(photos[key]), "photo_id": key, "face_index": n,
                                     "matrix": f["matrix"]}))
    return BenchmarkDataset("photos", root, items, dataset_hash, dict(config, data=path_text(root)))


def load_video(data, results_dir: Path, **options) -> BenchmarkDataset:
    from .video import load_video as load  # imports PyAV only when asked for video
    return load(data, results_dir, **options)


def _no_options(name: str, unknown: dict) -> None:
    if unknown:
        raise DatasetError(f"dataset {name!r}: unknown option(s) {sorted(unknown)}")


#: name -> (loader, description). Data: add a layout by adding a line.
DATASETS = Registry("dataset", error=UnknownDatasetError, hint="or an existing folder")
for _name, _entry in {
    "reface-test": (load_reface_test, ("test split of a Reface-HQ folder, LQ synthesized "
                                       "(options: preset, seed, n_references, split, size)")),
    "paired": (load_paired, "DIR/lq + DIR/gt (+ DIR/ref/<identity>/)"),
    "lq-only": (load_lq_only, "a folder of LQ faces, or DIR/lq (+ DIR/ref/<identity>/)"),
    "photos": (load_photos, ("whole photos; faces detected, aligned, restored, pasted back "
                             "(options: size, detector)")),
    "video": (load_video, ("a folder of clips (+ DIR/gt/ clips); temporal metrics "
                           "(options: frames, clips)")),
}.items():
    DATASETS.register(_name, _entry, description=_entry[1])
del _name, _entry


def guess_layout(path: Path) -> str:
    from reface_core.video import is_video_path
    if (path / "manifest.parquet").is_file():
        return "reface-test"
    if any(p.is_file() and is_video_path(p) for p in path.iterdir()):
        return "video"
    if (path / "lq").is_dir() and (path / "gt").is_dir():
        return "paired"
    return "lq-only"


def load_dataset(name_or_path: str, data: str | Path | None = None, *,
                 results_dir: str | Path, limit: int | None = None, **options) -> BenchmarkDataset:
    """A dataset by registry name (with ``data`` its folder) or by folder path (layout guessed)."""
    results_dir = Path(results_dir)
    name = name_or_path
    if name not in DATASETS:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            if data is not None:
                raise DatasetError(f"--dataset {name_or_path} is a folder; --data is not needed")
            name, data = guess_layout(path), path
        else:
            raise DATASETS.error(name_or_path)
    if limit is not None and int(limit) < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    return DATASETS[name][0](data, results_dir, limit=limit, **options)


def is_video_dataset(name_or_path: str) -> bool:
    """Whether ``--dataset`` names the ``video`` layout (by name, or a folder of clips)."""
    if name_or_path == "video":
        return True
    path = Path(name_or_path).expanduser()
    return name_or_path not in DATASETS and path.is_dir() and guess_layout(path) == "video"
