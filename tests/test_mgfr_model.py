"""MGFR base and model tests (tiny preset, random weights, CPU)."""

from __future__ import annotations

import pytest
import torch

from mgfr.base import build_base_from_config, load_base, save_base
from mgfr.presets import available_presets, get_preset


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
    assert all(torch.equal(x, y) for x, y in zip(b.unet.parameters(), again.unet.parameters()))
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
    for a, b in zip(tiny_base.unet.state_dict().values(), back.unet.state_dict().values()):
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
