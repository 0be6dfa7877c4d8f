"""Bad input to ``degradations`` gives one clear error (no traceback, no silent wrong work)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_rgb

from degradations import BatchDegrader
from degradations.cli import main
from degradations.synth import list_inputs, synth
from reface_core.imageio import save_image


@pytest.fixture
def two_images(tmp_path):
    src = tmp_path / "hq"
    for i in range(2):
        save_image(src / f"img_{i}.png", make_rgb(32, 32, seed=i))
    return src


def test_output_that_is_a_file_is_a_clear_error(tmp_path, two_images, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main(["synth", "--input", str(two_images), "-o", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and "not a folder" in err
    assert "Traceback" not in err


def test_replay_output_below_a_file_is_a_clear_error(tmp_path, two_images, capsys):
    out = tmp_path / "out"
    assert main(["synth", "--input", str(two_images), "-o", str(out), "--quiet"]) == 0
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    rc = main(["replay", str(out / "records" / "img_0.json"), "-o", str(blocker / "lq.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and str(blocker) in err


def test_negative_limit_is_refused_not_sliced(tmp_path, two_images):
    # jobs[:-1] would silently process all inputs but the last.
    with pytest.raises(ValueError, match="limit must be >= 0"):
        synth(two_images, tmp_path / "out", limit=-1, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("column,value", [("image_path", None), ("face_id", None), ("face_id", "")])
def test_manifest_rows_with_empty_path_or_id_are_named(tmp_path, two_images, column, value):
    rows = {"image_path": ["hq/img_0.png", "hq/img_1.png"], "face_id": ["a", "b"]}
    rows[column][1] = value
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=rf"m\.parquet: row 1 .*has no {column}"):
        list_inputs(tmp_path / "m.parquet")


def test_replay_of_a_json_that_is_not_an_object(tmp_path, capsys):
    for i, content in enumerate(([1, 2], {"record": 5}, "text")):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(content))
        assert main(["replay", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: record ") and str(path) in err


def test_batch_degrader_refuses_integer_tensors():
    deg = BatchDegrader("mgfr-mild")
    x = torch.from_numpy(np.stack([make_rgb(32, 32, seed=0)])).permute(0, 3, 1, 2).contiguous()
    with pytest.raises(ValueError, match="float"):
        deg(x, seed=0, image_ids=["a"])
    records = deg.sample(0, ["a"], (32, 32))
    with pytest.raises(ValueError, match="float"):
        deg.apply(x, records)


def test_rerun_with_another_input_under_the_same_ids_is_refused(tmp_path, two_images):
    # Same preset and seed, another folder with the same file names: its images used to be
    # "already done" and the output kept the first folder's LQ images.
    other = tmp_path / "other"
    for i in range(2):
        save_image(other / f"img_{i}.png", make_rgb(32, 32, seed=10 + i))
    out = tmp_path / "out"
    synth(two_images, out, preset="mgfr-mild", progress=False)
    with pytest.raises(ValueError, match=r"already holds 2 image ids made from other inputs"):
        synth(other, out, preset="mgfr-mild", progress=False)
    # The same input again is a plain resume.
    assert synth(two_images, out, preset="mgfr-mild", progress=False)["skipped"] == 2


def test_unreadable_record_is_redone_not_lost_from_the_table(tmp_path, two_images):
    out = tmp_path / "out"
    synth(two_images, out, preset="mgfr-mild", progress=False)
    (out / "records" / "img_1.json").write_text("{broken")
    counts = synth(two_images, out, preset="mgfr-mild", progress=False)
    assert counts["ok"] == 1 and counts["skipped"] == 1
    assert sorted(pd.read_parquet(out / "params.parquet")["image_id"]) == ["img_0", "img_1"]


def test_files_differing_only_in_suffix_get_their_own_ids(tmp_path, two_images):
    # a.png and a.jpg both had the id "a": two inputs, one LQ image and one table row.
    save_image(two_images / "img_0.jpg", make_rgb(32, 32, seed=7))
    ids = sorted(j.image_id for j in list_inputs(two_images))
    assert ids == ["img_0.jpg", "img_0.png", "img_1"]
    out = tmp_path / "out"
    assert synth(two_images, out, preset="mgfr-mild", progress=False)["ok"] == 3
    assert len(pd.read_parquet(out / "params.parquet")) == 3
    assert synth(two_images, out, preset="mgfr-mild", progress=False)["skipped"] == 3


def test_records_of_another_version_are_refused():
    import numpy as np

    from degradations import Degrader
    from degradations.sampling import RECORD_VERSION

    image = np.full((32, 32, 3), 128, np.uint8)
    lq, record = Degrader("mgfr-mild")(image, seed=0, image_id="x")
    assert record["version"] == RECORD_VERSION
    assert (Degrader.replay(image, record) == lq).all()
    with pytest.raises(ValueError, match="has version 1, this release replays version"):
        Degrader.replay(image, {**record, "version": 1})
