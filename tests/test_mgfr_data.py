"""MGFR training data: the Reface-HQ training dataset, the identity cache, LQ synthesis,
negative-quality samples and dropouts."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from mgfr.data import BatchBuilder, batch_indices, collate, plan_sample
from reface_hq.dataset import DatasetError, FaceTrainingDataset, identity_cache_path


class ToyEmbedder:
    """A second embedder (a fixed random projection of the pixels): its vectors live in
    another space than dlib's, which is all the cache test needs."""

    name = "toy-projection-v1"
    dim = 16

    def __init__(self):
        self.calls = 0

    def embed(self, faces):
        self.calls += len(faces)
        rng = np.random.default_rng(0)
        w = rng.standard_normal((8 * 8 * 3, self.dim)).astype(np.float32)
        import cv2
        x = np.stack([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in faces])
        v = x.reshape(len(faces), -1).astype(np.float32) / 255 @ w
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def train_set(identities_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("id_cache")
    return FaceTrainingDataset(identities_dataset, "train", n_references=2, size=64,
                               embedder="dlib", cache_dir=cache)


@pytest.mark.realdata
def test_item_keys_and_references(train_set):
    ds = train_set
    assert len(ds) >= 20
    item = ds[3]
    assert item["target"].shape == (3, 64, 64) and item["target"].dtype == torch.float32
    assert item["references"].shape == (2, 3, 64, 64)
    assert item["reference_embeddings"].shape == (2, 128)
    assert ds.embedder_name == "dlib-resnet-v1" and ds.embedding_dim == 128
    for key in ("prompt", "negative_attribute_prompt", "negative_quality_prompt"):
        assert isinstance(item[key], str)
    assert item["prompt"] and item["negative_quality_prompt"]
    by_id = {it["face_id"]: it for it in ds.items}
    for ref in item["reference_ids"]:
        assert ref != item["face_id"] and by_id[ref]["identity"] == item["identity"]
    # The cached embedding of a reference is that reference's own vector (unit norm).
    norms = item["reference_embeddings"].norm(dim=1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-4)


@pytest.mark.realdata
def test_set_epoch_redraws_references_deterministically(train_set):
    ds = train_set
    ds.set_epoch(0)
    e0 = [ds.references_of(i) for i in range(len(ds))]
    assert e0 == [ds.references_of(i) for i in range(len(ds))]
    ds.set_epoch(1)
    e1 = [ds.references_of(i) for i in range(len(ds))]
    ds.set_epoch(0)
    assert sum(a != b for a, b in zip(e0, e1, strict=False)) > len(ds) // 4
    # Without replacement while the identity has enough other photos.
    for i, refs in enumerate(e1):
        others = len(ds.by_identity[ds.items[i]["identity"]]) - 1
        if others >= 2:
            assert len(set(refs)) == 2


@pytest.mark.realdata
def test_flip_is_seeded_and_mirrors(identities_dataset, train_set):
    flipped = FaceTrainingDataset(identities_dataset, "train", n_references=1, size=64, flip=True,
                                  seed=5)
    flags = [flipped[i]["flipped"] for i in range(12)]
    assert 0 < sum(flags) < 12
    k = flags.index(True)
    plain = train_set[k]["target"]
    assert torch.equal(flipped[k]["target"], plain.flip(-1))
    assert flags == [flipped[i]["flipped"] for i in range(12)]


@pytest.mark.realdata
def test_identity_cache_rebuilt_when_the_embedder_changes(identities_dataset, tmp_path):
    FaceTrainingDataset(identities_dataset, "train", embedder="dlib", cache_dir=tmp_path)
    path = identity_cache_path(tmp_path)
    assert path.is_file()
    again = FaceTrainingDataset(identities_dataset, "test", embedder="dlib", cache_dir=tmp_path)
    assert not again.cache_rebuilt
    toy = ToyEmbedder()
    ds = FaceTrainingDataset(identities_dataset, "train", size=64, embedder=toy,
                             cache_dir=tmp_path)
    assert ds.cache_rebuilt and ds.embedder_name == "toy-projection-v1"
    n_faces = len(pd.read_parquet(identities_dataset / "manifest.parquet"))
    assert toy.calls == n_faces
    assert ds[0]["reference_embeddings"].shape == (1, 16)
    ds2 = FaceTrainingDataset(identities_dataset, "train", embedder=toy, cache_dir=tmp_path)
    assert not ds2.cache_rebuilt and toy.calls == n_faces
    back = FaceTrainingDataset(identities_dataset, "train", embedder="dlib", cache_dir=tmp_path)
    assert back.cache_rebuilt and back.embedding_dim == 128
    # A torn cache file is rebuilt, not trusted.
    path.write_bytes(path.read_bytes()[:100])
    torn = FaceTrainingDataset(identities_dataset, "train", embedder="dlib", cache_dir=tmp_path)
    assert torn.cache_rebuilt


@pytest.mark.realdata
def test_no_identity_with_two_photos_is_a_one_line_error(identities_dataset, tmp_path):
    df = pd.read_parquet(identities_dataset / "manifest.parquet")
    single = df.groupby("identity").head(1)
    single.to_parquet(tmp_path / "manifest.parquet")
    shutil.copytree(identities_dataset / "images", tmp_path / "images")
    with pytest.raises(DatasetError) as err:
        FaceTrainingDataset(tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg and "no identity has two photos" in msg and str(tmp_path) in msg


def test_rates_are_honoured_over_a_seeded_epoch():
    mix = {"mgfr-mild": 1.0, "mgfr-medium": 3.0}
    ids = [f"face{i:05d}" for i in range(4000)]
    rates = {"negative_rate": 0.15, "prompt_dropout": 0.1, "reference_dropout": 0.3}
    plans = [plan_sample(7, 2, f, mix=mix, **rates) for f in ids]
    n = len(ids)

    def near(count, p, n):  # within 5 standard deviations of the binomial mean
        return abs(count - p * n) <= 5 * np.sqrt(n * p * (1 - p)) + 1

    negative = sum(p.negative for p in plans)
    assert near(negative, 0.15, n)
    positives = [p for p in plans if not p.negative]
    assert near(sum(p.drop_prompt for p in positives), 0.1, len(positives))
    assert near(sum(p.drop_references for p in plans), 0.3, n)
    assert near(sum(p.preset == "mgfr-medium" for p in plans), 0.75, n)
    # Seeded: the same (seed, epoch) gives the same plans, another epoch other ones.
    assert plans == [plan_sample(7, 2, f, mix=mix, **rates) for f in ids]
    other = [plan_sample(7, 3, f, mix=mix, **rates) for f in ids]
    assert sum(a != b for a, b in zip(plans, other, strict=False)) > n // 4
    # Zero rates never fire; changing one rate leaves the other decisions alone.
    zero = [plan_sample(7, 2, f, mix=mix, negative_rate=0, prompt_dropout=0,
                        reference_dropout=0) for f in ids]
    assert not any(p.negative or p.drop_prompt or p.drop_references for p in zero)
    moved = [plan_sample(7, 2, f, mix=mix, negative_rate=0.15, prompt_dropout=0.1,
                         reference_dropout=0.9) for f in ids]
    assert [p.negative for p in moved] == [p.negative for p in plans]


@pytest.mark.realdata
def test_batches_over_an_epoch_honour_rates_and_recreate_lq(train_set):
    from degradations import Degrader
    ds = train_set
    builder = BatchBuilder({"mgfr-mild": 1, "mgfr-medium": 1}, negative_rate=0.25,
                           prompt_dropout=0.2, reference_dropout=0.5, seed=3)
    bs = 16
    steps = len(ds) // bs
    seen, plans, first = [], [], None
    for step in range(steps):
        epoch, idx = batch_indices(step, n=len(ds), batch_size=bs, seed=3)
        assert epoch == 0
        ds.set_epoch(epoch)
        out = builder(collate([ds[i] for i in idx]), epoch)
        first = first or (idx, out)
        seen += idx
        plans += out["plans"]
        for p, prompt, i in zip(out["plans"], out["prompts"], idx, strict=False):
            item = ds.items[i]
            if p.negative:
                assert prompt == item["negative_quality_prompt"]
            elif p.drop_prompt:
                assert prompt == ""
            else:
                assert prompt == item["prompt"]
        assert out["reference_mask"].tolist() == [not p.drop_references for p in out["plans"]]
        assert out["lq"].shape == out["target"].shape == (bs, 3, 64, 64)
    assert len(set(seen)) == len(seen) == steps * bs  # an epoch visits each face once
    n = len(plans)
    neg = sum(p.negative for p in plans)
    assert abs(neg - 0.25 * n) <= 5 * np.sqrt(n * 0.25 * 0.75)
    assert abs(sum(p.drop_references for p in plans) - 0.5 * n) <= 5 * np.sqrt(n * 0.25)
    # Negative targets are degraded, positive ones are the HQ face itself.
    idx, out = first
    hq = torch.stack([ds[i]["target"] for i in idx])
    for k, p in enumerate(out["plans"]):
        same = torch.equal(out["target"][k], hq[k])
        assert same != p.negative
    # Any LQ input is re-created by the per-image API from (seed, face_id/epoch).
    k = 0
    face = (hq[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lq, _ = Degrader(out["plans"][k].preset)(face, seed=3, image_id=f"{out['face_ids'][k]}/e0")
    got = (out["lq"][k].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got - lq.astype(np.float64)).max() <= 1


def test_batch_indices_cover_epochs_and_shard_processes():
    a = [batch_indices(s, n=50, batch_size=4, seed=1) for s in range(12)]
    assert [e for e, _ in a] == [0] * 12  # 12 full batches of 4 in an epoch of 50
    assert batch_indices(12, n=50, batch_size=4, seed=1)[0] == 1
    flat = [i for _, idx in a for i in idx]
    assert len(set(flat)) == 48
    # Two processes split the global batch of one process with twice the batch.
    whole = batch_indices(5, n=50, batch_size=8, seed=1)[1]
    p0 = batch_indices(5, n=50, batch_size=4, seed=1, num_processes=2, process_index=0)[1]
    p1 = batch_indices(5, n=50, batch_size=4, seed=1, num_processes=2, process_index=1)[1]
    assert p0 + p1 == whole
    with pytest.raises(ValueError, match="fewer than one global batch"):
        batch_indices(0, n=3, batch_size=4, seed=0)


def test_any_preset_trains_fitted_files_and_the_real_world_preset_included(tmp_path):
    import yaml

    from degradations import Degrader, get_preset
    from mgfr.data import normalize_mix
    spec = get_preset("real-world").to_dict()
    spec["name"] = "my-fit"
    path = tmp_path / "my-fit.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert normalize_mix({"real-world": 1, str(path): 3}) == {"real-world": 0.25, str(path): 0.75}
    builder = BatchBuilder({"real-world": 1, str(path): 1}, negative_rate=0.0, seed=5)
    faces = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    hq = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    lq = builder.degrade_by_plan(hq, ["a/e0", "b/e0"], ["real-world", str(path)])
    for k, (name, image_id) in enumerate([("real-world", "a/e0"), (str(path), "b/e0")]):
        want, _ = Degrader(name)(faces[k], seed=5, image_id=image_id)
        got = (lq[k].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(got - want).max() <= 1
    spec["stages"][0]["sigma_x"] = [5.0, 1.0]  # inverted: refused with the file's name
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="my-fit.yaml.*low <= high"):
        normalize_mix({str(path): 1})
