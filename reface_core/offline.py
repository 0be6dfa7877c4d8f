"""Imports that would reach the network, made offline for the duration of the import.

``bitsandbytes`` (pulled in by ``pyiqa`` and by ``diffusers.quantizers``) asks the Hugging
Face Hub for a CPU kernel when it is imported on a CPU with AVX512-BF16: two DNS lookups
per command, and a "Failed to load CPU gemm_4bit_forward" line on stderr when they fail.
The toolkit never uses that kernel, and nothing may download at import time. The finder
below wraps the import of each module in :data:`NETWORK_AT_IMPORT`: the Hub's offline
switches are on and the module's warnings are muted while it runs, and both are put back
as they were afterwards (so ``reface_hq export --push-to-hub`` still reaches the Hub).

:func:`install` is called when ``reface_core`` is imported, which every package of the
toolkit does before it imports torch, diffusers or pyiqa.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading

#: Top-level modules whose import reaches the network unless told to stay offline.
NETWORK_AT_IMPORT = ("bitsandbytes",)
#: Loggers muted during those imports, besides the module's own ("kernels" says that it
#: skipped a check because the Hub is offline).
QUIET_DURING_IMPORT = ("kernels",)
#: Environment switches of huggingface_hub, transformers and diffusers.
OFFLINE_SWITCHES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1"}

_LOCK = threading.RLock()


def _env_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def hub_offline(quiet_loggers: tuple[str, ...] = ()):
    """The Hub's offline switches on (environment and an already imported
    ``huggingface_hub.constants``), and ``quiet_loggers`` at ERROR, for the block only."""
    with _LOCK:
        saved_env = {k: os.environ.get(k) for k in OFFLINE_SWITCHES}
        loggers = [logging.getLogger(n) for n in quiet_loggers]
        saved_levels = [lg.level for lg in loggers]
        os.environ.update(OFFLINE_SWITCHES)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        constants = sys.modules.get("huggingface_hub.constants")
        saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for lg, level in zip(loggers, saved_levels, strict=False):
                lg.setLevel(level)
            # huggingface_hub reads its switch when first imported, which may have
            # happened inside the block: give it the value the environment says.
            constants = sys.modules.get("huggingface_hub.constants")
            if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
                constants.HF_HUB_OFFLINE = saved_const if saved_const is not None else (
                    _env_true(saved_env["HF_HUB_OFFLINE"])
                    or _env_true(saved_env["TRANSFORMERS_OFFLINE"]))


class _OfflineLoader(importlib.abc.Loader):
    """The real loader of a module, run inside :func:`hub_offline`."""

    def __init__(self, real, name: str):
        self._real, self._name = real, name

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        with hub_offline(quiet_loggers=(self._name, *QUIET_DURING_IMPORT)):
            self._real.exec_module(module)

    def __getattr__(self, attr):  # resource readers, get_filename, is_package ...
        return getattr(self._real, attr)


class _OfflineFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in NETWORK_AT_IMPORT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _OfflineLoader(spec.loader, fullname)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _OfflineFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OfflineFinder())
