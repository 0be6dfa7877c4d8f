"""The VAE-latent cache of training faces (``mgfr.latent_cache``, ``cache_latents``):
cached latents equal encoded ones, the cache is rebuilt when the VAE or the dataset
changes (and only then), a torn file is rebuilt, a sharded build equals a single one, and
a training step reads targets and references from it."""

from __future__ import annotations

import threading

import pytest
import torch

from mgfr.latent_cache import LatentCache, cache_path, load_or_build, vae_digest


class FakeFaces:
    """The parts of ``FaceTrainingDataset`` the cache reads: items, size, _tensor."""

    def __init__(self, n=5, size=16, salt=0):
        self.size = size
        self.items = [{"face_id": f"f{k}", "image_path": f"{k}.png",
                       "image_sha256": f"{k:064x}"} for k in range(n)]
        self.salt = salt
        self.reads = 0

    def __len__(self):
        return len(self.items)

    def _tensor(self, k, flip):
        self.reads += 1
        g = torch.Generator().manual_seed(1000 * self.salt + k)
        x = torch.rand(3, self.size, self.size, generator=g)
        return x.flip(-1) if flip else x


def tiny_vae(seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                         norm_num_groups=4, layers_per_block=1, sample_size=16).eval()


def encoder(vae):
    def encode(x01):
        with torch.no_grad():
            return vae.encode(x01 * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    return encode


def build(ds, vae, tmp_path, **kw):
    return load_or_build(ds, vae, encoder(vae), cache_dir=tmp_path, dtype=torch.float32,
                         flip=kw.pop("flip", True), batch_size=2, **kw)


def test_cached_latents_equal_encoded_ones_in_both_orientations(tmp_path):
    ds, vae = FakeFaces(), tiny_vae()
    c = build(ds, vae, tmp_path)
    assert c.built and c.rows == 10 and c.path == cache_path(tmp_path, vae_digest(vae), 16,
                                                                  torch.float32)
    for k in range(len(ds)):
        for flip in (False, True):
            want = encoder(vae)(ds._tensor(k, flip)[None])
            torch.testing.assert_close(c.get([k], [flip]), want, atol=1e-5, rtol=1e-5)
    # flipping the latent is not the latent of the flipped face: both are needed
    z, zf = c.get([0], [False]), c.get([0], [True])
    assert not torch.allclose(z.flip(-1), zf, atol=1e-4)
    no_flip = build(ds, vae, tmp_path / "noflip", flip=False)
    assert no_flip.rows == 5
    with pytest.raises(ValueError, match="without flips"):
        no_flip.get([0], [True])


def test_rebuilt_when_the_vae_or_the_dataset_changes_and_only_then(tmp_path):
    ds, vae = FakeFaces(), tiny_vae()
    first = build(ds, vae, tmp_path)
    reads = ds.reads
    again = build(ds, vae, tmp_path)
    assert not again.built and ds.reads == reads  # opened, nothing encoded
    torch.testing.assert_close(again.get([3], [True]), first.get([3], [True]), atol=0, rtol=0)

    other_vae = tiny_vae()
    with torch.no_grad():
        next(other_vae.parameters()).add_(1e-3)  # one weight changed
    assert vae_digest(other_vae) != vae_digest(vae)
    c = build(ds, other_vae, tmp_path)
    assert c.built and c.path != first.path
    want = encoder(other_vae)(ds._tensor(2, False)[None])
    torch.testing.assert_close(c.get([2], [False]), want, atol=1e-5, rtol=1e-5)

    changed = FakeFaces()
    changed.items[4]["image_sha256"] = "f" * 64  # one image replaced in the build
    changed.salt = 1
    c = build(changed, vae, tmp_path)
    assert c.built and c.path == first.path
    want = encoder(vae)(changed._tensor(4, True)[None])
    torch.testing.assert_close(c.get([4], [True]), want, atol=1e-5, rtol=1e-5)
    fewer = FakeFaces(n=3)
    c = build(fewer, vae, tmp_path)
    assert c.built and c.rows == 6
    resized = FakeFaces(size=32)
    assert build(resized, vae, tmp_path).path != first.path


def test_a_torn_file_is_rebuilt(tmp_path):
    ds, vae = FakeFaces(), tiny_vae()
    c = build(ds, vae, tmp_path)
    path = c.path
    del c
    path.write_bytes(path.read_bytes()[:200])
    c = build(ds, vae, tmp_path)
    assert c.built and c.rows == 10


def test_a_two_process_build_equals_a_single_one(tmp_path):
    ds, vae = FakeFaces(n=7), tiny_vae()
    single = build(ds, vae, tmp_path / "one")
    barrier = threading.Barrier(2)
    out: dict[int, LatentCache] = {}

    def rank(i):
        out[i] = build(ds, vae, tmp_path / "two", process_index=i, num_processes=2,
                       is_main=i == 0, wait=barrier.wait)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0].path == out[1].path and out[0].rows == 14
    assert sorted(p.name for p in out[0].path.parent.iterdir()) == [out[0].path.name]
    for k in range(7):
        for f in (False, True):
            torch.testing.assert_close(out[1].get([k], [f]), single.get([k], [f]),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.realdata
def test_a_training_step_reads_targets_and_references_from_the_cache(identities_dataset,
                                                                      tmp_path):
    from mgfr.train import TrainConfig, Trainer
    common = {"base": "tiny", "batch_size": 2, "ema_decay": 0, "seed": 3,
              "negative_rate": 0.5, "n_references": 2}
    runs = {}
    for cached in (False, True):
        cfg = TrainConfig(stage=1, cache_latents=cached, **common)
        runs[cached] = Trainer(cfg, identities_dataset, tmp_path / f"s1-{cached}",
                               cache_dir=tmp_path / "cache", progress=False)
    tr = runs[True]
    assert tr.latent_cache.built and tr.latent_cache.rows == 2 * len(tr.dataset)
    assert runs[False].latent_cache is None
    # micro-steps with a negative sample in them: its target is degraded, so encoded
    micro = next(m for m in range(50)
                 if any(p.negative for p in tr._micro_batch(m)[1]["plans"]))
    for m in (0, micro):
        _, batch = tr._micro_batch(m)
        torch.testing.assert_close(tr._target_latents(batch), tr._latents(batch["target"]),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tr._loss(m), runs[False]._loss(m), atol=1e-5, rtol=1e-4)
    # stage 2: reference latents from the cache equal encoded ones
    tr.save_adapters()
    cfg2 = TrainConfig(stage=2, cache_latents=True, embedder="dlib", **common)
    tr2 = Trainer(cfg2, identities_dataset, tmp_path / "s2", init=tmp_path / "s1-True",
                  cache_dir=tmp_path / "cache", progress=False)
    assert not tr2.latent_cache.built  # same dataset, same VAE: the stage-1 file
    _, batch = tr2._micro_batch(0)
    _, refs, _, _ = tr2._conditions(batch)
    want = tr2._latents(batch["references"].flatten(0, 1)).unflatten(0, refs.shape[:2])
    torch.testing.assert_close(refs, want, atol=1e-5, rtol=1e-5)
