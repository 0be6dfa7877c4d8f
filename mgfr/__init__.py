"""MGFR: multi-modal guided face restoration on a frozen Stable Diffusion prior.

    import mgfr
    pipe = mgfr.load_pipeline(adapters="runs/x/adapters")      # base named in the folder
    out = pipe(face, references=[[ref1, ref2]], prompt="a smiling woman")
    restored = out.images[0]

Names are imported lazily, so ``python -m mgfr --help`` starts without torch.
"""

from __future__ import annotations

import importlib
import logging


class _NoEmptyFp32Notice(logging.Filter):
    """diffusers' ``ModelMixin.to(dtype=...)`` warns "modules ... that should be kept in
    float32: []" for every model, even one with no such module (it tests the list
    against None); the notice with an empty list says nothing and is dropped. A model
    that does name modules still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


# No import of diffusers here: a filter on a named logger needs only ``logging``.
logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFp32Notice())

import reface_core  # noqa: E402, F401

_LAZY = {
    "BasePreset": "presets", "get_preset": "presets", "available_presets": "presets",
    "BaseModels": "base", "load_base": "base", "build_base_from_config": "base",
    "save_base": "base",
    "DualControlAdapter": "adapters", "AdapterConditions": "adapters",
    "PatchAutoencoder": "autoencoder",
    "MGFRModel": "model", "encode_prompts": "model", "encode_images": "model",
    "MGFRPipeline": "pipeline", "MGFRPipelineOutput": "pipeline", "load_pipeline": "pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    # diffusers' DiffusionPipeline.from_pretrained finds the adapter class as
    # getattr(importlib.import_module("mgfr"), "DualControlAdapter"), which lands here.
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mgfr' has no attribute {name!r}")
