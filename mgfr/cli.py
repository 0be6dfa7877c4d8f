"""Command line of ``mgfr`` (``python -m mgfr``): restore, profile, train, pretrain-prior."""

from __future__ import annotations

import argparse

from reface_core.assets_cli import add_subcommands as add_asset_commands
from reface_core.cli import exit_with, run_main

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


def main(argv: list[str] | None = None) -> int:
    # Bad input (a file, a folder, an option, a missing asset: AssetNotFoundError is a
    # FileNotFoundError) and Ctrl-C end in one line naming it, not a traceback.
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
