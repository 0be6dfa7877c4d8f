"""Publish a benchmark store: leaderboard CSV / Parquet / Markdown and a static HTML report.

``python -m benchmarks.publish -i RESULTS_DIR -o SITE_DIR`` reads
``RESULTS_DIR/results.duckdb`` (read-only) and writes::

    SITE_DIR/index.html                   datasets, user-study results, provenance of every run
    SITE_DIR/<dataset>.html               leaderboard, plots, image grids with eye/mouth crops
    SITE_DIR/clip-<dataset>-<clip>-<h>.html  video datasets: a page per clip (frame strip,
                                          flicker and identity-over-time plots;
                                          benchmarks.publish_video)
    SITE_DIR/leaderboards/<dataset>.csv   one row per finished run (see COLUMN ORDER below)
    SITE_DIR/leaderboards/<dataset>.parquet, <dataset>.md
    SITE_DIR/assets/...                   plots and image thumbnails (plain files, relative links)

Column order of a leaderboard (stable: it depends only on which metrics exist):
``dataset, dataset_hash, restorer, run_id, config_hash``, then per metric, in
:data:`METRIC_ORDER` (metrics not listed there follow alphabetically), the triple
``"<metric> (<direction>)"``, ``"<metric> n_scored"``, ``"<metric> n_unavailable"``.
Rows are sorted by restorer, then run id.

Rounding rule: CSV and Markdown values are the leaderboard view's values rounded to
:data:`DECIMALS` (4) decimal places, half to even (Python's ``round``); a metric that was
unavailable for a run is an empty cell. The Parquet file keeps the unrounded doubles.

The report is built in a temporary folder beside ``SITE_DIR`` and swapped in at the end,
so a reader never sees half a site; an existing ``SITE_DIR`` is only replaced when it is
empty or was written by this command (it holds :data:`SITE_MARKER`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DECIMALS = 4
SITE_MARKER = ".reface-publish"
STORE_FILE = "results.duckdb"

#: Leaderboard column order: fidelity, perceptual, identity, distribution, no-reference.
METRIC_ORDER = ("psnr", "ssim", "psnr-y", "ssim-y", "lpips", "dists", "ids", "deg", "ids-ref",
                "lmd", "fid", "musiq", "clipiqa", "maniqa", "niqe", "niqe-skvideo", "brisque",
                "brisque-pypi")
#: The identity axis of the identity-vs-quality scatter, first one present wins.
IDENTITY_METRICS = ("ids", "deg", "lmd")
#: The quality axis of the scatter, first one present wins (no-reference first: the
#: question the scatter answers is "does a nicer-looking face cost identity?").
QUALITY_METRICS = ("musiq", "clipiqa", "maniqa", "niqe", "niqe-skvideo", "brisque",
                   "brisque-pypi", "lpips", "ssim", "psnr")
ID_COLUMNS = ("dataset", "dataset_hash", "restorer", "run_id", "config_hash")

#: FFHQ-aligned crop boxes, as fractions of the face size, derived from the FFHQ landmark
#: template in faces.alignment (eyes around (0.377, 0.469) and (0.623, 0.469), mouth
#: corners at (0.393, 0.725) and (0.611, 0.725)); see :func:`crop_boxes`.
THUMB_SIZE = 256
CROP_WIDTH = 192


class PublishError(ValueError):
    """Bad input to publish (missing store, unsafe output folder); the message names it."""


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Results:
    """Everything publish reads from one store, as DataFrames."""

    root: Path
    runs: pd.DataFrame
    images: pd.DataFrame
    outputs: pd.DataFrame
    image_scores: pd.DataFrame
    leaderboard: pd.DataFrame
    metrics: pd.DataFrame
    study: dict | None
    #: the video tables (empty when the store has none): see benchmarks.store
    video_scores: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(
        columns=["run_id", "clip", "track_id", "metric", "value", "n_frames"]))
    video_series: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(
        columns=["run_id", "clip", "track_id", "frame", "metric", "value"]))


def store_path(results_dir: str | os.PathLike) -> Path:
    root = Path(results_dir)
    if not root.is_dir():
        raise PublishError(f"--input {str(root)!r}: not a folder")
    path = root / STORE_FILE
    if not path.is_file():
        raise PublishError(f"--input {str(root)!r}: no {STORE_FILE} in it "
                           "(write one with python -m benchmarks.run --out DIR)")
    return path


@contextlib.contextmanager
def connect_read_only(results_dir: str | os.PathLike):
    """A read-only connection to the store (publishing never writes to it)."""
    from .store import StoreError, open_store
    path = store_path(results_dir)
    try:
        store = open_store(results_dir, read_only=True)
    except StoreError as e:
        raise PublishError(f"{e}; is a benchmark run or a study server writing to it "
                           "right now?") from None
    try:
        yield store.con
    finally:
        store.close()
    del path


def _table(con, sql: str) -> pd.DataFrame:
    return con.execute(sql).fetchdf()


def _tables(con) -> set[str]:
    rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {r[0] for r in rows}


def read_results(results_dir: str | os.PathLike) -> Results:
    root = Path(results_dir)
    with connect_read_only(root) as con:
        have = _tables(con)
        missing = {"runs", "images", "outputs", "image_scores", "metrics", "leaderboard"} - have
        if missing:
            raise PublishError(f"{store_path(root)}: not a benchmark store (missing "
                               f"{', '.join(sorted(missing))})")
        runs = _table(con, "SELECT * FROM runs ORDER BY started_at, run_id")
        images = _table(con, "SELECT * FROM images ORDER BY dataset_hash, image_id")
        outputs = _table(con, "SELECT * FROM outputs ORDER BY run_id, image_id")
        scores = _table(con, "SELECT run_id, image_id, metric, value, status FROM image_scores")
        board = _table(con, "SELECT * FROM leaderboard")
        metrics = _table(con, "SELECT * FROM metrics")
        study = None
        if "study_votes" in have:
            from .study import study_results_from_con
            study = study_results_from_con(con)
        video = {}
        for table in ("video_scores", "video_series"):
            if table in have:
                video[table] = _table(con, f"SELECT * FROM {table}")
    return Results(root, runs, images, outputs, scores, board, metrics, study, **video)


def resolve_store_path(root: Path, value: Any) -> Path | None:
    """A path recorded in the store: absolute, or relative to the results folder."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    p = Path(str(value))
    return p if p.is_absolute() else root / p


# --------------------------------------------------------------------------- tables


def metric_sort_key(metric: str) -> tuple[int, str]:
    if metric in METRIC_ORDER:
        return METRIC_ORDER.index(metric), metric
    return len(METRIC_ORDER), metric


def ordered_metrics(metrics) -> list[str]:
    return sorted(set(metrics), key=metric_sort_key)


def metric_column(metric: str, direction: str) -> str:
    return f"{metric} ({direction})"


def done_run_ids(runs: pd.DataFrame) -> set[str]:
    return set(runs.loc[runs["status"] == "done", "run_id"])


@dataclasses.dataclass
class DatasetKey:
    """One leaderboard: a dataset name and the content hash of its images."""

    dataset: str
    dataset_hash: str
    slug: str


def dataset_keys(board: pd.DataFrame, runs: pd.DataFrame) -> list[DatasetKey]:
    # A name with two content hashes (another degradation seed, say) gives two boards:
    # numbers measured on different inputs never share a table.
    pairs = runs[["dataset", "dataset_hash"]].drop_duplicates()
    pairs = pd.concat([pairs, board[["dataset", "dataset_hash"]]]).drop_duplicates()
    pairs = pairs.fillna("").sort_values(["dataset", "dataset_hash"])
    counts = pairs["dataset"].value_counts()
    keys, used = [], set()
    for name, h in pairs.itertuples(index=False):
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")[:60] or "dataset"
        slug = base if counts[name] == 1 else f"{base}-{str(h)[:8]}"
        while slug in used or slug == "index":
            slug += "-"
        used.add(slug)
        keys.append(DatasetKey(str(name), str(h), slug))
    return keys


def leaderboard_frame(results: Results, key: DatasetKey) -> pd.DataFrame:
    """The wide leaderboard of one dataset, unrounded: one row per finished run."""
    board = results.leaderboard
    done = done_run_ids(results.runs)
    sub = board[(board["dataset"].fillna("") == key.dataset)
                & (board["dataset_hash"].fillna("") == key.dataset_hash)
                & board["run_id"].isin(done)]
    runs = results.runs[(results.runs["dataset"].fillna("") == key.dataset)
                        & (results.runs["dataset_hash"].fillna("") == key.dataset_hash)
                        & results.runs["run_id"].isin(done)]
    directions = dict(zip(results.metrics["metric"], results.metrics["direction"], strict=False))
    directions.update(dict(zip(sub["metric"], sub["direction"], strict=False)))
    metrics = ordered_metrics(sub["metric"])
    rows = []
    for run in runs.sort_values(["restorer", "run_id"]).itertuples(index=False):
        row = {"dataset": key.dataset, "dataset_hash": key.dataset_hash,
               "restorer": run.restorer, "run_id": run.run_id, "config_hash": run.config_hash}
        mine = sub[sub["run_id"] == run.run_id].set_index("metric")
        for m in metrics:
            col = metric_column(m, directions.get(m, "higher"))
            if m in mine.index:
                r = mine.loc[m]
                row[col] = None if pd.isna(r["value"]) else float(r["value"])
                row[f"{m} n_scored"] = int(r["n_scored"]) if not pd.isna(r["n_scored"]) else 0
                row[f"{m} n_unavailable"] = (int(r["n_unavailable"])
                                             if not pd.isna(r["n_unavailable"]) else 0)
            else:
                row[col], row[f"{m} n_scored"], row[f"{m} n_unavailable"] = None, 0, 0
        rows.append(row)
    columns = list(ID_COLUMNS)
    for m in metrics:
        columns += [metric_column(m, directions.get(m, "higher")), f"{m} n_scored",
                    f"{m} n_unavailable"]
    frame = pd.DataFrame(rows, columns=columns)
    for m in metrics:
        frame[metric_column(m, directions.get(m, "higher"))] = frame[
            metric_column(m, directions.get(m, "higher"))].astype("float64")
        frame[f"{m} n_scored"] = frame[f"{m} n_scored"].astype("int64")
        frame[f"{m} n_unavailable"] = frame[f"{m} n_unavailable"].astype("int64")
    return frame


def round_value(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), DECIMALS)


def format_value(value) -> str:
    v = round_value(value)
    return "" if v is None else f"{v:.{DECIMALS}f}"


def value_columns(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, metric, direction) of every metric value column, in order."""
    out = []
    for col in frame.columns:
        m = re.fullmatch(r"(.+) \((higher|lower)\)", col)
        if m:
            out.append((col, m.group(1), m.group(2)))
    return out


#: A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize(text: str) -> str:
    """Text a spreadsheet shows as text: a leading ``'`` before a formula start."""
    return "'" + text if isinstance(text, str) and text.startswith(FORMULA_STARTS) else text


def write_leaderboard_csv(frame: pd.DataFrame, path: Path) -> None:
    rounded = frame.copy()
    values = {col for col, _, _ in value_columns(frame)}
    for col in values:
        rounded[col] = [format_value(v) for v in frame[col]]
    for col in rounded.columns:  # names from the store; numbers stay numbers
        if col not in values and (rounded[col].dtype == object
                                  or pd.api.types.is_string_dtype(rounded[col])):
            rounded[col] = [neutralize(v) for v in rounded[col]]
    with _atomic(path) as tmp:
        rounded.to_csv(tmp, index=False, lineterminator="\n")


def write_leaderboard_parquet(frame: pd.DataFrame, path: Path) -> None:
    with _atomic(path) as tmp:
        frame.to_parquet(tmp, index=False)


@contextlib.contextmanager
def _atomic(path: Path):
    from reface_core.atomic import atomic_path
    with atomic_path(path) as tmp:
        yield tmp


# --------------------------------------------------------------------------- statistics


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and the Student-t confidence interval of the mean over images."""
    from scipy import stats
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1 or not np.isfinite(mean):
        # PSNR of an exact copy is inf: the mean is inf, and has no interval
        return mean, mean, mean, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def per_run_stats(results: Results, run_ids: list[str], metric: str) -> list[dict]:
    s = results.image_scores
    out = []
    for rid in run_ids:
        vals = s[(s["run_id"] == rid) & (s["metric"] == metric) & (s["status"] == "ok")]["value"]
        mean, lo, hi, n = mean_ci(vals.to_numpy(dtype=np.float64, na_value=np.nan))
        out.append({"run_id": rid, "mean": mean, "lo": lo, "hi": hi, "n": n})
    return out


# --------------------------------------------------------------------------- plots


def _mpl():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_fig(fig, path: Path) -> None:
    plt = _mpl()
    with _atomic(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_metric_bars(labels: list[str], stats_rows: list[dict], metric: str, direction: str,
                     kind: str, path: Path) -> None:
    """Bar per run with its 95% CI over images (dataset metrics have no interval)."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(max(3.2, 0.9 * len(labels) + 1.6), 2.8))
    means = np.array([r["mean"] for r in stats_rows], dtype=np.float64)
    x = np.arange(len(labels))
    finite = means[np.isfinite(means)]
    # An infinite mean (PSNR of an exact copy) is drawn to the top of the axis and
    # labelled, not left out: it is the best run's bar.
    ceiling = float(finite.max()) * 1.15 if finite.size and finite.max() > 0 else 1.0
    heights = np.nan_to_num(means, nan=0.0, posinf=ceiling, neginf=0.0)
    bars = ax.bar(x, heights, color="#4c78a8", width=0.6)
    if kind == "image":
        lo = np.array([r["lo"] for r in stats_rows])
        hi = np.array([r["hi"] for r in stats_rows])
        with np.errstate(invalid="ignore"):  # inf - inf: no interval
            err = np.vstack([np.nan_to_num(means - lo), np.nan_to_num(hi - means)])
        ax.errorbar(x, heights, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1)
    for bar, r in zip(bars, stats_rows, strict=False):
        if np.isinf(r["mean"]):
            bar.set_hatch("//")
            ax.annotate("+∞" if r["mean"] > 0 else "-∞",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=9, fontweight="bold")
        elif not np.isfinite(r["mean"]):
            bar.set_alpha(0.0)
            ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center",
                        va="bottom", fontsize=8, color="#a00")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    arrow = "higher is better" if direction == "higher" else "lower is better"
    ci = "mean over images, 95% CI" if kind == "image" else "dataset value"
    ax.set_title(f"{metric} ({arrow}; {ci})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if finite.size and kind == "image":
        lo_all = np.nanmin([r["lo"] for r in stats_rows if np.isfinite(r["lo"])])
        hi_all = np.nanmax([r["hi"] for r in stats_rows if np.isfinite(r["hi"])]
                           + ([ceiling] if np.isposinf(means).any() else []))
        span = max(hi_all - lo_all, 1e-9)
        # Bars from zero hide differences of PSNR-like metrics; start the axis just below
        # the lowest interval when every value is positive and far from zero.
        if lo_all > 0 and lo_all > 2 * span:
            ax.set_ylim(lo_all - 0.5 * span, hi_all + 0.3 * span)
            ax.set_ylabel("axis does not start at 0", fontsize=7, color="#666")
    _save_fig(fig, path)


def plot_identity_vs_quality(labels: list[str], id_stats: list[dict], q_stats: list[dict],
                             id_metric: str, q_metric: str, directions: dict,
                             path: Path) -> None:
    """One point per run at (identity mean, quality mean) with 95% CI bars on both axes."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, a, b) in enumerate(zip(labels, id_stats, q_stats, strict=False)):
        if not (np.isfinite(a["mean"]) and np.isfinite(b["mean"])):
            continue
        c = colors[i % len(colors)]
        ax.errorbar(a["mean"], b["mean"],
                    xerr=[[a["mean"] - a["lo"]], [a["hi"] - a["mean"]]],
                    yerr=[[b["mean"] - b["lo"]], [b["hi"] - b["mean"]]],
                    fmt="o", color=c, capsize=3, label=label)
    ax.set_xlabel(f"{id_metric} ({directions.get(id_metric, 'higher')} is better)")
    ax.set_ylabel(f"{q_metric} ({directions.get(q_metric, 'higher')} is better)")
    ax.set_title("identity vs quality (means, 95% CI over images)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    _save_fig(fig, path)


# --------------------------------------------------------------------------- image grids


def crop_boxes(size_w: int, size_h: int) -> dict[str, tuple[int, int, int, int]]:
    """Eye and mouth boxes (left, top, right, bottom) of an FFHQ-aligned face of this size.

    Taken from the FFHQ 5-point template of ``faces.alignment`` (the same positions the
    dataset's alignment maps the landmarks to), so they sit on the eyes and the mouth of
    every aligned face without running a landmark model on restored outputs.
    """
    from faces.alignment import ffhq_template
    pts = ffhq_template(512).astype(np.float64) / 512.0
    left_eye, right_eye, _nose, mouth_l, mouth_r = pts
    eye_d = right_eye[0] - left_eye[0]
    eyes = (left_eye[0] - 0.5 * eye_d, min(left_eye[1], right_eye[1]) - 0.3 * eye_d,
            right_eye[0] + 0.5 * eye_d, max(left_eye[1], right_eye[1]) + 0.3 * eye_d)
    mouth_w = mouth_r[0] - mouth_l[0]
    cy = (mouth_l[1] + mouth_r[1]) / 2
    mouth = (mouth_l[0] - 0.4 * mouth_w, cy - 0.42 * mouth_w,
             mouth_r[0] + 0.4 * mouth_w, cy + 0.42 * mouth_w)
    out = {}
    for name, (x0, y0, x1, y1) in (("eyes", eyes), ("mouth", mouth)):
        out[name] = (max(0, round(x0 * size_w)), max(0, round(y0 * size_h)),
                     min(size_w, round(x1 * size_w)), min(size_h, round(y1 * size_h)))
    return out


@dataclasses.dataclass
class GridCell:
    """One picture of a grid row (LQ, a restorer, GT or a reference) and its crops."""

    label: str
    src: str | None = None            # relative to the site root
    eyes: str | None = None
    mouth: str | None = None
    note: str = ""                    # why there is no picture
    width: int = 0
    height: int = 0


class AssetWriter:
    """Writes thumbnails and crops under SITE/assets/img with names that are hashes only."""

    def __init__(self, site: Path):
        self.site = site
        self.folder = site / "assets" / "img"
        self.done: dict[tuple, GridCell] = {}

    def cell(self, label: str, path: Path | None, *, crops: bool) -> GridCell:
        from PIL import Image

        from reface_core.imageio import ImageLoadError, load_image
        if path is None:
            return GridCell(label, note="no image recorded")
        if not path.is_file():
            return GridCell(label, note=f"file missing: {path.name}")
        key = (str(path), crops)
        if key in self.done:
            return dataclasses.replace(self.done[key], label=label)
        try:
            arr = load_image(path)
        except (ImageLoadError, OSError) as e:
            return GridCell(label, note=f"unreadable: {str(e).splitlines()[0][:160]}")
        h, w = arr.shape[:2]
        # File names from a hash of the source path: nothing read from the store becomes
        # a name under the site folder.
        stem = hashlib.sha1(str(path).encode()).hexdigest()[:20]
        img = Image.fromarray(arr)
        thumb = img if max(w, h) <= THUMB_SIZE else img.resize(
            (round(w * THUMB_SIZE / max(w, h)), round(h * THUMB_SIZE / max(w, h))),
            Image.LANCZOS)
        cell = GridCell(label, src=self._save(thumb, f"{stem}.png"), width=w, height=h)
        # Crop boxes assume an FFHQ-aligned face; aligned faces are square, whole photos
        # (another dataset kind) rarely are, and get no crops rather than wrong ones.
        if crops and w == h:
            for name, box in crop_boxes(w, h).items():
                region = img.crop(box)
                scale = CROP_WIDTH / max(region.width, 1)
                # Nearest neighbour: a zoom shows the real pixels, blocks and all.
                zoom = region.resize((CROP_WIDTH, max(1, round(region.height * scale))),
                                     Image.NEAREST)
                setattr(cell, name, self._save(zoom, f"{stem}-{name}.png"))
        self.done[key] = cell
        return cell

    def _save(self, img, name: str) -> str:
        path = self.folder / name
        with _atomic(path) as tmp:
            img.save(tmp, format="PNG", optimize=False)
        return path.relative_to(self.site).as_posix()


def _json_list(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    try:
        got = json.loads(value)
    except (TypeError, ValueError):
        return []
    return got if isinstance(got, list) else []


def pick_grid_images(images: pd.DataFrame, outputs: pd.DataFrame, run_ids: list[str],
                     n: int) -> list[str]:
    """Up to ``n`` image ids with an output from at least one run: one per identity first."""
    ok = outputs[outputs["run_id"].isin(run_ids) & (outputs["status"] == "ok")]
    have = set(ok["image_id"])
    cand = images[images["image_id"].isin(have)].sort_values("image_id")
    picked: list[str] = []
    seen: set = set()
    ident = cand["identity"] if "identity" in cand.columns else pd.Series([None] * len(cand))
    for image_id, who in zip(cand["image_id"], ident, strict=False):
        if who not in seen:
            picked.append(image_id)
            seen.add(who)
    for image_id in cand["image_id"]:
        if image_id not in picked:
            picked.append(image_id)
    return picked[:n]


def build_grid(results: Results, key: DatasetKey, runs: pd.DataFrame, labels: dict[str, str],
               assets: AssetWriter, n_images: int, n_refs: int) -> list[dict]:
    images = results.images[results.images["dataset_hash"].fillna("") == key.dataset_hash]
    run_ids = list(runs["run_id"])
    rows = []
    for image_id in pick_grid_images(images, results.outputs, run_ids, n_images):
        rec = images[images["image_id"] == image_id].iloc[0]
        cells = [assets.cell("LQ", resolve_store_path(results.root, rec.get("lq_path")),
                             crops=True)]
        for rid in run_ids:
            out = results.outputs[(results.outputs["run_id"] == rid)
                                  & (results.outputs["image_id"] == image_id)]
            if out.empty:
                cells.append(GridCell(labels[rid], note="not run on this image"))
            elif out.iloc[0]["status"] != "ok":
                err = out.iloc[0].get("error")
                cells.append(GridCell(labels[rid], note=f"{out.iloc[0]['status']}: {err or ''}"))
            else:
                cells.append(assets.cell(
                    labels[rid], resolve_store_path(results.root, out.iloc[0]["output_path"]),
                    crops=True))
        gt = resolve_store_path(results.root, rec.get("gt_path"))
        cells.append(assets.cell("GT", gt, crops=True) if gt else
                     GridCell("GT", note="no ground truth (LQ-only dataset)"))
        refs = _json_list(rec.get("ref_paths"))[:n_refs]
        for i, ref in enumerate(refs):
            cells.append(assets.cell(f"reference {i + 1}", resolve_store_path(results.root, ref),
                                     crops=False))
        rows.append({"image_id": str(image_id),
                     "identity": str(rec.get("identity", "") or ""), "cells": cells})
    return rows


# --------------------------------------------------------------------------- site


def _template_env(autoescape: bool = True):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "report")),
                      autoescape=autoescape, undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = format_value
    env.filters["pretty_json"] = _pretty_json
    env.filters["md"] = _md_escape
    return env


def _pretty_json(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return json.dumps(json.loads(value), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


def _md_escape(value) -> str:
    # Markdown renderers pass raw HTML through, so markup in a name is escaped; a pipe or a
    # line break inside a cell would end the table cell or row.
    text = neutralize(str(value)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _static(name: str) -> str:
    return (Path(__file__).parent / "report" / "static" / name).read_text(encoding="utf-8")


def _run_labels(runs: pd.DataFrame) -> dict[str, str]:
    counts = runs["restorer"].value_counts()
    return {r.run_id: (r.restorer if counts[r.restorer] == 1
                       else f"{r.restorer} [{str(r.config_hash)[:8]}]")
            for r in runs.itertuples(index=False)}


def _best_cells(frame: pd.DataFrame) -> dict[str, set[int]]:
    """Row indices holding the best value per metric column (all of them on a tie).

    Compared as shown (rounded): two values that print the same are both marked.
    """
    best = {}
    for col, _, direction in value_columns(frame):
        vals = frame[col].astype("float64").round(DECIMALS)
        if vals.notna().sum() >= 2:
            top = vals.max() if direction == "higher" else vals.min()
            best[col] = {int(i) for i in vals.index[vals == top]}
    return best


def _unavailable_notes(results: Results, key: DatasetKey, run_ids: list[str],
                       labels: dict[str, str]) -> list[dict]:
    kinds = dict(zip(results.metrics["metric"], results.metrics["kind"], strict=False))
    b = results.leaderboard
    sub = b[b["run_id"].isin(run_ids) & (b["dataset_hash"].fillna("") == key.dataset_hash)]
    # One note per (metric, reason): the same missing weights file is said once, with
    # the runs it hit, not once per run.
    grouped: dict[tuple[str, str], dict] = {}
    for r in sub.sort_values(["metric", "run_id"]).itertuples(index=False):
        reason = getattr(r, "reason", None)
        reason = "" if reason is None or pd.isna(reason) else str(reason)
        n_un = 0 if pd.isna(r.n_unavailable) else int(r.n_unavailable)
        if n_un > 0 or pd.isna(r.value):
            note = grouped.setdefault((r.metric, reason), {
                "metric": r.metric, "kind": kinds.get(r.metric, "image"), "runs": [],
                "reason": reason, "short": _short_reason(reason)})
            note["runs"].append({"label": labels.get(r.run_id, r.run_id), "n": n_un})
    return list(grouped.values())


def _short_reason(reason: str) -> str:
    """The first sentence of a reason (the asset resolver's message goes on for lines)."""
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    first = first.split(" Looked in:")[0].strip()
    return first if len(first) <= 240 else first[:237] + "..."


def _duration(seconds: float) -> str:
    if seconds < 0.001:
        return "< 1 ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _provenance(results: Results) -> list[dict]:
    outs = results.outputs
    rows = []
    for r in results.runs.itertuples(index=False):
        mine = outs[outs["run_id"] == r.run_id]
        ok = mine[mine["status"] == "ok"]
        secs = ok["seconds"].astype("float64")
        work = {"n_ok": len(ok), "n_failed": len(mine) - len(ok),
                "time_per_image": _duration(secs.mean()) if secs.notna().any() else ""}
        row = {}
        for k, v in r._asdict().items():
            if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
                v = ""  # NULL (None, NaN, NaT or pd.NA: a paired dataset has no seed)
            elif isinstance(v, pd.Timestamp):
                v = v.strftime("%Y-%m-%d %H:%M:%S")
            row[k] = v
        row["short_reason"] = _short_reason(str(row.get("reason") or ""))
        row.update(work)
        rows.append(row)
    return rows


def build_site(results: Results, site: Path, *, grid_images: int = 6, n_refs: int = 2,
               note: str = "") -> dict:
    """Write the whole site into ``site`` (a fresh folder); return a summary. ``note`` is
    shown at the top of every page (e.g. what was trained how long on what)."""
    from . import publish_video
    env, md_env = _template_env(), _template_env(autoescape=False)
    env.globals["note"] = note
    css, js = _static("report.css"), _static("sortable.js")
    keys = dataset_keys(results.leaderboard, results.runs)
    directions = dict(zip(results.metrics["metric"], results.metrics["direction"], strict=False))
    kinds = dict(zip(results.metrics["metric"], results.metrics["kind"], strict=False))
    directions.update(dict(zip(results.leaderboard["metric"], results.leaderboard["direction"], strict=False)))
    assets = AssetWriter(site)
    summary: dict[str, Any] = {"site": str(site), "datasets": [], "index": "index.html"}
    pages = []
    nav = [{"file": f"{k.slug}.html", "key": k} for k in keys]
    done = done_run_ids(results.runs)
    for key in keys:
        runs_all = results.runs[(results.runs["dataset"].fillna("") == key.dataset)
                                & (results.runs["dataset_hash"].fillna("") == key.dataset_hash)]
        runs = runs_all[runs_all["run_id"].isin(done)].sort_values(["restorer", "run_id"])
        labels = _run_labels(runs_all)
        frame = leaderboard_frame(results, key)
        csv_rel = f"leaderboards/{key.slug}.csv"
        write_leaderboard_csv(frame, site / csv_rel)
        write_leaderboard_parquet(frame, site / f"leaderboards/{key.slug}.parquet")
        vcols = value_columns(frame)
        run_ids = list(frame["run_id"])
        notes = _unavailable_notes(results, key, run_ids, labels)
        md = md_env.get_template("leaderboard.md.j2").render(
            key=key, frame=frame, vcols=vcols, rows=frame.to_dict("records"), labels=labels,
            notes=notes, decimals=DECIMALS)
        with _atomic(site / f"leaderboards/{key.slug}.md") as tmp:
            tmp.write_text(md, encoding="utf-8")

        plots = []
        plot_labels = [labels[r] for r in run_ids]
        # A metric no run could compute has nothing to plot; the table and the notes
        # already say why.
        valued = [(c, m, d) for c, m, d in vcols if frame[c].notna().any()]
        for col, metric, direction in valued:
            kind = kinds.get(metric, "image")
            if kind == "image":
                stats_rows = per_run_stats(results, run_ids, metric)
            else:
                stats_rows = [{"run_id": r, "mean": v, "lo": v, "hi": v, "n": 1}
                              for r, v in zip(run_ids, frame[col].astype("float64"), strict=False)]
            rel = f"assets/plots/{key.slug}-{_safe_name(metric)}.png"
            plot_metric_bars(plot_labels, stats_rows, metric, direction, kind, site / rel)
            plots.append({"src": rel, "metric": metric,
                          "alt": f"{metric}: bars per run"
                                 + (" with 95% confidence intervals over images"
                                    if kind == "image" else "")})
        scatter = None
        present = [m for _, m, _ in valued if kinds.get(m, "image") == "image"]
        id_m = next((m for m in IDENTITY_METRICS if m in present), None)
        q_m = next((m for m in QUALITY_METRICS if m in present and m != id_m), None)
        if id_m and q_m and run_ids:
            rel = f"assets/plots/{key.slug}-identity-vs-quality.png"
            plot_identity_vs_quality(plot_labels, per_run_stats(results, run_ids, id_m),
                                     per_run_stats(results, run_ids, q_m), id_m, q_m,
                                     directions, site / rel)
            scatter = {"src": rel, "x": id_m, "y": q_m}
        clips, temporal = [], []
        if publish_video.has_video(results, key):
            # clips are videos: a page per clip instead of the side-by-side image grid
            grid = []
            clips, temporal = publish_video.build_clip_pages(
                results, key, runs, labels, site,
                lambda name, **ctx: env.get_template(name).render(
                    css=css, js=js, nav_pages=nav, decimals=DECIMALS, **ctx))
        else:
            grid = build_grid(results, key, runs, labels, assets, grid_images, n_refs)
        n_cols = max((len(r["cells"]) for r in grid), default=0)
        page = {"key": key, "file": f"{key.slug}.html", "csv": csv_rel,
                "parquet": f"leaderboards/{key.slug}.parquet",
                "markdown": f"leaderboards/{key.slug}.md",
                "n_runs": len(runs), "n_runs_all": len(runs_all),
                "n_images": int((results.images["dataset_hash"].fillna("")
                                 == key.dataset_hash).sum()),
                "metrics": [m for _, m, _ in vcols] + [m for m, _, _ in (
                    publish_video.TEMPORAL_COLUMNS if clips else ())],
                "clips": clips, "temporal": temporal,
                "clip_files": {c.clip: c.file for c in clips}}
        pages.append(page)
        table_rows = []
        best = _best_cells(frame)
        for i, row in enumerate(frame.to_dict("records")):
            cells = []
            for col, metric, _ in vcols:
                n_s, n_u = row[f"{metric} n_scored"], row[f"{metric} n_unavailable"]
                cells.append({"text": format_value(row[col]), "raw": row[col],
                              "best": i in best.get(col, ()),
                              "title": f"{n_s} scored, {n_u} unavailable"})
            table_rows.append({"label": labels[row["run_id"]], "row": row, "cells": cells})
        page.update(vcols=vcols, board_rows=table_rows)  # the overview shows it too
        html_text = env.get_template("dataset.html.j2").render(
            page=page, css=css, js=js, nav_pages=nav, vcols=vcols, rows=table_rows,
            notes=notes, plots=plots, scatter=scatter, grid=grid, n_cols=n_cols, decimals=DECIMALS,
            clips=clips, temporal=temporal, clip_files=page["clip_files"],
            temporal_columns=publish_video.TEMPORAL_COLUMNS,
            skipped=[{"label": labels[r.run_id], "status": r.status,
                      "reason": "" if r.reason is None or pd.isna(r.reason) else r.reason,
                      "short": "" if r.reason is None or pd.isna(r.reason)
                      else _short_reason(r.reason)}
                     for r in runs_all.itertuples(index=False) if r.run_id not in done])
        with _atomic(site / page["file"]) as tmp:
            tmp.write_text(html_text, encoding="utf-8")
        summary["datasets"].append({"dataset": key.dataset, "dataset_hash": key.dataset_hash,
                                    "page": page["file"], "csv": csv_rel, "runs": len(runs)})
    index = env.get_template("index.html.j2").render(
        css=css, js=js, nav_pages=nav, pages=pages, runs=_provenance(results), study=results.study,
        decimals=DECIMALS, temporal_columns=publish_video.TEMPORAL_COLUMNS)
    with _atomic(site / "index.html") as tmp:
        tmp.write_text(index, encoding="utf-8")
    return summary


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "x"


def _check_out_folder(out: Path, results_root: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PublishError(f"--out {str(out)!r}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise PublishError(f"--out {str(out)!r}: a non-empty folder this command did not "
                           "write; choose an empty or new folder")
    if out.resolve() == results_root.resolve() or out.resolve() in results_root.resolve().parents:
        raise PublishError(f"--out {str(out)!r}: would replace the results folder")


def publish(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
            grid_images: int = 6, n_refs: int = 2, note: str = "") -> dict:
    """Publish the store in ``results_dir`` as a site in ``out_dir``; return a summary."""
    if grid_images < 0 or n_refs < 0:
        raise PublishError("--grid-images and --refs must be >= 0")
    root, out = Path(results_dir), Path(out_dir)
    results = read_results(root)
    _check_out_folder(out, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    from reface_core.atomic import current_umask
    # mkdtemp makes 0700; the site is for a web server (another user): follow the umask
    # as mkdir would.
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        summary = build_site(results, tmp, grid_images=grid_images, n_refs=n_refs, note=note)
        (tmp / SITE_MARKER).write_text("written by python -m benchmarks.publish\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "site")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["site"] = str(out)
    summary["index"] = str(out / "index.html")
    return summary


# --------------------------------------------------------------------------- CLI


DESCRIPTION = ("Leaderboard CSV/Parquet/Markdown per dataset and a static HTML report "
               "(works from file://) from a benchmark results folder.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_subcommands(subparsers) -> None:
    """``python -m benchmarks publish ...`` (the same as ``python -m benchmarks.publish``)."""
    add_arguments(subparsers.add_parser("publish", help="leaderboards and the HTML report",
                                        description=DESCRIPTION))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from reface_core.cli import add_input, add_out
    add_input(p, "results folder written by python -m benchmarks.run (has results.duckdb)",
              dest="results", metavar="DIR", deprecated=("--results",))
    add_out(p, "site folder to write (replaced only if empty or written by publish)",
            required=True, metavar="SITE_DIR")
    p.add_argument("--grid-images", type=int, default=6, metavar="N",
                   help="faces per dataset in the side-by-side grid (default 6)")
    p.add_argument("--refs", type=int, default=2, metavar="N",
                   help="reference photos shown per grid row (default 2)")
    p.add_argument("--note", default="", metavar="TEXT",
                   help="a sentence shown at the top of every page, e.g. what was trained "
                        "how long on what")
    from reface_core.cli import add_quiet
    add_quiet(p, help="print nothing but errors (the files written are the same)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    try:
        summary = publish(args.results, args.out, grid_images=args.grid_images,
                          n_refs=args.refs, note=args.note)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "quiet", False):
        return 0
    for d in summary["datasets"]:
        print(f"{d['dataset']} ({d['runs']} finished runs): {Path(summary['site']) / d['csv']}")
    print(f"report: {summary['index']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from reface_core.cli import run_main
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from reface_core.cli import exit_with
    exit_with(main)
