"""Vocabulary, CelebA-40 mapping, source labels and combining backends by precedence."""

from __future__ import annotations

import json

import pytest

from captioning.attribute_values import (
    AttributeValue,
    attributes_from_json,
    attributes_to_json,
    combine,
    derive,
)
from captioning.extractors import FaceSample, get_extractor
from captioning.extractors.labels import (
    LabelFileError,
    celeba_to_attributes,
    cell_to_attributes,
    read_celeba_attributes,
)
from captioning.vocabulary import (
    AGE_GROUPS,
    ATTRIBUTES,
    CELEBA_40,
    VOCABULARY,
    age_group_of,
    head_pose_of,
    parse_value,
)

# CelebA's own header, in its own order (list_attr_celeba.txt, line 2).
CELEBA_HEADER = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs "
                 "Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows "
                 "Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
                 "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin "
                 "Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                 "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
                 "Wearing_Necktie Young").split()


def test_celeba_40_covers_every_celeba_attribute_in_order():
    assert list(CELEBA_40) == CELEBA_HEADER
    for name, m in CELEBA_40.items():
        if m.attribute is None:
            assert m.note, f"{name} is left out without a reason"
            continue
        spec = VOCABULARY[m.attribute]
        assert name in spec.celeba
        for v in (m.if_positive, m.if_negative):
            if v is not None and spec.kind == "categorical":
                assert v in spec.values
            elif v is not None:
                assert isinstance(v, bool)
    # The list of what the paper's figures use is all there.
    for needed in ("gender", "age_group", "big_eyes", "big_nose", "beard", "mustache",
                   "eyeglasses", "wearing_lipstick", "heavy_makeup", "wearing_earrings",
                   "smiling", "hair_color", "hair_style", "pale_skin", "bald", "wearing_hat"):
        assert needed in VOCABULARY


def test_vocabulary_is_consistent():
    assert len({a.name for a in ATTRIBUTES}) == len(ATTRIBUTES)
    for a in ATTRIBUTES:
        if a.kind == "categorical":
            assert set(a.answers.values()) <= set(a.values) or not a.answers
        if a.kind == "binary":
            assert a.phrase
    assert [g for g, _, _ in AGE_GROUPS][0] == "child"
    assert age_group_of(12.9) == "child" and age_group_of(13) == "teenager"
    assert age_group_of(39.9) == "young" and age_group_of(65) == "old"
    assert head_pose_of(-10) == "frontal" and head_pose_of(-30) == "three-quarter"
    assert head_pose_of(80) == "profile"


@pytest.mark.parametrize("name, raw, expected", [
    ("smiling", "1", True), ("smiling", -1, False), ("smiling", "No", False),
    ("smiling", True, True), ("gender", "Woman", "female"), ("hair_color", "blonde", "blond"),
    ("age", "31.5", 31.5)])
def test_parse_value(name, raw, expected):
    assert parse_value(name, raw) == expected


@pytest.mark.parametrize("name, raw, match", [
    ("smiling", "maybe", "yes or no"), ("gender", "robot", "female, male"),
    ("age", "old", "number"), ("age", float("nan"), "NaN")])
def test_parse_value_errors_name_the_attribute(name, raw, match):
    with pytest.raises(ValueError, match=match):
        parse_value(name, raw)


def write_celeba_file(path, rows: dict[str, dict[str, int]], declared=None):
    lines = [str(len(rows) if declared is None else declared), " ".join(CELEBA_HEADER)]
    for file_name, labels in rows.items():
        lines.append(file_name + "  " + " ".join(
            f"{labels.get(n, -1):2d}" for n in CELEBA_HEADER))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_celeba_file_is_read_and_mapped(tmp_path):
    f = write_celeba_file(tmp_path / "list_attr_celeba.txt", {
        "000001.jpg": {"Male": -1, "Smiling": 1, "Wearing_Earrings": 1, "Blond_Hair": 1,
                       "Young": 1, "No_Beard": 1, "Narrow_Eyes": -1},
        "000002.jpg": {"Male": 1, "No_Beard": -1, "Eyeglasses": 1, "Black_Hair": 1,
                       "Brown_Hair": 1, "Narrow_Eyes": 1, "Young": -1}})
    table = read_celeba_attributes(f)
    assert table["000001.jpg"]["Smiling"] == 1 and table["000002.jpg"]["Smiling"] == -1
    a = celeba_to_attributes(table["000001.jpg"])
    assert a["gender"].value == "female" and a["smiling"].value is True
    assert a["hair_color"] == AttributeValue("blond", 1.0, "labels")
    assert a["age_group"].value == "young" and a["beard"].value is False
    assert "big_eyes" not in a  # not narrow says nothing about big
    assert "attractive" not in a and "blurry" not in a
    b = celeba_to_attributes(table["000002.jpg"])
    assert b["gender"].value == "male" and b["beard"].value is True
    assert b["big_eyes"].value is False
    assert "age_group" not in b  # not young: middle-aged or old, unknown which
    # Two hair colours at once: kept with a confidence low enough to stay out of prompts.
    assert b["hair_color"].value == "black" and b["hair_color"].confidence == 0.5

    ex = get_extractor("labels", celeba_file=f)
    samples = [FaceSample(key="abc", row={"origin": "https://x.org/celeba/000002.jpg?dl=1"}),
               FaceSample(key="000001"),
               FaceSample(key="zzz", row={"image_path": "images/p/zzz.png"})]
    r = ex.extract(samples)
    assert r[0].attributes["gender"].value == "male"
    assert r[1].attributes["gender"].value == "female"
    assert r[2].attributes == {} and r[2].error is None


@pytest.mark.parametrize("mutate, match", [
    (lambda t: "two\n" + t.split("\n", 1)[1],
     r"line 1: expected the number of images"),
    (lambda t: t.replace("Wearing_Necktie", "Necktie"), r"line 2: not CelebA attribute names"),
    (lambda t: t.replace("000001.jpg ", "000001.jpg 1 "), r"line 3: expected a file name and 40"),
    (lambda t: "5" + t[1:], r"declares 5 images but the file lists 2"),
])
def test_malformed_celeba_files_name_file_and_line(tmp_path, mutate, match):
    f = write_celeba_file(tmp_path / "attr.txt", {"000001.jpg": {}, "000002.jpg": {}})
    f.write_text(mutate(f.read_text()))
    with pytest.raises(LabelFileError, match=match) as e:
        read_celeba_attributes(f)
    assert "attr.txt" in str(e.value)


def test_manifest_columns_as_labels():
    assert cell_to_attributes("gender", "male")["gender"].value == "male"
    assert cell_to_attributes("gender", None) == {}
    a = cell_to_attributes("labels", json.dumps({"Smiling": 1, "eyeglasses": "no", "Male": -1}))
    assert a["smiling"].value is True and a["eyeglasses"].value is False
    assert a["gender"].value == "female"
    with pytest.raises(ValueError, match="'labels'.*'sparkle'"):
        cell_to_attributes("labels", {"sparkle": 1})
    renamed = get_extractor("labels", columns=["sex=gender"])
    r = renamed.extract([FaceSample(key="1", row={"sex": "woman"}),
                         FaceSample(key="2", row={"sex": "robot"})])
    assert r[0].attributes["gender"].value == "female"
    assert "column 'sex'" in r[1].error and "female, male" in r[1].error
    with pytest.raises(ValueError, match="'sexe' is not a vocabulary attribute"):
        get_extractor("labels", columns=["sex=sexe"])
    ex = get_extractor("labels", columns=["gender", "tags"])
    r = ex.extract([FaceSample(key="1", row={"gender": "female", "tags": '{"Bald": 1}'}),
                    FaceSample(key="2", row={"gender": "unknown", "tags": None}),
                    FaceSample(key="3", row={})])
    assert r[0].attributes["bald"].value is True and r[0].error is None
    assert "gender" in r[1].error and r[1].attributes == {}
    assert "no column 'gender'" in r[2].error
    with pytest.raises(ValueError, match="needs a CelebA attribute file"):
        get_extractor("labels")
    with pytest.raises(ValueError, match="unknown attribute backend 'ofline'.*offline"):
        get_extractor("ofline")


def test_combine_follows_precedence_and_derives():
    labels = {"gender": AttributeValue("male", 1.0, "labels")}
    offline = {"gender": AttributeValue("female", 0.9, "offline"),
               "age": AttributeValue(52.0, 1.0, "offline"),
               "yaw": AttributeValue(-35.0, 0.95, "offline")}
    vlm = {"gender": AttributeValue("female", 0.99, "vlm"),
           "age_group": AttributeValue("young", 0.7, "vlm"),
           "eyeglasses": AttributeValue(True, 0.8, "vlm")}
    merged = combine({"vlm": vlm, "offline": offline, "labels": labels})
    assert merged["gender"].source == "labels"
    assert merged["age_group"] == AttributeValue("middle-aged", merged["age_group"].confidence,
                                                 "offline")
    assert merged["head_pose"].value == "three-quarter"
    assert merged["eyeglasses"].source == "vlm"
    other = combine({"vlm": vlm, "offline": offline, "labels": labels},
                    precedence=("vlm", "offline"))
    assert other["gender"].source == "vlm" and other["age_group"].source == "vlm"
    # Bin confidence drops near an edge (52 is 8 years inside; 41 is 1 year).
    near = derive({"age": AttributeValue(41.0, 1.0, "offline")})["age_group"]
    assert near.confidence < merged["age_group"].confidence == 1.0


def test_attributes_json_round_trip_is_byte_stable():
    attrs = {"smiling": AttributeValue(True, 0.8123456, "vlm"),
             "age": AttributeValue(31.23456, 1.0, "offline"),
             "gender": AttributeValue("female", 0.97, "offline")}
    text = attributes_to_json(attrs)
    assert text == attributes_to_json(dict(reversed(list(attrs.items()))))
    back = attributes_from_json(text)
    assert back["gender"] == attrs["gender"] and back["age"].value == pytest.approx(31.235)
    assert attributes_to_json(back) == text
    assert attributes_from_json('{"smiling": "yes"}')["smiling"] == AttributeValue(True, 1.0, "user")
    with pytest.raises(ValueError, match="not valid JSON"):
        attributes_from_json("{nope")
    with pytest.raises(ValueError, match="unknown attribute 'smilling'.*smiling"):
        attributes_from_json('{"smilling": 1}')
    with pytest.raises(ValueError, match="confidence"):
        AttributeValue(True, 1.5, "x")
