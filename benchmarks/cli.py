"""Command line of ``benchmarks`` (``python -m benchmarks``).

Each command lives in its own module, which offers ``add_subcommands(subparsers)``; the
modules listed in ``SUBCOMMAND_MODULES`` are asked in order. ``run`` and ``sweep`` also
run on their own (``python -m benchmarks.run``, ``python -m benchmarks.sweep``).
"""

from __future__ import annotations

import argparse
import importlib

from reface_core.assets_cli import add_subcommands as add_asset_commands
from reface_core.cli import exit_with, run_main

#: Modules that add commands; one not written yet is passed over.
SUBCOMMAND_MODULES = ("benchmarks.run", "benchmarks.sweep", "benchmarks.publish",
                      "benchmarks.study")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark restorers (MGFR, CodeFormer, ...) into DuckDB tables and leaderboards.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not a module not written yet
                raise
            continue
        if hasattr(module, "add_subcommands"):
            module.add_subcommands(sub)
    add_asset_commands(sub, package="benchmarks")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Each command maps its own errors; Ctrl-C and stray input errors end in one line.
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
