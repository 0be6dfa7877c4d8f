"""Worker processes that die with their parent.

A pool worker whose parent is killed (SIGKILL, the OOM killer) is re-parented to init and
goes on computing, holding hundreds of MB, with nobody to read its results. Pool
initializers call :func:`die_with_parent`: on Linux the kernel sends the worker SIGKILL
when the parent dies (``PR_SET_PDEATHSIG``); elsewhere a daemon thread polls the parent
pid once a second and exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this process exit when its parent does (call it first in a pool initializer).

    ``parent_pid``: the pid the parent had when it started us; if the parent already died
    before this call, we exit at once.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    # The parent may have died between our start and prctl: the signal then never comes.
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                         name="die-with-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)
