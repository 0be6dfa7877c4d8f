"""Attribute backends behind one interface (:class:`AttributeExtractor`), by name.

``get_extractor(name, **options)`` builds one; ``EXTRACTORS`` is the registry (data:
name -> "module:class", imported lazily so ``import captioning`` loads no model code).
"""

from __future__ import annotations

import difflib
import importlib

from .base import AttributeExtractor, ExtractionResult, FaceSample

EXTRACTORS: dict[str, str] = {
    "offline": "captioning.extractors.offline:OfflineExtractor",
    "vlm": "captioning.extractors.vlm:BlipExtractor",
    "blip2": "captioning.extractors.vlm:Blip2Extractor",
    "labels": "captioning.extractors.labels:LabelsExtractor",
}


def extractor_class(name: str):
    try:
        target = EXTRACTORS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(EXTRACTORS), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown attribute backend {name!r}{hint} "
                         f"(known: {', '.join(EXTRACTORS)})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get_extractor(name: str, **options) -> AttributeExtractor:
    """Build backend ``name`` with ``options`` (its constructor arguments)."""
    return extractor_class(name)(**options)


__all__ = ["AttributeExtractor", "ExtractionResult", "FaceSample", "EXTRACTORS",
           "extractor_class", "get_extractor"]
