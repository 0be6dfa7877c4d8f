"""Command line of ``mgfr`` (``python -m mgfr``)."""

from __future__ import annotations

import argparse
import sys

from reface_core.assets_cli import add_subcommands as add_asset_commands

from .train_cli import add_subcommands as add_train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgfr",
        description="MGFR: multi-modal guided face restoration on a frozen Stable Diffusion prior.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_commands(sub)
    add_asset_commands(sub, package="mgfr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
