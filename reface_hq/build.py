"""One public entry that builds every part of a dataset build and runs it.

``build(BuildConfig(...))``: sources -> map stages (executor, resumable) -> dedupe ->
identity grouping -> split -> exclusion re-check -> dataset on disk -> optional captions.
The CLI's ``build`` command is this function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from . import schema
from .dedupe import Dedupe
from .download import Download
from .exclusion import expand, matched_entries, matching_entry
from .executor import get_executor
from .identity import IdentityGroup, SplitByIdentity
from .sources import FolderSource
from .stages import Decode, DetectAlign, Embed, Fingerprint, Quality


def read_exclusion(path: str | os.PathLike | None) -> tuple[str, ...]:
    """Entries of an exclusion file: one URL, origin or sha256 per line; ``#`` comments."""
    if not path:
        return ()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exclusion list {path}: file does not exist")
    entries = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # " #" starts a comment; a bare "#" may be part of a URL.
        line = line.split(" #", 1)[0].strip()
        entries.append(line.lower() if _is_hex_digest(line) else line)
    return tuple(sorted(set(entries)))


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def is_excluded(row: dict, exclusion: set[str] | frozenset[str]) -> bool:
    """Whether an entry of ``exclusion`` names ``row``, however the entry spells it."""
    return bool(exclusion) and matching_entry(row, exclusion) is not None


#: Thresholds for an embedder with no preset (the values tuned by hand for dlib before
#: calibration existed); ``python -m reface_hq calibrate`` fits a preset instead.
FALLBACK_THRESHOLDS = {"max_identity_distance": 0.12, "cluster_threshold": 0.08,
                       "assign_distance": 0.05, "merge_distance": 0.03, "dup_min_cosine": 0.95,
                       "max_face_phash_distance": 8, "dup_face_min_cosine": 0.985}


@dataclasses.dataclass
class BuildConfig:
    """Everything a build depends on. JSON-able; recorded in ``build.json``."""

    sources: Sequence = ()
    out: str = "reface_hq_out"
    work_dir: str | None = None            # default: <out>/.work (shareable between builds)
    seed: int = 0
    # executor
    executor: str = "local"
    workers: int = 1
    shard_size: int = 32
    progress: bool = True
    # download
    allow_private: bool = False
    download_threads: int = 8
    download_timeout: float = 10.0
    download_deadline: float = 60.0        # wall-clock seconds per URL, retries included
    download_retries: int = 2
    max_bytes: int = 20_000_000
    # decode / detect / quality
    min_source_side: int = 128
    detector: str = "dlib-hog"
    output_size: int = 512
    detect_max_side: int = 1024
    transform_size: int | None = None
    align_padding: bool = True
    min_face_size: float = 128.0
    min_sharpness: float = 50.0
    drop_grayscale: bool = True
    musiq: str = "auto"
    min_musiq: float | None = None
    embedder: str = "dlib"
    # dedupe / identity / split. Thresholds left None come from the preset: the file
    # ``thresholds`` names, else the one shipped for the embedder (reface_hq/presets),
    # else FALLBACK_THRESHOLDS; values given here win over the preset.
    thresholds: str | None = None
    max_phash_distance: int = 4
    dup_min_cosine: float | None = None
    max_face_phash_distance: int | None = None
    dup_face_min_cosine: float | None = None
    use_identity_hints: bool = True
    max_identity_distance: float | None = None
    cluster_threshold: float | None = None
    assign_distance: float | None = None
    merge_distance: float | None = None
    min_photos: int = 3
    test_fraction: float = 0.1
    # exclusion and captions
    exclusion: tuple[str, ...] = ()
    captions: bool = False
    caption_backends: tuple[str, ...] = ("offline",)

    def __post_init__(self):
        if self.output_size not in (512, 1024, 256):
            raise ValueError(f"output_size must be 512 or 1024 (or 256 for tests), "
                             f"got {self.output_size}")
        if not self.sources:
            raise ValueError("a build needs at least one source")
        from .calibrate import read_preset, shipped_preset
        preset_path = self.thresholds or shipped_preset(self.embedder)
        values = dict(FALLBACK_THRESHOLDS)
        if preset_path is not None:
            preset = read_preset(preset_path)
            if self.thresholds and preset.get("embedder") not in (None, self.embedder):
                raise ValueError(f"thresholds preset {self.thresholds} was fitted for embedder "
                                 f"{preset.get('embedder')!r}, the build uses {self.embedder!r}")
            values.update(preset["thresholds"])
        for key, value in values.items():
            if getattr(self, key, None) is None:
                setattr(self, key, value)

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.out) / ".work"

    #: (field, low, high) of every count and size, as the command line bounds them: a
    #: typo in the Python API gets one line instead of an exhausted memory.
    LIMITS = (("workers", 1, 1024), ("shard_size", 1, 100_000), ("download_threads", 1, 256),
              ("download_retries", 0, 100), ("max_bytes", 1, 2 ** 40),
              ("min_source_side", 1, 65_536), ("detect_max_side", 0, 65_536),
              ("min_photos", 1, 1_000_000), ("max_phash_distance", 0, 64),
              ("seed", 0, 2 ** 63 - 1))

    def check_limits(self) -> None:
        """Raise ``ValueError`` naming the first field outside its bounds (or not finite)."""
        import math
        for field, low, high in self.LIMITS:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"BuildConfig.{field} must be an integer in [{low}, {high}], "
                                 f"got {value!r}")
        for field in ("download_timeout", "download_deadline", "min_face_size", "min_sharpness",
                      "min_musiq", "test_fraction"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, (int, float))
                                          and math.isfinite(value)):
                raise ValueError(f"BuildConfig.{field} must be a finite number, got {value!r}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"BuildConfig.test_fraction must be within [0, 1], got "
                             f"{self.test_fraction!r}")

    def map_stages(self) -> list:
        work = self.work.resolve()
        detect = DetectAlign(detector=self.detector, output_size=self.output_size,
                             detect_max_side=self.detect_max_side,
                             transform_size=self.transform_size,
                             enable_padding=self.align_padding)
        # Crops of different alignment settings must never share file names.
        detect.folder = str(work / f"aligned-{detect.fingerprint()[:12]}")
        return [
            Download(folder=str(work / "downloads"), threads=self.download_threads,
                     timeout=self.download_timeout, deadline=self.download_deadline,
                     retries=self.download_retries,
                     max_bytes=self.max_bytes, allow_private=self.allow_private,
                     seed=self.seed, exclusion=expand(self.exclusion)),
            Decode(min_source_side=self.min_source_side,
                   exclusion=expand(self.exclusion)),
            detect,
            Quality(min_face_size=self.min_face_size, min_sharpness=self.min_sharpness,
                    drop_grayscale=self.drop_grayscale, musiq=self.musiq,
                    min_musiq=self.min_musiq),
            Fingerprint(),
            Embed(embedder=self.embedder),
        ]

    def global_stages(self) -> list:
        return [
            Dedupe(max_phash_distance=self.max_phash_distance, min_cosine=self.dup_min_cosine,
                   max_face_phash_distance=int(self.max_face_phash_distance),
                   face_min_cosine=self.dup_face_min_cosine),
            IdentityGroup(use_hints=self.use_identity_hints,
                          max_distance=self.max_identity_distance,
                          cluster_threshold=self.cluster_threshold, min_photos=self.min_photos,
                          assign_distance=self.assign_distance,
                          merge_distance=self.merge_distance),
            SplitByIdentity(test_fraction=self.test_fraction, seed=self.seed),
        ]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = [dict(type=type(s).__name__, **dataclasses.asdict(s)) for s in self.sources]
        d.pop("out"), d.pop("work_dir"), d.pop("progress"), d.pop("workers")
        # The thresholds themselves are recorded; the preset's path is machine-local.
        d["thresholds"] = Path(self.thresholds).name if self.thresholds else None
        d["exclusion"] = len(self.exclusion)  # the entries themselves name removed photos
        return d


def source_rows(config: BuildConfig) -> list[dict]:
    names = [s.name for s in config.sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several sources are named {twice}: source names keep photo ids "
                         "apart, give each a distinct name (SPEC?name=...)")
    # A dataset or work folder inside a source folder must not feed its own aligned faces
    # back in as new photos on the next run (HF sources keep their bytes under the work
    # folder on purpose, so only folder sources are filtered).
    outputs = {Path(config.out).resolve(), config.work.resolve()}
    rows, seen = [], set()
    for src in config.sources:
        folder = isinstance(src, FolderSource) and any(
            Path(src.root).resolve() in (d, *d.parents) for d in outputs)
        for row in src.rows(config.work):
            if row["row_id"] in seen:
                continue  # the same file listed twice by overlapping sources
            if folder and row.get("local_path") and any(
                    d in Path(row["local_path"]).resolve().parents for d in outputs):
                continue
            seen.add(row["row_id"])
            rows.append(row)
    return rows


def build(config: BuildConfig, *, overwrite: bool = False, retry_failed: bool = False) -> dict:
    """Build the dataset into ``config.out``; returns the stats written to stats.json.

    A rerun reuses every cached shard of the work folder. ``overwrite`` recomputes them
    all; ``retry_failed`` recomputes the shards holding a download that failed for a
    reason a retry may fix (``download.TRANSIENT_REASONS``: timeouts, connection errors,
    HTTP 5xx/429), and what follows from them."""
    from .dataset import write_dataset

    t0 = time.perf_counter()
    config.check_limits()
    for folder, what in ((Path(config.out), "output"), (config.work, "work")):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{what} folder {folder} exists and is not a folder")
    # Every stage is built (and its config checked) before any work starts: a bad global
    # stage option must not surface only after detection and embedding have run.
    map_stages, global_stages = config.map_stages(), config.global_stages()
    if config.captions:  # a bad backend name or missing VLM weights: say so now, not at the end
        check_caption_backends(config.caption_backends)
    executor = get_executor(config.executor, shard_size=config.shard_size,
                            progress=config.progress,
                            **({"workers": config.workers} if config.executor == "local" else {}))
    rows = source_rows(config)
    from .download import is_transient
    rows, reports = executor.run(map_stages, rows, config.work, overwrite=overwrite,
                                 redo=is_transient if retry_failed else None)
    timings = {r.name: r.seconds for r in reports}
    for stage in global_stages:
        t = time.perf_counter()
        rows = stage(rows)
        timings[stage.name] = round(time.perf_counter() - t, 3)
    exclusion = frozenset(config.exclusion)
    rows = [schema.drop(r, "output", "excluded", "on the exclusion list")
            if schema.is_ok(r) and is_excluded(r, exclusion) else r for r in rows]
    applied = matched_entries(rows, exclusion)
    stats = write_dataset(rows, config, timings=timings,
                          seconds=round(time.perf_counter() - t0, 3), exclusion_applied=applied)
    # Not written to stats.json (the entries name people); the CLI warns on each.
    stats["exclusion_unmatched"] = sorted(exclusion - applied)
    if config.captions:
        stats["captions"] = annotate_captions(Path(config.out), config.caption_backends,
                                              config.progress)
    return stats


def check_caption_backends(backends: Sequence[str]) -> None:
    """Raise now if a caption backend is unknown or its weights are missing (the captions
    run last, after the whole build): names through the registry (did-you-mean error),
    weights through the asset resolver (the error says where to put them)."""
    from captioning.extractors import extractor_class
    from reface_core.assets import resolve
    if not backends:
        raise ValueError("captions need at least one backend (e.g. offline)")
    for name in backends:
        cls = extractor_class(name)
        # The VLM backends name their checkpoints in class attributes (asset, vqa_asset...).
        for attr in sorted(a for a in dir(cls) if a == "asset" or a.endswith("_asset")):
            asset = getattr(cls, attr)
            if isinstance(asset, str):
                resolve(asset, allow_download=False)


def annotate_captions(out: Path, backends: Sequence[str] = ("offline",),
                      progress: bool = True) -> str:
    """Run ``captioning annotate`` on the built manifest (the optional last stage).

    captioning rewrites the manifest atomically and keeps its own per-row progress, so a
    killed annotation resumes too.
    """
    import captioning
    report = captioning.annotate(out / "manifest.parquet", backends=tuple(backends),
                                 progress=progress)
    return str(report)


def load_build_json(out: str | os.PathLike) -> dict:
    return json.loads((Path(out) / "build.json").read_text())
