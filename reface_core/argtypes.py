"""Argument types shared by the command lines: checked numbers with one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` accepting ``kind(text) >= minimum`` (nan refused).

    argparse prints the message as ``argument --x: must be a whole number >= 1, got '-1'``.
    """
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} >= {minimum}, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {noun} >= {minimum}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__}>={minimum}"
    return parse
