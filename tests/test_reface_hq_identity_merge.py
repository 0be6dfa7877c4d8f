"""Benchmark-grade Reface-HQ on real photos: one person in one split, planted impostors,
the same face in a crop and in the full shot, honest rows (``face_too_small``, ``.jfif``).

Photos come from $REFACE_TEST_DATA and are copied or re-encoded into tmp_path only.
Thresholds come from the shipped dlib preset, fitted on the *fit* half of the
identities_512 identities; the impostor test scores the *held-out* half only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reface_core.imageio import load_image, save_image
from reface_hq import BuildConfig, FolderSource, build, schema, verify
from reface_hq.calibrate import read_preset, shipped_preset
from reface_hq.dataset import leakage

pytestmark = pytest.mark.realdata

FAST = {"output_size": 256, "transform_size": 512, "align_padding": False, "progress": False,
        "shard_size": 16, "musiq": "off"}
EX = "unaligned_named/examples"
TI = "unaligned_named/tests/test_images"
# One man, filed under two names in two sources. obama-1080p.jpg is the shot of
# obama.jpg at another framing and resolution: a cross-source near duplicate.
OBAMA_A = {"obama": [f"{EX}/obama.jpg", f"{EX}/knn_examples/test/obama1.jpg",
                     f"{TI}/obama3.jpg"]}
OBAMA_B = {"barack_obama": [f"{EX}/obama2.jpg", f"{EX}/obama-1080p.jpg",
                            f"{TI}/obama_partial_face.jpg"]}
OTHERS = ("00001", "00027", "00049", "00082", "00116")


def _copy(data: Path, dest: Path, folders: dict[str, list[str]]) -> None:
    for name, files in folders.items():
        for f in files:
            (dest / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / f, dest / name / Path(f).name)


@pytest.fixture(scope="module")
def two_names(data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("two_names")
    a, b = base / "people", base / "more_people"
    _copy(data_root, a, OBAMA_A)
    _copy(data_root, b, OBAMA_B)
    for ident in OTHERS:
        files = sorted((data_root / "identities_512" / ident / "conditioning").glob("*.png"))[:3]
        _copy(data_root, a, {ident: [str(f.relative_to(data_root)) for f in files]})
    src_a = FolderSource(str(a), identity="folder")
    src_b = FolderSource(str(b), identity="folder")
    common = dict(work_dir=str(base / "work"), min_photos=2, test_fraction=0.34, **FAST)
    # Incremental: a dataset of source A first, then source B added to the same folder.
    out = base / "ds"
    build(BuildConfig(sources=[src_a], out=str(out), **common))
    before = _obama_rows(out)
    build(BuildConfig(sources=[src_a, src_b], out=str(out), **common))
    return {"base": base, "sources": [src_a, src_b], "common": common, "out": out,
            "before": before}


def _obama_rows(out: Path) -> pd.DataFrame:
    man = pd.read_parquet(out / "manifest.parquet")
    return man[man.origin.str.contains("obama")]


def _resplit(rows: list[dict], seed: int) -> list[dict]:
    # The seed only moves the split; re-running the split stage on the built rows is what
    # a rebuild with that seed does after the (cached) map stages.
    from reface_hq.identity import SplitByIdentity
    return SplitByIdentity(test_fraction=0.34, seed=seed)(rows)


def test_another_seed_reuses_every_cached_stage_and_keeps_one_person_in_one_split(two_names):
    """The seed moves the split only: a rebuild with another seed computes no map stage
    again (no new stage folder in the work folder), and the person still lands whole."""
    work = Path(two_names["common"]["work_dir"])
    stage_dirs = sorted(p.name for p in work.iterdir() if p.is_dir())
    out = two_names["base"] / "ds_seed7"
    stats = build(BuildConfig(sources=two_names["sources"], out=str(out), seed=7,
                              **two_names["common"]))
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == stage_dirs
    assert stats["faces_kept"] == len(pd.read_parquet(two_names["out"] / "manifest.parquet"))
    assert _obama_rows(out).split.nunique() == 1 and _obama_rows(out).identity.nunique() == 1


def test_one_person_under_two_names_in_two_sources_lands_in_one_split(two_names):
    out = two_names["out"]
    assert verify(out) == []
    obama = _obama_rows(out)
    assert len(obama) >= 4, obama.origin.tolist()
    assert obama.identity.nunique() == 1, obama[["origin", "identity"]]
    assert set(obama.source) == {"people", "more_people"}       # both names joined
    rows = pd.read_parquet(out / "manifest.parquet").to_dict("records")
    splits_seen = set()
    for seed in range(10):
        split = {r["face_id"]: r["split"] for r in _resplit(rows, seed)}
        sides = {split[f] for f in obama.face_id}
        assert len(sides) == 1, (seed, sides)
        splits_seen |= sides
        assert leakage(_resplit(rows, seed), centre_distance=0.0456) == []
    assert splits_seen == {"train", "test"}   # the seeds do move the person, as a whole


def test_incremental_build_adding_a_source_keeps_the_person_in_one_identity(two_names):
    before, after = two_names["before"], _obama_rows(two_names["out"])
    assert set(before.source) == {"people"} and len(before) >= 2
    assert set(after.source) == {"people", "more_people"}
    assert after.identity.nunique() == 1 and after.split.nunique() == 1


def test_verify_names_faces_of_one_person_on_both_sides(two_names, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    # Without the merge (the old behaviour) the two names are two identities...
    out = two_names["base"] / "nomerge"
    build(BuildConfig(sources=two_names["sources"], out=str(out), merge_distance=0.0,
                      **two_names["common"]))
    obama = _obama_rows(out)
    assert obama.identity.nunique() == 2
    # ...and some seed puts them on both sides: verify must fail, naming the faces.
    table = pq.read_table(out / "manifest.parquet")
    rows = table.to_pylist()
    for seed in range(20):
        resplit = _resplit(rows, seed)
        if len({r["split"] for r in resplit if "obama" in r["origin"]}) == 2:
            break
    else:
        pytest.fail("no seed split the two unmerged names")
    pq.write_table(pa.Table.from_pylist(resplit, schema=table.schema), out / "manifest.parquet")
    problems = verify(out)
    leak = [p for p in problems if "look like one person" in p]
    assert leak and problems == leak, problems
    assert any(f in leak[0] for f in obama.face_id), leak


def test_same_shot_in_two_sources_is_a_near_duplicate_in_dropped_parquet(two_names):
    # obama.jpg (1137x910, source A) and obama-1080p.jpg (1920x1080, source B): one shot,
    # other framing and resolution, filed under two names.
    out = two_names["out"]
    dropped = pd.read_parquet(out / "dropped.parquet")
    man = pd.read_parquet(out / "manifest.parquet")
    everything = pd.concat([man, dropped]).set_index("face_id")
    copy = dropped[dropped.origin.str.contains(r"/obama\.jpg$|/obama-1080p\.jpg$")]
    assert list(copy.status) == ["near_duplicate"], dropped[["origin", "status"]]
    kept = everything.loc[copy.duplicate_of.iloc[0]]
    assert kept.status == "ok" and kept.origin != copy.origin.iloc[0]
    assert kept.origin.endswith(("/obama.jpg", "/obama-1080p.jpg"))
    assert {kept.source, copy.source.iloc[0]} == {"people", "more_people"}


def test_face_on_another_background_is_a_near_duplicate(data_root, tmp_path):
    """A crop of a real photo pasted on another photo's background vs the photo itself:
    the same face (same scale), other framing and surroundings."""
    from reface_hq.dedupe import Dedupe, phash_bits, popcount64
    from reface_hq.stages import Decode, DetectAlign, Embed, Fingerprint
    photo = data_root / "identities_512/00082/gt.png"
    other = data_root / "identities_512/00082/conditioning"
    img = load_image(photo)
    import cv2
    # A blurred other photo as the new background, the face cut tight and pasted on it.
    bg = cv2.GaussianBlur(cv2.resize(load_image(data_root / "identities_512/00001/gt.png"),
                                     (700, 700)), (0, 0), 6)
    bg[150:550, 150:550] = img[56:456, 56:456]
    save_image(tmp_path / "in" / "full.png", img)
    save_image(tmp_path / "in" / "pasted.png", bg)
    shutil.copy(min(other.glob("*.png")), tmp_path / "in" / "other_photo.png")
    rows = FolderSource(str(tmp_path / "in"), name="s").rows()
    detect = DetectAlign(output_size=256, transform_size=512, enable_padding=False)
    detect.folder = str(tmp_path / "crops")
    for stage in (Decode(), detect, Fingerprint(), Embed()):
        rows = stage(rows)
    th = read_preset(shipped_preset("dlib"))["thresholds"]
    out = {Path(r["origin"]).name: r for r in Dedupe(
        max_face_phash_distance=th["max_face_phash_distance"],
        face_min_cosine=th["dup_face_min_cosine"])(rows)}
    full, pasted = out["full.png"], out["pasted.png"]
    assert {full["status"], pasted["status"]} == {"ok", "near_duplicate"}, (full, pasted)
    kept, dropped = (full, pasted) if full["status"] == "ok" else (pasted, full)
    assert dropped["duplicate_of"] == kept["face_id"]
    assert out["other_photo.png"]["status"] == "ok"   # another photo of the same person
    whole = phash_bits([pasted["phash"], full["phash"]])
    assert int(popcount64(whole[0] ^ whole[1])) > 4   # the old whole-crop test misses it


def _held_out_faces(data_root: Path, n_ids: int, per: int):
    """Embeddings of aligned identities_512 photos of held-out identities (not fitted on)."""
    from reface_hq.stages import Embed
    preset = read_preset(shipped_preset("dlib"))
    ids = [lab.split(":", 1)[1] for lab in preset["held_out_identities"]][:n_ids]
    rows = []
    for ident in ids:
        for p in sorted((data_root / "identities_512" / ident / "conditioning").glob("*.png"))[:per]:
            rows.append(schema.new_row(row_id=f"{ident}-{p.stem}", face_id=f"{ident}-{p.stem}-0",
                                       source="s", origin=str(p), identity_hint=ident,
                                       aligned_path=str(p)))
    return ids, Embed()(rows), preset["thresholds"]


def test_planted_impostor_is_removed_or_moved(data_root):
    from reface_hq.identity import IdentityGroup
    ids, rows, th = _held_out_faces(data_root, n_ids=5, per=5)
    group = {"max_distance": th["max_identity_distance"], "merge_distance": th["merge_distance"],
             "assign_distance": th["assign_distance"],
             "cluster_threshold": th["cluster_threshold"], "min_photos": 2}
    by_id = {i: [r for r in rows if r["identity_hint"] == i] for i in ids}
    absent = present = trials = 0
    for x in ids:                     # the impostor's true identity
        for y in ids:                 # the folder it is planted in
            if x == y:
                continue
            trials += 1
            planted = dict(by_id[x][0], identity_hint=y, face_id="planted-0")
            # True identity absent from the build: the impostor must be dropped.
            out = IdentityGroup(**group)(by_id[y] + [planted])
            absent += out[-1]["status"] == "identity_outlier"
            # True identity present: moved to it (or dropped), never kept under y.
            out = IdentityGroup(**group)(by_id[y] + by_id[x][1:] + [planted])
            present += out[-1]["status"] != "ok" or out[-1]["identity"] == f"s-{x}"
            assert all(r["status"] == "ok" for r in out[:-1]), [r["error"] for r in out]
    print(f"\n[reface_hq] planted impostors: removed {absent}/{trials} (true identity absent), "
          f"removed or moved {present}/{trials} (present)")
    assert present == trials
    assert absent >= 0.9 * trials


def test_small_face_is_face_too_small_not_no_face(data_root, tmp_path):
    import cv2

    from reface_hq.stages import Decode, DetectAlign, Quality
    img = load_image(data_root / f"{EX}/obama.jpg")            # face ~240 px
    small = cv2.resize(img, (img.shape[1] // 6, img.shape[0] // 6), interpolation=cv2.INTER_AREA)
    save_image(tmp_path / "in" / "small_face.png", small)      # face ~44 px in 189x151
    rows = FolderSource(str(tmp_path / "in"), name="s").rows()
    detect = DetectAlign(output_size=256, transform_size=512, enable_padding=False)
    detect.folder = str(tmp_path / "crops")
    rows = Quality(musiq="off")(detect(Decode()(rows)))
    assert [r["status"] for r in rows] == ["face_too_small"], [r["error"] for r in rows]
    assert 30 < rows[0]["face_size"] < 80
    # The first pass alone (the old behaviour) saw no face at all.
    detect_once = DetectAlign(output_size=256, transform_size=512, enable_padding=False,
                              retry_upsample=None)
    detect_once.folder = str(tmp_path / "crops")
    assert detect_once(Decode()(FolderSource(str(tmp_path / "in"), name="s").rows()))[0][
        "status"] == "no_face"


def test_jfif_folder_and_every_file_gets_a_row(data_root, tmp_path):
    from PIL import Image

    from reface_hq.stages import Decode
    folder = tmp_path / "jfif"
    folder.mkdir()
    for p in sorted((data_root / "identities_512/00049/conditioning").glob("*.png"))[:3]:
        Image.open(p).convert("RGB").save(folder / f"{p.stem}.jfif", format="JPEG")
    rows = FolderSource(str(folder), name="s").rows()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert all(r["status"] == "ok" and r["width"] == 512 for r in Decode()(rows))
    # A mixed folder: a GIF is read, a text file gets a status row, nothing vanishes.
    Image.open(data_root / "identities_512/00049/gt.png").convert("P").save(folder / "gt.gif")
    (folder / "notes.txt").write_text("not a photo")
    rows = {Path(r["origin"]).name: r for r in Decode()(FolderSource(str(folder), name="s").rows())}
    assert len(rows) == 5
    assert rows["gt.gif"]["status"] == "ok" and rows["gt.gif"]["width"] == 512
    assert rows["notes.txt"]["status"] == "not_an_image"
    assert rows["notes.txt"]["dropped_at"] == "source"


def test_faces_and_synth_read_a_jfif_folder(data_root, tmp_path, capsys):
    """The other folder scans (``faces``, ``degradations synth``) take every suffix Pillow
    reads too: a folder of ``.jfif`` photos is not "no images found"."""
    from PIL import Image

    from degradations.cli import main as synth_main
    from faces.cli import main as faces_main
    folder = tmp_path / "jfif"
    folder.mkdir()
    for p in sorted((data_root / "identities_512/00049/conditioning").glob("*.png"))[:2]:
        Image.open(p).convert("RGB").save(folder / f"{p.stem}.jfif", format="JPEG")
    assert faces_main(["detect", str(folder), "-o", str(tmp_path / "det"), "-q"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "det/detect.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(len(r["faces"]) == 1 for r in recs)
    assert synth_main(["synth", "-i", str(folder), "-o", str(tmp_path / "lq"), "-q"]) == 0
    assert len(pd.read_parquet(tmp_path / "lq/params.parquet")) == 2


def test_embed_aligned_checks_landmarks_against_the_template(data_root, tmp_path, capsys):
    from faces.cli import main
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data_root / "identities_512/00049/gt.png", src / "aligned.png")
    img = load_image(data_root / f"{EX}/obama.jpg")          # a centre square, not aligned
    h, w = img.shape[:2]
    s = min(h, w)
    save_image(src / "square.png", img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    assert main(["embed", str(src), "--aligned", "-o", str(tmp_path / "warn"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "square.png: may not be an FFHQ-aligned crop" in err and "aligned.png" not in err
    rc = main(["embed", str(src), "--aligned", "--aligned-check", "refuse",
               "-o", str(tmp_path / "refuse"), "-q"])
    recs = {json.loads(line)["name"]: json.loads(line)
            for line in (tmp_path / "refuse" / "embed.jsonl").read_text().splitlines()}
    assert recs["aligned.png"]["status"] == "ok" and recs["aligned.png"]["alignment_error"] < 0.25
    assert recs["square.png"]["status"] == "failed"
    assert "not an FFHQ-aligned crop" in recs["square.png"]["error"]
    assert rc in (0, 1)


def test_age_confidence_comes_from_the_classifier_distribution(data_root):
    import faces
    from faces.attributes import age_confidence
    flat = np.full((1, 81), 1 / 81)
    peaked = np.zeros((1, 81))
    peaked[0, 30] = 1.0
    assert age_confidence(peaked)[0] == pytest.approx(1.0)
    assert age_confidence(flat)[0] < 0.2
    predictor = faces.get_attribute_predictor("age-gender-onnx")
    files = sorted((data_root / "celeba_hq_1024").glob("*/*/*.jpg"))[:8]
    preds = predictor.predict([load_image(f) for f in files])
    conf = np.array([p.age_confidence for p in preds])
    assert np.all((conf > 0) & (conf <= 1)) and conf.std() > 0.01, conf


def test_calibrate_writes_a_preset_the_build_reads(data_root, tmp_path, capsys):
    from reface_hq.cli import main
    # Mechanics only (the shipped preset's numbers come from the documented full run):
    # 6 people x 4 aligned photos, fitted on 3, reported on the other 3.
    people = ("00027", "00049", "00082", "00116", "00168", "00291")
    src = tmp_path / "labelled"
    for ident in people:
        files = sorted((data_root / "identities_512" / ident / "conditioning").glob("*.png"))[:4]
        _copy(data_root, src, {ident: [str(f.relative_to(data_root)) for f in files]})
    preset_path = tmp_path / "preset.json"
    assert main(["calibrate", "-i", str(src), "--aligned", "--out", str(preset_path)]) == 0
    assert "held-out: 3 identities" in capsys.readouterr().out
    preset = read_preset(preset_path)
    assert preset["embedder"] == "dlib" and preset["held_out"]["faces"] == 12
    assert not set(preset["fit_identities"]) & set(preset["held_out_identities"])
    th = preset["thresholds"]
    assert 0 < th["merge_distance"] <= th["max_identity_distance"] < 0.3
    config = BuildConfig(sources=[FolderSource(str(src))], out=str(tmp_path / "o"),
                         thresholds=str(preset_path), cluster_threshold=0.07)
    assert config.max_identity_distance == th["max_identity_distance"]
    assert config.merge_distance == th["merge_distance"]
    assert config.cluster_threshold == 0.07          # an explicit value wins
    # Bad input: one line naming it, exit 2.
    (tmp_path / "bad.json").write_text('{"thresholds": {"max_identity_distanse": 0.1}}')
    for argv in (["calibrate", "-i", str(src / "00027"), "--out", str(tmp_path / "x.json"), "-q"],
                 ["build", "-i", str(src), "--out", str(tmp_path / "o2"),
                  "--thresholds", str(tmp_path / "bad.json")],
                 ["build", "-i", str(src), "--out", str(tmp_path / "o2"),
                  "--thresholds", str(tmp_path / "missing.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "o2").exists()
