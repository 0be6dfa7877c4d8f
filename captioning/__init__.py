"""Facial attribute extraction and attribute / negative prompts.

Modules (importing this package loads no model; backends load theirs when built):

* ``vocabulary``: the attribute set and the CelebA-40 mapping;
* ``attributes``: per-face values with confidences, JSON form, precedence;
* ``extractors``: the backends (``offline``, ``vlm``, ``blip2``, ``labels``);
* ``prompts``: positive / negative-attribute / negative-quality prompts;
* ``pipeline``: :class:`~captioning.pipeline.Captioner`, backends combined;
* ``manifest``: resumable annotation of a Reface-HQ manifest.

``captioning.annotate(manifest)`` is the Python form of ``python -m captioning annotate``.
"""

from __future__ import annotations

import os


def annotate(manifest: str | os.PathLike, *, backends=("offline",), options=None,
             prompt_builder=None, **kwargs):
    """Annotate a Reface-HQ manifest in place with ``backends``; returns an AnnotateReport.

    ``options`` are per-backend constructor options (``{"labels": {"columns": ["gender"]}}``);
    other keywords go to :func:`captioning.manifest.annotate_manifest` (``batch_size``,
    ``overwrite``, ``aligned``, ``progress``...).
    """
    from .manifest import annotate_manifest
    from .pipeline import build_captioner
    captioner = build_captioner(list(backends), options=options, prompt_builder=prompt_builder)
    return annotate_manifest(manifest, captioner, **kwargs)
