"""The VLM backend end to end on a tiny random-weight BLIP built from config.

The tiny checkpoints are written with ``save_pretrained`` and loaded by path, so the same
code path runs with the Salesforce weights: only the folder differs.
"""

from __future__ import annotations

import numpy as np
import pytest

from captioning.extractors import FaceSample
from captioning.extractors.vlm import (
    DEFAULT_VLM_ATTRIBUTES,
    Blip2Extractor,
    BlipExtractor,
    parse_answer,
    question_set,
)
from captioning.vocabulary import VOCABULARY

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from captioning.testing import build_tiny_blip
    return build_tiny_blip(tmp_path_factory.mktemp("tiny_blip"), seed=0)


@pytest.fixture(scope="module")
def extractor(tiny_blip):
    vqa, cap = tiny_blip
    return BlipExtractor(vqa, cap, batch_size=3, device="cpu", max_new_tokens=8)


def faces(n: int, seed: int = 0) -> list[FaceSample]:
    rng = np.random.default_rng(seed)
    return [FaceSample(key=f"f{i}", image=rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
                       aligned=True) for i in range(n)]


def _bias(ex: BlipExtractor, which: str, token: str, amount: float):
    """Push the decoder toward ``token`` (the bias is shared by every position)."""
    model, processor = ex._vqa if which == "vqa" else ex._caption
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[token_id] += amount


def test_question_set_comes_from_the_vocabulary():
    qs = question_set(DEFAULT_VLM_ATTRIBUTES)
    assert [q[0] for q in qs] == list(DEFAULT_VLM_ATTRIBUTES)
    by_name = {name: (question, cands) for name, question, cands in qs}
    assert by_name["smiling"] == ("is the person smiling?", {"yes": True, "no": False})
    assert by_name["gender"][1] == {"woman": "female", "man": "male"}
    assert set(by_name["hair_color"][1].values()) == set(VOCABULARY["hair_color"].values)
    with pytest.raises(ValueError, match="'oval_face' has no VQA question"):
        question_set(["oval_face"])


@pytest.mark.parametrize("name, text, expected", [
    ("smiling", "yes", True), ("smiling", "No.", False), ("smiling", "yes, she is", True),
    ("smiling", "not sure", None), ("gender", "she is a woman", "female"),
    ("gender", "man", "male"), ("hair_color", "Blonde", "blond"), ("hair_color", "grey", "gray"),
    ("hair_style", "curly", "wavy"), ("hair_color", "purple", None)])
def test_parse_answer(name, text, expected):
    assert parse_answer(name, text) == expected


def test_batched_results_equal_one_at_a_time(extractor):
    samples = faces(5)
    batched = extractor.extract(samples)          # batches of 3 + 2
    single = [extractor.extract([s])[0] for s in samples]
    for b, s in zip(batched, single, strict=False):
        assert b.caption == s.caption and isinstance(b.caption, str) and b.caption
        assert set(b.attributes) == set(DEFAULT_VLM_ATTRIBUTES)
        for name in b.attributes:
            assert b.attributes[name].value == s.attributes[name].value
            assert b.attributes[name].confidence == pytest.approx(s.attributes[name].confidence,
                                                                  abs=1e-5)
            assert b.attributes[name].source == "vlm"


def test_answers_depend_on_the_image(extractor):
    a, b = extractor.rank_answers([faces(1, seed=1)[0].image, faces(1, seed=2)[0].image])
    pa = [p[k] for q in a for p in [q] for k in sorted(q, key=str)]
    pb = [p[k] for q in b for p in [q] for k in sorted(q, key=str)]
    assert all(abs(sum(q.values()) - 1.0) < 1e-6 for q in a)
    assert pa != pb


def test_ranking_follows_the_model_scores(tiny_blip):
    ex = BlipExtractor(tiny_blip[0], None, caption=False, device="cpu",
                       attributes=["smiling", "eyeglasses", "gender", "hair_color"])
    _bias(ex, "vqa", "yes", 12.0)
    _bias(ex, "vqa", "blonde", 12.0)
    res = ex.extract(faces(2))
    for r in res:
        assert r.attributes["smiling"].value is True and r.attributes["smiling"].confidence > 0.99
        assert r.attributes["eyeglasses"].value is True
        # "blonde" and "blond" are two candidates for one value: probabilities pool.
        assert r.attributes["hair_color"].value == "blond"
        assert r.caption is None
    _bias(ex, "vqa", "yes", -12.0)
    _bias(ex, "vqa", "no", 12.0)
    assert all(r.attributes["smiling"].value is False for r in ex.extract(faces(2)))


def test_generate_mode_parses_free_answers(tiny_blip):
    ex = BlipExtractor(tiny_blip[0], None, caption=False, mode="generate", device="cpu",
                       attributes=["smiling", "hair_color"])
    _bias(ex, "vqa", "yes", 15.0)
    res = ex.extract(faces(3))
    for r in res:
        assert r.attributes["smiling"].value is True
        assert "hair_color" not in r.attributes
        assert "unparsed answers: hair_color: 'yes" in r.error


def test_captions_continue_the_prompt(tiny_blip):
    ex = BlipExtractor(None, tiny_blip[1], vqa=False, device="cpu", max_new_tokens=4)
    _bias(ex, "caption", "woman", 15.0)
    caps = ex.captions([f.image for f in faces(2)])
    assert caps == ["woman woman woman woman"] * 2
    assert ex.extract(faces(1))[0].attributes == {}


def test_faces_that_failed_earlier_are_passed_through(extractor):
    samples = faces(3)
    samples[1].error = "photo.jpg: no face found"
    res = extractor.extract(samples)
    assert res[1].error == "photo.jpg: no face found" and res[1].attributes == {}
    assert res[0].attributes and res[2].attributes


def test_missing_or_wrong_weights_fail_clearly(tmp_path, tiny_blip):
    from reface_core.assets import AssetNotFoundError
    with pytest.raises(AssetNotFoundError, match="blip-vqa-base.*huggingface-cli download "
                                                 "Salesforce/blip-vqa-base"):
        BlipExtractor(device="cpu")
    with pytest.raises(AssetNotFoundError, match="blip-caption-base"):
        BlipExtractor(tiny_blip[0], tmp_path / "nowhere", device="cpu")
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="bogus: not a loadable BlipForQuestionAnswering"):
        BlipExtractor(bogus, vqa=True, caption=False, device="cpu")
    with pytest.raises(ValueError, match="mode"):
        BlipExtractor(tiny_blip[0], mode="beam", device="cpu")


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    from captioning.testing import build_tiny_blip2
    return build_tiny_blip2(tmp_path_factory.mktemp("tiny_blip2"), seed=0)


def test_blip2_batches_questions_and_captions(tiny_blip2):
    ex = Blip2Extractor(tiny_blip2, device="cpu", batch_size=3, max_new_tokens=4,
                        attributes=["gender", "smiling", "hair_color", "bald"])
    samples = faces(4)
    batched = ex.extract(samples)
    single = [ex.extract([s])[0] for s in samples]
    for b, s in zip(batched, single, strict=False):
        assert isinstance(b.caption, str) and b.caption == s.caption
        assert set(b.attributes) == {"gender", "smiling", "hair_color", "bald"}
        for name, item in b.attributes.items():
            assert item.source == "vlm" and item.value == s.attributes[name].value
            assert item.confidence == pytest.approx(s.attributes[name].confidence, abs=1e-5)
    probs = ex.rank_answers([f.image for f in faces(2, seed=5)])
    assert probs[0] != probs[1]
    assert all(abs(sum(q.values()) - 1) < 1e-6 for per in probs for q in per)
    gen = Blip2Extractor(tiny_blip2, device="cpu", caption=False, mode="generate",
                         attributes=["smiling"])
    (answer, p), = gen.generate_answers([samples[0].image])[0]
    assert isinstance(answer, str) and 0.0 <= p <= 1.0
    with pytest.raises(ValueError, match="question_template"):
        Blip2Extractor(tiny_blip2, device="cpu", question_template="Q: A:")
    from reface_core.assets import AssetNotFoundError
    with pytest.raises(AssetNotFoundError, match="blip2-opt-2.7b"):
        Blip2Extractor(device="cpu")
