"""``python -m benchmarks.sweep``: one restorer over a grid of its options, into the same store.

    python -m benchmarks.sweep --method mgfr:adapters=runs/a/adapters \
        --grid lambda_na=0,2,4 --grid lambda_nq=0,2,4 --dataset reface-test --data data/reface
    python -m benchmarks.sweep --method codeformer --grid w=0,0.5,1 --dataset ... --out results

Every grid point is an ordinary run (its own run id, rows in the same tables, resumable).
The sweep also writes ``RESULTS/sweeps/<name>/``: ``grid.png`` (rows: images; columns: LQ,
each grid point, GT), ``curves.png`` (identity against quality, one point per grid point,
a line along each option), and ``sweep.json`` (grid points, run ids, metric means).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

from reface_core.atomic import safe_child, write_bytes_atomic, write_json_atomic
from reface_core.imageio import load_image

from . import datasets as D
from . import metrics as M
from . import restorers as R
from .run import (
    USER_ERRORS,
    Benchmark,
    MethodSpec,
    _abs,
    _key_values,
    check_device,
    format_summary,
    parse_methods,
)
from .store import open_store


def parse_grid(grids: list[str]) -> dict[str, list[str]]:
    """``["w=0,0.5,1", "prompt=a|b"]``: values split on ``,``, or on ``|`` when given."""
    out: dict[str, list[str]] = {}
    for g in grids:
        key, eq, values = g.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--grid {g!r}: expected KEY=V1,V2,...")
        sep = "|" if "|" in values else ","
        vals = [v.strip() for v in values.split(sep) if v.strip()]
        if not vals:
            raise ValueError(f"--grid {g!r}: no values")
        if key in out:
            raise ValueError(f"--grid {key}: given twice")
        out[key] = vals
    if not out:
        raise ValueError("--grid: give at least one KEY=V1,V2,...")
    return out


def grid_points(method: str, grid: dict[str, list[str]]) -> list[MethodSpec]:
    base = parse_methods(method)
    if len(base) != 1:
        raise ValueError(f"--method {method!r}: one method only")
    keys = list(grid)
    return [MethodSpec(base[0].name, {**base[0].options, **dict(zip(keys, combo, strict=False))})
            for combo in itertools.product(*(grid[k] for k in keys))]


def sweep_key(points: list[MethodSpec], grid: dict[str, list[str]], dataset_hash: str) -> str:
    """The sweep folder's key: the method, every fixed option (adapters=RUN1 and RUN2 are
    two sweeps), the grid and the dataset."""
    fixed = {k: v for k, v in points[0].options.items() if k not in grid}
    return hashlib.sha256(json.dumps([points[0].name, fixed, grid, dataset_hash],
                                     sort_keys=True, default=str).encode()).hexdigest()[:10]


def _means(store, run_id: str) -> dict[str, float | None]:
    return {r["metric"]: r["value"] for r in store.leaderboard([run_id])}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


#: The tile of a point that has no output (skipped, or failed on that image): mid gray
#: with a label, never a black tile that reads as a black restoration.
MISSING_TILE = 128


def column_titles(points: list[MethodSpec], keys, skipped: dict[int, str], has_gt: bool) -> list[str]:
    """The grid's column titles; a skipped point says so and why (first words)."""
    titles = []
    for i, p in enumerate(points):
        title = _short(p, keys)
        if i in skipped:
            title += "\nskipped: " + textwrap.shorten(skipped[i] or "no reason given", 28)
        titles.append(title)
    return ["LQ", *titles, *(["GT"] if has_gt else [])]


def image_grid(out: Path, ds: D.BenchmarkDataset, points: list[MethodSpec], run_ids: list[str],
               n_images: int, tile: int = 128, keys=None,
               skipped: dict[int, str] | None = None) -> bytes:
    """Rows: images; columns: LQ, each point, GT. ``skipped``: point index -> reason."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .restorers import resize_to

    skipped = skipped or {}
    items = ds.items[:n_images]
    cols = column_titles(points, keys, skipped, ds.has_gt)
    fig, axes = plt.subplots(len(items), len(cols), squeeze=False,
                             figsize=(1.6 * len(cols), 1.6 * len(items) + 0.4))
    for r, it in enumerate(items):
        tiles = [load_image(_abs(out, it.lq_path))]
        missing = np.full((tile, tile, 3), MISSING_TILE, np.uint8)
        for run_id in run_ids:
            p = safe_child(out, f"outputs/{run_id}/{it.image_id}.png")
            tiles.append(load_image(p) if p.is_file() else None)
        if ds.has_gt:
            tiles.append(load_image(it.gt_path) if it.gt_path else None)
        for c, img in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(resize_to(img if img is not None else missing, (tile, tile)))
            if img is None:
                ax.text(0.5, 0.5, "skipped" if c - 1 in skipped else "no output",
                        ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=7)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _short(p: MethodSpec, keys=None) -> str:
    """The grid point's label: only the options the grid varies."""
    return ",".join(f"{k}={str(v)[:30]}" for k, v in p.options.items()
                    if keys is None or k in keys) or p.name


def curves(points: list[MethodSpec], grid: dict[str, list[str]], means: list[dict],
           x_metric: str, y_metric: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [m.get(x_metric) for m in means]
    ys = [m.get(y_metric) for m in means]
    for p, x, y in zip(points, xs, ys, strict=False):
        if x is not None and y is not None:
            ax.scatter([x], [y], color="C0")
            ax.annotate(_short(p, grid), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    # One line along each option, the others held fixed.
    keys = list(grid)
    for ki, key in enumerate(keys):
        others = [k for k in keys if k != key]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(points):
            groups.setdefault(tuple(p.options[k] for k in others), []).append(i)
        for idx in groups.values():
            pts = [(xs[i], ys[i]) for i in idx if xs[i] is not None and ys[i] is not None]
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=False), color=f"C{ki + 1}", alpha=0.6,
                        label=key if idx is next(iter(groups.values())) else None)
    ax.set_xlabel(f"{x_metric} ({M.get_spec(x_metric).direction} is better)")
    ax.set_ylabel(f"{y_metric} ({M.get_spec(y_metric).direction} is better)")
    ax.set_title("identity vs quality over the sweep")
    if keys and any(len(v) > 1 for v in grid.values()):
        ax.legend(fontsize=7)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def run_sweep(method: str, grids: list[str], dataset: str, data: str | None = None, *,
              out: str | Path = "results", metrics: list[str] | None = None, device: str = "cpu",
              limit: int | None = None, dataset_options: dict | None = None,
              x_metric: str = "niqe-skvideo", y_metric: str = "ids", n_images: int = 4,
              progress: bool = True) -> dict:
    check_device(device)
    grid = parse_grid(grids)
    points = grid_points(method, grid)
    for p in points:
        R.create_restorer(p.name, **p.options)
    names = list(metrics or M.DEFAULT_METRICS)
    for n in [*names, x_metric, y_metric]:
        M.get_spec(n)
    names += [n for n in (x_metric, y_metric) if n not in names]
    out = Path(out)
    ds = D.load_dataset(dataset, data, results_dir=out, limit=limit, **(dataset_options or {}))
    bench = Benchmark(ds, names, out, device=device, progress=progress)
    try:
        summaries = [bench.run_method(p) for p in points]
    finally:
        bench.close()
    store = open_store(out, read_only=True)
    try:
        means = [_means(store, s.run_id) for s in summaries]
    finally:
        store.close()
    folder = safe_child(out, f"sweeps/{points[0].name}-{sweep_key(points, grid, ds.dataset_hash)}")
    done = [s.run_id for s in summaries]
    skipped = {i: s.reason or "" for i, s in enumerate(summaries) if s.status != "done"}
    write_bytes_atomic(folder / "grid.png", image_grid(out, ds, points, done, n_images,
                                                           keys=grid, skipped=skipped))
    write_bytes_atomic(folder / "curves.png", curves(points, grid, means, x_metric, y_metric))
    result = {"method": points[0].name, "grid": grid, "dataset": ds.name,
              "dataset_hash": ds.dataset_hash, "x_metric": x_metric, "y_metric": y_metric,
              "points": [{"options": p.options, "run_id": s.run_id, "status": s.status,
                          "reason": s.reason, "means": m}
                         for p, s, m in zip(points, summaries, means, strict=False)]}
    write_json_atomic(folder / "sweep.json", result)
    result["folder"] = str(folder)
    result["metrics"] = names
    result["summaries"] = summaries
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from reface_core.argtypes import at_least
    from reface_core.cli import add_out, add_quiet
    p.add_argument("--method", required=True, help="one restorer with fixed options, e.g. "
                                                   "'mgfr:adapters=runs/a/adapters' or codeformer")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an option and its values (repeatable; values split on '|' when "
                        "given, for prompts with commas)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data")
    p.add_argument("--metrics")
    add_out(p, "results folder (default: results)", default="results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=at_least(1))
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--x-metric", default="niqe-skvideo", help="quality axis of the curves")
    p.add_argument("--y-metric", default="ids", help="identity axis of the curves")
    p.add_argument("--grid-images", type=at_least(1), default=4, help="rows of grid.png")
    add_quiet(p, dest="no_progress", help="no progress bar")
    from reface_core.lock import add_wait_lock_argument
    add_wait_lock_argument(p)


def command(args) -> int:
    from reface_core.lock import lock_for
    try:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        # The results store is shared with `benchmarks run`: one writer at a time.
        with lock_for(args, args.out):
            res = run_sweep(args.method, args.grid, args.dataset, args.data, out=args.out,
                            metrics=metrics, device=args.device, limit=args.limit,
                            dataset_options=_key_values(args.dataset_option, "--dataset-option"),
                            x_metric=args.x_metric, y_metric=args.y_metric,
                            n_images=args.grid_images, progress=not args.no_progress)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(args.out, res["summaries"], res["metrics"]))
    print(f"\nsweep: {res['folder']} (grid.png, curves.png, sweep.json)")
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="one restorer over a grid of options",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=command)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                description="Sweep one restorer's options into the results store.")
    add_arguments(p)
    p.set_defaults(func=command)
    return p


def main(argv: list[str] | None = None) -> int:
    from reface_core.cli import run_main
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from reface_core.cli import exit_with
    exit_with(main)
