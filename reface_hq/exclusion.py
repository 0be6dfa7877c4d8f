"""Exclusion lists (removal requests): which photos an entry names, however it is spelled.

An entry is a URL, a sha256 (of the file's bytes or of its pixels), or a path to the
photo written any reasonable way: as the manifest's ``origin`` column has it
(``<source>/<path in the source folder>``), relative to the current folder
(``photos/celebs/00001/gt.png``, ``./photos/...``) or absolute. A path entry matches

- the photo read from that file during a build (its resolved path);
- any photo with the same bytes, when the file still exists (its sha256), so a later
  ``verify`` or ``export`` finds it without the source folder's layout;
- a row whose ``origin`` is the entry's last two or more path parts
  (``/home/u/photos/celebs/00001/gt.png`` ends with ``celebs/00001/gt.png``).

Every entry that matches nothing is reported: a removal request that silently removes
nothing is the failure this module exists to prevent.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from reface_core.fsnames import path_from_text

ROW_COLUMNS = ("origin", "sha256", "pixel_sha256")


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def entry_keys(entry: str) -> frozenset[str]:
    """Every string a row's origin, hashes or resolved path may equal for ``entry``."""
    keys = {entry}
    if _is_hex_digest(entry):
        return frozenset({entry.lower()})
    if _is_url(entry):
        return frozenset(keys)
    posix = entry.replace(os.sep, "/")
    parts = [p for p in PurePosixPath(posix).parts if p not in ("/", ".")]
    # origins are "<source>/<relative path>": every tail of two or more parts
    keys.update("/".join(parts[i:]) for i in range(len(parts) - 1))
    path = Path(entry).expanduser()
    try:
        keys.add(str(path.resolve()))
        if path.is_file():
            keys.add(hashlib.sha256(path.read_bytes()).hexdigest())
    except OSError:
        pass
    return frozenset(keys)


@functools.lru_cache(maxsize=8)
def _keys_of(entries: frozenset[str]) -> dict[str, frozenset[str]]:
    return {e: entry_keys(e) for e in entries}


def expand(entries: Iterable[str]) -> tuple[str, ...]:
    """All keys of all entries (what the build's stages compare rows with)."""
    keys: set[str] = set()
    for k in _keys_of(frozenset(entries)).values():
        keys |= k
    return tuple(sorted(keys))


def row_keys(row: dict) -> set[str]:
    """The strings of ``row`` an exclusion key may equal."""
    keys = {row[c] for c in ROW_COLUMNS if row.get(c)}
    local = row.get("local_path")
    if local:
        try:
            keys.add(str(Path(path_from_text(local)).resolve()))
        except (OSError, ValueError):
            pass
    return keys


def matching_entry(row: dict, entries: Iterable[str]) -> str | None:
    """The first entry (sorted) that names ``row``, or None."""
    if not entries:
        return None
    keys = row_keys(row)
    for entry, ek in sorted(_keys_of(frozenset(entries)).items()):
        if keys & ek:
            return entry
    return None


def matched_entries(rows: Iterable[dict], entries: Iterable[str]) -> set[str]:
    """The entries that name at least one of ``rows``."""
    by_entry = _keys_of(frozenset(entries))
    if not by_entry:
        return set()
    seen: set[str] = set()
    for r in rows:
        seen |= row_keys(r)
    return {e for e, k in by_entry.items() if k & seen}


def entry_digest(entry: str) -> str:
    """What build.json keeps of an applied entry: its hash, not the name it holds."""
    return hashlib.sha256(entry.encode("utf-8")).hexdigest()


def unmatched_warning(entry: str) -> str:
    return (f"exclusion entry {entry!r} matches no photo: nothing was removed for it. Spell "
            "it as a URL, a sha256, a path to the photo file, or the manifest's origin "
            "(<source>/<path in the source folder>)")
