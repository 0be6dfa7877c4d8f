"""MGFR base and model tests (tiny preset, random weights, CPU)."""

from __future__ import annotations

import pytest
import torch

from mgfr.base import build_base_from_config, load_base, save_base
from mgfr.presets import available_presets, get_preset


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP workers
    # spinning against other processes make every call 10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_base():
    return load_base("tiny", seed=0)


def test_presets_are_data_with_did_you_mean():
    assert {"tiny", "sd15", "sd21-base"} <= set(available_presets())
    tiny = get_preset("tiny")
    assert tiny.resolution == 64 and tiny.vae_scale_factor == 2 and tiny.latent_size == 32
    with pytest.raises(ValueError, match="did you mean 'sd21-base'"):
        get_preset("sd21base")


def test_tiny_base_is_frozen_seeded_and_tokenizes(tiny_base):
    b = tiny_base
    assert b.preset == "tiny" and b.resolution == 64
    for m in (b.unet, b.vae, b.text_encoder):
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())
    again = load_base("tiny", seed=0)
    assert all(torch.equal(x, y) for x, y in zip(b.unet.parameters(), again.unet.parameters(), strict=False))
    other = load_base("tiny", seed=1)
    assert not torch.equal(next(b.unet.parameters()), next(other.unet.parameters()))
    ids = b.tokenizer("a photo of a face", padding="max_length", max_length=77).input_ids
    # The real CLIP BPE: start marker, one token per common word, end marker.
    assert ids[:7] == [49406, 320, 1125, 539, 320, 1710, 49407] and len(ids) == 77
    z = b.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 32, 32)


def test_base_folder_round_trip(tiny_base, tmp_path):
    out = save_base(tiny_base, tmp_path / "prior", step=7)
    assert (out / "mgfr_base.json").is_file() and (out / "unet" / "config.json").is_file()
    back = load_base(str(out))
    assert back.preset == "tiny" and back.base == str(out)
    for a, b in zip(tiny_base.unet.state_dict().values(), back.unet.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in back.unet.parameters())


def test_missing_weights_and_folders_are_clear_errors(tmp_path):
    from reface_core.assets import AssetNotFoundError

    with pytest.raises(AssetNotFoundError, match="sd21-base"):
        load_base("sd21-base")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an MGFR base folder"):
        load_base(str(tmp_path / "empty"))


def test_sd21_base_unet_has_the_published_parameter_count():
    base = build_base_from_config("sd21-base", device="meta", with_tokenizer=False)
    n = sum(p.numel() for p in base.unet.parameters())
    assert n == 865_910_724  # Stable Diffusion 2.1-base UNet (about 866 M)


# ---- the model ----------------------------------------------------------------------------
from mgfr.adapters import DualControlAdapter  # noqa: E402
from mgfr.model import MGFRModel, encode_images, encode_prompts  # noqa: E402


def _inputs(b=2, r=3, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 32, 32, generator=g)
    lq = torch.randn(b, 4, 32, 32, generator=g)
    ref = torch.randn(b, r, 4, 32, 32, generator=g)
    ide = torch.randn(b, r, d, generator=g)
    t = torch.tensor([10, 500][:b] + [999] * max(0, b - 2))
    return x, t, lq, ref, ide


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def ehs(tiny_base):
    return encode_prompts(tiny_base, ["a photo of a face", "a smiling man"])


@torch.no_grad()
def test_untrained_model_equals_frozen_unet_exactly(tiny_base, ehs):
    model = MGFRModel.from_base(tiny_base)
    x, t, lq, ref, ide = _inputs()
    plain = tiny_base.unet(x, t, ehs).sample
    assert torch.equal(model(x, t, ehs, lq), plain)
    assert torch.equal(model(x, t, ehs, lq, ref, ide), plain)
    # The full-width tiny adapter starts as a copy of the UNet encoder (ControlNet practice).
    unet_sd = tiny_base.unet.state_dict()
    name = "down_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(model.adapter.lca.state_dict()[name], unet_sd[name])
    assert torch.equal(model.adapter.rca.state_dict()[name], unet_sd[name])


@torch.no_grad()
def test_shapes_through_every_path_and_no_reference_equals_lca_only(tiny_base, ehs):
    model = MGFRModel.from_base(tiny_base)
    _randomize(model.adapter)
    x, t, lq, ref, ide = _inputs()
    plain = tiny_base.unet(x, t, ehs).sample
    no_ref = model(x, t, ehs, lq)
    with_ref = model(x, t, ehs, lq, ref, ide)
    one_ref = model(x, t, ehs, lq, ref[:, :1], ide[:, :1])
    no_id = model(x, t, ehs, lq, ref, None)
    for out in (no_ref, with_ref, one_ref, no_id):
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(no_ref, plain) and not torch.equal(with_ref, no_ref)
    assert not torch.equal(with_ref, one_ref)
    # An empty reference list is the same as no reference.
    assert torch.equal(model(x, t, ehs, lq, ref[:, :0], ide[:, :0]), no_ref)
    # A padding reference (mask 0) changes nothing: 2 real + 1 padded == the 2 real ones.
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    padded = model(x, t, ehs, lq, ref, ide, ref_mask=mask)
    assert torch.allclose(padded, model(x, t, ehs, lq, ref[:, :2], ide[:, :2]), atol=1e-5)
    # The stage-1 (LCA-only) model with the same LCA weights predicts exactly the same.
    lca_only = DualControlAdapter.from_config({**model.adapter.config, "enable_rca": False})
    missing, unexpected = lca_only.load_state_dict(model.adapter.state_dict(), strict=False)
    assert not missing and all(k.split(".")[0] in ("rca", "rca_out", "rca_mid_out", "rlf",
                                                   "id_proj", "link_l2r", "link_r2l")
                               for k in unexpected)
    assert torch.equal(MGFRModel(tiny_base.unet, lca_only)(x, t, ehs, lq), no_ref)


def test_trainable_parameters_per_stage_and_frozen_base(tiny_base, ehs):
    model = MGFRModel.from_base(tiny_base)
    a = model.adapter
    by_id = {id(p): n for n, p in a.named_parameters()}
    s1 = {by_id[id(p)] for p in model.trainable_parameters(1)}
    assert s1 and all(n.split(".")[0] in ("lca", "lca_out", "lca_mid_out") for n in s1)
    assert {n for n, p in a.named_parameters() if p.requires_grad} == s1
    s2 = {by_id[id(p)] for p in model.trainable_parameters(2)}
    assert {n.split(".")[0] for n in s2} == {"rca", "rca_out", "rca_mid_out", "rlf", "id_proj",
                                             "link_l2r", "link_r2l"}
    assert s1.isdisjoint(s2) and s1 | s2 == set(by_id.values())
    for m in (tiny_base.unet, tiny_base.vae, tiny_base.text_encoder):
        assert not any(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="stage must be one of"):
        model.trainable_parameters(3)
    # Stage 2 learns: the zero output convs get gradients from the first step.
    x, t, lq, ref, ide = _inputs()
    params = model.trainable_parameters(2)
    loss = model(x, t, ehs, lq, ref, ide).square().mean()
    loss.backward()
    assert a.rca_mid_out.weight.grad is not None and a.rca_mid_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in a.lca_parameters())
    assert all(p.grad is None for p in tiny_base.unet.parameters())
    del params


@torch.no_grad()
def test_save_load_round_trips_bit_exactly_and_refuses_other_embedders(tiny_base, ehs, tmp_path):
    import json

    model = MGFRModel.from_base(tiny_base)
    _randomize(model.adapter, seed=3)
    out = model.save_adapters(tmp_path / "run" / "adapters", stage=2, step=11)
    info = json.loads((out / "mgfr_adapters.json").read_text())
    assert info == {"base": "tiny", "stage": 2, "step": 11, "id_embedder": "dlib",
                    "id_embed_dim": 128}
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    back = MGFRModel.load_adapters(out)  # the base comes from mgfr_adapters.json
    for (n1, p1), (n2, p2) in zip(model.adapter.state_dict().items(),
                                  back.adapter.state_dict().items(), strict=False):
        assert n1 == n2 and torch.equal(p1, p2)
    x, t, lq, ref, ide = _inputs()
    assert torch.equal(back(x, t, ehs, lq, ref, ide), model(x, t, ehs, lq, ref, ide))
    # Saving again over the folder replaces it whole.
    model.save_adapters(out, stage=2, step=12)
    assert json.loads((out / "mgfr_adapters.json").read_text())["step"] == 12
    with pytest.raises(ValueError, match="different embedders"):
        MGFRModel.load_adapters(out, embedder="arcface-antelopev2")
    with pytest.raises(ValueError, match=r"id_embeds must be \(B, R, 128\)"):
        model(x, t, ehs, lq, ref, torch.zeros(2, 3, 512))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MGFRModel.load_adapters(tmp_path / "missing")


def test_encode_images_and_bad_inputs(tiny_base):
    import numpy as np

    z = encode_images(tiny_base, np.zeros((2, 64, 64, 3), np.uint8))
    assert z.shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        encode_images(tiny_base, np.zeros((63, 63, 3), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        encode_images(tiny_base, np.zeros((64, 64, 3), np.float32))
    model = MGFRModel.from_base(tiny_base)
    x, t, lq, _, _ = _inputs()
    with pytest.raises(ValueError, match="must match the noisy latents"):
        model(x, t, encode_prompts(tiny_base, ["a", "b"]), lq[:, :, :16, :16])


def test_sd21_base_adapter_is_lighter_than_two_encoder_copies():
    base = build_base_from_config("sd21-base", device="meta", with_tokenizer=False)
    with torch.device("meta"):
        adapter = DualControlAdapter.from_unet(base.unet, **get_preset("sd21-base").adapter)
    unet_encoder = sum(p.numel() for m in (base.unet.down_blocks, base.unet.mid_block)
                       for p in m.parameters())
    lca = sum(p.numel() for p in adapter.lca.parameters())
    assert adapter.channels == (160, 320, 640, 640)
    # Half width: about a quarter of the UNet encoder's parameters per adapter.
    assert 0.2 < lca / unet_encoder < 0.3
