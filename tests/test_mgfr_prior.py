"""``mgfr pretrain-prior``: the tiny prior is a loadable base folder, resumes exactly, and
reports its errors in one line."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from mgfr.errors import TrainingError
from mgfr.prior import PriorConfig, pretrain_prior

SMALL = {"vae_steps": 3, "unet_steps": 3, "batch_size": 2, "checkpoint_every": 2, "seed": 1}


def rows(out):
    with (out / "training" / "loss.csv").open() as f:
        return [(r["phase"], int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def prior(identities_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "prior"
    pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False)
    return out


@pytest.mark.realdata
def test_prior_folder_loads_as_a_base(prior):
    from mgfr.base import load_base
    base = load_base(str(prior))
    assert base.preset == "tiny" and base.resolution == 64
    assert not any(p.requires_grad for p in base.unet.parameters())
    info = json.loads((prior / "mgfr_base.json").read_text())
    assert info["preset"] == "tiny" and info["prior"]["unet_steps"] == 3
    # The scaling factor is measured on the training faces, not Stable Diffusion's.
    assert base.vae.config.scaling_factor != 0.18215 and base.vae.config.scaling_factor > 0
    assert [(p, s) for p, s, _ in rows(prior)] == [("vae", 1), ("vae", 2), ("vae", 3),
                                                  ("unet", 1), ("unet", 2), ("unet", 3)]
    # The trained UNet differs from the random initialisation of the same seed.
    from mgfr.base import build_base_from_config
    init = build_base_from_config("tiny", 1)
    a, b = base.unet.state_dict(), init.unet.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.realdata
@pytest.mark.parametrize("stop_after", [4])  # stops inside the UNet phase: both phases resume
def test_interrupted_prior_resumes_to_the_same_result(identities_dataset, prior, tmp_path,
                                                       stop_after):
    out = tmp_path / "p"
    pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False,
                   stop_after=stop_after)
    assert not (out / "mgfr_base.json").exists()
    with pytest.raises(TrainingError, match="--resume"):
        pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False)
    pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False, resume=True)
    assert rows(out) == rows(prior)
    from safetensors.torch import load_file
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(prior / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.realdata
def test_prior_errors_are_one_line(identities_dataset, prior, tmp_path, capsys):
    from mgfr.cli import main
    rc = main(["pretrain-prior", "-i", str(identities_dataset), "--out", str(prior)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already holds a finished prior" in err
    rc = main(["pretrain-prior", "-i", str(tmp_path / "nothing"), "--out",
               str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "manifest.parquet" in err
    # A corrupt checkpoint.
    out = tmp_path / "c"
    pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False, stop_after=2)
    ckpt = out / "training" / "checkpoint" / "vae.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:64])
    rc = main(["pretrain-prior", "-i", str(identities_dataset), "--out", str(out),
               "--resume", "--vae-steps", "3", "--unet-steps", "3", "--batch-size", "2",
               "--checkpoint-every", "2", "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "corrupt prior checkpoint" in err


@pytest.mark.realdata
def test_a_finished_prior_extends_with_resume(identities_dataset, prior, tmp_path):
    import shutil
    out = tmp_path / "p"
    shutil.copytree(prior, out)
    more = PriorConfig(**{**SMALL, "unet_steps": 4})
    pretrain_prior(identities_dataset, out, more, progress=False, resume=True)
    info = json.loads((out / "mgfr_base.json").read_text())
    assert info["prior"]["unet_steps"] == 4
    assert rows(out)[:-1] == rows(prior) and rows(out)[-1][:2] == ("unet", 4)
    # Asking again for what the folder holds is a no-op; asking for less is refused.
    pretrain_prior(identities_dataset, out, more, progress=False, resume=True)
    with pytest.raises(TrainingError, match="past --unet-steps"):
        pretrain_prior(identities_dataset, out, PriorConfig(**SMALL), progress=False,
                       resume=True)
