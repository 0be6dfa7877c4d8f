"""Labels supplied by the source: CelebA attribute files and manifest columns.

CelebA's ``list_attr_celeba.txt`` (and CelebAMask-HQ's ``CelebAMask-HQ-attribute-anno.txt``,
same layout) is: a line with the image count, a line with the 40 attribute names, then one
line per image, ``<file name> <40 values of 1 or -1>``. Values are mapped onto the
vocabulary with :data:`captioning.vocabulary.CELEBA_40`.

A manifest column may hold either one vocabulary attribute (a column named ``gender`` with
``female``/``male``) or a JSON object per row, keyed by vocabulary names or CelebA names
(``{"Smiling": 1, "eyeglasses": "no"}``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..attribute_values import Attributes, AttributeValue
from ..vocabulary import CELEBA_40, VOCABULARY, parse_value
from .base import AttributeExtractor, ExtractionResult, FaceSample


class LabelFileError(ValueError):
    """A label file is malformed; the message names the file and the line."""


def read_celeba_attributes(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Parse a CelebA-format attribute file into ``{file name: {CelebA name: +1/-1}}``."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{path}: CelebA attribute file does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f]
    if len(lines) < 2:
        raise LabelFileError(f"{path}: expected a count line and a header line, "
                             f"got {len(lines)} line(s)")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise LabelFileError(f"{path}, line 1: expected the number of images, got "
                             f"{lines[0][:60]!r}") from None
    names = lines[1].split()
    unknown = [n for n in names if n not in CELEBA_40]
    if not names or unknown:
        raise LabelFileError(f"{path}, line 2: not CelebA attribute names: "
                             f"{unknown[:5] or '(empty line)'}")
    table: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise LabelFileError(f"{path}, line {number}: expected a file name and "
                                 f"{len(names)} values, got {len(fields)} fields")
        try:
            # Some redistributions write 0 for "no"; CelebA itself writes -1.
            values = [1 if int(v) > 0 else -1 for v in fields[1:]]
        except ValueError:
            raise LabelFileError(f"{path}, line {number}: values must be 1, -1 or 0") from None
        table[fields[0]] = dict(zip(names, values, strict=False))
    if len(table) != declared:
        raise LabelFileError(f"{path}: line 1 declares {declared} images but the file lists "
                             f"{len(table)}")
    return table


def celeba_to_attributes(labels: Mapping[str, int | bool], source: str = "labels") -> Attributes:
    """Map CelebA labels (+1/-1 or True/False) onto the vocabulary.

    Several positive labels for one categorical attribute (CelebA sometimes marks both
    Black_Hair and Brown_Hair) keep the first in CelebA order with confidence 1/n, so the
    prompt builder's confidence threshold leaves the contradiction out of prompts.
    """
    positives: dict[str, list] = {}
    out: Attributes = {}
    for celeba_name, raw in labels.items():
        mapping = CELEBA_40.get(celeba_name)
        if mapping is None:
            raise ValueError(f"{celeba_name!r} is not a CelebA attribute name")
        if mapping.attribute is None:
            continue
        positive = (raw > 0) if not isinstance(raw, bool) else raw
        value = mapping.if_positive if positive else mapping.if_negative
        if value is None:
            continue
        if VOCABULARY[mapping.attribute].kind == "categorical":
            positives.setdefault(mapping.attribute, []).append(value)
        else:
            out[mapping.attribute] = AttributeValue(value, 1.0, source)
    for name, values in positives.items():
        distinct = list(dict.fromkeys(values))
        out[name] = AttributeValue(distinct[0], 1.0 / len(distinct), source)
    return out


def _yes_no_label(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "+1", "true", "yes", "y"):
        return True
    if text in ("-1", "0", "false", "no", "n"):
        return False
    raise ValueError(f"CelebA attribute {name!r} is yes/no; cannot read {value!r}")


def _missing(cell) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or cell == ""


def cell_to_attributes(column: str, cell, source: str = "labels",
                       attribute: str | None = None) -> Attributes:
    """Attributes from one manifest cell (see the module docstring for the two forms).

    ``attribute`` names the vocabulary attribute the column holds when the column is not
    named after it (a ``gender_label`` column holding ``gender``)."""
    if _missing(cell):
        return {}
    attribute = attribute or (column if column in VOCABULARY else None)
    if attribute is not None:
        try:
            return {attribute: AttributeValue(parse_value(attribute, cell), 1.0, source)}
        except ValueError as e:
            raise ValueError(f"column {column!r}: {e}") from None
    data = cell
    if isinstance(cell, (str, bytes)):
        try:
            data = json.loads(cell)
        except json.JSONDecodeError:
            raise ValueError(f"column {column!r}: {str(cell)[:60]!r} is neither a JSON "
                             "object nor a value of a vocabulary attribute") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"column {column!r}: expected a JSON object, got {type(data).__name__}")
    celeba = {}
    for k, v in data.items():
        if k in CELEBA_40 and not _missing(v):
            # CelebA names hold yes/no labels whatever their spelling: 1/-1, 0/1, "yes".
            celeba[k] = v if isinstance(v, (int, float)) and not isinstance(v, bool) \
                else (1 if _yes_no_label(k, v) else -1)
    out = celeba_to_attributes(celeba, source)
    for name, value in data.items():
        if name in CELEBA_40:
            continue
        if name not in VOCABULARY:
            raise ValueError(f"column {column!r}: {name!r} is neither a vocabulary attribute "
                             "nor a CelebA attribute")
        if isinstance(value, Mapping):
            value = value.get("value")
        if not _missing(value):
            out[name] = AttributeValue(parse_value(name, value), 1.0, source)
    return out


class LabelsExtractor(AttributeExtractor):
    """Attributes from source labels: a CelebA attribute file and/or manifest columns.

    Args:
        celeba_file: a CelebA-format attribute file; faces are matched by file name
            (the face key, the path, the manifest's ``origin`` / ``image_path``; with or
            without extension).
        columns: manifest columns to read (see :func:`cell_to_attributes`); write
            ``"COLUMN=ATTRIBUTE"`` for a column holding one attribute under another name
            (``"gender_label=gender"``). Column values win over the file where both give one.
    """

    name = "labels"
    needs_pixels = False

    def __init__(self, celeba_file: str | os.PathLike | None = None,
                 columns: Sequence[str] = ()):
        if celeba_file is None and not columns:
            raise ValueError("the labels backend needs a CelebA attribute file "
                             "(--celeba-attributes) or manifest columns (--label-columns)")
        self.celeba_file = str(celeba_file) if celeba_file is not None else None
        self.columns = tuple(columns)
        self._columns: list[tuple[str, str | None]] = []
        for entry in self.columns:
            column, _, attribute = entry.partition("=")
            if attribute and attribute not in VOCABULARY:
                raise ValueError(f"label column {entry!r}: {attribute!r} is not a vocabulary "
                                 f"attribute (see `python -m captioning vocabulary`)")
            self._columns.append((column, attribute or None))
        self.required_columns = tuple(column for column, _ in self._columns)
        self._table: dict[str, dict[str, int]] = {}
        if celeba_file is not None:
            table = read_celeba_attributes(celeba_file)
            for file_name, labels in table.items():
                self._table.setdefault(file_name, labels)
                self._table.setdefault(os.path.splitext(file_name)[0], labels)

    def config(self) -> dict:
        return {"name": self.name, "celeba_file": self.celeba_file, "columns": list(self.columns)}

    def _one(self, sample: FaceSample) -> ExtractionResult:
        attributes: Attributes = {}
        if self._table:
            for key in sample.names():
                if key in self._table:
                    attributes.update(celeba_to_attributes(self._table[key], self.name))
                    break
        errors = []
        for column, attribute in self._columns:
            if column not in sample.row:
                errors.append(f"no column {column!r}")
                continue
            try:
                attributes.update(cell_to_attributes(column, sample.row[column], self.name,
                                                     attribute))
            except ValueError as e:
                errors.append(str(e))
        return ExtractionResult(attributes=attributes, error="; ".join(errors) or None)

    def extract(self, samples: Sequence[FaceSample]) -> list[ExtractionResult]:
        return [self._one(s) for s in samples]
