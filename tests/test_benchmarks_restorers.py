"""Restorers: the CodeFormer route on an official-shaped state dict, options, folders."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.restorers import (
    RestorerUnavailable,
    UnknownRestorerError,
    create_restorer,
    load_state_dict,
    parse_method,
)
from tests.conftest import make_rgb


@pytest.mark.slow
def test_codeformer_loads_official_keys_and_restores_512(tmp_path):
    import torch
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    # The official architecture's shapes (CodeFormer's inference_codeformer.py), random
    # values, saved the way the release file is: {"params_ema": state_dict}.
    torch.manual_seed(0)
    net = CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                     connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"])
    state = net.state_dict()
    assert "position_emb" in state and "idx_pred_layer.1.weight" in state
    path = tmp_path / "codeformer.pth"
    torch.save({"params_ema": state}, path)
    del net
    r = create_restorer("codeformer", w="0.7", path=str(path))
    r.load("cpu")
    assert r.descriptor.architecture.id == "CodeFormer"
    face = make_rgb(512, 512, seed=1)
    out = r.restore(face, [], image_id="a", out_size=None)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert r.config_for_record()["w"] == 0.7 and len(r.config_for_record()["weights_sha256"]) == 64
    # a state dict of another architecture is refused by name
    with pytest.raises(RestorerUnavailable, match="not a recognised model|expected CodeFormer"):
        load_state_dict({"conv.weight": torch.zeros(3, 3, 3, 3)}, "CodeFormer", "x.pth")


@pytest.mark.slow
def test_gfpgan_v14_loads_official_keys_and_restores(tmp_path):
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    # GFPGANv1.4's clean architecture (GFPGAN's inference_gfpgan.py, arch "clean")
    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                 fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                 sft_half=True)
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    del net
    r = create_restorer("gfpgan", path=str(path))
    r.load("cpu")
    assert r.descriptor.architecture.id == "GFPGAN"
    out = r.restore(make_rgb(256, 256, seed=2), [], image_id="a", out_size=(256, 256))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8


def test_missing_weights_skip_with_the_resolver_message():
    for name, file in (("codeformer", "codeformer.pth"), ("gfpgan", "GFPGANv1.4.pth")):
        with pytest.raises(RestorerUnavailable, match=file):
            create_restorer(name).load("cpu")


def test_options_and_names():
    assert parse_method("codeformer:w=0.5,path=x.pth") == ("codeformer", {"w": "0.5", "path": "x.pth"})
    with pytest.raises(UnknownRestorerError, match="did you mean 'bicubic'"):
        create_restorer("bicubc")
    with pytest.raises(ValueError, match="w must be a finite number in"):
        create_restorer("codeformer", w="3")
    with pytest.raises(ValueError, match="options: size"):
        create_restorer("bicubic", colour="red")
    with pytest.raises(ValueError, match="needs dir="):
        create_restorer("folder")
    lq = make_rgb(64, 64)
    up = create_restorer("bicubic").restore(lq, [], image_id="a", out_size=(128, 128))
    assert up.shape == (128, 128, 3)
    assert create_restorer("lq").restore(lq, [], image_id="a", out_size=None) is lq


def test_mgfr_without_adapters_is_the_shipped_mini_model(tmp_path):
    m = create_restorer("mgfr")
    m.load("cpu")  # no adapters, no base: the shipped mini model (stage 2)
    assert m.pipe.config.preset == "mini" and m.pipe.adapter.config.enable_rca
    with pytest.raises(RestorerUnavailable, match="no such folder"):
        create_restorer("mgfr", adapters=str(tmp_path / "nope")).load("cpu")
