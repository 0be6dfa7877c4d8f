"""The offline backend on real photos ($REFACE_TEST_DATA).

Done-when figures: on ``celeba_hq_1024/`` the offline gender agrees with the female/male
folder labels on >= 95% of photos, and every photo gets a caption.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.attribute_values import attributes_from_json
from captioning.cli import main
from captioning.extractors import FaceSample
from captioning.pipeline import build_captioner
from captioning.pose_and_colour import colourfulness, head_pose
from captioning.prompts import PromptBuilder, contains_phrase
from reface_core.imageio import iter_image_files, load_image

pytestmark = pytest.mark.realdata

# CelebA-HQ faces fill a 1024 px frame; detecting at 512 px finds them all, 8x faster.
DETECT = {"max_side": 512}


@pytest.fixture(scope="module")
def celeba(data_root):
    root = data_root / "celeba_hq_1024"
    if not root.is_dir():
        pytest.skip(f"{root} is missing")
    files = list(iter_image_files(root))
    captioner = build_captioner(["offline"], detector_options=DETECT,
                                prompt_builder=PromptBuilder(tokenizer="auto"))
    annotations = captioner.annotate([FaceSample(key=str(f.relative_to(root)), path=f)
                                      for f in files])
    return root, files, annotations


def test_offline_gender_agrees_with_the_folder_labels(celeba):
    _, files, annotations = celeba
    assert len(files) >= 50
    truth = [f.parent.name for f in files]
    assert set(truth) == {"female", "male"}
    predicted = [a.attributes.get("gender").value if "gender" in a.attributes else None
                 for a in annotations]
    agreement = np.mean([p == t for p, t in zip(predicted, truth, strict=False)])
    print(f"\noffline gender agreement on celeba_hq_1024: {agreement:.3f} "
          f"({sum(p == t for p, t in zip(predicted, truth, strict=False))}/{len(files)})")
    assert agreement >= 0.95


def test_every_photo_gets_a_caption_and_prompts(celeba):
    _, files, annotations = celeba
    for f, a in zip(files, annotations, strict=False):
        assert a.status == "ok", (f, a.error)
        assert a.caption and a.caption_source == "template"
        nouns = ("woman", "girl") if f.parent.name == "female" else ("man", "boy")
        if a.attributes["gender"].value == f.parent.name:
            assert any(contains_phrase(a.prompts.positive, n) for n in nouns), a.prompts.positive
        assert a.prompts.negative_quality.startswith("blurry")
        for name in ("age", "age_group", "grayscale", "yaw", "pitch", "roll", "head_pose"):
            assert name in a.attributes, (f, name)
        # CelebA-HQ is colour and mostly frontal; ages are adult.
        assert a.attributes["grayscale"].value is False
        assert 10 < a.attributes["age"].value < 80
    frontal = np.mean([a.attributes["head_pose"].value == "frontal" for a in annotations])
    assert frontal >= 0.8


def test_mirrored_photos_give_mirrored_yaw(celeba):
    import faces
    _, files, annotations = celeba
    det = faces.get_detector("dlib-hog", **DETECT)
    turned = [(f, a) for f, a in zip(files, annotations, strict=False) if abs(a.attributes["yaw"].value) > 8]
    assert turned, "expected some turned heads in celeba_hq_1024"
    for f, a in turned[:4]:
        flipped = np.ascontiguousarray(load_image(f)[:, ::-1])
        d = max(det.detect(flipped), key=lambda d: d.size)
        pose = head_pose(d.landmarks5, (flipped.shape[1], flipped.shape[0]))
        assert pose.yaw == pytest.approx(-a.attributes["yaw"].value, abs=4.0)
        assert np.sign(pose.yaw) == -np.sign(a.attributes["yaw"].value)


def test_grayscale_photos_are_recognised(data_root):
    att = sorted((data_root / "att_faces_lowres").rglob("*.pgm"))[:40]
    if not att:
        pytest.skip("att_faces_lowres is missing")
    assert all(colourfulness(load_image(p)).grayscale for p in att)


def test_annotate_a_manifest_of_real_photos(celeba, tmp_path):
    _, files, _ = celeba
    picked = files[::5]
    rows = [{"face_id": f"celeba-{f.stem}", "image_path": str(f), "identity": f.stem,
             "split": "test", "status": "ok", "gender_label": f.parent.name} for f in picked]
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    rc = main(["annotate", "-i", str(path), "--backend", "offline,labels",
               "--label-columns", "gender_label=gender", "--not-aligned", "--detector-max-side", "512",
               "--images-root", str(picked[0].parents[2]), "--quiet"])
    assert rc == 0
    out = pq.read_table(path).to_pylist()
    for r in out:
        attrs = attributes_from_json(r["attributes"])
        # The label column is human truth and wins over the classifier.
        assert attrs["gender"].source == "labels"
        assert attrs["age"].source == "offline"
        assert r["caption_status"] == "ok" and r["prompt"].startswith("a photo of")


def test_caption_command_on_an_unaligned_photo(data_root, capsys):
    photo = data_root / "unaligned_named/examples/obama.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is missing")
    assert main(["caption", str(photo), "--json", "--detector-max-side", "800"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["caption_status"] == "ok"
    assert data["attributes"]["gender"]["value"] == "male"
    assert contains_phrase(data["prompt"], "man")


def test_aligned_crops_get_pose_and_consistent_gender_per_identity(data_root):
    folders = sorted(p for p in (data_root / "identities_512").glob("*") if p.is_dir())
    if not folders:
        pytest.skip("identities_512 is missing")
    crops = [(d.name, p) for d in folders
             for p in ([d / "gt.png"] + sorted((d / "conditioning").glob("*.png"))[:2])]
    captioner = build_captioner(["offline"])
    annotations = captioner.annotate([FaceSample(key=str(p), path=p, aligned=True)
                                      for _, p in crops])
    by_identity: dict[str, list[str]] = {}
    for (identity, p), a in zip(crops, annotations, strict=False):
        assert a.status == "ok", (p, a.error)
        by_identity.setdefault(identity, []).append(a.attributes["gender"].value)
        if "roll" in a.attributes:
            # Alignment levels the eyes: what roll is left is small.
            assert abs(a.attributes["roll"].value) < 10, p
    assert sum("yaw" in a.attributes for a in annotations) >= 0.95 * len(annotations)
    # One person, one gender: the majority label of each identity covers its photos.
    consistent = sum(max(v.count(g) for g in set(v)) for v in by_identity.values())
    print(f"\ngender consistent within identity on {consistent}/{len(crops)} crops")
    assert consistent >= 0.95 * len(crops)


@pytest.mark.slow
def test_run_demo_reruns_resume_without_redoing_photos(data_root, tmp_path, monkeypatch):
    from captioning.demo import run_demo
    from captioning.extractors.offline import OfflineExtractor

    first = run_demo(data_root, tmp_path)
    assert first.startswith("captioned 56/56 CelebA-HQ photos")
    assert "agrees with the folder labels on 56/56" in first

    def must_not_run(self, samples):
        raise AssertionError("a rerun of the demo redid annotated photos")

    monkeypatch.setattr(OfflineExtractor, "extract", must_not_run)
    assert run_demo(data_root, tmp_path).startswith("captioned 56/56 CelebA-HQ photos")
