"""Argument types shared by the command lines: checked numbers with one-line errors."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

#: Seeds are stored in int64 Parquet columns and fed to NumPy's PCG64 and
#: ``torch.Generator.manual_seed``; [0, 2**63 - 1] is what all three accept.
MAX_SEED = 2 ** 63 - 1


def _noun(kind: type) -> str:
    return "a whole number" if kind is int else "a number"


def _convert(text: str, kind: type, expected: str):
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if kind is float and not math.isfinite(value):  # nan and inf turn filters off silently
        suffix = "" if "finite" in expected else " (finite)"
        raise argparse.ArgumentTypeError(f"must be {expected}{suffix}, got {text}")
    return value


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` accepting ``kind(text) >= minimum`` (nan and inf refused).

    argparse prints the message as ``argument --x: must be a whole number >= 1, got '-1'``.
    """
    expected = f"{_noun(kind)} >= {minimum}"

    def parse(text: str):
        value = _convert(text, kind, expected)
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__}>={minimum}"
    return parse


def between(minimum: float, maximum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` accepting ``minimum <= kind(text) <= maximum`` (nan and inf
    refused): an upper bound keeps a typo such as ``--size 100000`` from exhausting memory
    before any work is done."""
    expected = f"{_noun(kind)} in [{minimum}, {maximum}]"

    def parse(text: str):
        value = _convert(text, kind, expected)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__}[{minimum},{maximum}]"
    return parse


def finite_float(text: str) -> float:
    """Any finite number: ``nan`` would make every comparison false (a filter turned off)."""
    return _convert(text, float, "a finite number")


finite_float.__name__ = "float"

#: ``--seed``: what NumPy, torch and the int64 tables all accept.
seed = between(0, MAX_SEED)
seed.__name__ = "seed"


def torch_device(text: str) -> str:
    """An argparse ``type`` for ``--device``: a device torch can use on this machine."""
    from .devices import device_problem
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text
