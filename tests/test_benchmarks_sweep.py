"""Sweep folders and grids: one folder per sweep (fixed options included), skipped
points labelled in the grid instead of black tiles."""

from __future__ import annotations

from benchmarks.sweep import column_titles, grid_points, parse_grid, sweep_key


def test_sweeps_with_different_fixed_options_get_different_folders(tmp_path):
    run1, run2 = tmp_path / "RUN1" / "adapters", tmp_path / "RUN2" / "adapters"
    run1.mkdir(parents=True)
    run2.mkdir(parents=True)
    grid = parse_grid(["steps=5,10"])
    one = grid_points(f"mgfr:adapters={run1}", grid)
    two = grid_points(f"mgfr:adapters={run2}", grid)
    assert sweep_key(one, grid, "h") != sweep_key(two, grid, "h")
    assert sweep_key(one, grid, "h") == sweep_key(grid_points(f"mgfr:adapters={run1}", grid),
                                                  grid, "h")
    assert sweep_key(one, grid, "h") != sweep_key(one, grid, "other-dataset")


def test_skipped_points_are_labelled_in_the_grid():
    grid = parse_grid(["w=0.3,0.7"])
    points = grid_points("codeformer", grid)
    titles = column_titles(points, grid, {1: "codeformer.pth is missing. Looked in: ..."}, True)
    assert titles[0] == "LQ" and titles[-1] == "GT"
    assert titles[1] == "w=0.3"
    assert titles[2].startswith("w=0.7\nskipped: codeformer.pth")
