"""Prompt templates: deterministic, negatives disjoint from positives, within token limits."""

from __future__ import annotations

import random
import string

import pytest

from captioning.attribute_values import AttributeValue, attributes_from_json
from captioning.prompts import DEFAULT_NEGATIVE_QUALITY, PromptBuilder, contains_phrase
from captioning.tokens import count_words, make_counter
from captioning.vocabulary import ATTRIBUTES, VOCABULARY


def random_attributes(rng: random.Random) -> dict[str, AttributeValue]:
    """A random but valid attribute set, the way backends produce them."""
    out = {}
    for spec in ATTRIBUTES:
        if rng.random() < 0.3:
            continue
        if spec.kind == "binary":
            value = rng.random() < 0.5
        elif spec.kind == "categorical":
            value = rng.choice(spec.values)
        else:
            value = rng.uniform(1, 85) if spec.name == "age" else rng.uniform(-80, 80)
        out[spec.name] = AttributeValue(value, rng.uniform(0.3, 1.0), "test")
    return out


@pytest.fixture(scope="module")
def char_tokenizer():
    """A tiny CLIP tokenizer with no merges: every character is a token (harsh on length)."""
    from transformers import CLIPTokenizer
    symbols = list(string.ascii_lowercase + string.digits + ",.-'")
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


@pytest.fixture(scope="module")
def words_builder():
    return PromptBuilder(tokenizer="words")


FULL = {"gender": "female", "age": 27, "smiling": True, "big_eyes": True, "big_nose": False,
        "eyeglasses": False, "wearing_earrings": True, "hair_color": "blond",
        "hair_style": "wavy", "beard": False, "yaw": 30.0, "grayscale": False,
        "wearing_lipstick": True}


def test_positive_prompt_reads_as_the_paper_writes_it(words_builder):
    p = words_builder.build(attributes_from_json(FULL))
    assert p.positive == ("a photo of a smiling young woman with big eyes and wavy blond hair, "
                          "wearing lipstick and earrings, three-quarter view")
    assert p.negative_attribute.split(", ") == [
        "man", "child", "old", "black and white", "big nose", "beard", "eyeglasses",
        "black hair", "brown hair", "gray hair", "red hair", "straight hair"]
    assert p.negative_quality == ", ".join(DEFAULT_NEGATIVE_QUALITY)
    assert p.dropped == ()


@pytest.mark.parametrize("attrs, expected", [
    ({}, "a photo of a person"),
    ({"gender": "male", "age": 70}, "a photo of an old man"),
    ({"gender": "male", "age": 7, "grayscale": True}, "a black and white photo of a boy"),
    ({"gender": "female", "age_group": "teenager"}, "a photo of a teenage girl"),
    ({"gender": "male", "bald": True, "beard": True, "mustache": True, "wearing_hat": True},
     "a photo of a bald man with a beard and a mustache, wearing a hat"),
    ({"hair_style": "wavy"}, "a photo of a person with wavy hair"),
])
def test_positive_templates(words_builder, attrs, expected):
    assert words_builder.build(attributes_from_json(attrs)).positive == expected


def test_same_input_same_prompts_whatever_the_dict_order(words_builder):
    attrs = attributes_from_json(FULL)
    reversed_attrs = dict(reversed(list(attrs.items())))
    a = words_builder.build(attrs)
    b = words_builder.build(reversed_attrs)
    c = PromptBuilder(tokenizer="words").build(attributes_from_json(FULL))
    assert a == b == c


def test_negatives_never_contain_a_positive_attribute(words_builder):
    rng = random.Random(1234)
    for _ in range(400):
        attrs = random_attributes(rng)
        p = words_builder.build(attrs)
        positive = p.positive
        for phrase in filter(None, p.negative_attribute.split(", ")):
            assert not contains_phrase(positive, phrase), (phrase, positive)
        for term in filter(None, p.negative_quality.split(", ")):
            assert not contains_phrase(positive, term), (term, positive)
        # And attribute-wise: a binary attribute the face has never shows up as negative.
        for name, item in attrs.items():
            spec = VOCABULARY[name]
            if spec.kind == "binary" and item.value is True:
                bare = spec.phrase.removeprefix("a ").removeprefix("an ")
                assert bare not in p.negative_attribute.split(", "), (name, p)


def test_low_confidence_attributes_stay_out_of_every_prompt():
    attrs = {"gender": AttributeValue("male", 0.55, "offline"),
             "eyeglasses": AttributeValue(True, 0.59, "vlm"),
             "smiling": AttributeValue(False, 0.95, "vlm")}
    p = PromptBuilder(tokenizer="words", min_confidence=0.6).build(attrs)
    assert p.positive == "a photo of a person"
    assert p.negative_attribute == "smiling"
    looser = PromptBuilder(tokenizer="words", min_confidence=0.5).build(attrs)
    assert looser.positive == "a photo of a man, wearing eyeglasses"
    assert "woman" in looser.negative_attribute.split(", ")


def test_user_overrides_phrases_values_and_quality_terms():
    b = PromptBuilder(tokenizer="words", phrases={"gender=female": "lady", "eyeglasses": "glasses"},
                      prefix="a close-up portrait of", extra_positive="high quality",
                      negative_quality=("blurry", "high quality", "noisy"), exclude=["smiling"])
    p = b.build(attributes_from_json({"gender": "female", "smiling": True, "eyeglasses": False}),
                overrides={"hair_color": "red"})
    assert p.positive == "a close-up portrait of a lady with red hair, high quality"
    assert "glasses" in p.negative_attribute.split(", ")
    # A quality term the user also asked for in the positive prompt is not negated.
    assert p.negative_quality == "blurry, noisy"
    with pytest.raises(ValueError, match="gender"):
        PromptBuilder(tokenizer="words", phrases={"gender": "lady"})
    with pytest.raises(KeyError, match="eyeglases.*did you mean 'eyeglasses'"):
        PromptBuilder(tokenizer="words", exclude=["eyeglases"])
    with pytest.raises(ValueError, match="smiling.*yes or no"):
        b.build({}, overrides={"smiling": "maybe"})


def _everything_true():
    attrs = {s.name: AttributeValue(True, 1.0, "t") for s in ATTRIBUTES if s.kind == "binary"}
    attrs.update(gender=AttributeValue("female", 1.0, "t"), age=AttributeValue(30.0, 1.0, "t"),
                 hair_color=AttributeValue("brown", 1.0, "t"),
                 hair_style=AttributeValue("wavy", 1.0, "t"), yaw=AttributeValue(40.0, 1.0, "t"))
    return attrs


def test_long_prompts_are_trimmed_from_the_end_of_the_vocabulary(char_tokenizer):
    b = PromptBuilder(tokenizer=char_tokenizer, max_tokens=77)
    p = b.build(_everything_true())
    count = len(char_tokenizer(p.positive)["input_ids"])
    assert count <= 77
    assert p.dropped, "a character-level tokenizer must force trimming"
    # Trimmed from the end: gender and age (first in the vocabulary) survive.
    assert "woman" in p.positive and "young" in p.positive
    order = [a.name for a in ATTRIBUTES]
    kept = [n for n in order if n not in p.dropped]
    assert min(order.index(d) for d in p.dropped) > order.index("gender")
    assert all(order.index(d) > order.index(kept[0]) for d in p.dropped)
    assert len(char_tokenizer(p.negative_attribute)["input_ids"]) <= 77
    assert len(char_tokenizer(p.negative_quality)["input_ids"]) <= 77


def test_every_random_prompt_fits_the_real_clip_tokenizer():
    pytest.importorskip("transformers")
    from reface_core.assets import find
    if find("clip-bpe-vocab") is None:
        pytest.skip("the openai-clip package (CLIP BPE vocabulary) is not installed")
    from captioning.tokens import clip_tokenizer
    tok = clip_tokenizer()
    # Sanity: the in-memory tokenizer gives CLIP's published ids.
    assert tok("a photo of")["input_ids"] == [49406, 320, 1125, 539, 49407]
    b = PromptBuilder(tokenizer="clip", max_tokens=40)
    rng = random.Random(7)
    for _ in range(60):
        p = b.build(random_attributes(rng))
        for text in (p.positive, p.negative_attribute, p.negative_quality):
            assert len(tok(text)["input_ids"]) <= 40, text


def test_word_level_fallback_never_undercounts_clip():
    from reface_core.assets import find
    if find("clip-bpe-vocab") is None:
        pytest.skip("the openai-clip package (CLIP BPE vocabulary) is not installed")
    clip_count, _ = make_counter("clip")
    b = PromptBuilder(tokenizer="words", max_tokens=200)
    rng = random.Random(3)
    texts = [spec.phrase for spec in ATTRIBUTES] + list(DEFAULT_NEGATIVE_QUALITY)
    for _ in range(100):
        p = b.build(random_attributes(rng))
        texts += [p.positive, p.negative_attribute]
    for text in texts:
        assert count_words(text) >= clip_count(text), text


def test_fixed_text_longer_than_the_budget_is_a_clear_error():
    b = PromptBuilder(tokenizer="words", max_tokens=10, extra_positive="x " * 30)
    with pytest.raises(ValueError, match="over the limit of 10"):
        b.build({})
    with pytest.raises(ValueError, match="max_tokens"):
        PromptBuilder(tokenizer="words", max_tokens=2)
    with pytest.raises(ValueError, match="tokenizer"):
        PromptBuilder(tokenizer="sentencepiece")
