"""Datasets: layouts, content hashes, recorded LQ synthesis, bad folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.datasets import DatasetError, load_dataset
from reface_core.imageio import load_image, save_image
from tests.conftest import make_rgb

pytestmark = pytest.mark.realdata


def test_reface_test_lq_is_replayable_and_the_hash_follows_settings(identities_dataset, tmp_path):
    from degradations.pipeline import Degrader

    ds = load_dataset("reface-test", identities_dataset, results_dir=tmp_path, limit=2)
    assert ds.degradation_preset == "mgfr-medium" and ds.degradation_seed == 0
    item = ds.items[0]
    record = json.loads(next(tmp_path.glob(f"datasets/*/records/{item.image_id}.json")).read_text())
    lq = load_image(tmp_path / item.lq_path)
    assert np.array_equal(Degrader.replay(load_image(item.gt_path), record), lq)
    # references: another face of the same identity, never the face itself
    assert len(item.ref_paths) == 1 and item.ref_paths[0] != item.gt_path
    assert item.identity in item.ref_paths[0]
    again = load_dataset("reface-test", identities_dataset, results_dir=tmp_path, limit=2)
    assert again.dataset_hash == ds.dataset_hash
    other = load_dataset("reface-test", identities_dataset, results_dir=tmp_path, limit=1,
                         seed=1, n_references=2)
    assert other.dataset_hash != ds.dataset_hash and len(other.items[0].ref_paths) == 2


def test_lq_only_real_faces_with_references(data_root, tmp_path):
    src = data_root / "real_lq" / "gfpgan" / "inputs" / "cropped_faces"
    root = tmp_path / "webphoto"
    (root / "lq" / "adele").mkdir(parents=True)
    shutil.copy(src / "Adele_crop.png", root / "lq" / "adele" / "a.png")
    shutil.copy(src / "Julia_Roberts_crop.png", root / "lq" / "julia.png")
    (root / "ref" / "adele").mkdir(parents=True)
    shutil.copy(src / "Adele_crop.png", root / "ref" / "adele" / "r.png")
    ds = load_dataset(str(root), results_dir=tmp_path / "r")
    assert ds.name == "lq-only" and not ds.has_gt
    by_id = {i.image_id: i for i in ds.items}
    assert by_id["adele/a"].identity == "adele" and len(by_id["adele/a"].ref_paths) == 1
    assert by_id["julia"].ref_paths == []
    # the hash covers the bytes: a changed LQ is another dataset
    before = ds.dataset_hash
    save_image(root / "lq" / "julia.png", make_rgb(64, 64))
    assert load_dataset(str(root), results_dir=tmp_path / "r").dataset_hash != before


def test_bad_folders_name_the_problem(tmp_path):
    (tmp_path / "p" / "lq").mkdir(parents=True)
    (tmp_path / "p" / "gt").mkdir()
    save_image(tmp_path / "p" / "lq" / "a.png", make_rgb())
    with pytest.raises(DatasetError, match="no GT for 1 LQ image"):
        load_dataset("paired", tmp_path / "p", results_dir=tmp_path / "r")
    save_image(tmp_path / "p" / "gt" / "a.png", make_rgb())
    save_image(tmp_path / "p" / "lq" / "a.jpg", make_rgb())
    with pytest.raises(DatasetError, match="same image id 'a'"):
        load_dataset("paired", tmp_path / "p", results_dir=tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset("lq-only", tmp_path / "empty", results_dir=tmp_path / "r")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("photos", tmp_path / "nope", results_dir=tmp_path / "r")
    with pytest.raises(DatasetError, match="unknown option"):
        load_dataset("paired", tmp_path / "p", results_dir=tmp_path / "r", preset="gfpgan")
