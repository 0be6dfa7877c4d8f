"""Command line of ``reface_hq`` (``python -m reface_hq``)."""

from __future__ import annotations

import argparse
import sys

from reface_core.assets_cli import add_subcommands as add_asset_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reface_hq",
        description="Build, verify and export the identity-grouped Reface-HQ face dataset.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_asset_commands(sub, package="reface_hq")
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
