"""``mgfr train``: the two training stages of MGFR on accelerate.

Stage 1 trains the LQ adapter (LCA) with attribute prompts and no reference; stage 2 starts
from a stage-1 run (``init``) and trains what the reference branch adds (RCA, RLF,
identity projection, exchange links; ``MGFRModel.trainable_parameters``) with reference
photos and their identity embeddings. The base (UNet, VAE, text encoder) stays frozen; the
loss is the MSE of the UNet's prediction in the base's DDPM schedule: of the noise for an
epsilon base, of v = sqrt(a) noise - sqrt(1 - a) x0 for a v-prediction base
(``prediction_type`` in the base's scheduler config).

One code path for every scale: ``accelerate launch -m mgfr train ...`` runs it on several
GPUs or nodes (each process takes its slice of a global batch, see
``mgfr.data.batch_indices``); ``accelerate launch --multi_gpu`` on a machine without a GPU
runs the processes together on the CPU (gloo). The run folder::

    RUN_DIR/config.yaml        the resolved config (a resumed run must match it)
    RUN_DIR/checkpoint/        accelerate save_state + state.json, written to a temporary
                               folder and renamed (a kill never leaves a torn checkpoint)
    RUN_DIR/adapters/          the trainable weights only (EMA when enabled), safetensors,
                               + mgfr_adapters.json: what MGFRPipeline loads, + README.md:
                               a Hub model card (mgfr.hub)
    RUN_DIR/ranks/             with record_ranks: each process's face ids and weight hashes
    RUN_DIR/train_log.csv      step, loss, lr, samples/s, peak memory
    RUN_DIR/validation.csv     step, PSNR, SSIM, identity cosine (and of the LQ input)
    RUN_DIR/validation/        image grids (LQ | restored | HQ per face)
    RUN_DIR/tensorboard/       the same scalars and grids for TensorBoard

Exact resume: the data order, the per-face plans, the degradations, the noise and the
timesteps of every micro-step are functions of (seed, step) alone, and the optimizer,
scheduler and EMA states come back from the checkpoint, so a run killed and resumed writes
the same loss sequence as one that never stopped (tested with SIGKILL).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import clean_estimate, noise_estimate, training_target
from .errors import TrainingError

CHECKPOINT_DIR = "checkpoint"
ADAPTERS_DIR = "adapters"


@dataclass
class TrainConfig:
    """A training recipe; every field can come from YAML (``--config``) or ``--set``."""

    stage: int = 1
    base: str = "tiny"
    # optimisation
    max_steps: int = 1000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # VAE latents of the HQ faces (targets of positive samples, references) encoded once
    # and read back every step (mgfr.latent_cache); LQ inputs and negative targets are
    # degraded per step and always encoded.
    cache_latents: bool = False
    ema_decay: float = 0.999          # 0: no EMA; saved adapters are the EMA weights
    seed: int = 0
    # Timestep weighting: with probability ``focus_rate`` a sample's timestep is drawn from
    # [0, focus_timesteps) instead of the whole schedule, so the steps that restoration
    # from the noised LQ latent (``strength`` < 1) actually runs get most of the training.
    focus_timesteps: int = 0          # 0: uniform over the whole schedule
    focus_rate: float = 0.0
    # Training from where sampling starts: with probability ``lq_start_rate`` a sample's
    # noisy input is the *LQ* latent noised to t (what sampling with ``strength`` < 1 starts
    # from) instead of the noised HQ target, t drawn from [lq_start_timesteps[0],
    # lq_start_timesteps[1]), and the loss asks for the noise that leads from that input to
    # the HQ target: eps* = (x_t - sqrt(abar_t) z_hq) / sqrt(1 - abar_t), so the model's
    # clean estimate there is the HQ face. A noised HQ target already shows the face at
    # the timesteps restoration runs, so plain denoising gives the reference branch nothing
    # to add; from the noised LQ the identity must come from somewhere (the references).
    lq_start_rate: float = 0.0
    lq_start_timesteps: Any = field(default_factory=lambda: [100, 400])
    # data
    resolution: int | None = None     # None: the preset's resolution
    n_references: int = 1
    flip: bool = True
    degradation: Any = field(default_factory=lambda: {"mgfr-mild": 1.0, "mgfr-medium": 1.0})
    negative_preset: str = "mgfr-negative"
    negative_rate: float = 0.1
    prompt_dropout: float = 0.1
    reference_dropout: float = 0.1    # stage 2 only
    embedder: str = "dlib"
    # bookkeeping
    checkpoint_every: int = 100
    log_every: int = 1
    validate_every: int = 0           # 0: validate at the end only
    validation_faces: int = 8
    validation_steps: int = 20        # DDIM steps of the validation restorations
    validation_preset: str | None = None  # None: the first preset of ``degradation``
    validation_seed: int = 1234
    validation_strength: float | None = None  # None: the preset's inference default
    # Each process writes RUN_DIR/ranks/rank<i>.csv (the face ids of every micro-step it
    # trained on) and rank<i>.json (sha256 of its adapter weights at the end): the evidence
    # that processes read disjoint shards and hold the same weights.
    record_ranks: bool = False

    def __post_init__(self):
        if int(self.stage) not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps",
                     "checkpoint_every", "log_every", "n_references", "validation_faces",
                     "validation_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.focus_timesteps) < 0:
            raise ValueError(f"focus_timesteps must be >= 0, got {self.focus_timesteps}")
        lo_hi = self.lq_start_timesteps
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2
                and all(isinstance(v, int) for v in lo_hi) and 0 <= lo_hi[0] < lo_hi[1]):
            raise ValueError(f"lq_start_timesteps must be [low, high] with 0 <= low < high, "
                             f"got {lo_hi!r}")
        self.lq_start_timesteps = [int(v) for v in lo_hi]
        for name in ("negative_rate", "prompt_dropout", "reference_dropout", "focus_rate",
                     "lq_start_rate"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= float(self.ema_decay) < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got "
                             f"{self.mixed_precision!r}")
        if float(self.learning_rate) <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    # Fields that may differ when resuming (extend a run, change bookkeeping).
    RESUMABLE_CHANGES = ("max_steps", "checkpoint_every", "log_every", "validate_every",
                         "validation_faces", "validation_steps", "record_ranks",
                         "cache_latents")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            from reface_core.registry import unknown_names_message
            raise ValueError(f"{where}: {unknown_names_message('field', unknown, names)}")
        return cls(**d)


def read_recipe(path: str | os.PathLike) -> dict:
    """The mapping of fields in a YAML recipe file (one-line errors)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"config {path} does not exist")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise TrainingError(f"config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise TrainingError(f"config {path}: expected a mapping of fields")
    return d


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> TrainConfig:
    """A recipe from YAML (or the defaults), with ``overrides`` applied."""
    d: dict = {}
    if path is not None:
        d = read_recipe(path)
        d.pop("gpu_hours_estimate", None)  # documentation inside the recipe files
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(d, where=str(path or "config"))


def _parse_set(items: list[str]) -> dict:
    import yaml
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


# ---- metrics ------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), mean over RGB channels."""
    import cv2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for ch in range(a.shape[2]):
        x = a[..., ch].astype(np.float64)
        y = b[..., ch].astype(np.float64)
        def blur(im):
            return cv2.GaussianBlur(im, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(m[5:-5, 5:-5].mean())
    return float(np.mean(vals))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8."""
    return (x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round() \
        .astype(np.uint8)


# ---- the trainable part as one module -------------------------------------------------

class AdapterStep(nn.Module):
    """The adapter's whole forward (RLF + identity tokens + control encoders) as one module,
    so that accelerate/DDP wraps exactly the trainable weights and checkpoints hold them
    alone (the frozen UNet is rebuilt from the base, never saved)."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, noisy, timesteps, lq_latents, ref_latents=None, id_embeds=None,
                ref_mask=None, encoder_hidden_states=None):
        cond = self.adapter.prepare(lq_latents, ref_latents, id_embeds, ref_mask)
        return self.adapter(noisy, timesteps, cond, encoder_hidden_states=encoder_hidden_states)


def sample_timesteps(n: int, total: int, focus: int, rate: float,
                     generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps: uniform over [0, total), except that with probability
    ``rate`` one is drawn from [0, focus) (``focus`` 0: never)."""
    t = torch.randint(0, total, (n,), generator=generator)
    if focus > 0 and rate > 0:
        low = torch.randint(0, min(int(focus), total), (n,), generator=generator)
        pick = torch.rand(n, generator=generator) < rate
        t = torch.where(pick, low, t)
    return t


def lq_start_inputs(scheduler, target: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, rate: float, span, generator: torch.Generator):
    """``(noisy, eps_target, t)`` where a ``rate`` share of the samples start from the LQ
    latent: for those, t is drawn from ``span`` = [low, high), the input is
    ``add_noise(lq, noise, t)`` and the noise target ``(x_t - sqrt(abar) target) /
    sqrt(1 - abar)``, whose clean estimate is ``target`` (``TrainConfig.lq_start_rate``).
    The other samples keep the plain denoising input ``add_noise(target, noise, t)`` and
    target ``noise``."""
    n = target.shape[0]
    total = int(scheduler.config.num_train_timesteps)
    lo, hi = int(span[0]), min(int(span[1]), total)
    pick = (torch.rand(n, generator=generator) < float(rate)).to(target.device)
    t_lq = torch.randint(lo, max(hi, lo + 1), (n,), generator=generator).to(t.device)
    t = torch.where(pick, t_lq, t)
    abar = scheduler.alphas_cumprod.to(target.device, torch.float32)[t].view(n, 1, 1, 1)
    x0 = torch.where(pick.view(n, 1, 1, 1), lq, target)
    noisy = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(target.dtype)
    eps = ((noisy.float() - abar.sqrt() * target.float()) / (1 - abar).sqrt()).to(target.dtype)
    return noisy, eps, t


def _enable_checkpointing(module: nn.Module) -> None:
    """Gradient checkpointing on every diffusers block of ``module`` (the adapter's blocks
    are diffusers' own, which check ``gradient_checkpointing`` themselves)."""
    from functools import partial

    import torch.utils.checkpoint as cp
    for m in module.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = partial(cp.checkpoint, use_reentrant=False)


def _micro_generator(seed: int, micro: int, process: int, device) -> torch.Generator:
    digest = hashlib.sha256(f"mgfr-noise\x1f{seed}\x1f{micro}\x1f{process}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return g


def _launched_world_size() -> int:
    """The number of processes the launcher started (torchrun / ``accelerate launch
    --multi_gpu`` set ``WORLD_SIZE``, mpirun its own variables; 1 without a launcher).

    ``accelerate launch --cpu --num_processes N`` starts N processes only through mpirun
    (``--mpirun_hostfile``); without it, it starts one, which trains alone (a warning says
    so here). ``accelerate launch --multi_gpu --num_processes N`` on a machine without a
    GPU starts N processes, which then train together on the CPU (gloo)."""
    world = 1
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):  # torchrun, then the MPI launchers accelerate reads
            world = int(os.environ[name])
            break
    if world == 1 and os.environ.get("MASTER_ADDR") and \
            os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        import sys
        print("warning: one training process: `accelerate launch --cpu --num_processes N` "
              "starts N only through mpirun; use `accelerate launch --multi_gpu "
              "--num_processes N` (gloo on the CPU when there is no GPU)", file=sys.stderr)
    return world


def _has_accelerator_device() -> bool:
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


def _same_base(a: str, b: str) -> bool:
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


class Trainer:
    """Builds everything for one run from a config (the CLI and the tests call this)."""

    def __init__(self, config: TrainConfig, data: str | os.PathLike, out: str | os.PathLike, *,
                 init: str | os.PathLike | None = None, resume: bool = False,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 base_models=None):
        """``base_models``: an already built ``mgfr.base.BaseModels`` to train on instead of
        loading ``config.base`` (benchmarks with random paper-scale weights)."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = config
        self.data = Path(data)
        self.out = Path(out)
        self.progress = progress
        self.cache_dir = cache_dir
        if config.stage == 2 and init is None and not (resume and (self.out / CHECKPOINT_DIR).exists()):
            raise TrainingError("stage 2 starts from a stage-1 run: pass --init RUN_DIR")
        world = _launched_world_size()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                                       cpu=world > 1 and not _has_accelerator_device())
        acc = self.accelerator
        if acc.num_processes != world:
            raise TrainingError(f"launched as {world} processes but accelerate set up "
                                f"{acc.num_processes}; check the launcher's settings")
        set_seed(config.seed)
        self._check_run_folder(resume)

        # ---- frozen base ---------------------------------------------------------------
        from .base import load_base
        from .model import MGFRModel
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            config.mixed_precision, torch.float32)
        if base_models is not None:
            self.base = base_models.to(acc.device, self.weight_dtype)
        else:
            self.base = load_base(config.base, device=acc.device, dtype=self.weight_dtype,
                                  seed=config.seed)
        self.resolution = int(config.resolution or self.base.resolution)

        # ---- data ----------------------------------------------------------------------
        from reface_hq.dataset import DatasetError, FaceTrainingDataset

        from .data import BatchBuilder
        try:
            self.dataset = FaceTrainingDataset(
                self.data, "train", n_references=config.n_references, size=self.resolution,
                seed=config.seed, flip=config.flip,
                embedder=config.embedder if config.stage == 2 else None,
                cache_dir=cache_dir, progress=progress and acc.is_main_process)
        except DatasetError as e:
            raise TrainingError(str(e)) from None
        from .hub import training_data_sha256
        self.data_sha256 = training_data_sha256(self.dataset)
        self.builder = BatchBuilder(
            config.degradation, negative_preset=config.negative_preset,
            negative_rate=config.negative_rate, prompt_dropout=config.prompt_dropout,
            reference_dropout=config.reference_dropout if config.stage == 2 else 0.0,
            seed=config.seed)

        # ---- model ---------------------------------------------------------------------
        adapter_opts = {}
        if config.stage == 2:
            adapter_opts = {"id_embedder": config.embedder,
                            "id_embed_dim": int(self.dataset.embedding_dim)}
        if init is not None:
            from .model import read_adapters_info
            init_dir = self._adapters_dir(Path(init))
            init_base = read_adapters_info(init_dir).get("base")
            if init_base is not None and not _same_base(init_base, config.base):
                raise TrainingError(f"--init {init}: stage 1 was trained on base {init_base!r}, "
                                    f"this run uses {config.base!r}; stage 2 needs the same base")
            self.model = MGFRModel.load_adapters(init_dir, base=self.base)
            self.model.adapter.to(acc.device)
            if config.stage == 2 and not self.model.adapter.config.enable_rca:
                # A stage-1 folder holds the LCA alone: add a new reference branch.
                from .model import with_reference_branch
                self.model.adapter = with_reference_branch(self.model.adapter, self.base.unet,
                                                           **adapter_opts)
            if config.stage == 2:
                ac = self.model.adapter.config
                if ac.id_embedder != config.embedder or int(ac.id_embed_dim) != \
                        int(self.dataset.embedding_dim):
                    raise TrainingError(
                        f"{init_dir}: adapter expects identity embedder {ac.id_embedder!r} "
                        f"({ac.id_embed_dim}-d) but this run uses {config.embedder!r} "
                        f"({self.dataset.embedding_dim}-d); train stage 1 with the same "
                        "embedder setting")
        else:
            self.model = MGFRModel.from_base(self.base, **adapter_opts)
        self.model.adapter.to(dtype=torch.float32)  # trainable weights stay fp32 (autocast)
        self.params = self.model.trainable_parameters(config.stage)
        self.frozen_names = [n for n, p in self.model.adapter.named_parameters()
                             if not p.requires_grad]
        if config.gradient_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
            _enable_checkpointing(self.model.adapter)
        self._write_run_config()
        self.step_module = AdapterStep(self.model.adapter)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay)
        from diffusers.optimization import get_scheduler
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer=self.optimizer,
            num_warmup_steps=config.lr_warmup_steps * acc.num_processes,
            num_training_steps=config.max_steps * acc.num_processes)
        self.ema = None
        if config.ema_decay > 0:
            from diffusers.training_utils import EMAModel
            # Not registered with accelerate: its custom objects are pickled, and checkpoints
            # are read with safetensors / weights_only only (_save_ema / _load_ema).
            self.ema = EMAModel(self.params, decay=config.ema_decay, foreach=False)
        self.step_module, self.optimizer, self.lr_scheduler = acc.prepare(
            self.step_module, self.optimizer, self.lr_scheduler)
        self.text_cache: dict[str, torch.Tensor] = {}
        self._rank_log = None
        self.latent_cache = None
        if config.cache_latents:
            from .latent_cache import load_or_build
            self.latent_cache = load_or_build(
                self.dataset, self.base.vae, self._latents,
                cache_dir=Path(cache_dir) if cache_dir is not None else self.dataset.root / "cache",
                dtype=self.weight_dtype, flip=config.flip, batch_size=config.batch_size,
                process_index=acc.process_index, num_processes=acc.num_processes,
                is_main=acc.is_main_process, wait=acc.wait_for_everyone,
                progress=progress and acc.is_main_process)
        self.step = 0
        if resume and (self.out / CHECKPOINT_DIR).exists():
            self._load_checkpoint()
        self.init = str(init) if init is not None else None

    # ---- run folder -------------------------------------------------------------------
    def _check_run_folder(self, resume: bool) -> None:
        import yaml
        cfg_file = self.out / "config.yaml"
        ckpt = self.out / CHECKPOINT_DIR
        if ckpt.exists() and not resume:
            raise TrainingError(f"{self.out} holds a checkpoint of an earlier run; pass --resume "
                                "to continue it or choose another --out")
        if resume and ckpt.exists() and cfg_file.is_file():
            saved = yaml.safe_load(cfg_file.read_text()) or {}
            now = asdict(self.cfg)
            diff = sorted(k for k in set(saved) | set(now) if k not in
                          TrainConfig.RESUMABLE_CHANGES and saved.get(k) != now.get(k))
            if diff:
                raise TrainingError(f"{cfg_file}: the run was started with other settings "
                                    f"({', '.join(diff)}); resume with the same config")

    def _write_run_config(self) -> None:
        """The run folder and its config.yaml, once the base, data and init have loaded: a
        command that fails on its inputs leaves no run folder behind."""
        import yaml
        if self.accelerator.is_main_process:
            from reface_core.atomic import write_text_atomic
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / "config.yaml",
                              yaml.safe_dump(asdict(self.cfg), sort_keys=False))

    @staticmethod
    def _adapters_dir(path: Path) -> Path:
        if (path / ADAPTERS_DIR).is_dir():
            return path / ADAPTERS_DIR
        if path.is_dir():
            return path
        raise TrainingError(f"--init {path}: no such run folder")

    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        ckpt = self.out / CHECKPOINT_DIR
        tmp = self.out / f".{CHECKPOINT_DIR}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            if self.ema is not None:
                _save_ema(self.ema, tmp / "ema.safetensors")
            (tmp / "state.json").write_text(json.dumps(
                {"step": self.step, "stage": self.cfg.stage, "base": self.cfg.base}))
            old = self.out / f".{CHECKPOINT_DIR}.old"
            shutil.rmtree(old, ignore_errors=True)
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _load_checkpoint(self) -> None:
        ckpt = self.out / CHECKPOINT_DIR
        try:
            state = json.loads((ckpt / "state.json").read_text())
            self.accelerator.load_state(str(ckpt))
            if self.ema is not None:
                _load_ema(self.ema, ckpt / "ema.safetensors")
                self.ema.to(self.accelerator.device)
            self.step = int(state["step"])
        except Exception as e:  # noqa: BLE001 - any failure means a checkpoint we cannot use
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise TrainingError(f"{ckpt}: corrupt or incompatible checkpoint ({first}); delete "
                                "it to start over") from None

    # ---- encoding ---------------------------------------------------------------------
    @torch.no_grad()
    def _latents(self, x01: torch.Tensor) -> torch.Tensor:
        vae = self.base.vae
        z = vae.encode((x01 * 2 - 1).to(vae.device, self.weight_dtype)).latent_dist.mean
        return z * vae.config.scaling_factor

    @torch.no_grad()
    def _text(self, prompts: list[str]) -> torch.Tensor:
        from .model import encode_prompts
        missing = [p for p in dict.fromkeys(prompts) if p not in self.text_cache]
        if missing:
            for p, h in zip(missing, encode_prompts(self.base, missing), strict=False):
                self.text_cache[p] = h
        return torch.stack([self.text_cache[p] for p in prompts])

    def _target_latents(self, batch: dict) -> torch.Tensor:
        """Latents of the targets: positive samples from the latent cache when there is
        one (their target is the HQ face), negative ones encoded (degraded per step)."""
        if self.latent_cache is None:
            return self._latents(batch["target"])
        neg = [i for i, p in enumerate(batch["plans"]) if p.negative]
        z = self.latent_cache.get(batch["index"], batch["flipped"], device=self.accelerator.device,
                                  dtype=self.weight_dtype)
        if neg:
            z[neg] = self._latents(batch["target"][neg])
        return z

    def _conditions(self, batch: dict):
        lq = self._latents(batch["lq"])
        refs = ids = mask = None
        if self.cfg.stage == 2:
            b, r = batch["references"].shape[:2]
            if self.latent_cache is not None:
                refs = self.latent_cache.get(
                    [k for row in batch["reference_indices"] for k in row],
                    [f for row in batch["reference_flipped"] for f in row],
                    device=lq.device, dtype=lq.dtype).unflatten(0, (b, r))
            else:
                refs = self._latents(batch["references"].flatten(0, 1)).unflatten(0, (b, r))
            ids = batch["reference_embeddings"].to(lq.device, lq.dtype)
            mask = batch["reference_mask"][:, None].expand(b, r).to(lq.device)
        return lq, refs, ids, mask

    # ---- one micro-step -----------------------------------------------------------------
    def _micro_batch(self, micro: int) -> tuple[int, dict]:
        from .data import batch_indices, collate
        acc = self.accelerator
        epoch, idx = batch_indices(micro, n=len(self.dataset), batch_size=self.cfg.batch_size,
                                   seed=self.cfg.seed, num_processes=acc.num_processes,
                                   process_index=acc.process_index)
        self.dataset.set_epoch(epoch)
        if self._rank_log is not None:
            self._rank_log.write({"step": self.step + 1, "micro": micro, "epoch": epoch,
                                  "face_ids": " ".join(self.dataset.items[i]["face_id"]
                                                       for i in idx)})
        items = collate([self.dataset[i] for i in idx])
        batch = self.builder(items, epoch, device=acc.device)
        for key in ("index", "flipped", "reference_indices", "reference_flipped"):
            batch[key] = items[key]
        return epoch, batch

    def _loss(self, micro: int) -> torch.Tensor:
        acc = self.accelerator
        _, batch = self._micro_batch(micro)
        gen = _micro_generator(self.cfg.seed, micro, acc.process_index, acc.device)
        target = self._target_latents(batch)
        lq, refs, ids, mask = self._conditions(batch)
        hidden = self._text(batch["prompts"])
        sched = self.base.noise_scheduler
        noise = torch.randn(target.shape, generator=gen).to(target.device, target.dtype)
        t = sample_timesteps(target.shape[0], sched.config.num_train_timesteps,
                             self.cfg.focus_timesteps, self.cfg.focus_rate, gen).to(target.device)
        noisy = sched.add_noise(target, noise, t)
        eps_target = noise
        if self.cfg.lq_start_rate > 0:
            noisy, eps_target, t = lq_start_inputs(
                sched, target, lq.to(target.dtype), noise, t, self.cfg.lq_start_rate,
                self.cfg.lq_start_timesteps, gen)
        # epsilon bases learn the noise, v-prediction bases v (the base's scheduler config);
        # an LQ-start sample's "noise" is the one that leads from its start to the HQ face
        goal = training_target(self.base.prediction_type, target, eps_target, t,
                               sched.alphas_cumprod)
        with acc.autocast():
            down, mid = self.step_module(noisy, t, lq, refs, ids, mask, hidden)
            pred = self.base.unet(noisy, t, hidden,
                                  down_block_additional_residuals=[d.to(noisy.dtype) for d in down],
                                  mid_block_additional_residual=mid.to(noisy.dtype),
                                  return_dict=False)[0]
        return F.mse_loss(pred.float(), goal.float())

    def train_step(self) -> float:
        """One optimisation step (``gradient_accumulation_steps`` micro-steps)."""
        acc = self.accelerator
        total = 0.0
        k = self.cfg.gradient_accumulation_steps
        for j in range(k):
            micro = self.step * k + j
            with acc.accumulate(self.step_module):
                loss = self._loss(micro)
                acc.backward(loss)
                if acc.sync_gradients and self.cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += float(acc.gather(loss.detach()[None]).mean()) / k
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        return total

    # ---- the loop -----------------------------------------------------------------------
    def train(self, *, stop_after: int | None = None) -> Path:
        """Train to ``max_steps`` (or ``stop_after`` more steps); returns the run folder."""
        from tqdm.auto import tqdm
        acc = self.accelerator
        # The logs belong to the main process: another rank rewriting the same file (the
        # resume truncation replaces it) would leave the main one appending to a deleted file.
        main = acc.is_main_process
        log = _CsvLog(self.out / "train_log.csv",
                      ("step", "loss", "lr", "samples_per_s", "peak_memory_mb"), self.step) \
            if main else _NullLog()
        vlog = _CsvLog(self.out / "validation.csv", VALIDATION_FIELDS, self.step) \
            if main else _NullLog()
        if self.cfg.record_ranks:
            self._rank_log = _CsvLog(self.out / "ranks" / f"rank{acc.process_index}.csv",
                                     ("step", "micro", "epoch", "face_ids"), self.step)
        tb = _tensorboard(self.out / "tensorboard") if acc.is_main_process else None
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, desc=f"stage {self.cfg.stage}",
                   disable=not (self.progress and acc.is_main_process))
        done = 0
        try:
            while self.step < self.cfg.max_steps:
                if stop_after is not None and done >= stop_after:
                    return self.out
                t0 = time.perf_counter()
                loss = self.train_step()
                done += 1
                dt = time.perf_counter() - t0
                samples = self.cfg.batch_size * self.cfg.gradient_accumulation_steps * \
                    acc.num_processes
                lr = self.lr_scheduler.get_last_lr()[0]
                if acc.is_main_process and self.step % self.cfg.log_every == 0:
                    row = {"step": self.step, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}",
                           "samples_per_s": f"{samples / dt:.4g}",
                           "peak_memory_mb": f"{_peak_memory_mb(acc.device):.1f}"}
                    log.write(row)
                    if tb is not None:
                        tb.add_scalar("train/loss", loss, self.step)
                        tb.add_scalar("train/lr", lr, self.step)
                        tb.add_scalar("train/samples_per_s", samples / dt, self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.max_steps:
                    self._save_checkpoint()
                ve = self.cfg.validate_every
                if ve and self.step % ve == 0 and self.step < self.cfg.max_steps:
                    self._validate_and_log(vlog, tb)
            self._save_checkpoint()
            if self.cfg.record_ranks:
                self._write_rank_state()
            metrics = self._validate_and_log(vlog, tb)
            self.save_adapters(metrics=metrics)
        finally:
            bar.close()
            log.close()
            vlog.close()
            if self._rank_log is not None:
                self._rank_log.close()
                self._rank_log = None
            if tb is not None:
                tb.close()
        return self.out

    def _write_rank_state(self) -> None:
        """``ranks/rank<i>.json``: this process's step and sha256 of its adapter weights
        (and of the EMA shadow weights), as it holds them in memory."""
        from reface_core.atomic import write_text_atomic
        acc = self.accelerator
        state = {"process_index": acc.process_index, "num_processes": acc.num_processes,
                 "step": self.step,
                 "adapter_sha256": _tensors_sha256(self.model.adapter.state_dict())}
        if self.ema is not None:
            state["ema_sha256"] = _tensors_sha256(
                {str(i): t for i, t in enumerate(self.ema.shadow_params)})
        write_text_atomic(self.out / "ranks" / f"rank{acc.process_index}.json",
                          json.dumps(state, indent=2))

    def _validate_and_log(self, vlog, tb) -> dict | None:
        if not self.accelerator.is_main_process:
            return None
        with self._ema_weights():
            metrics, grid = validate(self.model, self.base, self.data, self.cfg,
                                     resolution=self.resolution, cache_dir=self.cache_dir)
        row = {"step": self.step, **{k: f"{v:.6g}" for k, v in metrics.items()}}
        vlog.write(row)
        from reface_core.atomic import atomic_path
        folder = self.out / "validation"
        folder.mkdir(exist_ok=True)
        from PIL import Image
        with atomic_path(folder / f"step_{self.step:07d}.png") as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        if tb is not None:
            for k, v in metrics.items():
                tb.add_scalar(f"validation/{k}", v, self.step)
            tb.add_image("validation/grid", grid, self.step, dataformats="HWC")
        return metrics

    def _ema_weights(self):
        import contextlib
        if self.ema is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def swap():
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
            try:
                yield
            finally:
                self.ema.restore(self.params)
        return swap()

    def save_adapters(self, metrics: dict | None = None) -> Path:
        """Write ``RUN_DIR/adapters/`` (EMA weights when enabled) on the main process, with
        a model card naming the base, the training data's hash, the steps and ``metrics``
        (the last validation)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        out = self.out / ADAPTERS_DIR
        if acc.is_main_process:
            with self._ema_weights():
                self.model.save_adapters(out, base=self.cfg.base, stage=self.cfg.stage,
                                         step=self.step, ema=self.cfg.ema_decay > 0,
                                         init=self.init, resolution=self.resolution,
                                         training_data_sha256=self.data_sha256,
                                         train_faces=len(self.dataset),
                                         metrics=metrics or {})
        acc.wait_for_everyone()
        return out


def _save_ema(ema, path: Path) -> None:
    from safetensors.torch import save_file
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i}": t.detach().contiguous().cpu() for i, t in enumerate(shadow)},
              str(path), metadata={"state": json.dumps(state)})


def _load_ema(ema, path: Path) -> None:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        state["shadow_params"] = [f.get_tensor(f"shadow.{i}") for i in range(len(f.keys()))]
    ema.load_state_dict(state)


VALIDATION_FIELDS = ("step", "psnr", "ssim", "identity_cosine", "psnr_lq", "ssim_lq",
                     "identity_cosine_lq", "denoise_loss", "psnr_onestep_t500", "psnr_onestep",
                     "vae_psnr", "faces")


def _tensors_sha256(tensors: dict) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _NullLog:
    """The logs of a process other than the main one: writes nothing."""

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _CsvLog:
    """A CSV log that, on resume, keeps only rows up to the checkpoint's step, so a killed
    and resumed run lists every step once."""

    def __init__(self, path: Path, fields: tuple[str, ...], keep_until: int):
        self.path = path
        self.fields = fields
        rows = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        from reface_core.atomic import atomic_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerows(rows)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fields)

    def write(self, row: dict) -> None:
        self.w.writerow(row)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    return SummaryWriter(str(folder))


def _peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- validation -----------------------------------------------------------------------

def bicubic_degrader(preset: str):
    """A ``degradations.Degrader`` of ``preset`` whose final resize is always bicubic, so
    the LQ face *is* the bicubic upsampling of the small degraded face: the baseline every
    restoration is compared with (validation, scripts/eval_mini.py, the held-out test)."""
    from degradations import Degrader, get_preset
    from degradations.presets import Preset
    spec = get_preset(preset).to_dict()
    for st in spec["stages"]:
        if st.get("kind") == "resize_to":
            st["modes"] = ["bicubic"]
    return Degrader(Preset.from_dict({**spec, "name": f"{spec['name']}-bicubic"}))


def validation_set(data: Path, cfg: TrainConfig, resolution: int,
                   cache_dir: str | os.PathLike | None = None):
    """Fixed test-split faces (sorted by face id, first ``validation_faces``), their LQ
    (fixed seed; the preset's final resize made bicubic, so the LQ input *is* the bicubic
    upsampling of the small degraded image), references and identity embeddings."""
    from reface_hq.dataset import FaceTrainingDataset

    from .data import normalize_mix
    ds = FaceTrainingDataset(data, "test", n_references=cfg.n_references, size=resolution,
                             seed=cfg.validation_seed, embedder=cfg.embedder, cache_dir=cache_dir)
    name = cfg.validation_preset or next(iter(normalize_mix(cfg.degradation)))
    deg = bicubic_degrader(name)
    order = sorted(range(len(ds)), key=lambda i: ds.items[i]["face_id"])[:cfg.validation_faces]
    hq, lq, refs, ids, prompts, faces = [], [], [], [], [], []
    for i in order:
        item = ds[i]
        face = to_uint8(item["target"][None])[0]
        low, _ = deg(face, seed=cfg.validation_seed, image_id=item["face_id"])
        hq.append(face)
        lq.append(low)
        refs.append(to_uint8(item["references"]))
        ids.append(item["reference_embeddings"].numpy())
        prompts.append(item["prompt"])
        faces.append(item["face_id"])
    own = {it["face_id"]: ds.embeddings[it["face_id"]] for it in ds.items}
    return {"hq": np.stack(hq), "lq": np.stack(lq), "references": np.stack(refs),
            "reference_embeddings": np.stack(ids), "prompts": prompts, "face_ids": faces,
            "target_embeddings": np.stack([own[f] for f in faces]), "embedder": ds.embedder_name,
            "embedder_option": cfg.embedder}


@torch.no_grad()
def restore(model, base, lq: np.ndarray, prompts: list[str], *, references=None,
            reference_embeddings=None, steps: int = 20, seed: int = 0,
            strength: float | None = None, one_step: bool = False) -> np.ndarray:
    """Restore uint8 LQ faces (B, S, S, 3) -> uint8 (B, S, S, 3) with ``MGFRPipeline`` (the
    inference path users run), DDIM, no guidance (the validation measures the model, not
    the guidance settings); ``strength`` None: the preset's default."""
    from .pipeline import pipeline_from_model

    pipe = pipeline_from_model(base, model)
    refs = None if references is None else [list(r) for r in references]
    ids = None if reference_embeddings is None else np.asarray(reference_embeddings)
    out = pipe(list(lq), references=refs, prompt=list(prompts), negative_attribute_prompt="",
               negative_quality_prompt="", guidance_scale=1.0, lambda_na=0.0, lambda_nq=0.0,
               num_inference_steps=steps, strength=strength, one_step=one_step,
               generator=torch.Generator().manual_seed(seed), id_embeds=ids)
    return np.stack(out.images)


def validate(model, base, data: Path, cfg: TrainConfig, *, resolution: int,
             val: dict | None = None, with_references: bool | None = None,
             cache_dir: str | os.PathLike | None = None):
    """PSNR, SSIM and identity cosine of the restored fixed test faces (and of the LQ
    input), plus an image grid (rows: LQ, restored, HQ)."""
    val = val or validation_set(data, cfg, resolution, cache_dir)
    use_refs = cfg.stage == 2 if with_references is None else with_references
    kw = dict(references=val["references"] if use_refs else None,
              reference_embeddings=val["reference_embeddings"] if use_refs else None,
              steps=cfg.validation_steps, seed=cfg.validation_seed,
              strength=cfg.validation_strength)
    out = restore(model, base, val["lq"], val["prompts"], **kw)
    metrics = score(out, val)
    from .pipeline import pipeline_from_model
    start = (cfg.validation_strength if cfg.validation_strength is not None
             else pipeline_from_model(base, model).call_defaults["strength"])
    if start < 1:
        one = restore(model, base, val["lq"], val["prompts"], **{**kw, "strength": start},
                      one_step=True)
        metrics["psnr_onestep"] = float(np.mean([psnr(a, b) for a, b in zip(one, val["hq"], strict=False)]))
    metrics["vae_psnr"] = vae_roundtrip_psnr(base, val["hq"])
    metrics.update(denoising_metrics(model, base, val, use_refs, seed=cfg.validation_seed))
    grid = np.concatenate([np.concatenate(list(row), axis=1)
                           for row in (val["lq"], out, val["hq"])], axis=0)
    return metrics, grid


@torch.no_grad()
def denoising_metrics(model, base, val: dict, use_refs: bool, *, seed: int = 0,
                      timesteps: tuple[int, ...] = (50, 200, 500, 800)) -> dict:
    """The training objective on the validation faces: noise-prediction MSE of the noised
    HQ latents at fixed timesteps and noise (``denoise_loss``, their mean; a v-prediction
    base's output is turned into its noise estimate first, so the figure means the same for
    both kinds of base), and the PSNR of
    the one-step clean estimate from t=500 (``psnr_onestep_t500``). Unlike sampled
    restorations these do not compound a weak prior's errors over many steps."""
    from .model import encode_prompts
    dev, dt = base.device, base.dtype
    sf = base.vae.config.scaling_factor

    def latents(imgs: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).to(dev, dt) / 127.5 - 1
        return base.vae.encode(x).latent_dist.mean * sf

    z0, zlq = latents(val["hq"]), latents(val["lq"])
    refs = ids = None
    if use_refs:
        b, r = val["references"].shape[:2]
        refs = latents(val["references"].reshape(b * r, *val["references"].shape[2:])) \
            .unflatten(0, (b, r))
        ids = torch.as_tensor(val["reference_embeddings"], device=dev, dtype=dt)
    cond = model.prepare(zlq, refs, ids)
    hidden = encode_prompts(base, val["prompts"])
    sched = base.noise_scheduler
    kind = base.prediction_type
    gen = torch.Generator().manual_seed(seed)
    losses, onestep = [], float("nan")
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=gen).to(dev, dt)
        tt = torch.full((len(z0),), t, device=dev, dtype=torch.long)
        zt = sched.add_noise(z0, noise, tt)
        pred = model.step(zt, tt, hidden, cond)
        eps = noise_estimate(kind, pred, zt, t, sched.alphas_cumprod)
        losses.append(float(F.mse_loss(eps.float(), noise.float())))
        if t == 500:
            x0 = clean_estimate(kind, pred, zt, t, sched.alphas_cumprod).to(dt)
            img = to_uint8((base.vae.decode(x0 / sf).sample.float() + 1) / 2)
            onestep = float(np.mean([psnr(x, y) for x, y in zip(img, val["hq"], strict=False)]))
    return {"denoise_loss": float(np.mean(losses)), "psnr_onestep_t500": onestep}


@torch.no_grad()
def vae_roundtrip_psnr(base, faces: np.ndarray, batch: int = 32) -> float:
    """Mean PSNR (dB) of decode(encode(face)) over uint8 faces (N, S, S, 3): the ceiling of
    any restoration in this VAE's latent space."""
    vals = []
    vae = base.vae
    for i in range(0, len(faces), batch):
        x = torch.from_numpy(faces[i:i + batch]).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
        x = x / 127.5 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out = to_uint8((rec.float() + 1) / 2)
        vals += [psnr(a, b) for a, b in zip(out, faces[i:i + batch], strict=False)]
    return float(np.mean(vals))


def score(restored: np.ndarray, val: dict) -> dict:
    from faces.embedding import get_embedder
    emb = get_embedder(val["embedder_option"])
    if emb.name != val["embedder"]:
        raise ValueError(f"embedder {val['embedder_option']!r} is {emb.name!r}, but the "
                         f"validation vectors come from {val['embedder']!r}")

    def id_cos(imgs):
        v = emb.embed(list(imgs))
        return float(np.mean(np.sum(v * val["target_embeddings"], axis=1)))

    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(restored, val["hq"], strict=False)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(restored, val["hq"], strict=False)])),
        "identity_cosine": id_cos(restored),
        "psnr_lq": float(np.mean([psnr(a, b) for a, b in zip(val["lq"], val["hq"], strict=False)])),
        "ssim_lq": float(np.mean([ssim(a, b) for a, b in zip(val["lq"], val["hq"], strict=False)])),
        "identity_cosine_lq": id_cos(val["lq"]),
        "faces": len(restored),
    }


def evaluate(data: str | os.PathLike, *, base: str | None = None,
             adapters: str | os.PathLike | None = None, with_references: bool | None = None,
             config: TrainConfig | None = None, cache_dir: str | os.PathLike | None = None,
             val: dict | None = None) -> tuple[dict, np.ndarray]:
    """Validation metrics of a run's adapters (``adapters``: RUN_DIR or RUN_DIR/adapters),
    or of an untrained adapter on ``base`` (``adapters=None``: the initialisation, where
    the model predicts exactly what the frozen base predicts). The same fixed test faces,
    LQ inputs, seeds and sampler as the validation during training."""
    from .base import load_base
    from .model import MGFRModel
    cfg = config or TrainConfig()
    if adapters is not None:
        folder = Trainer._adapters_dir(Path(adapters))
        model = MGFRModel.load_adapters(folder, base=base)
        stage = int(model.info.get("stage", 1))
    else:
        if base is None:
            raise ValueError("evaluate: give adapters, or base for the initialisation")
        model = MGFRModel.from_base(load_base(base))
        stage = 1
    cfg = TrainConfig(**{**asdict(cfg), "stage": stage})
    model.eval()
    return validate(model, model.base, Path(data), cfg, resolution=model.base.resolution,
                    val=val, with_references=with_references, cache_dir=cache_dir)


# ---- CLI ----------------------------------------------------------------------------------

def train_from_args(args) -> int:
    overrides = _parse_set(args.set)
    flags = {"stage": args.stage, "base": args.base, "max_steps": args.max_steps,
             "batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed,
             "checkpoint_every": args.checkpoint_every, "validate_every": args.validate_every,
             "mixed_precision": args.mixed_precision,
             "cache_latents": getattr(args, "cache_latents", None)}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.base is None and args.init is not None:
        # Stage 2 runs on the base stage 1 was trained on, unless told otherwise.
        from .model import read_adapters_info
        init_base = read_adapters_info(Trainer._adapters_dir(Path(args.init))).get("base")
        if init_base:
            overrides["base"] = init_base
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, args.data, args.out, init=args.init, resume=args.resume,
                      cache_dir=args.cache_dir)
    out = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"adapters written to {out / ADAPTERS_DIR} (step {trainer.step})")
    return 0
