"""File names that are not UTF-8: kept exactly, stored and shown as valid UTF-8 text.

On POSIX a file name is bytes. Python decodes the bytes that are not UTF-8 to lone
surrogates (``b"caf\\xe9.png"`` -> ``"caf\\udce9.png"``) so the file still opens, but that
text cannot be encoded to UTF-8: Parquet, JSON consumers, hashes of ids and printed
messages then fail, and one such file used to end a whole run. Three views of a path:

* :func:`path_text` - the path as text for tables, reversible: unchanged when it is UTF-8,
  else a ``file://`` URI with the bytes percent-encoded (:func:`path_from_text` gives the
  very same path back);
* :func:`name_id` - a name for ids and output files: valid UTF-8, undecodable bytes as
  ``%XX`` (``caf%E9``), unchanged for every UTF-8 name;
* :func:`shown` - for messages: undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import codecs
import os
import urllib.parse
from pathlib import Path

_URI = "file://"


def is_utf8(text: str | os.PathLike) -> bool:
    """True when ``text`` (a str or path) holds no undecodable bytes."""
    try:
        os.fspath(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_text(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text that :func:`path_from_text` turns back into it."""
    text = os.fspath(path)
    if is_utf8(text) and not text.startswith(_URI):
        return text
    raw = os.fsencode(os.path.abspath(text))
    return _URI + urllib.parse.quote_from_bytes(raw, safe="/")


def path_from_text(text: str | os.PathLike) -> Path:
    """The path :func:`path_text` stored (plain paths pass through unchanged)."""
    text = os.fspath(text)
    if text.startswith(_URI):
        return Path(os.fsdecode(urllib.parse.unquote_to_bytes(text[len(_URI):])))
    return Path(text)


def name_id(name: str) -> str:
    """``name`` (a file name or relative path) as valid UTF-8 for ids and output names."""
    if is_utf8(name):
        return name
    return os.fsencode(name).decode("utf-8", "_reface_percent")


def shown(text: str | os.PathLike) -> str:
    """``text`` printable in any message: undecodable bytes as ``\\xNN``."""
    text = os.fspath(text)
    if is_utf8(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _percent(error: UnicodeDecodeError) -> tuple[str, int]:
    bad = error.object[error.start:error.end]
    return "".join(f"%{b:02X}" for b in bad), error.end


codecs.register_error("_reface_percent", _percent)
