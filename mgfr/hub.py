"""Hugging Face Hub layout of trained adapters: the model card (``README.md``) and the
training-data hash it records.

A trained adapter folder (``RUN/adapters``, written by ``MGFRModel.save_adapters``) is::

    config.json                          the DualControlAdapter config (diffusers)
    diffusion_pytorch_model.safetensors  the weights
    mgfr_adapters.json                   base, stage, step, embedder, data hash, metrics
    README.md                            model card: YAML front matter the Hub reads

That is what ``huggingface_hub.upload_folder`` (or ``huggingface-cli upload``) takes as
it is; nothing here talks to the network. The front matter holds ``library_name``,
``base_model`` (the Hub id of the base when it has one: a preset whose asset names its
Hub repository, or a folder inside a Hugging Face cache), ``tags``, ``pipeline_tag``,
``training_data_sha256``, ``training_steps``, and the validation metrics twice: under
``model-index`` (the Hub's evaluation-results schema) and as a plain ``metrics`` mapping.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"

#: metric keys of ``mgfr.train.validate`` shown on the card, with their display names
CARD_METRICS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "identity_cosine": "identity cosine",
    "psnr_lq": "PSNR of the LQ input (dB)", "ssim_lq": "SSIM of the LQ input",
    "identity_cosine_lq": "identity cosine of the LQ input",
    "denoise_loss": "noise-prediction MSE", "psnr_onestep_t500": "one-step PSNR from t=500 (dB)",
}

_HF_CACHE_PART = re.compile(r"^models--([A-Za-z0-9][\w.-]*)--([\w.-]+)$")


def training_data_sha256(dataset) -> str:
    """sha256 of the faces a run trains on: every ``(face_id, image sha256)`` of the
    dataset's items in order (the manifest's ``image_sha256`` where the build wrote one,
    else the image file's bytes). Another split, another build or an edited photo gives
    another hash; the same folder anywhere on disk gives the same one."""
    from reface_hq.dataset import load_manifest, safe_child

    shas: dict[str, str] = {}
    df = load_manifest(dataset.root)
    if "image_sha256" in df:
        shas = {str(f): str(s) for f, s in zip(df["face_id"], df["image_sha256"], strict=False)
                if isinstance(s, str) and s}
    h = hashlib.sha256()
    for item in dataset.items:
        sha = shas.get(str(item["face_id"]))
        if sha is None:
            sha = hashlib.sha256(safe_child(dataset.root, item["image_path"]).read_bytes()) \
                .hexdigest()
        h.update(f"{item['face_id']}\x1f{sha}\n".encode())
    return h.hexdigest()


def base_model_id(base: str | None) -> str | None:
    """The Hub repository id of ``base``: a preset whose weights asset names one
    (``sd21-base`` -> ``stabilityai/stable-diffusion-2-1-base``), or a folder inside a
    Hugging Face cache (``.../models--org--name/snapshots/<rev>``); None otherwise (a
    random-weight preset such as ``tiny``, or a local prior folder)."""
    if not base:
        return None
    from .presets import PRESETS
    if str(base) in PRESETS:
        preset = PRESETS.get(str(base))
        if preset.asset:
            from reface_core.assets import get_asset
            try:
                return get_asset(preset.asset).hf_repo
            except Exception:  # noqa: BLE001 - an asset the registry does not know
                return None
        return None
    for part in reversed(Path(str(base)).parts):
        m = _HF_CACHE_PART.match(part)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def base_label(base: str | None) -> str:
    """How the card names the base without a machine path: the preset name, the Hub id,
    or the folder's own name."""
    if not base:
        return "unknown"
    hub = base_model_id(base)
    if hub:
        return hub
    from .presets import PRESETS
    return str(base) if str(base) in PRESETS else Path(str(base)).name


def _finite_metrics(metrics: dict | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if k in CARD_METRICS:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                out[k] = round(f, 6)
    return out


def card_metadata(info: dict[str, Any], name: str = "mgfr-adapters") -> dict[str, Any]:
    """The YAML front matter of an adapter folder's model card, from its
    ``mgfr_adapters.json`` fields (``info``)."""
    stage = info.get("stage")
    meta: dict[str, Any] = {"library_name": "diffusers"}
    hub = base_model_id(info.get("base"))
    if hub:
        meta["base_model"] = hub
    meta["pipeline_tag"] = "image-to-image"
    tags = ["mgfr", "face-restoration", "reference-guided", "controlnet-style-adapter"]
    if stage is not None:
        tags.append(f"stage-{int(stage)}")
    meta["tags"] = tags
    meta["mgfr_base"] = base_label(info.get("base"))
    if stage is not None:
        meta["mgfr_stage"] = int(stage)
    if info.get("training_data_sha256"):
        meta["training_data_sha256"] = str(info["training_data_sha256"])
    if info.get("train_faces") is not None:
        meta["training_faces"] = int(info["train_faces"])
    if info.get("step") is not None:
        meta["training_steps"] = int(info["step"])
    meta["identity_embedder"] = str(info.get("id_embedder", ""))
    metrics = _finite_metrics(info.get("metrics"))
    if metrics:
        meta["metrics"] = metrics
        faces = (info.get("metrics") or {}).get("faces")
        ds_name = "Reface-HQ test split" + (f" ({int(faces)} faces)" if faces else "")
        meta["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": "image-to-image", "name": "Reference-guided face restoration"},
                "dataset": {"type": "reface-hq", "name": ds_name, "split": "test"},
                "metrics": [{"type": k, "name": CARD_METRICS[k], "value": v}
                            for k, v in metrics.items()],
            }],
        }]
    return meta


def model_card(info: dict[str, Any], name: str = "mgfr-adapters") -> str:
    """``README.md`` text: YAML front matter (:func:`card_metadata`) and a short body."""
    import yaml

    meta = card_metadata(info, name)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    stage = info.get("stage")
    what = {1: "stage 1: the LQ control adapter (LCA) alone",
            2: "stage 2: the LQ adapter and the reference branch (RCA, RLF, identity "
               "projection, exchange links)"}.get(int(stage) if stage is not None else 0,
                                                   "an MGFR dual-control adapter")
    from .presets import PRESETS
    base_arg = meta["mgfr_base"] if meta["mgfr_base"] in PRESETS else "BASE"
    lines = [
        f"# {name}", "",
        (f"MGFR adapters ({what}), trained for {info.get('step', '?')} steps on the frozen "
         f"base `{meta['mgfr_base']}` with the `{meta['identity_embedder']}` identity "
         f"embedder. The base weights are not in this folder."), "",
        "```python",
        "import mgfr",
        f'pipe = mgfr.load_pipeline(adapters="PATH/TO/THIS/FOLDER", base="{base_arg}")',
        "out = pipe(face, references=[reference_face])",
        "```", "",
    ]
    if info.get("training_data_sha256"):
        lines += [(f"Training data: sha256 `{info['training_data_sha256']}` over "
                   f"{info.get('train_faces', '?')} (face id, image sha256) pairs of the "
                   "training split."), ""]
    metrics = meta.get("metrics")
    if metrics:
        lines += ["Validation at the last step (fixed test-split faces, DDIM, no guidance):",
                  "", "| metric | value |", "|---|---|"]
        lines += [f"| {CARD_METRICS[k]} | {v:.4g} |" for k, v in metrics.items()]
        lines.append("")
    return f"---\n{front}---\n\n" + "\n".join(lines)
