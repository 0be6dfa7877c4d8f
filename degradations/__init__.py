"""Seeded, recorded degradation synthesis (blur, resize, noise, JPEG) for LQ faces.

Public API (imported lazily so that ``python -m degradations --help`` stays fast):
``Degrader``, ``BatchDegrader``, ``apply_records``, ``sample_record``, ``get_preset``,
``list_presets``, ``Preset`` (the ``synth`` job: ``degradations.synth.synth``).
"""

from importlib import import_module

_EXPORTS = {
    "Degrader": "pipeline", "BatchDegrader": "pipeline", "apply_records": "pipeline",
    "sample_record": "sampling", "flatten_record": "sampling",
    "get_preset": "presets", "list_presets": "presets", "Preset": "presets", "PRESETS": "presets",
}

__all__ = ["PRESETS", "BatchDegrader", "Degrader", "Preset", "apply_records", "flatten_record",
           "get_preset", "list_presets", "sample_record"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'degradations' has no attribute {name!r}")
