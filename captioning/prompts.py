"""Deterministic prompts from attributes: positive, negative-attribute, negative-quality.

MGFR is steered by an attribute prompt ("a photo of a smiling young woman with big eyes,
wearing earrings") and trained with two negative prompts: the attributes the face does
*not* have ("beard, eyeglasses, man") and image-quality defects ("blurry, noisy, ...").
:class:`PromptBuilder` turns the same attributes into the same three strings every time:
phrases come from the vocabulary in its fixed order, nothing depends on dict order, time
or randomness.

Token limit: each prompt is checked with a token counter (see :mod:`captioning.tokens`);
when it is longer than ``max_tokens`` (77 for CLIP, markers included) phrases are dropped
from the end of the vocabulary order (so gender, age, grayscale and smiling go last) until
it fits, and the dropped attribute names are reported.

User overrides: every phrase can be replaced (``phrases={"big_nose": "a large nose",
"gender=female": "lady"}``), attributes can be excluded, the prefix, extra positive text
and the negative-quality terms are constructor arguments, and ``build(..., overrides=)``
forces attribute values (source ``"user"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .attribute_values import Attributes, AttributeValue, derive
from .tokens import CLIP_MAX_TOKENS, TokenizerLike, make_counter
from .vocabulary import AGE_GROUPS, ATTRIBUTES, VOCABULARY, get_spec, parse_value

#: Image-quality defects for the negative-quality prompt (restoration's usual suspects).
DEFAULT_NEGATIVE_QUALITY: tuple[str, ...] = (
    "blurry", "noisy", "low resolution", "jpeg artifacts", "pixelated", "oversmoothed",
    "out of focus", "low quality", "distorted face", "deformed", "watermark",
    "oversaturated")

_ORDER = {a.name: i for i, a in enumerate(ATTRIBUTES)}
_AGE_INDEX = {g: i for i, (g, _, _) in enumerate(AGE_GROUPS)}


@dataclass(frozen=True)
class Prompts:
    """The three prompts for one face, and what had to be dropped to fit the tokenizer."""

    positive: str
    negative_attribute: str
    negative_quality: str
    dropped: tuple[str, ...] = field(default=())


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _bare(phrase: str) -> str:
    # Negative prompts are comma lists of bare nouns: "a big nose" -> "big nose".
    return re.sub(r"^(a|an)\s+", "", phrase)


def contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment ("man" is not in "woman")."""
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])",
                     text.lower()) is not None


class PromptBuilder:
    """Build positive / negative-attribute / negative-quality prompts from attributes.

    Args:
        tokenizer: a Hugging Face tokenizer object, ``"clip"``, ``"words"`` or ``"auto"``
            (CLIP when its vocabulary is installed, else the word-level estimate).
        max_tokens: token budget per prompt, markers included (77 for CLIP).
        min_confidence: attributes below this confidence go in no prompt.
        include: attribute names allowed in prompts (default: all in the vocabulary).
        exclude: attribute names never put in prompts.
        phrases: phrase overrides, keyed by attribute name (binary) or ``"name=value"``
            (categorical), e.g. ``{"gender=female": "lady", "eyeglasses": "glasses"}``.
        prefix / grayscale_prefix: how the positive prompt starts.
        extra_positive: text appended to every positive prompt (kept when trimming).
        negative_quality: the negative-quality terms, in order.
    """

    def __init__(self, *, tokenizer: TokenizerLike = "auto", max_tokens: int = CLIP_MAX_TOKENS,
                 min_confidence: float = 0.6, include: Iterable[str] | None = None,
                 exclude: Iterable[str] = (), phrases: Mapping[str, str] | None = None,
                 prefix: str = "a photo of", grayscale_prefix: str = "a black and white photo of",
                 extra_positive: str = "",
                 negative_quality: Sequence[str] = DEFAULT_NEGATIVE_QUALITY):
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within 0..1, got {min_confidence}")
        for name in list(include or ()) + list(exclude):
            get_spec(name)
        self.phrases = dict(phrases or {})
        for key in self.phrases:
            name, _, value = key.partition("=")
            spec = get_spec(name)
            if value and value not in spec.values:
                raise ValueError(f"phrase override {key!r}: {name} takes one of {spec.values}")
            if spec.kind == "categorical" and not value:
                raise ValueError(f"phrase override {key!r}: write it as '{name}=<value>'")
        self.count_tokens, self.tokenizer_name = make_counter(tokenizer)
        self.max_tokens = int(max_tokens)
        self.min_confidence = float(min_confidence)
        self.include = set(include) if include is not None else set(VOCABULARY)
        self.include -= set(exclude)
        self.prefix = prefix
        self.grayscale_prefix = grayscale_prefix
        self.extra_positive = extra_positive.strip()
        self.negative_quality_terms = tuple(t.strip() for t in negative_quality if t.strip())

    def config(self) -> dict:
        """The JSON-able settings (recorded with annotated manifests)."""
        return {"tokenizer": self.tokenizer_name, "max_tokens": self.max_tokens,
                "min_confidence": self.min_confidence, "include": sorted(self.include),
                "phrases": dict(sorted(self.phrases.items())), "prefix": self.prefix,
                "grayscale_prefix": self.grayscale_prefix,
                "extra_positive": self.extra_positive,
                "negative_quality": list(self.negative_quality_terms)}

    # --- phrases -----------------------------------------------------------------------
    def phrase(self, name: str, value=None) -> str:
        spec = VOCABULARY[name]
        if spec.kind == "categorical":
            return self.phrases.get(f"{name}={value}", spec.value_phrases[value])
        return self.phrases.get(name, spec.phrase)

    def _confident(self, attributes: Attributes) -> dict[str, object]:
        """name -> value for the attributes a prompt may use, in vocabulary order."""
        usable = {}
        for name in sorted(attributes, key=lambda n: _ORDER[n]):
            item = attributes[name]
            if (name in self.include and VOCABULARY[name].kind != "numeric"
                    and item.confidence >= self.min_confidence):
                usable[name] = item.value
        return usable

    # --- positive ----------------------------------------------------------------------
    def _subject(self, values: Mapping[str, object]) -> str:
        """"smiling young woman", "teenage boy", "bald man", "person"."""
        gender, age = values.get("gender"), values.get("age_group")
        # Children and teenagers are girls and boys, unless the user renamed the noun.
        kid = age in ("child", "teenager") and f"gender={gender}" not in self.phrases
        if kid:
            noun = {"female": "girl", "male": "boy"}.get(gender) or (
                "child" if age == "child" else "person")
        else:
            noun = self.phrase("gender", gender) if gender is not None else "person"
        words = [self.phrase("smiling")] if values.get("smiling") is True else []
        if age is not None and not (kid and age == "child"):
            words.append(self.phrase("age_group", age))
        if values.get("bald") is True:
            words.append(self.phrase("bald"))
        return " ".join(words + [noun])

    def _positive_text(self, values: Mapping[str, object]) -> str:
        subject = self._subject(values)
        article = "an" if subject[:1].lower() in "aeio" else "a"
        hair = [self.phrase(n, values[n]) for n in ("hair_style", "hair_color") if n in values]
        with_items, wearing_items, view = [], [], ""
        for name, value in values.items():
            spec = VOCABULARY[name]
            if name in ("hair_color", "hair_style"):
                # Texture and colour make one phrase, placed where the first of them is.
                if hair:
                    with_items.append(" ".join(hair + ["hair"]))
                    hair = []
            elif spec.slot in ("with", "hair") and value is True:
                with_items.append(self.phrase(name))
            elif spec.slot == "wearing" and value is True:
                wearing_items.append(self.phrase(name))
            elif name == "head_pose" and value != "frontal":
                view = self.phrase("head_pose", value)
        prefix = self.grayscale_prefix if values.get("grayscale") is True else self.prefix
        text = f"{prefix} {article} {subject}"
        if with_items:
            text += " with " + _join(with_items)
        if wearing_items:
            text += ", wearing " + _join(wearing_items)
        if view:
            text += ", " + view
        if self.extra_positive:
            text += ", " + self.extra_positive
        return text

    def _fit(self, values: dict[str, object], render) -> tuple[str, list[str]]:
        """Drop attributes from the end of the vocabulary order until ``render`` fits."""
        values = dict(values)
        dropped: list[str] = []
        text = render(values)
        while self.count_tokens(text) > self.max_tokens:
            if not values:
                raise ValueError(
                    f"prompt {text!r} is {self.count_tokens(text)} tokens with no attribute "
                    f"left, over the limit of {self.max_tokens}; shorten the fixed text")
            last = max(values, key=lambda n: _ORDER[n])
            del values[last]
            dropped.append(last)
            text = render(values)
        return text, dropped

    def positive(self, attributes: Attributes) -> str:
        return self.build(attributes).positive

    # --- negatives ---------------------------------------------------------------------
    def _negative_items(self, values: Mapping[str, object]) -> list[str]:
        items: list[str] = []
        for name, value in values.items():
            spec = VOCABULARY[name]
            if spec.kind == "binary" and value is False:
                items.append(_bare(self.phrase(name)))
            elif name == "gender":
                items += [self.phrase(name, v) for v in spec.values if v != value]
            elif name in ("hair_color", "hair_style"):
                items += [f"{self.phrase(name, v)} hair" for v in spec.values if v != value]
            elif name == "age_group":
                # Neighbouring age bins blur into each other and "young" fits a child too:
                # only the two ends of the scale, when far away, are negatives.
                index = _AGE_INDEX[value]
                if index >= 2:
                    items.append(self.phrase(name, "child"))
                if index <= 2:
                    items.append(self.phrase(name, "old"))
        return items

    def negative_quality(self, positive: str = "") -> str:
        terms = [t for t in self.negative_quality_terms if not contains_phrase(positive, t)]
        text = ", ".join(terms)
        while terms and self.count_tokens(text) > self.max_tokens:
            terms.pop()
            text = ", ".join(terms)
        return text

    # --- all three ---------------------------------------------------------------------
    def build(self, attributes: Attributes,
              overrides: Mapping[str, object] | None = None) -> Prompts:
        """The three prompts for ``attributes`` (after applying ``overrides``)."""
        attributes = dict(attributes)
        for name, value in (overrides or {}).items():
            attributes[name] = AttributeValue(parse_value(name, value), 1.0, "user")
        values = self._confident(derive(attributes))
        absent = {k: v for k, v in values.items() if v is False}
        present = {k: v for k, v in values.items() if v is not False}
        positive, dropped = self._fit(present, self._positive_text)

        def render_negative(vals):
            items = [i for i in self._negative_items(vals) if not contains_phrase(positive, i)]
            return ", ".join(dict.fromkeys(items))
        # Categorical values dropped from the positive prompt for length give no negatives
        # either: "man" as a negative only makes sense next to "woman" in the positive.
        negative_values = {k: v for k, v in values.items()
                           if k in absent or (k in present and k not in dropped)}
        negative, _ = self._fit(negative_values, render_negative)
        return Prompts(positive=positive, negative_attribute=negative,
                       negative_quality=self.negative_quality(positive),
                       dropped=tuple(dropped))
