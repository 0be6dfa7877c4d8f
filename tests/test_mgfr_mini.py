"""The restoring MGFR: adapters that read the prompt, the SDEdit start and one-step
estimate, timestep focus, stage-1 folders, the VAE round-trip gate, and the shipped
``mini`` weights (their pin, their defaults, and that they restore held-out faces)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_rgb

from mgfr.errors import TrainingError
from mgfr.model import MGFRModel, lca_only, with_reference_branch


def _randomize(module, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    from mgfr.base import load_base
    return load_base("tiny")


def _residuals(model, text, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 32, 32, generator=g)
    lq = torch.randn(2, 4, 32, 32, generator=g)
    t = torch.tensor([10, 500])
    return model.adapter(z, t, model.prepare(lq), encoder_hidden_states=text)


def test_adapters_read_the_prompt_and_text_blind_ones_do_not(tiny):
    g = torch.Generator().manual_seed(3)
    text_a = torch.randn(2, 77, 64, generator=g)
    text_b = torch.randn(2, 77, 64, generator=g)
    reading = MGFRModel.from_base(tiny)  # the preset's default
    assert reading.adapter.config.read_prompt
    _randomize(reading.adapter)
    (da, ma), (db, mb) = _residuals(reading, text_a), _residuals(reading, text_b)
    assert not torch.allclose(ma, mb) and not all(torch.allclose(x, y) for x, y in zip(da, db, strict=False))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        _residuals(reading, None)
    blind = MGFRModel.from_base(tiny, read_prompt=False)
    _randomize(blind.adapter)
    (da, ma), (db, mb) = _residuals(blind, text_a), _residuals(blind, text_b)
    assert torch.equal(ma, mb) and all(torch.equal(x, y) for x, y in zip(da, db, strict=False))
    # The text-blind adapter has no text cross-attention: fewer weights.
    n = lambda m: sum(p.numel() for p in m.adapter.lca.parameters())  # noqa: E731
    assert n(blind) < n(reading)


def test_guidance_branches_get_their_own_adapter_residuals(tiny):
    """With an adapter that reads the prompt, a K-branch step equals K one-branch steps."""
    model = MGFRModel.from_base(tiny)
    _randomize(model.adapter)
    g = torch.Generator().manual_seed(0)
    z, lq = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    texts = torch.randn(3, 77, 64, generator=g)
    cond = model.prepare(lq)
    with torch.no_grad():
        joint = model.step(z, 400, texts, cond, num_branches=3)
        alone = torch.cat([model.step(z, 400, texts[i:i + 1], cond) for i in range(3)])
    assert torch.allclose(joint, alone, atol=1e-5)


def test_stage1_folder_holds_the_lca_and_stage2_adds_a_reference_branch(tiny, tmp_path):
    model = MGFRModel.from_base(tiny)
    _randomize(model.adapter)
    folder = model.save_adapters(tmp_path / "s1", stage=1, step=3)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["enable_rca"] is False and cfg["read_prompt"] is True
    loaded = MGFRModel.load_adapters(folder, base=tiny)
    assert not any(k.startswith(("rca", "rlf", "id_proj", "link")) for k in
                   loaded.adapter.state_dict())
    full = with_reference_branch(loaded.adapter, tiny.unet)
    assert full.config.enable_rca
    sd, src = full.state_dict(), model.adapter.state_dict()
    lca_keys = [k for k in sd if k.startswith(("lca.", "lca_out.", "lca_mid_out."))]
    assert lca_keys and all(torch.equal(sd[k], src[k]) for k in lca_keys)
    # The new reference branch starts silent: its output convs are zero.
    assert all(float(p.detach().abs().sum()) == 0 for p in full.rca_out.parameters())
    assert lca_only(model.adapter).state_dict().keys() == loaded.adapter.state_dict().keys()


def test_timestep_focus_draws_the_start_range_more_often():
    from mgfr.train import sample_timesteps
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, 1000, 500, 0.8, g)
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    share = float((t < 500).float().mean())
    assert abs(share - (0.8 + 0.2 * 0.5)) < 0.02
    uniform = sample_timesteps(20000, 1000, 0, 0.8, torch.Generator().manual_seed(0))
    assert abs(float((uniform < 500).float().mean()) - 0.5) < 0.02


def test_lq_start_samples_start_from_the_lq_and_aim_at_the_hq():
    from diffusers import DDPMScheduler

    from mgfr.train import TrainConfig, lq_start_inputs
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    hq, lq, noise = (torch.randn(64, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.randint(0, 1000, (64,), generator=g)
    noisy, eps, t2 = lq_start_inputs(sched, hq, lq, noise, t, 0.5, [100, 400], g)
    abar = sched.alphas_cumprod[t2].view(-1, 1, 1, 1)
    from_lq = torch.isclose(noisy, abar.sqrt() * lq + (1 - abar).sqrt() * noise,
                            atol=1e-5).flatten(1).all(1)
    assert 16 < int(from_lq.sum()) < 48  # about half
    assert bool((t2[from_lq] >= 100).all() and (t2[from_lq] < 400).all())
    # Every sample's clean estimate from (input, noise target) is the HQ latent.
    x0 = (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()
    assert torch.allclose(x0, hq, atol=1e-3)
    # The plain samples keep their timestep and the plain noise target.
    plain = ~from_lq
    assert torch.equal(t2[plain], t[plain])
    assert torch.allclose(eps[plain], noise[plain], atol=1e-4)
    with pytest.raises(ValueError, match="lq_start_timesteps"):
        TrainConfig(lq_start_timesteps=[400, 100])
    with pytest.raises(ValueError, match="lq_start_rate"):
        TrainConfig(lq_start_rate=1.5)


@pytest.fixture(scope="module")
def tiny_pipe(tiny, tmp_path_factory):
    from mgfr.pipeline import load_pipeline
    model = MGFRModel.from_base(tiny)
    _randomize(model.adapter)
    folder = model.save_adapters(tmp_path_factory.mktemp("run") / "adapters", stage=2, step=1)
    return load_pipeline(adapters=str(folder))


def _count_unet_calls(pipe, **kw):
    calls = []
    h = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = pipe(make_rgb(64, 64, seed=1), prompt="a face", negative_attribute_prompt="",
                   negative_quality_prompt="", guidance_scale=1.0,
                   generator=torch.Generator().manual_seed(0), **kw)
    finally:
        h.remove()
    return len(calls), out.images[0]


def test_strength_starts_from_the_noised_lq_and_one_step_is_one_call(tiny_pipe):
    n_full, full = _count_unet_calls(tiny_pipe, num_inference_steps=10)
    assert n_full == 10
    n_half, half = _count_unet_calls(tiny_pipe, num_inference_steps=10, strength=0.5)
    assert n_half == 5 and not np.array_equal(full, half)
    n_one, one = _count_unet_calls(tiny_pipe, num_inference_steps=10, strength=0.3,
                                   one_step=True)
    _, again = _count_unet_calls(tiny_pipe, num_inference_steps=10, strength=0.3,
                                 one_step=True)
    assert n_one == 1 and np.array_equal(one, again)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            _count_unet_calls(tiny_pipe, strength=bad)
    with pytest.raises(ValueError, match="one_step"):
        _count_unet_calls(tiny_pipe, strength=1.0, one_step=True)
    rec = tiny_pipe.config_for_record(strength=0.4)
    assert rec["strength"] == 0.4 and rec["one_step"] is False


@pytest.mark.realdata
def test_vae_gate_stops_a_prior_below_it_and_records_the_round_trip(identities_dataset,
                                                                   tmp_path, capsys):
    from mgfr.prior import PriorConfig, pretrain_prior
    small = {"vae_steps": 2, "unet_steps": 1, "batch_size": 2, "checkpoint_every": 5,
             "seed": 1}
    out = tmp_path / "gated"
    with pytest.raises(TrainingError, match=r"below the gate of 99 dB.*--vae-steps"):
        pretrain_prior(identities_dataset, out, PriorConfig(**small, min_vae_psnr=99),
                       progress=False)
    assert "held-out (test split) faces" in capsys.readouterr().err
    assert not (out / "mgfr_base.json").exists()  # never reported as done
    assert (out / "training" / "checkpoint").is_dir()  # resumable with more VAE steps
    ok = tmp_path / "open"
    pretrain_prior(identities_dataset, ok, PriorConfig(**small, min_vae_psnr=0), progress=False)
    info = json.loads((ok / "mgfr_base.json").read_text())["prior"]
    assert info["vae_roundtrip_split"] == "test" and info["vae_roundtrip_faces"] > 0
    assert 5 < info["vae_roundtrip_psnr"] < 99 and info["vae_gate_psnr"] == 0


# ---- the shipped mini weights -----------------------------------------------------------

def test_shipped_mini_weights_load_with_their_sha256(tmp_path, monkeypatch):
    from mgfr.pipeline import load_pipeline, shipped_adapters
    from reface_core.assets import AssetIntegrityError, folder_sha256, get_asset, resolve
    asset = get_asset("mgfr-mini")
    folder = resolve("mgfr-mini")
    assert len(asset.folder_sha256) == 64 and folder_sha256(folder) == asset.folder_sha256
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 40 * 2 ** 20
    pipe = load_pipeline()  # no base, no adapters: the shipped mini model, stage 2
    assert pipe.config.preset == "mini" and pipe.resolution == 64
    assert pipe.adapter.config.enable_rca and pipe.adapter.config.read_prompt
    assert pipe.config.adapters_path == str(shipped_adapters(2))
    assert pipe.call_defaults["strength"] < 1
    # An altered copy is refused, not used.
    copy = tmp_path / "mini"
    shutil.copytree(folder, copy)
    w = copy / "adapters-stage2" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    monkeypatch.setenv("REFACE_ASSET_MGFR_MINI", str(copy))
    with pytest.raises(AssetIntegrityError, match="mgfr-mini"):
        resolve("mgfr-mini")


@pytest.mark.slow
@pytest.mark.realdata
def test_shipped_mini_restores_held_out_faces_above_bicubic(identities_dataset):
    """Every face of the people the mini model never saw (its mgfr_base.json names them),
    aligned by a Reface-HQ build, at 64 px, LQ from mgfr-medium: the default settings
    (sampled, not the one-step estimate) beat bicubic on PSNR and on identity cosine."""
    import cv2
    import pandas as pd

    from faces.embedding import get_embedder
    from mgfr.pipeline import load_pipeline
    from mgfr.train import bicubic_degrader, psnr
    from reface_core.imageio import load_image
    held = json.loads((_mini_folder() / "mgfr_base.json").read_text())["prior"][
        "heldout_identities"]
    man = pd.read_parquet(identities_dataset / "manifest.parquet")
    rows = man[man.identity.str.split("-").str[-1].isin(held)].sort_values("face_id")
    assert len(set(rows.identity)) == len(held) >= 3
    deg = bicubic_degrader("mgfr-medium")
    pipe = load_pipeline()
    hq, lq, out = [], [], []
    for r in rows.itertuples():
        face = cv2.resize(load_image(identities_dataset / r.image_path), (64, 64),
                          interpolation=cv2.INTER_AREA)
        low, _ = deg(face, seed=0, image_id=r.face_id)
        hq.append(face)
        lq.append(low)
        out.append(pipe(low, generator=torch.Generator().manual_seed(0)).images[0])
    ours = np.mean([psnr(a, b) for a, b in zip(out, hq, strict=False)])
    bic = np.mean([psnr(a, b) for a, b in zip(lq, hq, strict=False)])
    assert ours > bic, (ours, bic)
    emb = get_embedder("dlib")
    truth = emb.embed(hq)
    cos = lambda x: float(np.mean(np.sum(emb.embed(x) * truth, axis=1)))  # noqa: E731
    assert cos(out) > cos(lq), (cos(out), cos(lq))


def _mini_folder():
    from reface_core.assets import resolve
    return resolve("mgfr-mini")


@pytest.mark.slow
@pytest.mark.realdata
def test_shipped_mini_stage2_with_the_persons_references_beats_stage1(identities_dataset):
    """The first 4 faces of each person the mini model never saw, LQ from mgfr-severe (where
    the LQ alone says least about who it is): stage 2 given 2 other photos of the same
    person keeps identity better than the stage-1 adapters, which see no reference (the
    same seed per face for both). Measured on these 16 faces: bicubic 0.831, stage 1
    0.864, stage 2 0.880 (better on 14 of 16); docs/mgfr-training.md has all 58 faces."""
    import cv2
    import pandas as pd

    from faces.embedding import get_embedder
    from mgfr.pipeline import load_pipeline
    from mgfr.train import bicubic_degrader
    from reface_core.imageio import load_image
    mini = _mini_folder()
    held = json.loads((mini / "mgfr_base.json").read_text())["prior"]["heldout_identities"]
    man = pd.read_parquet(identities_dataset / "manifest.parquet")
    rows = (man[man.identity.str.split("-").str[-1].isin(held)].sort_values("face_id")
            .groupby("identity").head(4).reset_index(drop=True))
    assert len(rows) == 4 * len(held) and len(held) >= 3
    deg = bicubic_degrader("mgfr-severe")
    hq = [cv2.resize(load_image(identities_dataset / p), (64, 64), interpolation=cv2.INTER_AREA)
          for p in rows.image_path]
    lq = [deg(h, seed=0, image_id=f)[0] for h, f in zip(hq, rows.face_id, strict=True)]
    people = list(rows.identity)
    refs = [[hq[k] for k in range(len(people)) if people[k] == who and k != i][:2]
            for i, who in enumerate(people)]
    stage1 = load_pipeline(base=str(mini), adapters=str(mini / "adapters-stage1"))
    stage2 = load_pipeline()

    def restore(pipe, with_refs: bool) -> list:
        return [pipe(lq[i], references=[refs[i]] if with_refs else None,
                     generator=torch.Generator().manual_seed(i)).images[0]
                for i in range(len(lq))]

    emb = get_embedder("dlib")
    truth = emb.embed(hq)
    cos = lambda x: np.sum(emb.embed(x) * truth, axis=1)  # noqa: E731
    bic, one, two = cos(lq), cos(restore(stage1, False)), cos(restore(stage2, True))
    assert one.mean() > bic.mean(), (one.mean(), bic.mean())
    assert two.mean() > one.mean() + 0.005, (two.mean(), one.mean())
    assert (two > one).sum() > len(two) / 2, (two - one).round(3)


def test_eval_mini_set_option_refuses_what_is_not_key_number(tmp_path, capsys):
    """`scripts/eval_mini.py --set KEY=VALUE` (an inference setting for every row) ends in
    one `error:` line and exit 2 before any model or data is read."""
    from conftest import load_script
    mod = load_script("scripts/eval_mini.py")
    for bad in ("rca_scale", "rca_scale=two", "=2"):
        rc = mod.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                       "--set", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: --set {bad!r}"), err
    assert not (tmp_path / "o").exists()
