"""Hostile degradation records: every malformed record gives one ValueError line naming
the record and the field, never KeyError/TypeError/RecursionError/OverflowError/cv2.error
or MemoryError, and sizes in records are capped before any pixel work."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from degradations import Degrader
from degradations.records import RecordError, validate_record
from reface_core.imageio import load_image

HOSTILE = [None, True, -1, 0, 10 ** 30, 10 ** 400, -(10 ** 23), 1e308, float("nan"), float("inf"),
           -float("inf"), "x", "", "a" * 10_000, [], {}, [1, 2], [[[[[[]]]]]], {"op": "blur"},
           2 ** 63, 100_001, 3.5, [10 ** 6, 10 ** 6], [100_000, 100_000], "bicubic", "sharpen"]


@pytest.fixture(scope="module")
def face(data_root):
    # A real aligned face, made small so that records that pass the checks replay fast.
    import cv2
    img = load_image(data_root / "identities_512" / "00001" / "gt.png")
    return cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA)


def _deep(n: int):
    v: list = []
    for _ in range(n):
        v = [v]
    return v


def _paths(obj, prefix=()):
    """Every (path) to a value inside a record, containers included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(record: dict, rng: np.random.Generator) -> dict:
    rec = copy.deepcopy(record)
    paths = [p for p in _paths(rec) if p]
    for _ in range(int(rng.integers(1, 4))):
        path = paths[int(rng.integers(len(paths)))]
        parent = rec
        try:
            for k in path[:-1]:
                parent = parent[k]
            kind = int(rng.integers(5))
            if kind == 0 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif kind == 1:
                parent[path[-1]] = _deep(int(rng.integers(50, 5000)))
            elif kind == 2 and isinstance(parent, dict):
                parent["extra_" + str(int(rng.integers(9)))] = HOSTILE[int(rng.integers(len(HOSTILE)))]
            else:
                parent[path[-1]] = HOSTILE[int(rng.integers(len(HOSTILE)))]
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation replaced this branch
    return rec


@pytest.mark.realdata
def test_mutated_records_fail_with_one_line_or_replay(face):
    records = [Degrader(p).sample(seed=s, image_id=f"face{s}", size=face.shape[:2])
               for s, p in enumerate(("gfpgan", "realesrgan", "mgfr-severe", "codeformer", "diffbir-face"))]
    for r in records:  # the unmutated records replay
        assert Degrader.replay(face, r).shape[2] == 3
    rng = np.random.default_rng(0)
    replayed = refused = 0
    for n in range(2000):
        rec = _mutate(records[n % len(records)], rng)
        try:
            out = Degrader.replay(face, rec)
        except ValueError as e:  # RecordError is a ValueError; anything else fails the test
            msg = str(e)
            assert msg and "\n" not in msg and len(msg) < 400, msg[:500]
            refused += 1
        else:
            assert out.dtype == np.uint8 and out.ndim == 3
            replayed += 1
    # Most mutations hit a checked field; a few (an informational field) still replay.
    assert refused > 1500 and replayed > 0, (refused, replayed)


@pytest.mark.realdata
def test_caps_and_names_in_messages(face):
    rec = Degrader("gfpgan").sample(seed=0, image_id="cap", size=face.shape[:2])
    blur = next(i for i, e in enumerate(rec["ops"]) if e["op"] == "blur" and e.get("applied"))
    resize = next(i for i, e in enumerate(rec["ops"]) if e["op"] == "resize")
    cases = {
        ("ops", blur, "kernel", "size"): (100_001, rf"ops\[{blur}\]\.kernel\.size: must be in \[1, 255\]"),
        ("ops", blur, "kernel", "sigma_x"): (float("nan"), r"sigma_x: must be finite"),
        ("ops", resize, "size"): ([60_000, 60_000], r"size\[0\]: must be in \[1, 16384\]"),
        ("ops", resize, "mode"): ("lanczos9", r"mode: must be one of"),
        ("input_size",): ([96, 10 ** 23], r"input_size\[1\]: must be in \[1, 16384\], got 1" + "0" * 23),
    }
    for path, (value, pattern) in cases.items():
        bad = copy.deepcopy(rec)
        parent = bad
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
        with pytest.raises(RecordError, match=r"record for image 'cap': field " + ".*" + pattern):
            Degrader.replay(face, bad)
    # A resize within each side's cap but far larger than the image is refused by pixels.
    bad = copy.deepcopy(rec)
    bad["ops"][resize]["size"] = [16_000, 16_000]
    with pytest.raises(RecordError, match="exceeds the cap of"):
        Degrader.replay(face, bad)
    # 200,000 entries are refused by count, not walked.
    with pytest.raises(RecordError, match="more than the cap of 256"):
        validate_record({**rec, "ops": [{"op": "gray"}] * 200_000})
    with pytest.raises(RecordError, match=r"field ops\[0\]\.op: unknown op 'blurr'; did you mean 'blur'"):
        validate_record({**rec, "ops": [{"op": "blurr"}]})
    with pytest.raises(RecordError, match="not a degradation record"):
        validate_record(_deep(100_000))


@pytest.mark.realdata
@pytest.mark.parametrize("text, pattern", [
    ("[" * 100_000 + "]" * 100_000, "cannot read as JSON"),
    ('{"ops": [], "input_size": [96, 96], "n": ' + "9" * 6000 + "}", "cannot read as JSON"),
    ('{"ops": [{"op": "jpeg", "quality": NaN}], "input_size": [96, 96], "output_size": [96, 96]}',
     r"field ops\[0\]\.quality"),
    (('{"ops": [{"op": "blur", "kernel": {"type": "iso", "size": 99999, "sigma_x": 1e999}}], '
      '"input_size": [96, 96], "output_size": [96, 96]}'), r"field ops\[0\]\.kernel\.size"),
    ('{"ops": "blur", "input_size": [96, 96]}', r"field ops: must be a list"),
    ('{"record": {"ops": [], "input_size": {"h": 1}}}', r"field input_size: must be \[height, width\]"),
])
def test_replay_cli_hostile_files(tmp_path, face, capsys, text, pattern):
    from degradations.cli import main
    from reface_core.imageio import save_image
    hq = tmp_path / "hq.png"
    save_image(hq, face)
    path = tmp_path / "rec.json"
    path.write_text(text)
    assert main(["replay", str(path), "--hq", str(hq)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: record ") and "\n" not in err, err[:500]
    assert str(path) in err
    import re
    assert re.search(pattern, err), err[:300]


def test_huge_record_file_refused_before_reading(tmp_path, capsys):
    from degradations.cli import main
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(50_000_000)  # sparse: no disk used
    assert main(["replay", str(path), "--hq", str(path)]) == 2
    assert "more than the cap" in capsys.readouterr().err


@pytest.mark.realdata
def test_batch_front_end_checks_records_first(face):
    import torch

    from degradations import BatchDegrader
    from degradations.ops import to_tensor
    deg = BatchDegrader("gfpgan", jpeg="libjpeg")
    x = torch.cat([to_tensor(face)] * 2)
    _, records = deg(x, seed=0, image_ids=["a", "b"])
    for bad in ({k: v for k, v in records[0].items() if k != "output_size"}, "not a record",
                {**records[0], "output_size": [10 ** 9, 1]}):
        with pytest.raises(RecordError):
            deg.apply(x, [bad, records[1]])


@pytest.mark.realdata
def test_record_seed_must_fit_the_tables(face):
    deg = Degrader("mgfr-mild")
    with pytest.raises(RecordError, match=r"field seed: must be in \[-9223372036854775808, 9223372036854775807\]"):
        deg(face, seed=10 ** 23, image_id="a")  # refused before the pixels, not at the table
