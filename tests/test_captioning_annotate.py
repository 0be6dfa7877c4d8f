"""``captioning annotate``: columns added, resume after a kill, atomic rewrite, CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.attribute_values import AttributeValue, attributes_from_json
from captioning.cli import main
from captioning.extractors import AttributeExtractor, ExtractionResult, get_extractor
from captioning.manifest import ManifestError, annotate_manifest, progress_path, read_manifest
from captioning.pipeline import OUTPUT_COLUMNS, Captioner
from captioning.pose_and_colour import colourfulness
from captioning.prompts import PromptBuilder
from reface_core.imageio import save_image


class PixelBackend(AttributeExtractor):
    """A pixel backend for tests: grayscale from the pixels, and a log of what it saw."""

    name = "offline"

    def __init__(self, fail_on_call: int | None = None):
        self.seen: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def extract(self, samples):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("simulated kill")
        out = []
        for s in samples:
            if s.error:
                out.append(ExtractionResult(error=s.error))
                continue
            self.seen.append(s.key)
            c = colourfulness(s.load())
            out.append(ExtractionResult(attributes={
                "grayscale": AttributeValue(c.grayscale, c.confidence, self.name)}))
        return out


def make_dataset(root, n=7):
    """A small Reface-HQ-shaped dataset: images/<identity>/<face_id>.png + manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        identity = f"id{i % 3}"
        face_id = f"face{i:03d}"
        rel = f"images/{identity}/{face_id}.png"
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        if i % 2:
            img = np.repeat(img[..., :1], 3, axis=2)  # every other face is grayscale
        save_image(root / rel, img)
        rows.append({"face_id": face_id, "image_path": rel, "identity": identity,
                     "split": "train", "source": "test", "origin": f"/src/{i:06d}.jpg",
                     "license": None, "sha256": f"{i:064x}", "width": 32, "height": 32,
                     "embedder": "dlib-resnet-v1",
                     "embedding": rng.standard_normal(8).astype(np.float32).tolist(),
                     "status": "ok", "gender": "female" if i % 3 else "male"})
    rows.append({**rows[0], "face_id": "gone", "image_path": None, "status": "failed_to_download"})
    schema = pa.schema([("face_id", pa.string()), ("image_path", pa.string()),
                        ("identity", pa.string()), ("split", pa.string()),
                        ("source", pa.string()), ("origin", pa.string()),
                        ("license", pa.string()), ("sha256", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()),
                        ("embedder", pa.string()), ("embedding", pa.list_(pa.float32())),
                        ("status", pa.string()), ("gender", pa.string())])
    path = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def captioner(backend=None, **kw):
    backends = [backend or PixelBackend(), get_extractor("labels", columns=["gender"])]
    return Captioner(backends, prompt_builder=PromptBuilder(tokenizer="words"), **kw)


def test_annotate_adds_the_contract_columns_and_keeps_the_rest(tmp_path):
    path = make_dataset(tmp_path)
    before = pq.read_table(path)
    report = annotate_manifest(path, captioner(), batch_size=3, progress=False)
    after = pq.read_table(path)
    assert report.eligible == 7 and report.ok == 7 and report.failed == 0
    assert report.processed == 7 and report.already_done == 0
    for c in OUTPUT_COLUMNS:
        assert after.schema.field(c).type == pa.string()
    # Every original column is untouched, types included (the embedding stays float32).
    for c in before.column_names:
        assert after.column(c).equals(before.column(c)), c
    assert after.schema.field("embedding").type == pa.list_(pa.float32())
    rows = after.to_pylist()
    for r in rows[:7]:
        attrs = attributes_from_json(r["attributes"])
        assert attrs["gender"].source == "labels" and attrs["grayscale"].source == "offline"
        assert r["caption_status"] == "ok" and r["caption_source"] == "template"
        noun = "woman" if attrs["gender"].value == "female" else "man"
        assert r["prompt"] == r["caption"] and noun in r["prompt"].split()
        assert r["negative_quality_prompt"].startswith("blurry, noisy")
    assert [attributes_from_json(r["attributes"])["grayscale"].value for r in rows[:7]] == \
           [bool(i % 2) for i in range(7)]
    assert "black and white" in rows[1]["prompt"] and "black and white" in rows[0]["negative_attribute_prompt"]
    # Rows that are not "ok" in the manifest are left alone.
    assert rows[7]["attributes"] is None and rows[7]["caption_status"] is None
    meta = json.loads(after.schema.metadata[b"captioning"])
    assert meta["precedence"] == ["labels", "offline", "vlm"]
    assert not progress_path(path).exists()


def test_a_killed_run_resumes_without_duplicates_or_losses(tmp_path):
    path = make_dataset(tmp_path)
    original = path.read_bytes()
    first = PixelBackend(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        annotate_manifest(path, captioner(first), batch_size=2, progress=False)
    # Killed in the third batch: the manifest is untouched, two batches are in progress.
    assert path.read_bytes() == original
    lines = progress_path(path).read_text().strip().split("\n")
    assert len(lines) == 1 + 4
    # A half-written last line (a kill during the write) is ignored, not fatal.
    with open(progress_path(path), "a") as f:
        f.write('{"key": "face00')
    second = PixelBackend()
    report = annotate_manifest(path, captioner(second), batch_size=2, progress=False)
    assert report.already_done == 4 and report.processed == 3 and report.ok == 7
    assert sorted(first.seen + second.seen) == [f"face{i:03d}" for i in range(7)]
    assert not set(first.seen) & set(second.seen)
    # Done means done: a third run touches no face, and the output is byte-stable.
    third = PixelBackend()
    annotated = pq.read_table(path).select(list(OUTPUT_COLUMNS))
    report = annotate_manifest(path, captioner(third), progress=False)
    assert third.seen == [] and report.processed == 0 and report.already_done == 7
    assert pq.read_table(path).select(list(OUTPUT_COLUMNS)).equals(annotated)
    # --overwrite redoes everything.
    fourth = PixelBackend()
    annotate_manifest(path, captioner(fourth), overwrite=True, progress=False)
    assert len(fourth.seen) == 7


def test_progress_of_other_settings_is_refused(tmp_path):
    path = make_dataset(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        annotate_manifest(path, captioner(PixelBackend(fail_on_call=2)), batch_size=2,
                          progress=False)
    other = captioner(detector="dlib-cnn")
    with pytest.raises(ManifestError, match="other backend settings.*--restart"):
        annotate_manifest(path, other, progress=False)
    report = annotate_manifest(path, other, restart=True, progress=False)
    assert report.processed == 7


def test_limit_and_failures_are_status_rows(tmp_path):
    path = make_dataset(tmp_path)
    (tmp_path / "images/id1/face001.png").write_bytes(b"not a png")
    report = annotate_manifest(path, captioner(), limit=4, progress=False)
    assert report.processed == 4
    rows = pq.read_table(path).to_pylist()
    assert [r["caption_status"] is not None for r in rows[:7]] == [True] * 4 + [False] * 3
    # A broken image: pixel backends skip it, the labels still describe the face.
    assert "face001.png" in rows[1]["caption_error"]
    assert attributes_from_json(rows[1]["attributes"])["gender"].value == "female"
    report = annotate_manifest(path, captioner(), progress=False)
    assert report.processed == 3 and report.ok == 7


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_csv_and_jsonl_manifests(tmp_path, suffix):
    parquet = make_dataset(tmp_path)
    df = pq.read_table(parquet).to_pandas().drop(columns=["embedding"])
    path = tmp_path / f"manifest{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    report = annotate_manifest(path, captioner(), progress=False)
    assert report.ok == 7
    table = read_manifest(path)
    assert table.num_rows == 8 and "negative_attribute_prompt" in table.column_names


def test_bad_manifests_fail_with_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        annotate_manifest(tmp_path / "none.parquet", captioner(), progress=False)
    with pytest.raises(ManifestError, match="is a folder; name the manifest file"):
        annotate_manifest(tmp_path, captioner(), progress=False)
    bad = tmp_path / "m.txt"
    bad.write_text("x")
    with pytest.raises(ManifestError, match="unsupported manifest type '.txt'"):
        annotate_manifest(bad, captioner(), progress=False)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="broken.parquet: cannot read as parquet"):
        annotate_manifest(broken, captioner(), progress=False)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_pylist([{"face_id": "a", "image_path": "x.png"}] * 2), dup)
    with pytest.raises(ManifestError, match="duplicate values.*'a'"):
        annotate_manifest(dup, captioner(), progress=False)
    nopath = tmp_path / "nopath.parquet"
    pq.write_table(pa.Table.from_pylist([{"face_id": "a"}]), nopath)
    with pytest.raises(ManifestError, match="no 'image_path'"):
        annotate_manifest(nopath, captioner(), progress=False)


def test_cli_annotate_with_labels_and_a_celeba_file(tmp_path, capsys):
    path = make_dataset(tmp_path)
    header = "Male Smiling Eyeglasses"
    (tmp_path / "attr.txt").write_text(
        "2\n" + header + "\n000000.jpg 1 1 -1\n000001.jpg -1 -1 1\n")
    rc = main(["annotate", "-i", str(path), "--backend", "labels",
               "--celeba-attributes", str(tmp_path / "attr.txt"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1, "faces with no labels at all are reported as failed"
    assert "2/7 faces annotated ok, 5 failed" in out
    rows = pq.read_table(path).to_pylist()
    assert rows[0]["prompt"] == "a photo of a smiling man"
    assert rows[1]["prompt"] == "a photo of a woman, wearing eyeglasses"
    assert rows[1]["negative_attribute_prompt"] == "man, smiling"
    assert rows[2]["caption_status"] == "failed"
    assert "no backend gave any attribute" in rows[2]["caption_error"]


def test_cli_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["annotate", "-i", str(tmp_path / "x.parquet"), "--backend", "labels",
                 "--label-columns", "gender"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["annotate", "-i", str(tmp_path / "x.parquet"), "--backend", "labelz"]) == 2
    assert "unknown attribute backend 'labelz'" in capsys.readouterr().err
    assert main(["prompt", "smiling=perhaps"]) == 2
    assert "smiling" in capsys.readouterr().err


def test_cli_prompt_prints_the_three_prompts(capsys):
    assert main(["prompt", "gender=female", "age=27", "smiling=yes", "eyeglasses=no",
                 "--tokenizer", "words", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt"] == "a photo of a smiling young woman"
    assert data["negative_attribute_prompt"] == "man, child, old, eyeglasses"
    assert data["negative_quality_prompt"].startswith("blurry")
    assert main(["prompt", "--attributes", '{"gender": {"value": "male", "confidence": 0.9, '
                 '"source": "offline"}}', "--phrase", "gender=male=gentleman",
                 "--tokenizer", "words"]) == 0
    assert "a photo of a gentleman" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_annotate_with_the_vlm_backend(tmp_path, capsys):
    from captioning.testing import build_tiny_blip
    vqa, cap = build_tiny_blip(tmp_path / "blip")
    path = make_dataset(tmp_path / "data", n=3)
    rc = main(["annotate", "-i", str(path), "--backend", "vlm,labels",
               "--label-columns", "gender", "--vqa-model", str(vqa), "--caption-model", str(cap),
               "--vlm-attributes", "smiling,gender", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr()
    rows = pq.read_table(path).to_pylist()[:3]
    for r in rows:
        attrs = attributes_from_json(r["attributes"])
        assert attrs["gender"].source == "labels" and attrs["smiling"].source == "vlm"
        assert r["caption_source"] == "vlm" and r["caption"]


def test_cli_caption_reports_photos_without_faces(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    save_image(plain, np.full((64, 64, 3), 128, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    rc = main(["caption", str(plain), str(broken), "--json", "--tokenizer", "words"])
    assert rc == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["caption_status"] for r in lines] == ["failed", "failed"]
    assert "plain.png: no face found" in lines[0]["caption_error"]
    assert "broken.jpg" in lines[1]["caption_error"]
    assert main(["caption", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: no such image file" in capsys.readouterr().err


def test_python_entry_point_used_by_the_dataset_builder(tmp_path):
    # reface_hq's build calls `from captioning import annotate; annotate(path)`.
    from captioning import annotate
    path = make_dataset(tmp_path, n=3)
    report = annotate(path, backends=("labels",), options={"labels": {"columns": ["gender"]}},
                      progress=False)
    assert report.ok == 3
    assert pq.read_table(path).column("prompt").to_pylist()[:3] == [
        "a photo of a man", "a photo of a woman", "a photo of a woman"]


def test_bad_device_and_precedence_are_clear_errors(capsys):
    import torch

    from captioning.extractors.vlm import pick_device

    with pytest.raises(ValueError, match="device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match=r"unknown backend\(s\) \['ofline'\]"):
        captioner(precedence=["labels", "ofline"])
    for bad, what in (("[1, 2]", "expected a JSON object"), ("{bad", "not valid JSON")):
        assert main(["prompt", "--attributes", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --attributes") and what in err and "Traceback" not in err


def test_a_label_column_the_manifest_lacks_is_refused(tmp_path):
    path = make_dataset(tmp_path)
    labels = get_extractor("labels", columns=["gender", "hair=hair_color"])
    with pytest.raises(ManifestError, match=r"reads column\(s\) \['hair'\]"):
        annotate_manifest(path, Captioner([PixelBackend(), labels]), progress=False)
    assert not progress_path(path).exists()


def test_rerun_with_other_settings_is_refused_and_prompt_changes_apply(tmp_path):
    path = make_dataset(tmp_path)
    annotate_manifest(path, captioner(), progress=False)
    # Other backend settings would leave old and new annotations mixed: refused.
    with pytest.raises(ManifestError, match="detector differ.*--overwrite"):
        annotate_manifest(path, captioner(detector="dlib-cnn"), progress=False)
    # Prompt settings alone: applied to every annotated face from its stored attributes.
    backend = PixelBackend()
    other_prompts = Captioner([backend, get_extractor("labels", columns=["gender"])],
                              prompt_builder=PromptBuilder(tokenizer="words", prefix="a portrait of"))
    report = annotate_manifest(path, other_prompts, progress=False)
    assert backend.seen == [] and report.processed == 0 and report.ok == 7
    rows = pq.read_table(path).to_pylist()[:7]
    assert all(r["caption"] == r["prompt"] for r in rows)
    # Colour photos take the new prefix (grayscale ones have their own).
    assert all(r["prompt"].startswith("a portrait of ") for r in rows[0::2])
    # --overwrite accepts the new backend settings.
    assert annotate_manifest(path, captioner(detector="dlib-cnn"), overwrite=True,
                             progress=False).processed == 7


def test_one_crop_the_classifiers_cannot_take_fails_only_its_row(tmp_path):
    path = make_dataset(tmp_path)
    save_image(tmp_path / "images/id1/face001.png", np.zeros((48, 32, 3), np.uint8))
    offline = Captioner([get_extractor("offline", measures=["age", "gender", "grayscale"])],
                        prompt_builder=PromptBuilder(tokenizer="words"))
    report = annotate_manifest(path, offline, batch_size=4, progress=False)
    assert report.ok == 6 and report.failed == 1
    row = pq.read_table(path).to_pylist()[1]
    assert row["caption_status"] == "failed"
    assert "face001.png" in row["caption_error"] and "square" in row["caption_error"]


def test_a_tokenizer_folder_that_does_not_load_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "not_a_tokenizer"
    folder.mkdir()
    assert main(["prompt", "gender=male", "--tokenizer", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --tokenizer {folder}") and "\n" not in err


@pytest.mark.parametrize("value", ["-1", "0", "abc"])
def test_a_bad_limit_is_refused_by_the_command_line(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["annotate", "-i", "m.parquet", "--limit", value])
    assert e.value.code == 2 and "--limit: must be a whole number >= 1" in capsys.readouterr().err
