"""Attribute backends behind one interface (:class:`AttributeExtractor`), by name.

``get_extractor(name, **options)`` builds one; ``EXTRACTORS`` is the registry (data:
name -> "module:class", imported lazily so ``import captioning`` loads no model code).
"""

from __future__ import annotations

from reface_core.registry import Registry

from .base import AttributeExtractor, ExtractionResult, FaceSample

EXTRACTORS = Registry("attribute backend", {
    "offline": "captioning.extractors.offline:OfflineExtractor",
    "vlm": "captioning.extractors.vlm:BlipExtractor",
    "blip2": "captioning.extractors.vlm:Blip2Extractor",
    "labels": "captioning.extractors.labels:LabelsExtractor",
}, suggestions=2)


def extractor_class(name: str):
    return EXTRACTORS.load(name)


def get_extractor(name: str, **options) -> AttributeExtractor:
    """Build backend ``name`` with ``options`` (its constructor arguments)."""
    return extractor_class(name)(**options)


__all__ = ["AttributeExtractor", "ExtractionResult", "FaceSample", "EXTRACTORS",
           "extractor_class", "get_extractor"]
