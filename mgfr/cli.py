"""Command line of ``mgfr`` (``python -m mgfr``): restore, profile, train, pretrain-prior."""

from __future__ import annotations

import argparse
import sys

from reface_core.assets_cli import add_subcommands as add_asset_commands

from .profile import add_subcommands as add_profile_commands
from .restore import add_subcommands as add_restore_commands
from .train_cli import add_subcommands as add_train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgfr",
        description="MGFR: multi-modal guided face restoration on a frozen Stable Diffusion prior.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_restore_commands(sub)
    add_profile_commands(sub)
    add_train_commands(sub)
    add_asset_commands(sub, package="mgfr")
    return parser


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (asset errors list the places they looked)."""
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        # Bad input (a file, a folder, an option, a missing asset: AssetNotFoundError is a
        # FileNotFoundError) ends in one line naming it, not a traceback.
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
