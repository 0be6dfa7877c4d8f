"""Any diffusers Stable Diffusion folder as the base (issue 21, items 1 and 2): folders in the
exact SD 2.1-base / SD 2.1 768-v layout (tests/sd_layout.py: real files, config keys and
scheduler values, reduced widths, random weights), local or in the Hugging Face cache
layout, in ``mgfr restore``, ``mgfr train`` and ``benchmarks.run``; epsilon and
v-prediction bases in training, the one-step estimate and DDIM sampling."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd_layout import (
    SCHEDULER_21_BASE,
    SCHEDULER_21_V,
    unet_config,
    vae_config,
    write_sd21_folder,
)

from mgfr.base import (
    clean_estimate,
    guess_preset,
    load_base,
    noise_estimate,
    read_base_file,
    resolve_folder,
    training_target,
)
from mgfr.cli import main
from mgfr.presets import get_preset
from reface_core.imageio import load_image, save_image

#: restore options that keep a call to one UNet pass per step
ONE_PASS = ["--steps", "1", "--guidance", "1", "--lambda-na", "0", "--lambda-nq", "0",
            "--prompt", "a face", "-q"]


@pytest.fixture(scope="module")
def sd21_base(tmp_path_factory) -> Path:
    """SD 2.1-base layout at its real sample_size 64 (512 px faces)."""
    return write_sd21_folder(tmp_path_factory.mktemp("sd") / "stable-diffusion-2-1-base")


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory) -> dict[str, Path]:
    """The same layouts at sample_size 8 (64 px faces): epsilon (PNDM) and v (DDIM), the
    v one in the Hugging Face cache layout."""
    root = tmp_path_factory.mktemp("sd_small")
    return {"epsilon": write_sd21_folder(root / "eps", sample_size=8, seed=1),
            "v": write_sd21_folder(root / "hub", sample_size=8, seed=1, v_prediction=True,
                                   hf_cache=True)}


def face(size: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    img = np.stack([xx, yy, (xx + yy) / 2], -1) * 200 + rng.random((size, size, 3)) * 40
    return img.clip(0, 255).astype(np.uint8)


# ---- what a folder is ------------------------------------------------------------------
@pytest.mark.slow
def test_sd21_base_folder_loads_as_itself(sd21_base):
    assert json.loads((sd21_base / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionPipeline"
    info = read_base_file(sd21_base)
    assert info == {"preset": "sd21-base", "resolution": 512, "prediction_type": "epsilon"}
    base = load_base(str(sd21_base))
    assert (base.preset, base.resolution, base.prediction_type) == ("sd21-base", 512, "epsilon")
    assert base.tokenizer.pad_token == "!" and base.vae.config.scaling_factor == 0.18215
    assert list(base.unet.config.block_out_channels) == [40, 80, 160, 160]


def test_guess_reads_resolution_and_prediction_type():
    # the published configs: SD 2.1 768-v is not SD 2.1-base, though its UNet is the same
    v768 = get_preset("sd21")
    assert guess_preset(v768.unet, SCHEDULER_21_V, v768.vae) == "sd21"
    base = get_preset("sd21-base")
    assert guess_preset(base.unet, SCHEDULER_21_BASE, base.vae) == "sd21-base"
    assert guess_preset(get_preset("sd15").unet, SCHEDULER_21_BASE, base.vae) == "sd15"
    # reduced widths: the family's preset; resolution and prediction type are the folder's
    assert guess_preset(unet_config(96), SCHEDULER_21_V, vae_config()) == "sd21"
    assert guess_preset(unet_config(64), SCHEDULER_21_BASE, vae_config()) == "sd21-base"
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        guess_preset(unet_config(), {**SCHEDULER_21_BASE, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="no Stable Diffusion family"):
        guess_preset({**unet_config(), "down_block_types": ["DownBlock2D"] * 4})


def test_folder_without_scheduler_config_is_refused(tmp_path, small_folders):
    folder = tmp_path / "no_sched"
    shutil.copytree(small_folders["epsilon"], folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ValueError, match="epsilon or v cannot be read"):
        read_base_file(folder)


def test_hugging_face_cache_layout(small_folders, tmp_path):
    repo = small_folders["v"]
    assert repo.name == "models--stabilityai--stable-diffusion-2-1"
    snap = resolve_folder(repo)
    assert snap.parent.name == "snapshots" and (snap / "unet" / "config.json").is_symlink()
    base = load_base(str(repo))
    assert (base.preset, base.resolution, base.prediction_type) == ("sd21", 64, "v_prediction")
    # the snapshot folder itself loads too
    assert load_base(str(snap)).prediction_type == "v_prediction"
    # two snapshots and no refs/main: ambiguous, named
    other = tmp_path / "models--x--y"
    (other / "snapshots" / "a").mkdir(parents=True)
    (other / "snapshots" / "b").mkdir()
    with pytest.raises(ValueError, match="2 snapshots and no refs/main"):
        resolve_folder(other)


# ---- restore ---------------------------------------------------------------------------
def test_restore_sd_folder_without_adapters(small_folders, tmp_path):
    """Issue 21: `mgfr restore --base <SD-layout folder>` with no adapters exits 0 (the
    folder's model_index.json names StableDiffusionPipeline: a base, not a saved
    MGFRPipeline)."""
    from mgfr.pipeline import is_pipeline_folder

    assert not is_pipeline_folder(small_folders["epsilon"])
    save_image(tmp_path / "a.png", face(80))
    out = tmp_path / "out"
    assert main(["restore", "--input", str(tmp_path / "a.png"), "--out", str(out),
                 "--aligned", "--base", str(small_folders["epsilon"]), *ONE_PASS]) == 0
    assert load_image(out / "a.png").shape == (64, 64, 3)
    run = json.loads((out / "run.json").read_text())
    assert run["preset"] == "sd21-base" and run["resolution"] == 64
    assert run["scheduler_config"]["prediction_type"] == "epsilon"


@pytest.mark.slow
def test_restore_sd21_base_folder_at_512_without_adapters(sd21_base, tmp_path, capsys):
    """The same at the real SD 2.1-base sample_size (512 px faces)."""
    faces_dir = tmp_path / "faces"
    faces_dir.mkdir()
    save_image(faces_dir / "a.png", face(96))
    out = tmp_path / "out"
    assert main(["restore", "--input", str(faces_dir), "--out", str(out), "--aligned",
                 "--base", str(sd21_base), *ONE_PASS]) == 0
    assert load_image(out / "a.png").shape == (512, 512, 3)
    run = json.loads((out / "run.json").read_text())
    assert run["preset"] == "sd21-base" and run["resolution"] == 512
    assert run["scheduler_config"]["prediction_type"] == "epsilon"


@pytest.mark.slow
def test_restore_hub_cache_folder_with_and_without_adapters(small_folders, tmp_path):
    from mgfr.model import MGFRModel

    repo = small_folders["v"]
    faces_dir = tmp_path / "faces"
    faces_dir.mkdir()
    save_image(faces_dir / "a.png", face(64, 1))
    assert main(["restore", "--input", str(faces_dir), "--out", str(tmp_path / "o1"),
                 "--aligned", "--base", str(repo), *ONE_PASS]) == 0
    run = json.loads((tmp_path / "o1" / "run.json").read_text())
    assert run["scheduler_config"]["prediction_type"] == "v_prediction"
    # adapters saved on the folder name it; restore finds the base through them
    adapters = tmp_path / "adapters"
    MGFRModel.from_base(load_base(str(repo))).save_adapters(adapters, base=str(repo), stage=1,
                                                           step=0)
    assert main(["restore", "--input", str(faces_dir), "--out", str(tmp_path / "o2"),
                 "--aligned", "--adapters", str(adapters), *ONE_PASS]) == 0
    assert main(["restore", "--input", str(faces_dir), "--out", str(tmp_path / "o3"),
                 "--aligned", "--adapters", str(adapters), "--base", str(repo), *ONE_PASS]) == 0
    # an untrained adapter adds exact zeros: the three runs wrote the same face
    a = [load_image(tmp_path / o / "a.png") for o in ("o1", "o2", "o3")]
    assert np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2])


def test_bad_prediction_type_is_one_error_line(small_folders, tmp_path, capsys):
    folder = tmp_path / "sample_pred"
    shutil.copytree(small_folders["epsilon"], folder)
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "prediction_type": "sample"}))
    save_image(tmp_path / "a.png", face(64))
    capsys.readouterr()
    assert main(["restore", "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--aligned", "--base", str(folder), *ONE_PASS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "'sample' is not supported" in err and "\n" not in err


# ---- epsilon and v ---------------------------------------------------------------------
def test_training_target_and_estimates_invert_each_other():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config({**SCHEDULER_21_V})
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    zt = sched.add_noise(x0, noise, t)
    a = sched.alphas_cumprod
    v = training_target("v_prediction", x0, noise, t, a)
    assert torch.allclose(v, sched.get_velocity(x0, noise, t), atol=1e-6)  # diffusers' own
    assert not torch.allclose(v, noise, atol=0.1)
    assert training_target("epsilon", x0, noise, t, a) is noise
    for kind, pred in (("epsilon", noise), ("v_prediction", v)):
        assert torch.allclose(clean_estimate(kind, pred, zt, t, a), x0, atol=1e-4), kind
        assert torch.allclose(noise_estimate(kind, pred, zt, t, a), noise, atol=1e-4), kind
    # a v output read as noise gives a wrong clean estimate
    assert not torch.allclose(clean_estimate("epsilon", v, zt, t, a), x0, atol=0.1)


class OracleUNet(torch.nn.Module):
    """Stands in for the base UNet: the exact epsilon or v output for a known clean
    latent ``x0`` at any z_t, so an exact sampler must land on ``x0`` whatever the kind."""

    def __init__(self, x0: torch.Tensor, kind: str, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.x0, self.kind, self.alphas = x0, kind, alphas_cumprod
        self.config = SimpleNamespace(in_channels=x0.shape[1])
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        return self.anchor.device

    def forward(self, z, t, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None, return_dict=False):
        a = self.alphas[torch.as_tensor(t).long()].float().reshape(-1, 1, 1, 1)
        eps = (z - a.sqrt() * self.x0) / (1 - a).sqrt()
        out = eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0
        return (out,)


def _oracle_pipeline(folder: Path, x0: torch.Tensor):
    from mgfr.base import noise_schedule
    from mgfr.pipeline import load_pipeline

    pipe = load_pipeline(base=str(folder), scheduler="ddim")
    kind = pipe.scheduler.config.prediction_type
    pipe.unet = OracleUNet(x0, kind, noise_schedule(pipe.scheduler).alphas_cumprod)
    return pipe


def test_epsilon_and_v_bases_give_the_same_restoration(small_folders):
    """The same exact denoiser, written as an epsilon base and as a v base: DDIM sampling
    and the one-step estimate must agree and reach the clean latent; reading the v base's
    output as epsilon must not."""
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    pipes = {k: _oracle_pipeline(f, x0) for k, f in small_folders.items()}
    assert {k: p.scheduler.config.prediction_type for k, p in pipes.items()} == \
        {"epsilon": "epsilon", "v": "v_prediction"}
    lq = face(64, 2)
    kw = {"prompt": "a face", "negative_attribute_prompt": "", "negative_quality_prompt": "",
          "guidance_scale": 1.0, "lambda_na": 0.0, "lambda_nq": 0.0}

    def run(pipe, **more):
        gen = torch.Generator().manual_seed(0)
        return pipe(lq, generator=gen, output_type="latent", **kw, **more).images[0]

    for more in ({"num_inference_steps": 5}, {"strength": 0.6, "num_inference_steps": 5},
                 {"strength": 0.5, "one_step": True}):
        eps, v = run(pipes["epsilon"], **more), run(pipes["v"], **more)
        assert torch.allclose(eps, v, atol=1e-4), more
        # the last DDIM step keeps sqrt(1 - a_0) = 0.03 of the noise; the one-step estimate
        # is exact
        tol = 1e-4 if more.get("one_step") else 0.15
        assert (v - x0[0]).abs().max() < tol, more
    np_eps = pipes["epsilon"](lq, generator=torch.Generator().manual_seed(0),
                              num_inference_steps=5, **kw).images[0]
    np_v = pipes["v"](lq, generator=torch.Generator().manual_seed(0),
                      num_inference_steps=5, **kw).images[0]
    assert np.abs(np_eps.astype(int) - np_v.astype(int)).max() <= 1
    # the v base sampled as if it predicted epsilon lands elsewhere
    wrong = pipes["v"]
    from diffusers import DDIMScheduler
    wrong.scheduler = DDIMScheduler.from_config(wrong.scheduler.config,
                                                prediction_type="epsilon")
    wrong.unet.kind = "v_prediction"
    bad = run(wrong, num_inference_steps=5)
    assert (bad - x0[0]).abs().max() > 1.0


# ---- training and benchmarks (real faces) ---------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["epsilon", "v"])
def test_one_training_step_on_an_sd_folder(kind, small_folders, identities_dataset, tmp_path):
    from mgfr.model import read_adapters_info
    from mgfr.train import TrainConfig, Trainer

    folder = small_folders[kind]
    out = tmp_path / "run"
    rc = main(["train", "--stage", "1", "--input", str(identities_dataset), "--base",
               str(folder), "--out", str(out), "--max-steps", "1", "--batch-size", "1",
               "--set", "validation_faces=1", "--set", "validation_steps=1",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    info = read_adapters_info(out / "adapters")
    assert info["base"] == str(folder) and info["step"] == 1
    # the loss is against the base's own target: the same step on the same weights read
    # as the other kind gives another loss
    cfg = TrainConfig(base=str(folder), stage=1, batch_size=1, max_steps=1)
    tr = Trainer(cfg, identities_dataset, tmp_path / "r2", cache_dir=tmp_path / "cache",
                 progress=False)
    assert tr.base.prediction_type == ("epsilon" if kind == "epsilon" else "v_prediction")
    with torch.no_grad():
        own = float(tr._loss(0))
        other = "epsilon" if kind == "v" else "v_prediction"
        tr.base.noise_scheduler.register_to_config(prediction_type=other)
        assert abs(float(tr._loss(0)) - own) > 1e-3


@pytest.mark.slow
@pytest.mark.realdata
def test_benchmark_run_with_an_sd_folder(small_folders, data_root, tmp_path):
    from benchmarks import run as B
    from benchmarks.store import open_store

    root = tmp_path / "paired"
    for ident in ("00001", "00052"):
        src = data_root / "identities_512" / ident
        for sub, name in (("lq", "degraded.png"), ("gt", "gt.png")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, root / sub / f"{ident}.png")
    out = tmp_path / "results"
    method = (f"mgfr:base={small_folders['epsilon']},steps=1,guidance_scale=1,lambda_na=0,"
              f"lambda_nq=0,prompt=a face")
    assert B.main(["--methods", method, "--dataset", "paired", "--data", str(root),
                   "--out", str(out), "--metrics", "psnr", "-q"]) == 0
    s = open_store(out, read_only=True)
    (run,) = s.query("SELECT * FROM runs")
    assert run["status"] == "done"
    record = json.loads(run["restorer_config"])["pipeline"]
    assert record["preset"] == "sd21-base" and record["resolution"] == 64
    assert record["base"] == str(small_folders["epsilon"])
    scores = s.query("SELECT value FROM image_scores WHERE metric = 'psnr'")
    assert len(scores) == 2 and all(np.isfinite(r["value"]) for r in scores)
    s.close()
