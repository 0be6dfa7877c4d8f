"""``synth``: degrade a folder or manifest of HQ faces into LQ images plus a parameter table.

Output folder layout::

    OUT/run.json                 preset (full content), seed: a rerun must match them
    OUT/lq/<image_id>.png        one LQ image per input
    OUT/records/<image_id>.json  its record (sampled parameters, status, pixel hash)
    OUT/params.parquet           one row per input, rebuilt from the records at the end

Resumability: each image is written atomically first, then its record atomically; a
record that exists marks its image done, so a killed run redoes at most the images in
flight and never writes a row twice. The Parquet table is compacted from the records at
the end of every run (atomically), so it never holds duplicates. Inputs that cannot be
read become ``status="error"`` rows with the reason, not a crash.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from reface_core.atomic import atomic_path, safe_child, write_json_atomic
from reface_core.fsnames import name_id, path_text, shown
from reface_core.imageio import ImageLoadError, iter_image_files, load_image, save_image

from .presets import Preset, get_preset
from .sampling import flatten_record

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class Job:
    image_id: str
    path: str


def pixel_sha256(image: np.ndarray) -> str:
    """Hash of the decoded pixels and shape (independent of the PNG encoder's settings)."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _read_manifest(path: Path):
    import pandas as pd
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        # Ids such as "00001" must stay strings: no type guessing for text formats.
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
    except Exception as e:  # pandas/pyarrow raise many types; the reader's message is the useful part
        raise ValueError(f"manifest {path}: cannot read as {path.suffix[1:]} ({type(e).__name__}: {e})") from None


def list_inputs(source: str | os.PathLike) -> list[Job]:
    """Jobs for a folder of images (recursive, sorted) or a manifest with ``image_path``/``path``.

    Image ids: the manifest's ``face_id`` when present, else the image path relative to
    the folder (or manifest folder) without its suffix. Manifest rows whose ``status`` is
    not ``"ok"`` are skipped (they are not faces of the dataset).
    """
    src = Path(source)
    if not src.exists():
        raise ValueError(f"input {src} does not exist")
    if src.is_dir():
        # A file name that is not UTF-8 gets an id (and output names) with %XX escapes;
        # the job keeps the exact path.
        files = [(p, name_id(p.relative_to(src).as_posix())) for p in iter_image_files(src)]
        stems = Counter(PurePosixPath(rel).with_suffix("").as_posix() for _, rel in files)
        # "a.png" and "a.jpg" would share the id "a" (one LQ image and one row for two
        # inputs); such files keep their suffix in the id.
        jobs = [Job(stem if stems[stem] == 1 else rel, str(p))
                for p, rel in files
                for stem in [PurePosixPath(rel).with_suffix("").as_posix()]]
        if not jobs:
            raise ValueError(f"input folder {src} holds no image files")
        return jobs
    if src.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(f"input {src} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    df = _read_manifest(src)
    col = "image_path" if "image_path" in df.columns else "path" if "path" in df.columns else None
    if col is None:
        raise ValueError(f"manifest {src} has no 'image_path' or 'path' column (columns: {list(df.columns)})")
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    base = src.parent
    jobs, seen = [], set()
    for n, (_, row) in enumerate(df.iterrows()):
        # A null cell would otherwise become the path or id "nan"/"None".
        rel = _cell_text(row[col])
        if not rel:
            raise ValueError(f"manifest {src}: row {n} has no {col}")
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if "face_id" in df.columns:
            image_id = _cell_text(row["face_id"])
            if not image_id:
                raise ValueError(f"manifest {src}: row {n} ({rel}) has no face_id")
        else:
            image_id = PurePosixPath(rel).with_suffix("").as_posix()
        if image_id in seen:
            raise ValueError(f"manifest {src}: image id {image_id!r} appears twice")
        seen.add(image_id)
        jobs.append(Job(image_id, str(p)))
    if not jobs:
        raise ValueError(f"manifest {src} has no usable rows")
    return jobs


def _cell_text(value) -> str:
    """A manifest cell as text; empty for null cells (None, NaN, pandas NA)."""
    import pandas as pd
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return ""
    return str(value).strip()


def output_paths(out: Path, image_id: str) -> tuple[Path, Path]:
    """LQ image and record paths of ``image_id``, both kept inside ``out``."""
    return (safe_child(out / "lq", f"{image_id}.png"), safe_child(out / "records", f"{image_id}.json"))


# --- the worker ------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(preset_dict: dict, seed: int, out: str, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    from .pipeline import Degrader
    _STATE.update(degrader=Degrader(Preset.from_dict(preset_dict)), seed=seed, out=Path(out))


def _init_pool_worker(parent_pid: int, *init) -> None:
    # A killed synth must not leave workers degrading on with nobody to collect.
    from reface_core.workers import die_with_parent
    die_with_parent(parent_pid)
    _init_worker(*init)


def _process(job: Job) -> dict:
    deg, seed, out = _STATE["degrader"], _STATE["seed"], _STATE["out"]
    lq_path, rec_path = output_paths(out, job.image_id)
    base = {"image_id": job.image_id, "input": job.path, "lq_path": lq_path.relative_to(out.resolve()).as_posix()}
    try:
        image = load_image(job.path)
        lq, record = deg(image, seed, job.image_id)
    except (ImageLoadError, ValueError) as e:
        row = {**base, "status": "error", "error": shown(str(e)), "lq_path": None}
        write_json_atomic(rec_path, row)
        return row
    save_image(lq_path, lq)
    row = {**base, "status": "ok", "error": None, "lq_sha256": pixel_sha256(lq), "record": record}
    # The record is written after the image: its presence means the image is complete.
    write_json_atomic(rec_path, row)
    return row


# --- the job ---------------------------------------------------------------------------------

def _check_run(out: Path, preset: Preset, seed: int, overwrite: bool = False) -> None:
    run = {"preset": preset.to_dict(), "preset_fingerprint": preset.fingerprint(), "seed": int(seed)}
    path = out / "run.json"
    if path.exists() and overwrite:
        # Start over: the images, records and table of the other settings go, so the
        # folder never mixes two seeds or presets under one run.json.
        for sub in ("lq", "records"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "params.parquet").unlink(missing_ok=True)
        path.unlink()
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); remove it or use a new output folder") from None
        if old.get("preset_fingerprint") != run["preset_fingerprint"] or old.get("seed") != run["seed"]:
            raise ValueError(
                f"output folder {out} was made with preset {old.get('preset', {}).get('name')!r} "
                f"(fingerprint {old.get('preset_fingerprint')}) and seed {old.get('seed')}; this run asks for "
                f"{preset.name!r} ({run['preset_fingerprint']}) and seed {seed}. Use a new output folder "
                "(or --overwrite to start this one over).")
    else:
        write_json_atomic(path, run)


def _remove_stale_temporaries(out: Path) -> int:
    # A killed run can leave ".name.xxxx.tmp.png" files from atomic writes in flight.
    n = 0
    for sub in ("lq", "records"):
        for p in (out / sub).rglob(".*.tmp*") if (out / sub).exists() else ():
            p.unlink(missing_ok=True)
            n += 1
    return n


def _iter_results(jobs: list[Job], preset: Preset, seed: int, out: Path, workers: int) -> Iterator[dict]:
    init = (preset.to_dict(), int(seed), str(out))
    if not jobs:
        return
    if workers <= 1:
        _init_worker(*init, threads=max(1, _torch_threads()))
        for job in jobs:
            yield _process(job)
        return
    ctx = mp.get_context("spawn")  # torch and OpenCV thread pools do not survive fork safely
    with ctx.Pool(workers, initializer=_init_pool_worker,
                  initargs=(os.getpid(), *init, 1)) as pool:
        yield from pool.imap_unordered(_process, jobs, chunksize=1)


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def compact(out: str | os.PathLike) -> Path:
    """Rebuild ``params.parquet`` from the per-image records (atomic replace)."""
    import pandas as pd
    out = Path(out)
    rows = []
    for p in sorted((out / "records").rglob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable record is redone by the next run; the table skips it
        rec = r.get("record") or {}
        row = {"image_id": r["image_id"], "input_path": path_text(r["input"]),
               "lq_path": r.get("lq_path"),
               "status": r["status"], "error": r.get("error"), "preset": rec.get("preset"),
               "preset_fingerprint": rec.get("preset_fingerprint"), "seed": rec.get("seed"),
               "input_height": (rec.get("input_size") or [None, None])[0],
               "input_width": (rec.get("input_size") or [None, None])[1],
               "output_height": (rec.get("output_size") or [None, None])[0],
               "output_width": (rec.get("output_size") or [None, None])[1],
               "lq_sha256": r.get("lq_sha256"), "record": json.dumps(rec, sort_keys=True) if rec else None}
        if rec:
            row.update(flatten_record(rec))
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    target = out / "params.parquet"
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return target


def _pending(jobs: list[Job], out: Path, overwrite: bool = False,
             retry_failed: bool = False) -> list[Job]:
    """Jobs without a finished record (all with ``overwrite``; also those whose record says
    ``error`` with ``retry_failed``). A record made from another input file under the
    same image id (a second input folder or manifest pointed at this output folder) is an
    error: skipping it would leave that other image's LQ in place of this one's."""
    todo, clashes = [], []
    for job in jobs:
        rec_path = output_paths(out, job.image_id)[1]
        if not rec_path.exists():
            todo.append(job)
            continue
        try:
            done = json.loads(rec_path.read_text())
            made_from = done.get("input")
        except (OSError, json.JSONDecodeError, AttributeError):
            todo.append(job)  # unreadable: redo it, compact() would leave it out of the table
            continue
        if made_from is None or Path(made_from).resolve() != Path(job.path).resolve():
            clashes.append((job, made_from))
        elif overwrite or (retry_failed and done.get("status") == "error"):
            todo.append(job)
    if clashes:
        job, made_from = clashes[0]
        raise ValueError(
            f"output folder {out} already holds {len(clashes)} image ids made from other "
            f"inputs (e.g. {job.image_id!r} from {made_from}, now {job.path}); use a new "
            "output folder")
    return todo


def synth(input: str | os.PathLike, output: str | os.PathLike, preset: str | Preset = "gfpgan",
          seed: int = 0, workers: int = 1, limit: int | None = None, progress: bool = True,
          overwrite: bool = False, retry_failed: bool = False) -> dict:
    """Degrade every input image; resumable. Returns counts and the table path.

    ``overwrite``: the output folder is emptied and started over (else a folder made with
    another preset or seed is an error); ``retry_failed`` redoes the images that failed."""
    from tqdm import tqdm
    preset = get_preset(preset)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    jobs = list_inputs(input)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    # An output folder inside the input folder must not feed its own LQ images back in.
    jobs = [j for j in jobs if out not in Path(j.path).resolve().parents]
    if limit is not None:
        jobs = jobs[:int(limit)]
    _check_run(out, preset, seed, overwrite)
    _remove_stale_temporaries(out)
    todo = _pending(jobs, out, overwrite=overwrite, retry_failed=retry_failed)
    counts = {"total": len(jobs), "skipped": len(jobs) - len(todo), "ok": 0, "error": 0}
    bar = tqdm(total=len(todo), desc=f"synth {preset.name}", unit="img", disable=not progress)
    for row in _iter_results(todo, preset, seed, out, workers):
        counts[row["status"]] += 1
        if row["status"] == "error":
            bar.write(f"error: {row['image_id']}: {row['error']}")
        bar.update(1)
    bar.close()
    counts["table"] = str(compact(out))
    return counts
