"""The one command-line grammar of the toolkit: shared argument adders and the ``main`` wrapper.

Every command (``python -m faces|degradations|captioning|reface_hq|mgfr|benchmarks|
reface_core``) follows the grammar written down in the README ("Command-line grammar"):

* the thing a command reads is positional when it is its only input, else ``-i/--input``;
* ``-o/--out`` where it writes, ``-q/--quiet`` to silence progress, ``--workers N`` (>= 1),
  ``--seed N``, and ``--overwrite`` / ``--retry-failed`` for resumable jobs;
* exit codes: 0 done, 1 some rows failed, 2 usage or input error (one ``error: ...`` line),
  130 interrupted (Ctrl-C prints one line, no traceback).

Old spellings (``--output``, ``--no-progress``, ``--manifest``, ``--source``...) keep
working for one release through :func:`deprecated_alias`, which prints a deprecation line
on stderr and stores into the new option's destination.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Release after which deprecated spellings are removed (said in the warning).
DEPRECATED_UNTIL = "0.2"


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (asset errors list the places they looked)."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def warn_deprecated(old: str, new: str) -> None:
    print(f"warning: {old} is deprecated and will be removed in {DEPRECATED_UNTIL}; use {new}",
          file=sys.stderr)


class _DeprecatedAlias(argparse.Action):
    """Stores like the option it replaces, after a deprecation line on stderr."""

    def __init__(self, option_strings, dest, *, new: str, inner: str = "store", const=None,
                 nargs=None, **kwargs):
        self.new, self.inner = new, inner
        if inner in ("store_true", "store_false", "store_const"):
            nargs = 0
            const = {"store_true": True, "store_false": False}.get(inner, const)
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.new)
        if self.inner in ("store_true", "store_false", "store_const"):
            setattr(namespace, self.dest, self.const)
        elif self.inner == "append":
            items = list(getattr(namespace, self.dest, None) or [])
            items.append(values)
            setattr(namespace, self.dest, items)
        else:
            setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse._ActionsContainer, old: str, new: str, dest: str, *,
                     action: str = "store", **kwargs) -> None:
    """Accept ``old`` (hidden from ``--help``) as a deprecated spelling of ``new``.

    ``action`` is the new option's action (``store``, ``store_true``, ``store_false``,
    ``append``); ``kwargs`` (``type``, ``nargs``) match the new option so both parse alike.
    """
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, inner=action,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


# -- argument adders: one spelling each ----------------------------------------------------

def add_input(p: argparse.ArgumentParser, help: str, *, dest: str = "input",
              required: bool = True, deprecated: Sequence[str] = (), action: str = "store",
              **kwargs) -> None:
    """``-i/--input`` (the thing the command reads), with old spellings kept as aliases."""
    target = _required_target(p, required, deprecated)
    target.add_argument("-i", "--input", dest=dest, required=required and target is p,
                        action=action, help=help, **kwargs)
    for old in deprecated:
        deprecated_alias(target, old, "-i/--input", dest, action=action, **kwargs)


def add_out(p: argparse.ArgumentParser, help: str, *, dest: str = "out", required: bool = False,
            default: Any = None, deprecated: Sequence[str] = (), **kwargs) -> None:
    """``-o/--out`` (where the command writes)."""
    target = _required_target(p, required, deprecated)
    target.add_argument("-o", "--out", dest=dest, required=required and target is p,
                        default=default, help=help, **kwargs)
    for old in deprecated:
        deprecated_alias(target, old, "-o/--out", dest, **kwargs)


def _required_target(p, required: bool, deprecated: Sequence[str]):
    # A required option with old spellings: argparse would demand the new spelling even when
    # an old one is given, so the spellings form a required group (one of them, not two).
    return p.add_mutually_exclusive_group(required=True) if required and deprecated else p


def add_quiet(p: argparse.ArgumentParser, *, dest: str = "quiet",
              help: str = "no progress bar or per-item lines",
              deprecated: Sequence[str] = ("--no-progress",)) -> None:
    """``-q/--quiet``; ``deprecated`` names old flags meaning the same (``--no-progress``,
    the old spelling every command accepts until 0.2, unless told otherwise)."""
    p.add_argument("-q", "--quiet", dest=dest, action="store_true", help=help)
    for old in deprecated:
        deprecated_alias(p, old, "-q/--quiet", dest, action="store_true")


def add_workers(p: argparse.ArgumentParser, default: int = 1, *,
                help: str = "parallel worker processes") -> None:
    from .argtypes import between
    p.add_argument("--workers", type=between(1, 1024), default=default,
                   help=f"{help} (default {default})")


def add_seed(p: argparse.ArgumentParser, default: int | None = 0, *,
             help: str = "random seed (same seed, same output)") -> None:
    from .argtypes import seed
    p.add_argument("--seed", type=seed, default=default, help=f"{help} (default {default})")


def add_resume_flags(p: argparse.ArgumentParser, *, what: str = "outputs",
                     overwrite_help: str | None = None, retry_help: str | None = None) -> None:
    """``--overwrite`` / ``--retry-failed`` of a resumable job (default: skip done rows);
    the help texts can say what each means for the command."""
    p.add_argument("--overwrite", action="store_true",
                   help=overwrite_help or f"redo every input, replacing existing {what} "
                                          "(default: resume)")
    p.add_argument("--retry-failed", action="store_true",
                   help=retry_help or "on resume, redo the inputs that failed before")


# -- the main wrapper --------------------------------------------------------------------

#: Exceptions that mean bad input or usage (exit 2, one line): a wrong value, a missing or
#: unreadable file (AssetNotFoundError is a FileNotFoundError), a path below a file.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def run_main(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
             *, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Parse ``argv``, run ``args.func(args)`` and map the outcome to the shared exit codes.

    ``errors`` adds package exceptions that are input errors (e.g. ``SourceError``).
    ``func`` returns 0 (done) or 1 (some rows failed); a bad option exits 2 through argparse.
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_OK
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # One line, no traceback; what was written is whole (temp-then-rename), so the
        # same command resumes.
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*INPUT_ERRORS, *errors) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def exit_with(main: Callable[[], int]) -> None:
    """``sys.exit(main())`` for ``__main__`` blocks: Ctrl-C outside ``run_main`` is 130 too,
    and a second Ctrl-C while the process shuts down prints no traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_ROWS_FAILED",
    "EXIT_USAGE",
    "INPUT_ERRORS",
    "add_input",
    "add_out",
    "add_quiet",
    "add_resume_flags",
    "add_seed",
    "add_workers",
    "deprecated_alias",
    "exit_with",
    "one_line",
    "run_main",
    "warn_deprecated",
]
