"""``python -m benchmarks.run``: restorers x metrics on one dataset, into the results store.

    python -m benchmarks.run --methods mgfr:adapters=runs/a/adapters,codeformer:w=0.5,bicubic \
        --dataset reface-test --data data/reface --out results [--metrics psnr,ssim,ids] \
        [--device cuda] [--limit 20] [--dataset-option preset=mgfr-medium]

For each method: load it (weights missing -> the run is stored as ``skipped`` with the
resolver's message, and the others go on), restore every item it has not restored yet
(``RESULTS/outputs/<run_id>/<image_id>.png``), score every metric not scored yet, and
commit each image's output row and scores in one transaction. The run id comes from the
restorer, its config hash and the dataset hash, so rerunning the same command (after a
kill, or with more methods) reuses what exists and adds no duplicate rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reface_core.atomic import safe_child, write_bytes_atomic
from reface_core.devices import check_device
from reface_core.imageio import ImageLoadError, load_image, save_image

from . import datasets as D
from . import metrics as M
from . import restorers as R
from .store import StoreError, open_store

CODE_VERSION = "benchmarks 0.1.0"
_PACKAGES = ("torch", "numpy", "opencv-python-headless", "pyiqa", "spandrel",
             "spandrel-extra-arches", "scikit-video", "brisque", "dlib-bin", "diffusers", "duckdb")


def package_versions() -> dict:
    from importlib import metadata
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    """The git commit of the checkout when there is one (plus ``-dirty``), else the version."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
        if rev.returncode == 0:
            return f"{CODE_VERSION} ({rev.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        pass
    return CODE_VERSION


@dataclass
class MethodSpec:
    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name


def parse_methods(text: str | list[str], sets: list[str] = ()) -> list[MethodSpec]:
    """``"mgfr,codeformer:w=0.5,path=x.pth,bicubic"``: a token with ``=`` and no ``:``
    is one more option of the method before it. ``sets``: ``METHOD.KEY=VALUE``."""
    tokens = [t.strip() for part in ([text] if isinstance(text, str) else text)
              for t in part.split(",") if t.strip()]
    specs: list[MethodSpec] = []
    for tok in tokens:
        if "=" in tok and ":" not in tok.split("=")[0]:
            if not specs:
                raise ValueError(f"--methods: option {tok!r} comes before any method")
            _, opts = R.parse_method("x:" + tok)
            specs[-1].options.update(opts)
        else:
            name, opts = R.parse_method(tok)
            specs.append(MethodSpec(name, opts))
    if not specs:
        raise ValueError("--methods: no method given")
    for s in sets:
        key, eq, value = s.partition("=")
        method, dot, opt = key.partition(".")
        if not (eq and dot and opt):
            raise ValueError(f"--set {s!r}: expected METHOD.KEY=VALUE")
        hits = [sp for sp in specs if sp.name == method]
        if not hits:
            raise ValueError(f"--set {s!r}: method {method!r} is not in --methods")
        for sp in hits:
            sp.options[opt] = value
    for sp in specs:
        check_typed_paths(sp)
    return specs


#: Method options that name a file or folder the user typed (a missing one is a usage
#: error before any work; weights the resolver looks for stay a skip with a reason).
PATH_OPTIONS = ("adapters", "path", "dir")


def check_typed_paths(spec: MethodSpec) -> None:
    for key, value in spec.options.items():
        typed_path = key in PATH_OPTIONS or (key == "base" and "/" in str(value))
        if typed_path and isinstance(value, str) and value and not Path(value).expanduser().exists():
            raise ValueError(f"--methods {spec.name}:{key}={value}: no such file or folder")


@dataclass
class RunSummary:
    run_id: str
    restorer: str
    label: str
    status: str
    reason: str | None = None
    n_ok: int = 0
    n_failed: int = 0
    n_reused: int = 0
    n_scores_failed: int = 0
    seconds_restore: float = 0.0
    seconds_metrics: dict = field(default_factory=dict)
    seconds_total: float = 0.0
    #: the images this invocation covered (a --limit run of a store holding more): the
    #: summary's means are over these, like its counts
    image_ids: tuple = ()


class _DecodeCache:
    """GT and reference images decoded once per invocation, shared by runs and metrics."""

    def __init__(self, limit: int = 512):
        self.images: dict[str, np.ndarray] = {}
        self.derived: dict = {}
        self.limit = limit

    def get(self, path: str) -> np.ndarray:
        img = self.images.get(path)
        if img is None:
            img = load_image(path)
            if len(self.images) >= self.limit:
                self.images.pop(next(iter(self.images)))
            self.images[path] = img
        return img


def _abs(results_dir: Path, p: str | None) -> str | None:
    if p is None:
        return None
    return str(p) if os.path.isabs(p) else str(safe_child(results_dir, p))


def save_output(path: Path, image: np.ndarray) -> None:
    """PNG at zlib level 1, atomically: lossless like level 6 but ~5x faster to write
    (the level-6 encoder was the harness's largest cost), files ~15% larger."""
    import cv2

    from reface_core.atomic import atomic_path

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"{path}: could not encode the output as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


def score_one(metric: M.Metric, sample: M.Sample) -> tuple[float | None, str, str | None]:
    """(value, status, reason) of one metric on one image. Any exception of the metric
    on this image (``cv2.error`` on a 1-px side, say) becomes that image's ``failed`` row
    with the reason: one image never ends the run, nor every rerun after it."""
    name = metric.name
    small = min(sample.output.shape[:2])
    need = metric.min_size
    if small < need:
        return None, "unavailable", (f"{name} needs images of at least {need} px on each "
                                     f"side, got {sample.output.shape[1]}x{sample.output.shape[0]}")
    try:
        value = float(metric(sample))
    except M.MetricUnavailable as e:
        return None, "unavailable", str(e)
    except Exception as e:  # noqa: BLE001 - failures are data (Ctrl-C is not an Exception)
        return None, "failed", f"{name} failed: {_one_line(e)}"
    if np.isnan(value):
        return None, "unavailable", f"{name} is NaN here"
    return value, "ok", None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Benchmark:
    """Build the parts once (dataset, metrics, store), then run each method."""

    def __init__(self, dataset: D.BenchmarkDataset, metric_names: list[str], out: str | Path, *,
                 device: str = "cpu", progress: bool = True, metric_options: dict | None = None,
                 prepared: dict[str, M.Metric] | None = None):
        """``prepared``: metrics already built and loaded (shared between benchmarks)."""
        self.ds, self.out, self.device, self.progress = dataset, Path(out), device, progress
        self.store = open_store(self.out)
        self.cache = _DecodeCache()
        self.metrics: dict[str, M.Metric] = {}
        self.unavailable: dict[str, str] = {}
        metric_options = metric_options or {}
        for name in metric_names:
            if prepared and name in prepared:
                self.metrics[name] = prepared[name]
                continue
            m = M.create_metric(name, device=device, **metric_options.get(name, {}))
            if m.kind == "dataset" and hasattr(m, "cache_dir"):
                m.cache_dir = self.out / "cache" / "fid"
            try:
                m.prepare()
            except M.MetricUnavailable as e:
                self.unavailable[name] = str(e)
            self.metrics[name] = m
        with self.store.transaction():
            self.store.upsert("metrics", [{"metric": n, "direction": m.direction, "kind": m.kind,
                                               "description": m.description}
                                          for n, m in self.metrics.items()])
            self.store.upsert("images", [it.row(self.ds.dataset_hash) for it in self.ds.items])

    # --- one method --------------------------------------------------------------------
    def run_method(self, spec: MethodSpec) -> RunSummary:
        t_start = time.perf_counter()
        restorer = R.create_restorer(spec.name, **spec.options)
        reason = None
        try:
            restorer.load(self.device)
        except R.RestorerUnavailable as e:
            reason = str(e)
        record = restorer.config_for_record()
        chash = R.config_hash(record)
        run_id = f"{spec.name}-{chash[:10]}-{self.ds.dataset_hash[:10]}"
        base_row = {"run_id": run_id, "restorer": spec.name, "restorer_config": record,
                    "config_hash": chash, "dataset": self.ds.name,
                    "dataset_hash": self.ds.dataset_hash,
                    "degradation_preset": self.ds.degradation_preset,
                    "degradation_seed": self.ds.degradation_seed,
                    "code_version": code_version(), "packages": package_versions(),
                    "device": self.device, "dataset_config": self.ds.config,
                    "n_images": len(self.ds.items)}
        summary = RunSummary(run_id, spec.name, spec.label, "running",
                             image_ids=tuple(it.image_id for it in self.ds.items))
        previous = self.store.run(run_id)
        started = previous["started_at"] if previous and previous.get("started_at") else _now()
        if reason is not None:
            with self.store.transaction():
                self.store.upsert("runs", [dict(base_row, started_at=started, finished_at=_now(),
                                                status="skipped", reason=reason)])
            summary.status, summary.reason = "skipped", reason
            return summary
        with self.store.transaction():
            self.store.upsert("runs", [dict(base_row, started_at=started, status="running")])
        done = self.store.done_outputs(run_id)
        scored = self.store.scored(run_id)
        image_metrics = [n for n, m in self.metrics.items() if m.kind == "image"]
        dataset_metrics = [n for n, m in self.metrics.items() if m.kind == "dataset"]
        fid_feats: dict[str, dict[str, np.ndarray]] = {n: {} for n in dataset_metrics
                                                       if n not in self.unavailable}
        from tqdm.auto import tqdm
        bar = tqdm(self.ds.items, desc=spec.label, unit="img", disable=not self.progress,
                   file=sys.stderr)
        # Rows are committed every few images (one transaction each): a kill loses at
        # most that batch, which the rerun redoes; per-image commits cost ~10% of a run.
        pending: dict[str, list[dict]] = {"outputs": [], "image_scores": []}
        last_flush = [time.monotonic(), 0]
        # Outputs are encoded and written on a second thread while the metrics run (the
        # encoder releases the GIL); their rows are committed only after the file is there.
        from concurrent.futures import ThreadPoolExecutor
        saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="save-output")
        saving: list = []

        def flush(force: bool = False):
            n = len(pending["outputs"]) + last_flush[1]
            if not force and n < 8 and time.monotonic() - last_flush[0] < 5.0:
                return
            for fut in saving:
                fut.result()
            saving.clear()
            if pending["outputs"] or pending["image_scores"]:
                with self.store.transaction():
                    for table, rows in pending.items():
                        self.store.upsert(table, rows)
                        rows.clear()
            last_flush[0], last_flush[1] = time.monotonic(), 0

        for item in bar:
            out_rel = f"outputs/{run_id}/{item.image_id}.png"
            out_path = safe_child(self.out, out_rel)
            # A score counts as done only if made by the same embedder (a rerun on a machine
            # where ArcFace appeared rescores identity rather than mixing embedders).
            todo = [n for n in image_metrics
                    if (item.image_id, n) not in scored
                    or scored[(item.image_id, n)] != self.metrics[n].embedder]
            reuse = item.image_id in done and out_path.is_file()
            if reuse and not todo and not fid_feats:
                summary.n_ok += 1
                summary.n_reused += 1
                continue
            out_row = None
            if reuse:
                try:
                    output = load_image(out_path)
                    summary.n_reused += 1
                except ImageLoadError:  # damaged since: restore it again
                    reuse = False
            if not reuse:
                try:
                    lq = load_image(_abs(self.out, item.lq_path))
                    refs = ([self.cache.get(p) for p in item.ref_paths]
                            if restorer.uses_references else [])
                    out_size = None
                    if item.gt_path:
                        out_size = self.cache.get(item.gt_path).shape[:2]
                    t0 = time.perf_counter()
                    output = restorer.restore(lq, refs, image_id=item.image_id, out_size=out_size)
                    seconds = time.perf_counter() - t0
                    output = np.ascontiguousarray(np.asarray(output, dtype=np.uint8))
                    if output.ndim != 3 or output.shape[2] != 3:
                        raise ValueError(f"restorer returned shape {output.shape}, not (H, W, 3)")
                except (ImageLoadError, FileNotFoundError, ValueError, RuntimeError) as e:
                    # Failures are data: the image gets a status row, the run goes on.
                    pending["outputs"].append({"run_id": run_id, "image_id": item.image_id,
                                               "output_path": None, "seconds": None,
                                               "status": "failed", "error": str(e)})
                    summary.n_failed += 1
                    flush()
                    continue
                summary.seconds_restore += seconds
                saving.append(saver.submit(save_output, out_path, output))
                out_row = {"run_id": run_id, "image_id": item.image_id, "output_path": out_rel,
                           "seconds": seconds, "status": "ok", "error": None}
                todo = image_metrics  # a new output invalidates any older score
            summary.n_ok += 1
            sample = self._sample(item, output)
            rows = []
            for name in todo:
                m = self.metrics[name]
                t0 = time.perf_counter()
                if name in self.unavailable:
                    value, status, why = None, "unavailable", self.unavailable[name]
                else:
                    value, status, why = score_one(m, sample)
                    summary.n_scores_failed += status == "failed"
                summary.seconds_metrics[name] = summary.seconds_metrics.get(name, 0.0) + \
                    time.perf_counter() - t0
                rows.append({"run_id": run_id, "image_id": item.image_id, "metric": name,
                             "value": value, "status": status, "reason": why,
                             "embedder": m.embedder})
            for name, feats in fid_feats.items():
                t0 = time.perf_counter()
                try:
                    feats[item.image_id] = self.metrics[name].features([output])[0]
                except Exception as e:  # noqa: BLE001 - one image, not the whole run
                    # left out of the dataset metric; its row counts the images it used
                    print(f"warning: {name}: {item.image_id}: {_one_line(e)}", file=sys.stderr)
                summary.seconds_metrics[name] = summary.seconds_metrics.get(name, 0.0) + \
                    time.perf_counter() - t0
            if out_row is not None:
                pending["outputs"].append(out_row)
            else:
                last_flush[1] += 1
            pending["image_scores"].extend(rows)
            flush()
        try:
            flush(force=True)
        finally:
            saver.shutdown(wait=True)
        bar.close()
        ds_rows = []
        for name in dataset_metrics:
            t0 = time.perf_counter()
            ds_rows.append(self._dataset_score(run_id, name, fid_feats.get(name)))
            summary.seconds_metrics[name] = summary.seconds_metrics.get(name, 0.0) + \
                time.perf_counter() - t0
        if self.ds.name == "photos":
            self._paste_back(run_id)
        status = "done" if summary.n_failed == 0 else "failed"
        summary.status = status
        summary.reason = (None if status == "done"
                          else f"{summary.n_failed} of {len(self.ds.items)} images failed "
                               "(see outputs.error)")
        with self.store.transaction():
            self.store.upsert("dataset_scores", ds_rows)
            self.store.upsert("runs", [dict(base_row, started_at=started, finished_at=_now(),
                                            status=status, reason=summary.reason)])
        summary.seconds_total = time.perf_counter() - t_start
        return summary

    def _sample(self, item: D.Item, output: np.ndarray) -> M.Sample:
        gt = self.cache.get(item.gt_path) if item.gt_path else None
        # References are decoded only when a metric may compare with them (no GT).
        need_refs = any(getattr(m, "target", None) == "refs" for m in self.metrics.values()) \
            or (gt is None and any(m.needs == "gt_or_refs" for m in self.metrics.values()))
        refs = [self.cache.get(p) for p in item.ref_paths] if need_refs else []
        return M.Sample(item.image_id, output, gt, refs, gt_key=item.gt_path,
                        ref_keys=list(item.ref_paths) if need_refs else [],
                        shared=self.cache.derived)

    def _dataset_score(self, run_id: str, name: str, feats: dict | None) -> dict:
        m = self.metrics[name]
        row = {"run_id": run_id, "metric": name, "value": None, "status": "unavailable", "reason": None,
                   "n_images": 0}
        if name in self.unavailable:
            return dict(row, reason=self.unavailable[name])
        gt_items = [it for it in self.ds.items if it.gt_path]
        if not gt_items:
            return dict(row, reason="the dataset has no GT images to compare with")
        ids = [it.image_id for it in self.ds.items if it.image_id in (feats or {})]
        if len(ids) < len(self.ds.items):
            missing = [it for it in self.ds.items if it.image_id not in feats]
            done = self.store.done_outputs(run_id)
            for it in missing:  # outputs restored and scored by an earlier, killed run
                if it.image_id in done:
                    feats[it.image_id] = m.features([load_image(
                        safe_child(self.out, done[it.image_id]["output_path"]))])[0]
            ids = [it.image_id for it in self.ds.items if it.image_id in feats]
        ref = self._reference_features(m, gt_items)
        try:
            value = m.compute(np.stack([feats[i] for i in ids]) if ids else np.zeros((0, 1)), ref)
        except M.MetricUnavailable as e:
            return dict(row, reason=str(e))
        return dict(row, value=value, status="ok", n_images=len(ids))

    def _reference_features(self, m, gt_items) -> np.ndarray:
        """GT features, cached on disk per dataset hash, extractor and item list."""
        import hashlib
        import io
        key = hashlib.sha256(json.dumps([it.image_id for it in gt_items]).encode()).hexdigest()[:12]
        path = self.out / "cache" / m.name / f"{self.ds.dataset_hash[:16]}-{m.extractor}-{key}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        feats = np.stack([m.features([self.cache.get(it.gt_path)])[0] for it in gt_items])
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        write_bytes_atomic(path, buf.getvalue())
        return feats

    def _paste_back(self, run_id: str) -> None:
        """Whole photos: paste every restored face back into its photo."""
        import faces
        done = self.store.done_outputs(run_id)
        by_photo: dict[str, list[D.Item]] = {}
        for it in self.ds.items:
            by_photo.setdefault(it.photo["photo_id"], []).append(it)
        for photo_id, items in by_photo.items():
            dest = safe_child(self.out, f"outputs/{run_id}/photos/{photo_id}.png")
            if dest.is_file() or not all(it.image_id in done for it in items):
                continue
            photo = load_image(items[0].photo["path"])
            for it in items:
                face = load_image(safe_child(self.out, done[it.image_id]["output_path"]))
                crop = load_image(_abs(self.out, it.lq_path))
                face = R.resize_to(face, crop.shape[:2])
                photo = faces.paste_back(photo, face, np.asarray(it.photo["matrix"]))
            save_image(dest, photo)

    def close(self):
        self.store.close()


def run_benchmark(methods: str | list[str], dataset: str, data: str | None = None, *,
                  out: str | Path = "results", metrics: list[str] | None = None,
                  device: str = "cpu", limit: int | None = None, dataset_options: dict | None = None,
                  sets: list[str] = (), progress: bool = True,
                  metric_options: dict | None = None) -> list[RunSummary]:
    """The Python entry of the command line; returns one summary per method."""
    check_device(device)
    specs = parse_methods(methods, list(sets))
    video = D.is_video_dataset(dataset)
    for s in specs:  # every method's name and options are checked before any work
        if video:
            from .video import restore_argv
            restore_argv(s.name, s.options)
        else:
            R.create_restorer(s.name, **s.options)
    names = list(metrics or ([] if video else M.DEFAULT_METRICS))
    for n in names:
        M.get_spec(n)
    ds = D.load_dataset(dataset, data, results_dir=out, limit=limit, **(dataset_options or {}))
    if ds.name == "video":
        from .video import run_video_benchmark
        return run_video_benchmark(ds, specs, out, metrics=names or None, device=device,
                                   progress=progress)
    bench = Benchmark(ds, names, out, device=device, progress=progress,
                      metric_options=metric_options)
    try:
        return [bench.run_method(s) for s in specs]
    finally:
        bench.close()


def _scores_over(store, summary: RunSummary, board: list[dict]) -> list[dict]:
    """``board`` with ``summary``'s per-image metric rows recomputed over its images."""
    marks = ", ".join("?" * len(summary.image_ids))
    rows = store.query(
        "SELECT metric, avg(value) FILTER (WHERE status = 'ok') AS value, "
        "count(*) FILTER (WHERE status = 'ok') AS n_scored, "
        "count(*) FILTER (WHERE status <> 'ok') AS n_unavailable, "
        "min(reason) FILTER (WHERE status <> 'ok') AS reason FROM image_scores "
        f"WHERE run_id = ? AND image_id IN ({marks}) GROUP BY metric",
        [summary.run_id, *summary.image_ids])
    mine = {r["metric"]: r for r in rows}
    return [dict(r, **mine[r["metric"]]) if r["run_id"] == summary.run_id and r["metric"] in mine
            else r for r in board]


def format_summary(out: str | Path, summaries: list[RunSummary],
                   metrics: list[str] | None = None) -> str:
    """A plain-text table: one row per run, metric means; then what was skipped and why.
    ``metrics``: only these (default: every metric the runs have in the store)."""
    store = open_store(out, read_only=True)
    try:
        board = store.leaderboard([s.run_id for s in summaries])
        # The store may hold more images of a run than this invocation covered (an
        # earlier run without --limit): per-image means over this invocation's images.
        for s in summaries:
            if s.image_ids:
                board = _scores_over(store, s, board)
    finally:
        store.close()
    if metrics is not None:
        board = [r for r in board if r["metric"] in metrics]
    metrics = list(dict.fromkeys(r["metric"] for r in board))
    by_run: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for r in board:
        by_run.setdefault(r["run_id"], {})[r["metric"]] = r
        if r["n_scored"] == 0 and r["reason"]:
            notes.setdefault(r["metric"], r["reason"])
    header = ["method", "status", "images"] + metrics
    lines = [header]
    for s in summaries:
        row = [s.label, s.status, f"{s.n_ok}" + (f" ({s.n_failed} failed)" if s.n_failed else "")]
        for m in metrics:
            r = by_run.get(s.run_id, {}).get(m)
            if r is None or r["value"] is None:
                row.append("n/a" if s.status != "skipped" else "-")
            else:
                row.append(f"{r['value']:.4g}" + ("*" if r["n_unavailable"] else ""))
        lines.append(row)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    extra = []
    for s in summaries:
        if s.status == "skipped":
            extra.append(f"skipped {s.label}: {s.reason}")
        elif s.status == "failed":
            extra.append(f"{s.label}: {s.reason}")
        if s.n_scores_failed:
            extra.append(f"{s.label}: {s.n_scores_failed} scores failed "
                         "(see image_scores.reason)")
    for m, why in notes.items():
        extra.append(f"unavailable {m}: {why}")
    if any(r["n_unavailable"] and r["n_scored"] for r in board):
        extra.append("* some images of that run have no value for the metric (see image_scores)")
    return "\n".join(text + ([""] + extra if extra else []))


# --- command line -------------------------------------------------------------------
def _key_values(pairs: list[str], flag: str) -> dict:
    out = {}
    for p in pairs or []:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise ValueError(f"{flag} {p!r}: expected KEY=VALUE")
        out[k.strip()] = R._coerce(v.strip())
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from reface_core.argtypes import at_least
    from reface_core.cli import add_out, add_quiet
    p.add_argument("--methods", required=True,
                   help="comma-separated restorers with options, e.g. "
                        "'mgfr:adapters=runs/a/adapters,codeformer:w=0.5,bicubic' "
                        f"(known: {', '.join(R.RESTORERS)})")
    p.add_argument("--dataset", required=True,
                   help=f"a dataset name ({', '.join(D.DATASETS)}) or a folder (layout guessed)")
    p.add_argument("--data", help="the folder a named dataset reads")
    p.add_argument("--metrics", help="comma-separated metrics (default: "
                                     f"{','.join(M.DEFAULT_METRICS)}; known: {', '.join(M.METRICS)})")
    add_out(p, "results folder (default: results)", default="results")
    p.add_argument("--device", default="cpu", help="torch device for restorers and metrics")
    p.add_argument("--limit", type=at_least(1), help="only the first N items of the dataset")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="one more method option (repeatable), e.g. --set codeformer.w=0.7")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option (repeatable), e.g. preset=mgfr-severe, seed=1, n_references=2")
    add_quiet(p, dest="no_progress", help="no progress bar")
    from reface_core.lock import add_wait_lock_argument
    add_wait_lock_argument(p)



# Bad input a user can fix (a bad name, folder, option or image): one line, exit status 2.
USER_ERRORS = (D.DatasetError, M.UnknownMetricError, R.UnknownRestorerError, StoreError,
               ValueError, ImageLoadError)

def command(args) -> int:
    try:
        from reface_core.lock import lock_for
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        with lock_for(args, args.out):
            summaries = run_benchmark(
                args.methods, args.dataset, args.data, out=args.out, metrics=metrics,
                device=args.device, limit=args.limit,
                dataset_options=_key_values(args.dataset_option, "--dataset-option"),
                sets=args.set, progress=not args.no_progress)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if D.is_video_dataset(args.dataset):
        from .video import format_video_summary
        print(format_video_summary(args.out, summaries))
    else:
        print(format_summary(args.out, summaries, metrics or list(M.DEFAULT_METRICS)))
    print(f"\nresults: {Path(args.out) / 'results.duckdb'}")
    # 1: finished, but some rows failed (images a method could not restore, scores a
    # metric could not compute); their rows say why. A skipped method is not a failure.
    return 1 if any(s.status == "failed" or s.n_scores_failed for s in summaries) else 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("run", help="run restorers x metrics on a dataset into the store",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=command)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="Run restorers x metrics on one dataset into "
                                            "RESULTS/results.duckdb (resumable).")
    add_arguments(p)
    p.set_defaults(func=command)
    return p


def main(argv: list[str] | None = None) -> int:
    from reface_core.cli import run_main
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from reface_core.cli import exit_with
    exit_with(main)
