"""Adapter folders in the Hugging Face Hub layout: the model card's front matter parses with
huggingface_hub's own readers (offline), names the base's Hub id, the training-data hash,
the steps and the metrics, and leaks no machine path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mgfr.hub import base_label, base_model_id, card_metadata

METRICS = {"psnr": 21.5, "ssim": 0.61, "identity_cosine": 0.9, "psnr_lq": 20.25,
           "denoise_loss": 0.125, "psnr_onestep": float("nan"), "faces": 8,
           "psnr_onestep_t500": float("inf")}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_base_model_ids():
    assert base_model_id("sd21-base") == "stabilityai/stable-diffusion-2-1-base"
    assert base_model_id("sd15") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert base_model_id("tiny") is None
    snap = "/cache/hub/models--stabilityai--stable-diffusion-2-1/snapshots/5cae40e"
    assert base_model_id(snap) == "stabilityai/stable-diffusion-2-1"
    assert base_model_id("/data/priors/my-prior") is None
    assert base_label("/data/priors/my-prior") == "my-prior"
    assert base_label("tiny") == "tiny"
    assert base_label(snap) == "stabilityai/stable-diffusion-2-1"


def test_adapter_folder_is_a_hub_model_repository(tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import CommitOperationAdd, ModelCard, metadata_load

    from mgfr.base import load_base
    from mgfr.model import MGFRModel, read_adapter
    base = load_base("tiny")
    model = MGFRModel.from_base(base)
    prior = tmp_path / "private" / "prior-folder"
    out = model.save_adapters(tmp_path / "run" / "adapters", base="sd21-base", stage=2,
                              step=1234, training_data_sha256="ab" * 32, train_faces=190,
                              metrics=METRICS, init=str(prior))
    files = sorted(p.name for p in out.iterdir())
    assert files == ["README.md", "config.json", "diffusion_pytorch_model.safetensors",
                     "mgfr_adapters.json"]
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n") and str(tmp_path) not in text
    meta = metadata_load(out / "README.md")
    assert meta["library_name"] == "diffusers"
    assert meta["base_model"] == "stabilityai/stable-diffusion-2-1-base"
    assert meta["training_data_sha256"] == "ab" * 32 and meta["training_faces"] == 190
    assert meta["training_steps"] == 1234 and meta["mgfr_stage"] == 2
    assert "mgfr" in meta["tags"] and "stage-2" in meta["tags"]
    # Non-finite values and keys that are not metrics stay off the card.
    assert meta["metrics"] == {"psnr": 21.5, "ssim": 0.61, "identity_cosine": 0.9,
                               "psnr_lq": 20.25, "denoise_loss": 0.125}
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "stabilityai/stable-diffusion-2-1-base"
    assert card.data.model_name == "mgfr-adapters-stage2"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == meta["metrics"]
    assert {r.task_type for r in card.data.eval_results} == {"image-to-image"}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert all(math.isfinite(v) for v in results.values())
    # Every file is a valid upload operation (what upload_folder builds from a folder).
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
           for p in sorted(out.iterdir())]
    assert len(ops) == 4 and huggingface_hub.__version__
    # The card does not get in the way of loading.
    def public(cfg):
        return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    assert public(read_adapter(out).config) == public(model.adapter.config)
    back = MGFRModel.load_adapters(out, base=base)
    a, b = model.adapter.state_dict(), back.adapter.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_card_without_hub_base_or_metrics():
    meta = card_metadata({"base": "/home/someone/priors/mini-prior", "stage": 1, "step": 3,
                          "id_embedder": "dlib"})
    assert "base_model" not in meta and "model-index" not in meta and "metrics" not in meta
    assert meta["mgfr_base"] == "mini-prior" and meta["training_steps"] == 3
    assert "/home" not in repr(meta)


def test_training_data_hash_follows_the_faces(tmp_path):
    """The same faces give the same hash wherever the folder is; another image hash, another
    split, or a removed face gives another."""
    import numpy as np
    import pandas as pd

    from mgfr.hub import training_data_sha256
    from reface_hq.dataset import FaceTrainingDataset

    def build(root: Path, shas: list[str], split: list[str]) -> Path:
        (root / "images").mkdir(parents=True)
        rows = []
        for i, (sha, sp) in enumerate(zip(shas, split, strict=False)):
            name = f"images/f{i}.png"
            from PIL import Image
            Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)).save(root / name)
            rows.append({"face_id": f"f{i}", "identity": f"id{i // 2}", "split": sp,
                         "image_path": name, "image_sha256": sha, "caption": ""})
        pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
        return root

    shas = [f"{i:064x}" for i in range(6)]
    split = ["train"] * 4 + ["test"] * 2
    a = training_data_sha256(FaceTrainingDataset(build(tmp_path / "a", shas, split), "train"))
    b = training_data_sha256(FaceTrainingDataset(build(tmp_path / "b", shas, split), "train"))
    assert a == b and len(a) == 64
    edited = shas[:1] + [f"{99:064x}"] + shas[2:]
    c = training_data_sha256(FaceTrainingDataset(build(tmp_path / "c", edited, split), "train"))
    assert c != a
    t = training_data_sha256(FaceTrainingDataset(tmp_path / "a", "test"))
    assert t != a
    # A test-split edit leaves the training hash alone.
    edited = shas[:5] + [f"{98:064x}"]
    d = training_data_sha256(FaceTrainingDataset(build(tmp_path / "d", edited, split), "train"))
    assert d == a
