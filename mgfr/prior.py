"""``mgfr pretrain-prior``: a frozen prior for the ``tiny`` preset, trained here.

There are no Stable Diffusion weights on a CPU-only machine, and a random frozen UNet is
no prior, so the ``tiny`` preset gets one of its own, trained as an ordinary latent
diffusion model on the HQ faces of the *train* split of a Reface-HQ folder:

1. **VAE**: the preset's ``AutoencoderKL`` learns to reconstruct the faces (L1 + a
   small KL term, Stable Diffusion's 1e-6 weight) on random crops (``vae_crop``, 32 px of
   the 64 px faces: a quarter of the cost); afterwards its ``scaling_factor`` is
   set to 1 / std of the latents of the training faces, as Stable Diffusion's 0.18215 was
   chosen, so noise and latents share a scale.
   **The round-trip gate**: the VAE bounds every restoration in its latent space (a
   latent restorer cannot beat decode(encode(HQ))), so after the VAE phase the mean PSNR
   of decode(encode(x)) over the *test-split* faces (never trained on) is printed and
   recorded in ``mgfr_base.json``; below ``min_vae_psnr`` (default: the preset's
   ``vae_gate_psnr``, 30 dB for ``mini``) the run stops with an error before the UNet
   phase, and ``--resume --vae-steps N`` trains the VAE further.
2. **UNet**: text-conditioned noise prediction (epsilon, the preset's DDPM schedule) on the
   frozen VAE's latents, with the face's attribute prompt and 10 % empty prompts (so
   classifier-free guidance works on the prior too).

The **text encoder stays random and frozen** (our choice): a random CLIP text model still
maps different prompts to different, consistent hidden states, which is all the UNet
needs to learn attribute conditioning from ~200 faces; training it would be a third
phase for no measurable gain at this scale. It is saved with the prior, so the folder is
self-contained.

The output folder is the diffusers layout that ``mgfr.base.load_base(PATH)`` reads
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/ mgfr_base.json``; ``mgfr_base.json`` is
written last and marks the folder finished). ``OUT/training/`` keeps the checkpoint
(written to a temporary folder, then renamed) and ``loss.csv``; ``--resume`` continues a
killed run from its last checkpoint with the same batches and noise (every step's draws
are seeded by ``(seed, phase, step)``), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TrainingError

PRIOR_TRAINING = "training"
CHECKPOINT = "checkpoint"


@dataclass
class PriorConfig:
    """Everything that determines a pretrained prior (recorded in ``mgfr_base.json``)."""

    base: str = "tiny"
    vae_steps: int = 1500
    unet_steps: int = 3000
    batch_size: int = 16
    vae_crop: int = 32
    vae_lr: float = 5e-4
    unet_lr: float = 3e-4
    kl_weight: float = 1e-6
    prompt_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    flip: bool = True
    min_vae_psnr: float | None = None   # None: the preset's vae_gate_psnr
    # Decode a sample of the posterior (Stable Diffusion's VAE training) or its mean. With
    # a 1e-6 KL weight the sample's noise only slows reconstruction down on a CPU budget:
    # the mini recipe decodes the mean (a deterministic autoencoder with a KL nudge).
    vae_sample: bool = True

    def __post_init__(self):
        for name in ("vae_steps", "unet_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "checkpoint_every", "vae_crop"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.prompt_dropout <= 1:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")


def load_train_faces(data: str | os.PathLike, size: int, split: str = "train"
                     ) -> tuple[np.ndarray, list[str]]:
    """HQ faces of a split (default train) as (N, size, size, 3) uint8, and their prompts;
    an empty split other than train gives an empty array."""
    import cv2

    from reface_core.atomic import safe_child
    from reface_core.imageio import load_image
    from reface_hq.dataset import DatasetError, load_manifest, manifest_path

    try:
        df = load_manifest(data)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    root = manifest_path(data).parent
    df = df[df["split"] == split].sort_values("face_id")
    if df.empty:
        if split != "train":
            return np.zeros((0, size, size, 3), np.uint8), []
        raise TrainingError(f"{data}: the manifest has no train-split faces")
    faces, prompts = [], []
    for r in df.to_dict("records"):
        img = load_image(safe_child(root, r["image_path"]))
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        faces.append(img)
        p = r.get("prompt") if isinstance(r.get("prompt"), str) else r.get("caption")
        prompts.append(p if isinstance(p, str) else "")
    return np.stack(faces), prompts


def _step_rng(seed: int, phase: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    import hashlib
    digest = hashlib.sha256(f"mgfr-prior\x1f{seed}\x1f{phase}\x1f{step}".encode()).digest()
    s = int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)
    return np.random.default_rng(s), torch.Generator().manual_seed(s)


def _batch(faces: np.ndarray, rng: np.random.Generator, batch_size: int, flip: bool):
    idx = rng.choice(len(faces), size=min(batch_size, len(faces)), replace=False)
    x = torch.from_numpy(faces[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if flip:
        mask = torch.from_numpy(rng.random(len(idx)) < 0.5)
        x[mask] = x[mask].flip(-1)
    return idx, x


def _random_crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One random ``size`` crop per image. The VAE is convolutional (its one attention
    layer has no position encoding), so crops train it at a fraction of the cost, as
    Stable Diffusion's VAE was trained on 256 px crops and used at 512 px."""
    h, w = x.shape[-2:]
    if size >= min(h, w):
        return x
    ys = rng.integers(0, h - size + 1, len(x))
    xs = rng.integers(0, w - size + 1, len(x))
    return torch.stack([im[:, y:y + size, c:c + size] for im, y, c in zip(x, ys, xs, strict=False)])


# ---- checkpoint --------------------------------------------------------------------------

def _save_checkpoint(folder: Path, state: dict, modules: dict, optimizer) -> None:
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, m in modules.items():
            save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_checkpoint(folder: Path, modules: dict) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / "state.json").read_text())
        for name, m in modules.items():
            m.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        optim = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError,
            json.JSONDecodeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(f"{folder}: corrupt prior checkpoint ({first}); delete it to "
                            "start over") from None
    return state, optim


class _LossLog:
    """``loss.csv`` rows (phase, step, loss, seconds); on resume rows past the checkpoint
    are dropped, so a killed and resumed run has each step exactly once."""

    FIELDS = ("phase", "step", "loss", "seconds")

    def __init__(self, path: Path, keep_until: dict[str, int] | None):
        self.path = path
        rows = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f)
                        if int(r["step"]) <= keep_until.get(r["phase"], -1)]
        path.parent.mkdir(parents=True, exist_ok=True)
        from reface_core.atomic import atomic_path
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, self.FIELDS)

    def write(self, phase: str, step: int, loss: float, seconds: float) -> None:
        self.w.writerow({"phase": phase, "step": step, "loss": f"{loss:.6g}",
                         "seconds": f"{seconds:.4f}"})
        self.f.flush()

    def close(self) -> None:
        self.f.close()


# ---- training ----------------------------------------------------------------------------

def pretrain_prior(data: str | os.PathLike, out: str | os.PathLike, config: PriorConfig | None = None,
                   *, resume: bool = False, progress: bool = True, stop_after: int | None = None
                   ) -> Path:
    """Train the VAE then the UNet of ``config.base`` on ``data``'s train faces into ``out``.

    ``stop_after``: return after this many optimisation steps in this call (tests, to
    interrupt a run at a known point). Returns ``out`` (finished when ``mgfr_base.json``
    exists in it).
    """
    from tqdm.auto import tqdm

    from .base import BASE_FILE, build_base_from_config, training_target
    from .presets import get_preset

    cfg = config or PriorConfig()
    preset = get_preset(cfg.base)
    out = Path(out)
    train_dir = out / PRIOR_TRAINING
    ckpt = train_dir / CHECKPOINT
    if (out / BASE_FILE).is_file() and not resume:
        raise TrainingError(f"{out} already holds a finished prior; choose another --out, "
                            "delete it, or pass --resume with more --unet-steps to extend it")
    if (out / BASE_FILE).is_file() and _written_steps(out) == (cfg.vae_steps, cfg.unet_steps):
        return out
    if ckpt.exists() and not resume:
        raise TrainingError(f"{out} holds a checkpoint of an unfinished pretraining; pass "
                            "--resume to continue it or delete the folder")
    faces, prompts = load_train_faces(data, preset.resolution)
    heldout, _ = load_train_faces(data, preset.resolution, split="test")
    gate = float(preset.vae_gate_psnr if cfg.min_vae_psnr is None else cfg.min_vae_psnr)
    vae_psnr = None

    base = build_base_from_config(preset, cfg.seed)
    vae, unet = base.vae, base.unet
    phase, step, scaling = "vae", 0, None
    state_optim = None
    if resume and ckpt.exists():
        state, state_optim = _load_checkpoint(ckpt, {"vae": vae, "unet": unet})
        saved = state.get("config", {})
        # Step counts and the checkpoint interval may change on resume (extend or shorten
        # a run); anything else would make the resumed run another run.
        free = ("vae_steps", "unet_steps", "checkpoint_every")
        diff = sorted(k for k in saved if k not in free and saved[k] != asdict(cfg).get(k))
        if diff:
            raise TrainingError(f"{ckpt}: the checkpoint was made with other settings "
                                f"({', '.join(diff)}); resume with the same options")
        phase, step, scaling = state["phase"], int(state["step"]), state.get("scaling_factor")
        if phase == "unet" and step > cfg.unet_steps:
            raise TrainingError(f"{ckpt}: the checkpoint is at UNet step {step}, past "
                                f"--unet-steps {cfg.unet_steps}")
        if phase == "vae" and step > cfg.vae_steps:
            raise TrainingError(f"{ckpt}: the checkpoint is at VAE step {step}, past "
                                f"--vae-steps {cfg.vae_steps}")
    log = _LossLog(train_dir / "loss.csv",
                   {"vae": step if phase == "vae" else cfg.vae_steps,
                    "unet": step if phase == "unet" else -1} if resume else None)
    (train_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    done_this_call = 0

    def checkpoint(phase: str, step: int, optimizer) -> None:
        _save_checkpoint(ckpt, {"phase": phase, "step": step, "scaling_factor": scaling,
                                "config": asdict(cfg)},
                         {"vae": vae, "unet": unet}, optimizer)

    def unet_optimizer():
        # One definition: the checkpoint written at the phase change must hold the same
        # hyper-parameters (param_groups) as the optimizer that trains.
        return torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)

    try:
        # ---- phase 1: the VAE -------------------------------------------------------------
        if phase == "vae":
            if step == 0 and hasattr(vae, "init_from_pca"):
                # A patch autoencoder starts as the best linear one (mgfr.autoencoder).
                explained = vae.init_from_pca(faces)
                import sys
                print(f"patch autoencoder initialised from the PCA of the training patches "
                      f"({explained:.4f} of their variance kept)", file=sys.stderr, flush=True)
            vae.train().requires_grad_(True)
            opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
            if state_optim is not None:
                opt.load_state_dict(state_optim)
            bar = tqdm(total=cfg.vae_steps, initial=step, desc="prior: VAE", disable=not progress)
            while step < cfg.vae_steps:
                if stop_after is not None and done_this_call >= stop_after:
                    return out
                t0 = time.perf_counter()
                rng, gen = _step_rng(cfg.seed, "vae", step)
                _, x = _batch(faces, rng, cfg.batch_size, cfg.flip)
                x = _random_crops(x, cfg.vae_crop, rng)
                post = vae.encode(x).latent_dist
                noise = torch.randn(post.mean.shape, generator=gen)
                z = post.mean + post.std * noise if cfg.vae_sample else post.mean
                rec = vae.decode(z).sample
                loss = F.l1_loss(rec, x) + cfg.kl_weight * post.kl().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                opt.step()
                step += 1
                done_this_call += 1
                log.write("vae", step, loss.item(), time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step % cfg.checkpoint_every == 0 and step < cfg.vae_steps:
                    checkpoint("vae", step, opt)
            bar.close()
            vae.eval().requires_grad_(False)
            vae_psnr = _check_vae_gate(vae, heldout, faces, gate, cfg)
            if vae_psnr < gate:
                checkpoint("vae", step, opt)
                raise TrainingError(
                    f"the VAE's round trip on {len(heldout) or len(faces)} "
                    f"{'held-out' if len(heldout) else 'training'} faces is {vae_psnr:.2f} dB, "
                    f"below the gate of {gate:g} dB: a latent restorer on it cannot beat that; "
                    f"train the VAE longer (--resume --vae-steps N with N > {cfg.vae_steps})")
            scaling = _latent_scaling(vae, faces)
            phase, step, state_optim = "unet", 0, None
            checkpoint("unet", 0, unet_optimizer())
        vae.eval().requires_grad_(False)
        vae.register_to_config(scaling_factor=float(scaling))

        # ---- phase 2: the UNet ------------------------------------------------------------
        unet.train().requires_grad_(True)
        opt = unet_optimizer()
        if state_optim is not None:
            opt.load_state_dict(state_optim)
        sched = base.noise_scheduler
        text_cache: dict[str, torch.Tensor] = {}
        from .model import encode_prompts

        def text(p: str) -> torch.Tensor:
            if p not in text_cache:
                text_cache[p] = encode_prompts(base, [p])[0]
            return text_cache[p]

        bar = tqdm(total=cfg.unet_steps, initial=step, desc="prior: UNet", disable=not progress)
        while step < cfg.unet_steps:
            if stop_after is not None and done_this_call >= stop_after:
                return out
            t0 = time.perf_counter()
            rng, gen = _step_rng(cfg.seed, "unet", step)
            idx, x = _batch(faces, rng, cfg.batch_size, cfg.flip)
            drop = rng.random(len(idx)) < cfg.prompt_dropout
            hidden = torch.stack([text("" if d else prompts[i]) for i, d in zip(idx, drop, strict=False)])
            with torch.no_grad():
                post = vae.encode(x).latent_dist
                draw = torch.randn(post.mean.shape, generator=gen)
                lat = (post.mean + post.std * draw if cfg.vae_sample else post.mean) * scaling
            noise = torch.randn(lat.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
            noisy = sched.add_noise(lat, noise, t)
            pred = unet(noisy, t, hidden).sample
            loss = F.mse_loss(pred, training_target(base.prediction_type, lat, noise, t,
                                                    sched.alphas_cumprod))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            step += 1
            done_this_call += 1
            log.write("unet", step, loss.item(), time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % cfg.checkpoint_every == 0 and step < cfg.unet_steps:
                checkpoint("unet", step, opt)
        bar.close()
        # The last state is a checkpoint too, so `--resume --unet-steps N` extends a
        # finished prior.
        checkpoint("unet", step, opt)
        unet.eval().requires_grad_(False)
    finally:
        log.close()
    if vae_psnr is None:  # resumed in the UNet phase: measure the VAE again
        vae_psnr = _check_vae_gate(vae, heldout, faces, gate, cfg, quiet=True)
    _write_prior(base, out, {"pretrained_on": Path(data).name, "faces": len(faces),
                             "text_encoder": "random, frozen (seeded)", **asdict(cfg),
                             "vae_roundtrip_psnr": round(vae_psnr, 3),
                             "vae_roundtrip_faces": int(len(heldout) or len(faces)),
                             "vae_roundtrip_split": "test" if len(heldout) else "train",
                             "vae_gate_psnr": gate})
    return out


def _written_steps(out: Path) -> tuple[int, int] | None:
    """(VAE steps, UNet steps) of the prior written in ``out`` (None: unknown)."""
    from .base import BASE_FILE
    try:
        info = json.loads((out / BASE_FILE).read_text())["prior"]
        return int(info["vae_steps"]), int(info["unet_steps"])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def _check_vae_gate(vae, heldout: np.ndarray, faces: np.ndarray, gate: float, cfg,
                    quiet: bool = False) -> float:
    """Round-trip PSNR of the VAE on the held-out faces (train faces when the dataset has
    no test split, said so), printed with the gate."""
    import sys
    from types import SimpleNamespace

    from .train import vae_roundtrip_psnr
    which = heldout if len(heldout) else faces
    value = vae_roundtrip_psnr(SimpleNamespace(vae=vae), which)
    if not quiet:
        where = "held-out (test split)" if len(heldout) else "TRAINING (no test split)"
        verdict = "passes" if value >= gate else "FAILS"
        print(f"VAE round trip on {len(which)} {where} faces: {value:.2f} dB PSNR "
              f"({verdict} the {gate:g} dB gate)", file=sys.stderr, flush=True)
    return value


@torch.no_grad()
def _latent_scaling(vae, faces: np.ndarray) -> float:
    """1 / std of the VAE latents of the training faces (Stable Diffusion's recipe)."""
    zs = []
    for i in range(0, len(faces), 32):
        x = torch.from_numpy(faces[i:i + 32]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        zs.append(vae.encode(x).latent_dist.mean)
    std = float(torch.cat(zs).std())
    if not np.isfinite(std) or std <= 0:
        raise TrainingError(f"the trained VAE gives degenerate latents (std {std})")
    return 1.0 / std


def _write_prior(base, out: Path, info: dict) -> None:
    """Components first (each to a temporary folder, then renamed), ``mgfr_base.json`` last."""
    from .base import BASE_FILE

    (out / BASE_FILE).unlink(missing_ok=True)
    writers = {"unet": base.unet.save_pretrained, "vae": base.vae.save_pretrained,
               "text_encoder": base.text_encoder.save_pretrained,
               "tokenizer": base.tokenizer.save_pretrained,
               "scheduler": base.noise_scheduler.save_pretrained}
    for name, write in writers.items():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
        try:
            write(str(tmp))
            shutil.rmtree(out / name, ignore_errors=True)
            os.replace(tmp, out / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    from reface_core.atomic import write_json_atomic
    write_json_atomic(out / BASE_FILE, {"preset": base.preset, "resolution": base.resolution,
                                        "prior": info})


def load_prior_config(path: str | os.PathLike | None) -> dict:
    """PriorConfig fields from a YAML recipe (unknown fields get a did-you-mean error)."""
    from dataclasses import fields

    from .train import read_recipe
    if path is None:
        return {}
    d = read_recipe(path)
    names = {f.name for f in fields(PriorConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        from reface_core.registry import unknown_names_message
        raise TrainingError(f"config {path}: {unknown_names_message('field', unknown, names)}")
    return d


def pretrain_from_args(args) -> int:
    d = load_prior_config(getattr(args, "config", None))
    for key in ("base", "seed", "vae_steps", "unet_steps", "batch_size", "checkpoint_every",
                "min_vae_psnr"):
        if getattr(args, key, None) is not None:
            d[key] = getattr(args, key)
    if args.lr is not None:
        d["vae_lr"] = d["unet_lr"] = float(args.lr)
    try:
        cfg = PriorConfig(**d)
    except (TypeError, ValueError) as e:
        raise TrainingError(str(e)) from None
    out = pretrain_prior(args.data, args.out, cfg, resume=args.resume)
    print(f"prior written to {out} (load it with --base {out})")
    return 0
