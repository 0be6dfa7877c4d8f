"""One writer per output folder: a lock that names its holder, waits when asked, and is
never left behind by a dead run.

Two runs writing one output folder interleave their files (a manifest that lists images
the other run deleted, seeds mixed in one table). Every command that writes an output
folder holds :func:`folder_lock` on it for the whole run:

* the lock is ``fcntl.flock`` on ``<folder>/.reface.lock``: the kernel releases it when the
  holder dies (SIGKILL included), so a stale lock of a dead process is simply taken over;
* the file holds the holder's pid, host, start time and command line, so a second run
  refuses with one line naming them (:class:`FolderLockedError`), or waits for it
  (``wait`` seconds; ``float("inf")`` waits for ever);
* on release the file is removed, so a finished output folder holds no lock file;
* it is re-entrant within one process (a command that calls another command's function on
  the same folder does not lock itself out).

It relies on the file system honouring ``flock``: local disks do; some network mounts
do not, and two hosts writing one folder there are not kept apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .fsnames import shown

LOCK_NAME = ".reface.lock"
_HELD: dict[str, int] = {}   # folders this process holds -> nesting depth


class FolderLockedError(ValueError):
    """Another live run holds the output folder; the message names it (a ValueError, so
    every command line reports it as its one-line `error:`)."""

    def __init__(self, folder: Path, holder: dict):
        self.folder = folder
        self.holder = holder
        super().__init__(
            f"output folder {shown(folder)} is in use by another run (pid {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}, started {holder.get('started', '?')}, command: "
            f"{holder.get('command', '?')}); wait for it with --wait-lock, or use another "
            "output folder")


def _read_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock on ``path`` (the very file now at ``path``), or None."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            # The previous holder created the folder, failed and removed it (empty) again.
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        # The previous holder may have removed the file between our open and flock: the
        # lock we got is then on an unlinked inode nobody else sees; start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _command_line() -> str:
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    # `python -m pkg` runs pkg/__main__.py: show it the way the user typed it.
    head = ["python", "-m", prog.parent.name] if prog.name == "__main__.py" else [prog.name]
    return shown(shlex.join([*head, *sys.argv[1:]]))


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: float = 0.0, command: str | None = None,
                poll: float = 0.2) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing, and removed again if the body left
    it empty) for the ``with`` body.

    ``wait``: seconds to wait for another holder (0: refuse at once with
    :class:`FolderLockedError`). ``command``: what to show other runs (default: argv).
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output folder {folder} exists and is not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        fd = _try_lock(path)
        if fd is not None:
            # A file left by a killed holder (its flock died with it) is simply taken over.
            break
        holder = _read_holder(path)
        if not holder:  # the new holder is between taking the lock and writing its name
            time.sleep(0.05)
            holder = _read_holder(path)
        if time.monotonic() >= deadline:
            raise FolderLockedError(folder, holder)
        time.sleep(poll)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command or _command_line()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        _HELD[key] = 1
        yield folder
    finally:
        _HELD.pop(key, None)
        # Remove, then unlock: a waiter that opened the old file finds it unlinked and
        # retries on a new one (see _try_lock).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        if created:
            # A command that failed before writing anything leaves no empty folder behind.
            with contextlib.suppress(OSError):
                folder.rmdir()


def _wait_seconds(text: str) -> float:
    """Seconds >= 0, or ``inf`` (wait for ever); a negative or ``nan`` wait is refused."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


_wait_seconds.__name__ = "seconds"


def add_wait_lock_argument(parser) -> None:
    """``--wait-lock [SECONDS]`` on a command that writes an output folder."""
    parser.add_argument(
        "--wait-lock", nargs="?", type=_wait_seconds, const=float("inf"), default=0.0,
        metavar="SECONDS",
        help="when another run writes the same output folder, wait for it (for ever, or "
             "SECONDS) instead of refusing at once")


def lock_for(args, folder: str | os.PathLike):
    """:func:`folder_lock` with the wait a command line asked for (``--wait-lock``).

    A path that exists and is not a folder is left to the command's own error message.
    Under a distributed launcher only rank 0 locks: the other ranks of the same run share
    the folder on purpose.
    """
    if (Path(folder).exists() and not Path(folder).is_dir()) \
            or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext(Path(folder))
    return folder_lock(folder, wait=getattr(args, "wait_lock", 0.0) or 0.0)
