"""Per-face attribute values, their JSON form, derivation and combining across backends.

A face's attributes are a ``dict`` name -> :class:`AttributeValue` (value, confidence in
0..1, the backend that said so). The manifest stores them as one JSON string,
``{name: {"value": ..., "confidence": float, "source": backend}}``, keys sorted so the
same attributes always give the same bytes.

Precedence when backends are combined (``DEFAULT_PRECEDENCE``), per attribute, the first
backend in this order that gives a value wins:

1. ``labels``: labels that came with the source (CelebA attribute files, a manifest
   column): human annotations, so they beat any model;
2. ``offline``: purpose-trained classifiers (age, gender) and measurements from the pixels
   and landmarks (grayscale, head pose);
3. ``vlm``: a general vision-language model, which answers every question and so fills
   in everything the others do not cover.

Callers can pass another order; backends absent from it come after, in the order given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .vocabulary import age_group_margin, age_group_of, get_spec, head_pose_of, parse_value

DEFAULT_PRECEDENCE: tuple[str, ...] = ("labels", "offline", "vlm")


@dataclass(frozen=True)
class AttributeValue:
    value: bool | str | float
    confidence: float
    source: str

    def __post_init__(self):
        c = float(self.confidence)
        if not (0.0 <= c <= 1.0) or math.isnan(c):
            raise ValueError(f"confidence must be within 0..1, got {self.confidence!r}")

    def to_dict(self) -> dict:
        value = self.value
        if isinstance(value, float):
            value = round(value, 3)
        return {"value": value, "confidence": round(float(self.confidence), 4),
                "source": self.source}


Attributes = dict[str, AttributeValue]


def attributes_to_json(attributes: Mapping[str, AttributeValue]) -> str:
    return json.dumps({k: attributes[k].to_dict() for k in sorted(attributes)},
                      sort_keys=True, separators=(",", ":"))


def attributes_from_json(text: str | Mapping | None) -> Attributes:
    """Parse the manifest's ``attributes`` JSON (or an already decoded dict).

    Accepts the full form ``{name: {"value", "confidence", "source"}}`` and the short form
    ``{name: value}`` (confidence 1, source ``"user"``). Unknown names and bad values raise
    ``ValueError`` naming them.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return {}
    if isinstance(text, str):
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"attributes are not valid JSON ({e}): {text[:80]!r}") from None
    else:
        data = text
    if not isinstance(data, Mapping):
        raise ValueError(f"attributes must be a JSON object, got {type(data).__name__}")
    out: Attributes = {}
    for name, item in data.items():
        try:
            get_spec(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        if isinstance(item, Mapping):
            if "value" not in item:
                raise ValueError(f"attribute {name!r}: missing 'value' in {dict(item)!r}")
            out[name] = AttributeValue(parse_value(name, item["value"]),
                                       float(item.get("confidence", 1.0)),
                                       str(item.get("source", "user")))
        else:
            out[name] = AttributeValue(parse_value(name, item), 1.0, "user")
    return out


def derive(attributes: Attributes) -> Attributes:
    """Add the attributes that follow from others: ``age_group`` from ``age``, ``head_pose``
    from ``yaw``. Existing values are kept; derived ones carry the source of their base."""
    out = dict(attributes)
    age = out.get("age")
    if age is not None and "age_group" not in out:
        # Near a bin edge the bin is a coin toss; 5 years inside a bin is confident.
        margin = min(age_group_margin(float(age.value)), 5.0)
        conf = age.confidence * (0.5 + 0.5 * margin / 5.0)
        out["age_group"] = AttributeValue(age_group_of(float(age.value)), conf, age.source)
    yaw = out.get("yaw")
    if yaw is not None and "head_pose" not in out:
        out["head_pose"] = AttributeValue(head_pose_of(float(yaw.value)), yaw.confidence,
                                          yaw.source)
    return out


def combine(results: Mapping[str, Attributes],
            precedence: Iterable[str] = DEFAULT_PRECEDENCE) -> Attributes:
    """Merge per-backend attributes: per attribute, the first backend in ``precedence``
    that has a value wins (backends missing from ``precedence`` come last, in the order of
    ``results``). Each backend's own derived attributes are added first."""
    order = [b for b in precedence if b in results]
    order += [b for b in results if b not in order]
    merged: Attributes = {}
    for backend in order:
        for name, value in derive(results[backend]).items():
            merged.setdefault(name, value)
    return merged
