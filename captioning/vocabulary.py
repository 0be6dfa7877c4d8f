"""The attribute vocabulary: one fixed, documented set of facial attributes.

Data only. Every attribute has a name (CelebA's attribute name in lower case where CelebA
has one), a kind, the phrase the prompt builder uses, and the VQA question the VLM backend
asks. ``CELEBA_40`` maps each of CelebA's 40 binary attributes onto the vocabulary (or
says why it is left out), so any dataset labelled with CelebA attributes feeds the same
prompts as the extractors do.

Kinds:

* ``binary``: value ``True``/``False`` (the face has it or not);
* ``categorical``: value is one of ``values`` (``gender``, ``age_group``, ``hair_color``...);
* ``numeric``: a measurement (``age`` in years, head-pose angles in degrees); never put in
  a prompt directly, but ``age`` and ``yaw`` derive ``age_group`` and ``head_pose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reface_core.registry import Registry


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute of the vocabulary.

    ``phrase`` is the noun phrase for a binary attribute (``"big eyes"``) and
    ``value_phrases`` maps each categorical value to its phrase. ``slot`` says where the
    phrase goes in the positive prompt: ``subject`` (modifies the person noun, e.g.
    ``"smiling"``), ``with`` (``"with big eyes"``), ``wearing`` (``"wearing earrings"``),
    ``hair`` (merged into one hair phrase), ``style`` (the photo itself: ``"black and
    white"``), ``view`` (head pose). ``question`` is the yes/no (binary) or open
    (categorical) question for the VLM backend and ``answers`` maps candidate answers to
    values for categorical questions.
    """

    name: str
    kind: str
    description: str
    phrase: str = ""
    slot: str = "with"
    values: tuple[str, ...] = ()
    value_phrases: dict[str, str] = field(default_factory=dict)
    question: str | None = None
    answers: dict[str, str] = field(default_factory=dict)
    celeba: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attribute {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical" and set(self.value_phrases) != set(self.values):
            raise ValueError(f"attribute {self.name!r}: value_phrases must cover exactly {self.values}")


KINDS = ("binary", "categorical", "numeric")
SLOTS = ("style", "subject", "with", "hair", "wearing", "view")

# Age bins in years, [lower, upper): the one place where age becomes a word.
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("child", 0.0, 13.0),
    ("teenager", 13.0, 20.0),
    ("young", 20.0, 40.0),
    ("middle-aged", 40.0, 60.0),
    ("old", 60.0, 200.0),
)

# Head-pose bins by absolute yaw in degrees, [lower, upper).
HEAD_POSES: tuple[tuple[str, float, float], ...] = (
    ("frontal", 0.0, 20.0),
    ("three-quarter", 20.0, 55.0),
    ("profile", 55.0, 181.0),
)


def _b(name, phrase, description, *, slot="with", question=None, celeba=()):
    return AttributeSpec(name=name, kind="binary", phrase=phrase, description=description,
                         slot=slot, question=question, celeba=celeba)


# Order matters: it is the order phrases appear in prompts, and when a prompt is too long
# for the tokenizer the phrases at the end are dropped first.
ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec(
        name="gender", kind="categorical", slot="subject", values=("female", "male"),
        value_phrases={"female": "woman", "male": "man"},
        question="is this a man or a woman?", answers={"woman": "female", "man": "male"},
        celeba=("Male",), description="perceived gender presentation"),
    AttributeSpec(
        name="age_group", kind="categorical", slot="subject",
        values=tuple(g for g, _, _ in AGE_GROUPS),
        value_phrases={"child": "child", "teenager": "teenage", "young": "young",
                       "middle-aged": "middle-aged", "old": "old"},
        question="how old is this person?",
        answers={"child": "child", "teenager": "teenager", "young": "young",
                 "middle aged": "middle-aged", "old": "old"},
        celeba=("Young",), description="age bin (see AGE_GROUPS); derived from age when "
                                      "a backend measures age"),
    AttributeSpec(name="age", kind="numeric", slot="subject",
                  description="estimated age in years"),
    _b("grayscale", "black and white", "the photo is grayscale (from the pixels)", slot="style"),
    _b("smiling", "smiling", "smiling", slot="subject", question="is the person smiling?",
       celeba=("Smiling",)),
    _b("big_eyes", "big eyes", "large eyes (CelebA has only the opposite, Narrow_Eyes)",
       question="does the person have big eyes?", celeba=("Narrow_Eyes",)),
    _b("big_nose", "a big nose", "large nose", question="does the person have a big nose?",
       celeba=("Big_Nose",)),
    _b("pointy_nose", "a pointy nose", "pointy nose", celeba=("Pointy_Nose",)),
    _b("big_lips", "big lips", "full lips", question="does the person have big lips?",
       celeba=("Big_Lips",)),
    _b("mouth_slightly_open", "a slightly open mouth", "mouth slightly open",
       celeba=("Mouth_Slightly_Open",)),
    _b("beard", "a beard", "full beard (CelebA: not No_Beard)",
       question="does the person have a beard?", celeba=("No_Beard",)),
    _b("mustache", "a mustache", "mustache", question="does the person have a mustache?",
       celeba=("Mustache",)),
    _b("goatee", "a goatee", "goatee", celeba=("Goatee",)),
    _b("stubble", "stubble", "five o'clock shadow", celeba=("5_o_Clock_Shadow",)),
    _b("sideburns", "sideburns", "sideburns", celeba=("Sideburns",)),
    _b("arched_eyebrows", "arched eyebrows", "arched eyebrows", celeba=("Arched_Eyebrows",)),
    _b("bushy_eyebrows", "bushy eyebrows", "bushy eyebrows", celeba=("Bushy_Eyebrows",)),
    _b("bags_under_eyes", "bags under the eyes", "bags under the eyes",
       celeba=("Bags_Under_Eyes",)),
    _b("high_cheekbones", "high cheekbones", "high cheekbones", celeba=("High_Cheekbones",)),
    _b("rosy_cheeks", "rosy cheeks", "rosy cheeks", celeba=("Rosy_Cheeks",)),
    _b("chubby", "a chubby face", "chubby face", celeba=("Chubby",)),
    _b("double_chin", "a double chin", "double chin", celeba=("Double_Chin",)),
    _b("oval_face", "an oval face", "oval face", celeba=("Oval_Face",)),
    _b("pale_skin", "pale skin", "pale skin", question="does the person have pale skin?",
       celeba=("Pale_Skin",)),
    _b("heavy_makeup", "heavy makeup", "heavy makeup", slot="wearing",
       question="is the person wearing makeup?", celeba=("Heavy_Makeup",)),
    _b("eyeglasses", "eyeglasses", "eyeglasses or sunglasses", slot="wearing",
       question="is the person wearing glasses?", celeba=("Eyeglasses",)),
    _b("wearing_lipstick", "lipstick", "lipstick", slot="wearing",
       question="is the person wearing lipstick?", celeba=("Wearing_Lipstick",)),
    _b("wearing_earrings", "earrings", "earrings", slot="wearing",
       question="is the person wearing earrings?", celeba=("Wearing_Earrings",)),
    _b("wearing_hat", "a hat", "hat or cap", slot="wearing",
       question="is the person wearing a hat?", celeba=("Wearing_Hat",)),
    _b("wearing_necklace", "a necklace", "necklace", slot="wearing",
       celeba=("Wearing_Necklace",)),
    _b("wearing_necktie", "a necktie", "necktie", slot="wearing", celeba=("Wearing_Necktie",)),
    AttributeSpec(
        name="hair_color", kind="categorical", slot="hair",
        values=("black", "blond", "brown", "gray", "red"),
        value_phrases={"black": "black", "blond": "blond", "brown": "brown", "gray": "gray",
                       "red": "red"},
        question="what color is the person's hair?",
        answers={"black": "black", "blonde": "blond", "blond": "blond", "brown": "brown",
                 "gray": "gray", "grey": "gray", "white": "gray", "red": "red"},
        celeba=("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"),
        description="hair colour"),
    AttributeSpec(
        name="hair_style", kind="categorical", slot="hair", values=("straight", "wavy"),
        value_phrases={"straight": "straight", "wavy": "wavy"},
        question="is the person's hair straight or wavy?",
        answers={"straight": "straight", "wavy": "wavy", "curly": "wavy"},
        celeba=("Straight_Hair", "Wavy_Hair"), description="hair texture"),
    _b("bangs", "bangs", "bangs", slot="hair", celeba=("Bangs",)),
    _b("receding_hairline", "a receding hairline", "receding hairline",
       celeba=("Receding_Hairline",)),
    _b("bald", "bald", "bald head", slot="subject", question="is the person bald?",
       celeba=("Bald",)),
    AttributeSpec(name="yaw", kind="numeric", slot="view",
                  description="head yaw in degrees; > 0 when the face turns toward the "
                              "image's right"),
    AttributeSpec(name="pitch", kind="numeric", slot="view",
                  description="head pitch in degrees; > 0 when the face tilts up"),
    AttributeSpec(name="roll", kind="numeric", slot="view",
                  description="head roll in degrees; > 0 when the head leans clockwise in "
                              "the image (about 0 on aligned crops by construction)"),
    AttributeSpec(
        name="head_pose", kind="categorical", slot="view",
        values=tuple(p for p, _, _ in HEAD_POSES),
        value_phrases={"frontal": "frontal view", "three-quarter": "three-quarter view",
                       "profile": "profile view"},
        description="head pose bin from |yaw| (see HEAD_POSES)"),
)

VOCABULARY = Registry("attribute", {a.name: a for a in ATTRIBUTES}, suggestions=3)


@dataclass(frozen=True)
class CelebAMapping:
    """What one CelebA attribute says about the vocabulary.

    ``if_positive`` / ``if_negative`` are the value set on ``attribute`` when the CelebA
    label is +1 / -1; ``None`` means that label says nothing (``Black_Hair = -1`` does not
    tell the hair colour). ``attribute`` is ``None`` for attributes left out, with the
    reason in ``note``.
    """

    attribute: str | None
    if_positive: object = None
    if_negative: object = None
    note: str = ""


def _yes_no(attribute):
    return CelebAMapping(attribute, True, False)


#: All 40 CelebA attributes, in CelebA's own order (the column order of list_attr_celeba.txt).
CELEBA_40: dict[str, CelebAMapping] = {
    "5_o_Clock_Shadow": _yes_no("stubble"),
    "Arched_Eyebrows": _yes_no("arched_eyebrows"),
    "Attractive": CelebAMapping(None, note="a judgement of the annotator, not a visible "
                                           "attribute; never put into prompts"),
    "Bags_Under_Eyes": _yes_no("bags_under_eyes"),
    "Bald": _yes_no("bald"),
    "Bangs": _yes_no("bangs"),
    "Big_Lips": _yes_no("big_lips"),
    "Big_Nose": _yes_no("big_nose"),
    "Black_Hair": CelebAMapping("hair_color", "black", None),
    "Blond_Hair": CelebAMapping("hair_color", "blond", None),
    "Blurry": CelebAMapping(None, note="image quality, not the face: it belongs to the "
                                       "negative-quality prompt"),
    "Brown_Hair": CelebAMapping("hair_color", "brown", None),
    "Bushy_Eyebrows": _yes_no("bushy_eyebrows"),
    "Chubby": _yes_no("chubby"),
    "Double_Chin": _yes_no("double_chin"),
    "Eyeglasses": _yes_no("eyeglasses"),
    "Goatee": _yes_no("goatee"),
    "Gray_Hair": CelebAMapping("hair_color", "gray", None),
    "Heavy_Makeup": _yes_no("heavy_makeup"),
    "High_Cheekbones": _yes_no("high_cheekbones"),
    "Male": CelebAMapping("gender", "male", "female"),
    "Mouth_Slightly_Open": _yes_no("mouth_slightly_open"),
    "Mustache": _yes_no("mustache"),
    "Narrow_Eyes": CelebAMapping("big_eyes", False, None,
                                 note="narrow eyes are not big; not narrow says nothing"),
    "No_Beard": CelebAMapping("beard", False, True),
    "Oval_Face": _yes_no("oval_face"),
    "Pale_Skin": _yes_no("pale_skin"),
    "Pointy_Nose": _yes_no("pointy_nose"),
    "Receding_Hairline": _yes_no("receding_hairline"),
    "Rosy_Cheeks": _yes_no("rosy_cheeks"),
    "Sideburns": _yes_no("sideburns"),
    "Smiling": _yes_no("smiling"),
    "Straight_Hair": CelebAMapping("hair_style", "straight", None),
    "Wavy_Hair": CelebAMapping("hair_style", "wavy", None),
    "Wearing_Earrings": _yes_no("wearing_earrings"),
    "Wearing_Hat": _yes_no("wearing_hat"),
    "Wearing_Lipstick": _yes_no("wearing_lipstick"),
    "Wearing_Necklace": _yes_no("wearing_necklace"),
    "Wearing_Necktie": _yes_no("wearing_necktie"),
    "Young": CelebAMapping("age_group", "young", None,
                           note="CelebA's Young covers roughly under 40; not young says "
                                "middle-aged or old, which one is unknown"),
}


def get_spec(name: str) -> AttributeSpec:
    """The spec of attribute ``name``; a clear error with suggestions when unknown."""
    return VOCABULARY.get(name)


def age_group_of(age: float) -> str:
    for group, lo, hi in AGE_GROUPS:
        if lo <= age < hi:
            return group
    raise ValueError(f"age {age!r} is outside 0..200 years")


def age_group_margin(age: float) -> float:
    """Years from ``age`` to the nearest edge of its bin (how safely it sits in it)."""
    group = age_group_of(age)
    _, lo, hi = next(g for g in AGE_GROUPS if g[0] == group)
    edges = [e for e in (lo, hi) if 0.0 < e < 200.0]
    return min(abs(age - e) for e in edges) if edges else float("inf")


def head_pose_of(yaw: float) -> str:
    a = abs(float(yaw))
    for pose, lo, hi in HEAD_POSES:
        if lo <= a < hi:
            return pose
    raise ValueError(f"yaw {yaw!r} is outside -180..180 degrees")


_TRUE = {"1", "+1", "true", "yes", "y", "t"}
_FALSE = {"-1", "0", "false", "no", "n", "f"}


def parse_value(name: str, value):
    """Normalise a user- or file-supplied value for attribute ``name``.

    Binary: ``1``/``-1``/``0``, ``yes``/``no``, ``true``/``false``. Categorical: one of
    the values (or a candidate answer, e.g. ``"woman"`` for gender). Numeric: a number.
    Raises ``ValueError`` naming the attribute and the value otherwise.
    """
    spec = get_spec(name)
    if spec.kind == "binary":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"attribute {name!r} is yes/no; cannot read {value!r} as yes or no")
    if spec.kind == "categorical":
        text = str(value).strip().lower()
        if text in spec.values:
            return text
        if text in spec.answers:
            return spec.answers[text]
        raise ValueError(f"attribute {name!r} takes one of {', '.join(spec.values)}; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"attribute {name!r} is a number; got {value!r}") from None
    if number != number:  # NaN is a missing value in disguise
        raise ValueError(f"attribute {name!r} is NaN")
    return number
