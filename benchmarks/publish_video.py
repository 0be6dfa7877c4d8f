"""The report's video pages: one page per clip of a store's ``video_scores``.

Each clip page has its temporal metrics per run and track, a frame strip (the LQ clip,
each restorer's clip and the GT clip at a few frames, cropped around the clip's main face
track, or whole frames downscaled when no track was recorded or the clip is aligned
faces), and two plots over frames: the flow-warping error (flicker) and the identity
cosine to the track's mean. Read by :func:`benchmarks.publish.build_site`; it only reads
the store and the files the store names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

#: frames shown in a clip's strip, spread evenly over its main track
STRIP_FRAMES = 5
#: longest side of a strip picture (px)
STRIP_SIZE = 192
#: a face crop is this many times the tracked face box, square
CROP_SCALE = 1.8
#: (metric, direction, digits) of the temporal table, in order
TEMPORAL_COLUMNS = (("warp_error", "lower", 3), ("identity_mean", "higher", 4),
                    ("identity_min", "higher", 4), ("landmark_jitter", "lower", 4))


@dataclasses.dataclass
class ClipPage:
    clip: str
    file: str


def has_video(results, key) -> bool:
    vs = results.video_scores
    if vs.empty:
        return False
    runs = results.runs[results.runs["dataset_hash"].fillna("") == key.dataset_hash]
    return bool(vs["run_id"].isin(runs["run_id"]).any())


def clip_file(key, clip: str) -> str:
    """A page name from the dataset's slug and a hash of the clip name: nothing read from
    the store becomes a file name as it is."""
    import re
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", clip).strip("-")[:40] or "clip"
    return f"clip-{key.slug}-{safe}-{hashlib.sha1(clip.encode()).hexdigest()[:8]}.html"


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return ""
    return f"{float(value):.{digits}f}"


def temporal_rows(vs: pd.DataFrame, run_ids: list[str], labels: dict, *,
                  by_track: bool) -> list[dict]:
    """Rows of a temporal table: per (clip, run[, track]), the metrics (mean over tracks when
    not ``by_track``), with the best value per column (and clip) marked."""
    sub = vs[vs["run_id"].isin(run_ids)]
    if sub.empty:
        return []
    keys = ["clip", "run_id"] + (["track_id"] if by_track else [])
    wide = sub.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
    frames = sub.groupby(keys)["n_frames"].max()
    order = {r: i for i, r in enumerate(run_ids)}
    rows = []
    for idx in sorted(wide.index, key=lambda k: (k[0], order[k[1]]) + tuple(k[2:])):
        rec = dict(zip(keys, idx, strict=False))
        cells = []
        for metric, _direction, digits in TEMPORAL_COLUMNS:
            v = wide.loc[idx].get(metric, float("nan"))
            cells.append({"metric": metric, "raw": v, "text": _fmt(v, digits), "best": False})
        rows.append({"clip": rec["clip"], "run_id": rec["run_id"],
                     "label": labels.get(rec["run_id"], rec["run_id"]),
                     "track": int(rec["track_id"]) if by_track else None,
                     "n_frames": int(frames.loc[idx]), "cells": cells})
    group = (lambda r: (r["clip"], r["track"])) if by_track else (lambda r: r["clip"])
    for j, (_metric, direction, digits) in enumerate(TEMPORAL_COLUMNS):
        best: dict = {}
        for r in rows:
            v = r["cells"][j]["raw"]
            if v is None or pd.isna(v):
                continue
            v = round(float(v), digits)
            b = best.get(group(r))
            if b is None or (v > b if direction == "higher" else v < b):
                best[group(r)] = v
        for r in rows:
            v = r["cells"][j]["raw"]
            n = sum(1 for o in rows if group(o) == group(r))
            r["cells"][j]["best"] = (n > 1 and v is not None and not pd.isna(v)
                                     and round(float(v), digits) == best.get(group(r)))
    return rows


# --------------------------------------------------------------------------- the strip


def _main_track(path: Path | None) -> dict | None:
    """The longest LQ track of a clip (``frames``, ``boxes``), or None."""
    if path is None or not path.is_file():
        return None
    try:
        tracks = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    tracks = [t for t in tracks if isinstance(t, dict) and t.get("frames")]
    return max(tracks, key=lambda t: len(t["frames"])) if tracks else None


def strip_frames(n_frames: int, track: dict | None, k: int = STRIP_FRAMES) -> list[int]:
    """``k`` frame numbers spread evenly over the track (or the clip), first and last in."""
    pool = sorted(track["frames"]) if track else list(range(n_frames))
    pool = [f for f in pool if f < n_frames] or list(range(n_frames))
    if not pool:
        return []
    picks = np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int)
    return sorted({pool[i] for i in picks})


def crop_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """A square ``CROP_SCALE`` times the face box around its centre, inside the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = min(max(x1 - x0, y1 - y0) * CROP_SCALE, width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = round(min(max(cx - side / 2, 0), width - side))
    top = round(min(max(cy - side / 2, 0), height - side))
    return left, top, left + round(side), top + round(side)


def _read_frames(path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    from reface_core.video import iter_frames
    out = {}
    if not wanted:
        return out
    frames = iter_frames(path, stop=max(wanted) + 1)
    try:
        for i, frame in enumerate(frames):
            if i in wanted:
                out[i] = frame
    finally:
        frames.close()
    return out


def strip_row(label: str, path: Path | None, wanted: list[int], boxes: dict, site: Path,
              ref_size: tuple[int, int] | None) -> dict:
    """One row of the strip: a picture per wanted frame, or a note saying why not.
    ``boxes``: frame -> crop box in the LQ's pixels (``ref_size`` = LQ width, height)."""
    from PIL import Image

    from reface_core.video import VideoError
    if path is None:
        return {"label": label, "note": "no clip recorded", "cells": []}
    if not path.is_file():
        return {"label": label, "note": f"file missing: {path.name}", "cells": []}
    try:
        frames = _read_frames(path, wanted)
    except (VideoError, OSError) as e:
        return {"label": label, "note": f"unreadable: {str(e).splitlines()[0][:160]}",
                "cells": []}
    stem = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    cells = []
    for f in wanted:
        frame = frames.get(f)
        if frame is None:
            cells.append({"frame": f, "note": "no such frame"})
            continue
        img = Image.fromarray(frame)
        box = boxes.get(f)
        if box is not None and ref_size:
            sx, sy = img.width / ref_size[0], img.height / ref_size[1]
            img = img.crop((round(box[0] * sx), round(box[1] * sy),
                            round(box[2] * sx), round(box[3] * sy)))
        scale = STRIP_SIZE / max(img.width, img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.LANCZOS)
        rel = f"assets/img/strip-{stem}-{f:06d}.png"
        from reface_core.atomic import atomic_path
        with atomic_path(site / rel) as tmp:
            img.save(tmp, format="PNG")
        cells.append({"frame": f, "src": rel, "width": img.width, "height": img.height})
    return {"label": label, "note": "", "cells": cells}


# --------------------------------------------------------------------------- plots


def plot_series(series: pd.DataFrame, labels: dict, run_ids: list[str], metric: str,
                title: str, ylabel: str, path: Path) -> None:
    """One line per run (and track, when a clip has several) over frames."""
    from .publish import _mpl, _save_fig
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6.4, 2.9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sub = series[series["metric"] == metric]
    several = sub["track_id"].nunique() > 1
    styles = ("-", "--", ":", "-.")
    for i, rid in enumerate(run_ids):
        mine = sub[sub["run_id"] == rid]
        for j, (tid, rows) in enumerate(sorted(mine.groupby("track_id"), key=lambda g: g[0])):
            rows = rows.sort_values("frame")
            label = labels.get(rid, rid) + (f" · track {tid}" if several else "")
            ax.plot(rows["frame"], rows["value"], styles[j % len(styles)], marker=".",
                    ms=4, lw=1.2, color=colors[i % len(colors)], label=label)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _save_fig(fig, path)


# --------------------------------------------------------------------------- pages


def build_clip_pages(results, key, runs: pd.DataFrame, labels: dict, site: Path, render) -> list:
    """Write one page per clip of ``key``'s finished video runs; return the clips
    (``clip``, ``file``) and the dataset page's temporal table rows.

    ``render(template, **context)`` -> HTML text (the site's template environment)."""
    from reface_core.video import VideoError, probe_video

    from .publish import _atomic, _safe_name, resolve_store_path
    from .video import lq_tracks_path

    run_ids = list(runs["run_id"])
    vs = results.video_scores[results.video_scores["run_id"].isin(run_ids)]
    series = results.video_series[results.video_series["run_id"].isin(run_ids)]
    images = results.images[results.images["dataset_hash"].fillna("") == key.dataset_hash]
    outputs = results.outputs
    pages = []
    for clip in sorted(vs["clip"].unique()):
        rec = images[images["image_id"] == clip]
        rec = rec.iloc[0] if not rec.empty else None
        lq = resolve_store_path(results.root, rec.get("lq_path")) if rec is not None else None
        gt = resolve_store_path(results.root, rec.get("gt_path")) if rec is not None else None
        info, why = None, ""
        if lq is None:
            why = "the store names no LQ clip"
        else:
            try:
                info = probe_video(lq)
            except (VideoError, OSError) as e:
                why = f"LQ clip unreadable: {str(e).splitlines()[0][:160]}"
        track = _main_track(lq_tracks_path(results.root, key.dataset_hash, clip))
        aligned = info is not None and info.width == info.height <= 512
        if aligned:
            track = None
        wanted = strip_frames(info.frames, track) if info else []
        boxes = ({f: crop_box(track["boxes"][track["frames"].index(f)], info.width, info.height)
                  for f in wanted if f in track["frames"]} if track and info else {})
        ref_size = (info.width, info.height) if info else None
        strip = [strip_row("LQ", lq, wanted, boxes, site, ref_size)] if info else []
        mine = outputs[outputs["image_id"] == clip]
        for rid in run_ids:
            out = mine[mine["run_id"] == rid]
            if not info:
                break
            if out.empty:
                strip.append({"label": labels[rid], "note": "not run on this clip", "cells": []})
            elif out.iloc[0]["status"] != "ok":
                strip.append({"label": labels[rid], "note": f"{out.iloc[0]['status']}: "
                              f"{out.iloc[0].get('error') or ''}", "cells": []})
            else:
                path = resolve_store_path(results.root, out.iloc[0]["output_path"])
                if path == lq:
                    continue  # the lq run: the LQ row already shows it
                strip.append(strip_row(labels[rid], path, wanted, boxes, site, ref_size))
        if info and gt is not None:
            strip.append(strip_row("GT", gt, wanted, boxes, site, ref_size))
        mine_series = series[series["clip"] == clip]
        stem = f"{key.slug}-{_safe_name(clip)[:40]}-{hashlib.sha1(clip.encode()).hexdigest()[:8]}"
        plots = []
        for metric, title, ylabel in (
                ("warp_error", ("flicker: flow-warping error on the face per frame "
                                "(lower is steadier)"), "warp error (8-bit levels)"),
                ("identity", ("identity over time: cosine to the track's mean identity "
                              "(higher is steadier)"), "cosine")):
            if (mine_series["metric"] == metric).any():
                rel = f"assets/plots/clip-{stem}-{metric}.png"
                plot_series(mine_series, labels, run_ids, metric, title, ylabel, site / rel)
                plots.append({"src": rel, "metric": metric, "alt": title})
        page = ClipPage(str(clip), clip_file(key, str(clip)))
        html_text = render(
            "clip.html.j2", clip=str(clip), key=key, dataset_file=f"{key.slug}.html",
            info=info, why=why, aligned=aligned, track=track is not None,
            n_tracks=int(vs[vs["clip"] == clip]["track_id"].nunique()),
            rows=temporal_rows(vs[vs["clip"] == clip], run_ids, labels, by_track=True),
            columns=TEMPORAL_COLUMNS, strip=strip, wanted=wanted, plots=plots,
            crop_scale=CROP_SCALE)
        with _atomic(site / page.file) as tmp:
            tmp.write_text(html_text, encoding="utf-8")
        pages.append(page)
    return pages, temporal_rows(vs, run_ids, labels, by_track=False)
