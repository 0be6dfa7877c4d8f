"""MGFR training (``mgfr train``) with the tiny preset: frozen weights stay frozen, exact
resume after SIGKILL, one-line errors, adapters that load, and (slow) that it learns."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgfr.train import TrainConfig, Trainer, load_config

REPO = Path(__file__).resolve().parents[1]

# Small enough for a shared 2-core CI machine: one face per step, two DDIM steps to
# validate two faces.
TINY = {"batch_size": 1, "validation_faces": 2, "validation_steps": 2, "ema_decay": 0.9,
        "checkpoint_every": 2, "seed": 3}


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def losses(run: Path) -> list[tuple[int, str]]:
    with (run / "train_log.csv").open() as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mgfr_train_cache")


@pytest.fixture(scope="module")
def stage1_run(identities_dataset, tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("stage1") / "run"
    Trainer(cfg(stage=1, max_steps=2), identities_dataset, out, cache_dir=cache,
            progress=False).train()
    return out


@pytest.mark.realdata
def test_stage1_run_folder(stage1_run):
    from mgfr.model import MGFRModel, read_adapters_info
    for name in ("config.yaml", "train_log.csv", "validation.csv", "checkpoint/state.json",
                 "adapters/diffusion_pytorch_model.safetensors", "adapters/mgfr_adapters.json"):
        assert (stage1_run / name).is_file(), name
    assert [s for s, _ in losses(stage1_run)] == [1, 2]
    info = read_adapters_info(stage1_run / "adapters")
    assert info["base"] == "tiny" and info["stage"] == 1 and info["step"] == 2
    assert info["id_embedder"] == "dlib" and info["id_embed_dim"] == 128
    # The adapter folder names its base: it loads with no base argument.
    model = MGFRModel.load_adapters(stage1_run / "adapters")
    assert model.base.preset == "tiny"
    with (stage1_run / "validation.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    assert row["step"] == "2" and float(row["psnr_lq"]) > 15 and row["faces"] == "2"
    assert list((stage1_run / "validation").glob("step_*.png"))
    assert list((stage1_run / "tensorboard").glob("events.*"))


@pytest.mark.realdata
def test_adapter_folder_card(identities_dataset, stage1_run):
    """The run's adapter folder carries a model card with the training data's hash, the
    steps and the last validation's metrics (the numbers of validation.csv)."""
    from huggingface_hub import metadata_load

    from mgfr.hub import training_data_sha256
    from reface_hq.dataset import FaceTrainingDataset
    meta = metadata_load(stage1_run / "adapters" / "README.md")
    ds = FaceTrainingDataset(identities_dataset, "train")
    assert meta["training_data_sha256"] == training_data_sha256(ds)
    assert meta["training_faces"] == len(ds) and meta["training_steps"] == 2
    assert meta["mgfr_base"] == "tiny" and "base_model" not in meta
    with (stage1_run / "validation.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    assert meta["metrics"]["psnr"] == pytest.approx(float(row["psnr"]), rel=1e-5)
    assert meta["metrics"]["psnr_lq"] == pytest.approx(float(row["psnr_lq"]), rel=1e-5)
    assert str(identities_dataset) not in (stage1_run / "adapters" / "README.md").read_text()


@pytest.mark.realdata
def test_pipeline_loads_trained_adapters(identities_dataset, stage1_run):
    """What `mgfr train` writes is what MGFRPipeline loads (no base argument needed)."""
    import numpy as np

    from mgfr.pipeline import load_pipeline
    from reface_hq.dataset import FaceTrainingDataset
    pipe = load_pipeline(adapters=str(stage1_run / "adapters"))
    face = (FaceTrainingDataset(identities_dataset, "test", size=64)[0]["target"]
            .permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = pipe(face, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images[0].shape == (64, 64, 3) and out.images[0].dtype == np.uint8


@pytest.mark.realdata
@pytest.mark.parametrize("stage", [1, 2])
def test_a_step_changes_only_trainable_weights(stage, identities_dataset, stage1_run, cache,
                                               tmp_path):
    init = stage1_run if stage == 2 else None
    tr = Trainer(cfg(stage=stage, max_steps=5, n_references=2), identities_dataset,
                 tmp_path / "run", init=init, cache_dir=cache, progress=False)
    frozen = {name: snapshot(m) for name, m in (("unet", tr.base.unet), ("vae", tr.base.vae),
                                                 ("text", tr.base.text_encoder))}
    adapter0 = snapshot(tr.model.adapter)
    trainable = {n for n, p in tr.model.adapter.named_parameters() if p.requires_grad}
    if stage == 2:
        assert trainable and not any(n.startswith(("lca.", "lca_out", "lca_mid")) for n in trainable)
        assert any(n.startswith("rca.") for n in trainable)
        assert any(n.startswith("id_proj.") for n in trainable)
    else:
        assert trainable and all(n.startswith(("lca.", "lca_out", "lca_mid")) for n in trainable)
    loss = tr.train_step()
    assert math.isfinite(loss) and loss > 0
    for name, m in (("unet", tr.base.unet), ("vae", tr.base.vae), ("text", tr.base.text_encoder)):
        after = m.state_dict()
        assert all(torch.equal(after[k], v) for k, v in frozen[name].items()), name
    after = tr.model.adapter.state_dict()
    changed = {k for k, v in adapter0.items() if not torch.equal(after[k], v)}
    assert changed and changed <= trainable
    assert all(torch.equal(after[k], adapter0[k]) for k in adapter0 if k not in trainable)


def _wait_for(path: Path, predicate, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.is_file() and predicate(path.read_text()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the training process")


@pytest.mark.realdata
def test_sigkill_and_resume_give_the_same_losses(identities_dataset, cache, tmp_path):
    # 8 steps, killed after step 3 is logged: steps 4-8 leave the kill a wide margin
    # (with 4 steps a fast machine finished the run before the kill landed).
    c = cfg(stage=1, max_steps=8, validate_every=0)
    ref = tmp_path / "uninterrupted"
    Trainer(c, identities_dataset, ref, cache_dir=cache, progress=False).train()
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "mgfr", "train", "--stage", "1", "-i",
            str(identities_dataset), "--base", "tiny", "--out", str(run), "--max-steps", "8",
            "--batch-size", "1", "--seed", "3", "--checkpoint-every", "2",
            "--cache-dir", str(cache), "--set", "ema_decay=0.9", "--set", "validation_faces=2",
            "--set", "validation_steps=2"]
    # The same thread count in both processes: float sums in another order would make the
    # weights differ in their last bits (the logged losses hide it).
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Killed after step 3 is logged: the checkpoint holds step 2, so step 3 is redone.
        _wait_for(run / "train_log.csv", lambda t: "\n3," in t, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (run / "checkpoint" / "state.json").is_file()
    assert not (run / "adapters").exists()
    Trainer(c, identities_dataset, run, resume=True, cache_dir=cache, progress=False).train()
    assert losses(run) == losses(ref)
    assert [s for s, _ in losses(run)] == list(range(1, 9))
    from safetensors.torch import load_file
    a = load_file(run / "adapters" / "diffusion_pytorch_model.safetensors")
    b = load_file(ref / "adapters" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cli(argv, capsys) -> tuple[int, str]:
    from mgfr.cli import main
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.realdata
def test_one_line_errors(identities_dataset, stage1_run, cache, tmp_path, capsys):
    import shutil

    import pandas as pd
    common = ["--batch-size", "1", "--max-steps", "1", "--cache-dir", str(cache)]
    # A dataset in which no identity has two photos.
    single = tmp_path / "single"
    single.mkdir()
    df = pd.read_parquet(identities_dataset / "manifest.parquet")
    df.groupby("identity").head(1).to_parquet(single / "manifest.parquet")
    shutil.copytree(identities_dataset / "images", single / "images")
    rc, err = _cli(["train", "--stage", "1", "-i", str(single), "--out",
                    str(tmp_path / "a"), *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no identity has two photos" in err
    # A missing base (folder, then a preset whose weights are not installed).
    rc, err = _cli(["train", "--stage", "1", "-i", str(identities_dataset), "--base",
                    str(tmp_path / "no_such_prior"), "--out", str(tmp_path / "b"), *common],
                   capsys)
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err
    rc, err = _cli(["train", "--stage", "1", "-i", str(identities_dataset), "--base",
                    "sd21-base", "--out", str(tmp_path / "c"), *common], capsys)
    assert rc == 2 and err.startswith("error: pretrained asset 'sd21-base'")
    assert "Traceback" not in err
    # A command that failed on its inputs leaves no run folder behind.
    assert not any((tmp_path / n).exists() for n in "abc")
    # A corrupt checkpoint.
    run = tmp_path / "corrupt"
    shutil.copytree(stage1_run, run)
    model_file = run / "checkpoint" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    rc, err = _cli(["train", "--stage", "1", "-i", str(identities_dataset), "--out",
                    str(run), "--resume", "--seed", "3", "--max-steps", "4", "--batch-size", "1",
                    "--checkpoint-every", "2", "--cache-dir", str(cache), "--set", "ema_decay=0.9",
                    "--set", "validation_faces=2", "--set", "validation_steps=2"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "corrupt" in err
    # Stage 2 without a stage-1 run; a checkpoint that would be overwritten.
    rc, err = _cli(["train", "--stage", "2", "-i", str(identities_dataset), "--out",
                    str(tmp_path / "d"), *common], capsys)
    assert rc == 2 and "--init" in err
    rc, err = _cli(["train", "--stage", "1", "-i", str(identities_dataset), "--out",
                    str(stage1_run), *common], capsys)
    assert rc == 2 and "--resume" in err
    # Stage 2 on another base than its stage 1.
    other = tmp_path / "other_base_run"
    shutil.copytree(stage1_run / "adapters", other / "adapters")
    info_file = other / "adapters" / "mgfr_adapters.json"
    import json
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "base": "sd15"}))
    rc, err = _cli(["train", "--stage", "2", "-i", str(identities_dataset), "--base", "tiny",
                    "--init", str(other), "--out", str(tmp_path / "e"), *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "needs the same base" in err


def test_configs_parse_and_unknown_fields_are_named(tmp_path):
    for name in ("sd21-base-stage1.yaml", "sd21-base-stage2.yaml", "tiny-stage1.yaml",
                 "tiny-stage2.yaml", "mini-stage1.yaml", "mini-stage2.yaml",
                 "mini-stage2-refs.yaml"):
        c = load_config(REPO / "mgfr" / "configs" / name)
        assert c.stage in (1, 2)
    refs = load_config(REPO / "mgfr" / "configs" / "mini-stage2-refs.yaml")
    assert refs.lq_start_rate == 0.5 and refs.lq_start_timesteps == [100, 400]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: 1\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        load_config(bad)
    with pytest.raises(ValueError, match="negative_rate"):
        TrainConfig(negative_rate=1.5)


@pytest.mark.slow
@pytest.mark.realdata
def test_it_learns(identities_dataset, cache, tmp_path):
    """The robust parts of the evidence in docs/mgfr-training.md, on a much shorter run:
    the prior's losses fall, and stage 1 restores the fixed test faces better than its
    initialisation (the frozen prior with a zero adapter): lower noise-prediction loss and
    a higher PSNR of the one-step restoration, on the same LQ inputs, noise and seeds."""
    import numpy as np

    from mgfr.prior import PriorConfig, pretrain_prior
    from mgfr.train import evaluate, validation_set
    prior = tmp_path / "prior"
    pretrain_prior(identities_dataset, prior,
                   PriorConfig(vae_steps=12, unet_steps=12, batch_size=4, seed=0),
                   progress=False)
    with (prior / "training" / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    for phase in ("vae", "unet"):
        loss = [float(r["loss"]) for r in rows if r["phase"] == phase]
        assert np.mean(loss[-4:]) < np.mean(loss[:4]), phase
    c = cfg(stage=1, base=str(prior), max_steps=12, batch_size=4, learning_rate=1e-3,
            validation_faces=6, validation_steps=4, ema_decay=0.0, checkpoint_every=100)
    run = tmp_path / "stage1"
    Trainer(c, identities_dataset, run, cache_dir=cache, progress=False).train()
    val = validation_set(identities_dataset, c, 64, cache)
    before, _ = evaluate(identities_dataset, base=str(prior), config=c, val=val)
    after, _ = evaluate(identities_dataset, adapters=run, config=c, val=val)
    assert after["denoise_loss"] < before["denoise_loss"]
    assert after["psnr_onestep_t500"] > before["psnr_onestep_t500"]
