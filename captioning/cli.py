"""Command line of ``captioning`` (``python -m captioning``)."""

from __future__ import annotations

import argparse
import sys

from reface_core.assets_cli import add_subcommands as add_asset_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captioning",
        description="Facial attribute extraction and attribute / negative prompts.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_asset_commands(sub, package="captioning")
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
