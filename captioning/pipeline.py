"""Faces in, annotations out: backends combined, captions and prompts built.

:class:`Captioner` takes built parts (the backends, the prompt builder), the way a
diffusers pipeline takes its models; ``build_captioner`` builds them from names, as the
command line does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .attribute_values import DEFAULT_PRECEDENCE, Attributes, attributes_to_json, combine
from .extractors import AttributeExtractor, FaceSample, get_extractor
from .prompts import PromptBuilder, Prompts

#: Manifest columns written by ``captioning annotate`` (the first five are the contract).
OUTPUT_COLUMNS = ("attributes", "caption", "prompt", "negative_attribute_prompt",
                  "negative_quality_prompt", "caption_source", "caption_status", "caption_error")


@dataclass
class Annotation:
    """Everything captioning says about one face.

    ``status`` is ``"ok"`` when the face got attributes from at least one backend,
    ``"failed"`` when none could say anything (``error`` says why). Backend notes that did
    not stop the face (no landmarks for head pose, say) are kept in ``error`` with "ok".
    """

    key: str
    attributes: Attributes
    caption: str
    caption_source: str
    prompts: Prompts
    status: str
    error: str | None = None

    def to_row(self) -> dict:
        return {"attributes": attributes_to_json(self.attributes), "caption": self.caption,
                "prompt": self.prompts.positive,
                "negative_attribute_prompt": self.prompts.negative_attribute,
                "negative_quality_prompt": self.prompts.negative_quality,
                "caption_source": self.caption_source, "caption_status": self.status,
                "caption_error": self.error}


class Captioner:
    """Run backends on faces, combine by precedence, write caption and prompts.

    Args:
        extractors: built backends (distinct names).
        prompt_builder: the :class:`PromptBuilder` (default settings if None).
        precedence: backend names, most trusted first (see :mod:`captioning.attribute_values`).
        detector: ``faces`` detector name for photos that are not aligned crops yet.
        detector_options: its constructor options (e.g. ``{"max_side": 640}``).
        alignment: how such photos become crops: ``"similarity"`` (default; a similarity
            warp of the five landmarks onto the FFHQ template, milliseconds) or ``"ffhq"``
            (the full FFHQ recipe with its blurred padding, ~0.5 s per 1024 px photo on
            one core; age/gender agree to a fraction of a year either way).
        output_size: size of the aligned crop made from such photos.
    """

    def __init__(self, extractors: Sequence[AttributeExtractor], *,
                 prompt_builder: PromptBuilder | None = None,
                 precedence: Iterable[str] = DEFAULT_PRECEDENCE, detector: str = "dlib-hog",
                 detector_options: dict | None = None, alignment: str = "similarity",
                 output_size: int = 512):
        if alignment not in ("similarity", "ffhq"):
            raise ValueError(f"alignment must be 'similarity' or 'ffhq', got {alignment!r}")
        names = [e.name for e in extractors]
        if not extractors:
            raise ValueError("the captioner needs at least one backend")
        if len(set(names)) != len(names):
            raise ValueError(f"backends must have distinct names, got {names}")
        from .extractors import EXTRACTORS
        unknown = [b for b in precedence if b not in EXTRACTORS and b not in names]
        if unknown:
            raise ValueError(f"precedence names unknown backend(s) {unknown}; "
                             f"backends are {', '.join(EXTRACTORS)}")
        self.extractors = list(extractors)
        self.prompt_builder = prompt_builder or PromptBuilder()
        self.precedence = tuple(precedence)
        self.detector = detector
        self.detector_options = dict(detector_options or {})
        self.alignment = alignment
        self.output_size = int(output_size)
        self._detector = None

    def config(self) -> dict:
        return {"backends": [e.config() for e in self.extractors],
                "precedence": list(self.precedence), "detector": self.detector,
                "detector_options": self.detector_options, "alignment": self.alignment,
                "output_size": self.output_size, "prompts": self.prompt_builder.config()}

    def fingerprint(self) -> str:
        """Settings that change extracted attributes (prompt settings excluded: prompts are
        rebuilt from stored attributes, so changing them never needs re-extraction)."""
        return fingerprint_of(self.config())

    def _align(self, image):
        """(crop, detection) of the largest face in ``image``, or None."""
        import faces
        if self._detector is None:
            self._detector = faces.get_detector(self.detector, **self.detector_options)
        found = self._detector.detect(image)
        if not found:
            return None
        det = max(found, key=lambda d: d.size)
        if self.alignment == "ffhq":
            lm = det.landmarks68 if det.landmarks68 is not None else det.landmarks5
            return faces.align_ffhq(image, lm, self.output_size), det
        crop, _ = faces.similarity_align(image, det.landmarks5, template="ffhq",
                                         size=self.output_size)
        return crop, det

    def prepare(self, samples: Sequence[FaceSample]) -> None:
        """Load pixels and, for photos that are not aligned crops, detect and align the
        largest face. A photo with no face gets ``error`` set, not an exception."""
        if not any(e.needs_pixels for e in self.extractors):
            return
        for s in samples:
            if s.error is not None:
                continue
            try:
                image = s.load()
            except ValueError as e:  # ImageLoadError names the file and what is wrong
                s.error = str(e)
                continue
            if s.aligned or s.face is not None:
                continue
            found = self._align(image)
            if found is None:
                s.error = f"{s.path or s.key}: no face found"
                continue
            s.face, s.detection = found

    def extract(self, samples: Sequence[FaceSample]):
        """Per sample: ({backend: attributes}, captions by backend, errors)."""
        self.prepare(samples)
        per_backend = [dict() for _ in samples]
        captions = [dict() for _ in samples]
        errors = [[] for _ in samples]
        for ex in self.extractors:
            for i, res in enumerate(ex.extract(samples)):
                if res.attributes:
                    per_backend[i][ex.name] = res.attributes
                if res.caption:
                    captions[i][ex.name] = res.caption
                if res.error:
                    # A pixel problem found once (no face, unreadable file) is reported once,
                    # not again by every backend that skipped the face because of it.
                    note = res.error if res.error == samples[i].error else f"{ex.name}: {res.error}"
                    if note not in errors[i]:
                        errors[i].append(note)
        return per_backend, captions, errors

    def finish(self, key: str, per_backend: dict, captions: dict, errors: list[str]) -> Annotation:
        """Combine one face's backend results into its annotation (no model runs here)."""
        attributes = combine(per_backend, self.precedence)
        prompts = self.prompt_builder.build(attributes)
        caption_backend = next((b for b in list(self.precedence) + list(captions)
                                if b in captions), None)
        if caption_backend is not None:
            caption, source = captions[caption_backend], caption_backend
        else:
            caption, source = prompts.positive, "template"
        status = "ok" if attributes else "failed"
        if not attributes and not errors:
            errors = ["no backend gave any attribute"]
        return Annotation(key=key, attributes=attributes, caption=caption,
                          caption_source=source, prompts=prompts, status=status,
                          error="; ".join(errors) or None)

    def annotate(self, samples: Sequence[FaceSample]) -> list[Annotation]:
        per_backend, captions, errors = self.extract(samples)
        return [self.finish(s.key, p, c, e)
                for s, p, c, e in zip(samples, per_backend, captions, errors, strict=False)]


def fingerprint_of(config: dict) -> str:
    """``Captioner.fingerprint`` of a recorded ``Captioner.config()`` (e.g. from a manifest)."""
    cfg = {k: v for k, v in config.items() if k not in ("prompts", "precedence")}
    return json.dumps(cfg, sort_keys=True)


def build_captioner(backends: Sequence[str] = ("offline",), *, prompt_builder=None,
                    precedence: Iterable[str] = DEFAULT_PRECEDENCE, detector: str = "dlib-hog",
                    detector_options: dict | None = None, alignment: str = "similarity",
                    options: dict[str, dict] | None = None) -> Captioner:
    """A :class:`Captioner` from backend names and per-backend constructor options."""
    options = options or {}
    unknown = set(options) - set(backends)
    if unknown:
        raise ValueError(f"options given for backends not selected: {sorted(unknown)}")
    extractors = [get_extractor(b, **options.get(b, {})) for b in backends]
    return Captioner(extractors, prompt_builder=prompt_builder, precedence=precedence,
                     detector=detector, detector_options=detector_options, alignment=alignment)
