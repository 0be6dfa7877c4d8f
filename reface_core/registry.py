"""One registry for every package that names things (detectors, backends, presets, metrics...).

A :class:`Registry` is a read-only mapping from names to objects (classes, factories,
specs, or ``"module:attr"`` strings imported on first use, so a registry costs no import
time). ``get(name)`` raises one error shape everywhere::

    unknown face detector 'retina'; did you mean 'retinaface'? (known: dlib-cnn, dlib-hog, ...)

The error is a :class:`UnknownNameError` (both a ``KeyError`` and a ``ValueError``, so code
that caught either keeps working); a registry may raise a package's own subclass instead
(``error=UnknownMetricError``)::

    DETECTORS = Registry("face detector", {"dlib-hog": "faces.detection:DlibHogDetector"})

    @METRICS.register("psnr", description="peak signal-to-noise ratio")
    class PSNR: ...
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_MISSING = object()


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry matches (the message says what is known)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) for the closest of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_names_message(kind: str, names: Iterable[str], choices: Iterable[str]) -> str:
    """One line for several unknown names, each with its own suggestion."""
    choices = list(choices)
    parts = [f"{n!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
        str(n), choices, n=1)) else "") for n in names]
    return f"unknown {kind}(s) {', '.join(parts)}"


def load_target(target: Any) -> Any:
    """Import a ``"package.module:attr"`` string; anything else is returned as it is."""
    if isinstance(target, str) and ":" in target:
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return target


class Registry(Mapping):
    """Names -> objects, with descriptions, aliases and a did-you-mean error.

    ``kind`` names what is registered in errors ("face detector"). ``entries`` may seed it
    (a dict). ``error`` is the exception class raised for an unknown name (a subclass of
    :class:`UnknownNameError` keeps ``except KeyError``/``ValueError`` working). ``hint``
    is appended to the known list ("or a .yaml preset file"). ``suggestions`` is how many
    close names to offer. ``sort`` lists names sorted (else in registration order).
    """

    def __init__(self, kind: str, entries: Mapping[str, Any] | None = None, *,
                 error: type[Exception] = UnknownNameError, hint: str = "",
                 suggestions: int = 1, sort: bool = False):
        self.kind = kind
        self.error_class = error
        self.hint = hint
        self.suggestions = suggestions
        self.sort = sort
        self._entries: dict[str, Any] = {}
        self._descriptions: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        for name, obj in (entries or {}).items():
            self.register(name, obj)

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, obj: Any = _MISSING, *, description: str | None = None,
                 aliases: Iterable[str] = (), overwrite: bool = False) -> Any:
        """Add ``obj`` as ``name``; without ``obj``, a decorator that registers what it wraps."""
        if obj is _MISSING:
            def decorator(target):
                self.register(name, target, description=description, aliases=aliases,
                              overwrite=overwrite)
                return target
            return decorator
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if not overwrite and (name in self._entries or name in self._aliases):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        self._loaded.pop(name, None)
        if description is None:
            description = _describe(obj)
        self._descriptions[name] = description
        for alias in aliases:
            if not overwrite and (alias in self._entries or alias in self._aliases):
                raise ValueError(f"{self.kind} alias {alias!r} is already registered")
            self._aliases[alias] = name
        return obj

    # -- lookup -------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (raises when unknown)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise self.error(name)

    def get(self, name: str, default: Any = _MISSING) -> Any:  # type: ignore[override]
        """The object for ``name`` (or an alias); unknown -> ``default`` if given, else the error."""
        try:
            return self._entries[self.canonical(name)]
        except UnknownNameError:
            if default is _MISSING:
                raise
            return default

    def load(self, name: str) -> Any:
        """Like :meth:`get`, importing a ``"module:attr"`` entry (once) and returning the object."""
        key = self.canonical(name)
        if key not in self._loaded:
            self._loaded[key] = load_target(self._entries[key])
        return self._loaded[key]

    def error(self, name: Any, where: str = "") -> Exception:
        """The exception for an unknown ``name`` (``where`` prefixes the message)."""
        known = ", ".join(self.names())
        msg = (f"{where + ': ' if where else ''}unknown {self.kind} {name!r}"
               f"{did_you_mean(str(name), list(self._entries) + list(self._aliases), self.suggestions)}"
               f" (known: {known}{'; ' + self.hint if self.hint else ''})")
        return self.error_class(msg)

    def argtype(self):
        """An argparse ``type``: the canonical name, or the did-you-mean error as argparse's
        own one-line usage error (``choices=`` would give a plain "invalid choice")."""
        import argparse

        def name(text: str) -> str:
            try:
                return self.canonical(text)
            except UnknownNameError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        name.__name__ = self.kind  # argparse names the type in some messages
        return name

    # -- listing ------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._entries) if self.sort else list(self._entries)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def description(self, name: str) -> str:
        return self._descriptions[self.canonical(name)]

    def describe(self) -> list[tuple[str, str]]:
        """(name, description) pairs, for ``list`` commands and ``--help`` epilogues."""
        return [(n, self._descriptions[n]) for n in self.names()]

    def format_list(self) -> str:
        rows = self.describe()
        width = max((len(n) for n, _ in rows), default=0)
        return "\n".join(f"{n:<{width}}  {d}".rstrip() for n, d in rows)

    # -- Mapping --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        # dict-style replacement (tests patch entries with monkeypatch.setitem)
        self.register(name, obj, overwrite=True)

    def __delitem__(self, name: str) -> None:
        key = self.canonical(name)
        for alias in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[alias]
        del self._entries[key], self._descriptions[key]
        self._loaded.pop(key, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _describe(obj: Any) -> str:
    desc = getattr(obj, "description", None)
    if isinstance(desc, str):
        return desc
    if isinstance(obj, str):
        return ""
    doc = getattr(obj, "__doc__", None) if callable(obj) else None
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


__all__ = ["Registry", "UnknownNameError", "did_you_mean", "load_target", "unknown_names_message"]
