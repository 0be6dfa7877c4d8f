"""``MGFRPipeline``: restore aligned faces or whole photos with references, prompts and dual
negative guidance, on a frozen Stable Diffusion prior steered by the dual-control adapter.

    pipe = mgfr.load_pipeline(adapters="runs/x/adapters")    # or base="tiny" (untrained)
    out = pipe(face, references=[[ref_a, ref_b]], prompt=None, lambda_na=1.0, lambda_nq=1.0)
    photo, records = pipe.restore_photo(photo, references=[ref_photo], upscale=2)

**Guidance.** Four text conditions go through the UNet as one batch per step: the
unconditional ``u`` (empty prompt), the positive attribute prompt ``p``, the
negative-attribute prompt ``na`` and the negative-quality prompt ``nq``:

    eps = eps_u + g (eps_p - eps_u) - lambda_na (eps_na - eps_u) - lambda_nq (eps_nq - eps_u)

A branch whose weight is 0 (or whose prompt is empty) is not computed at all, so
``lambda_na = lambda_nq = 0`` *is* classifier-free guidance with the batch ``[u, p]``, and
``guidance_scale <= 1`` without negatives is a single conditional pass. The adapters read
no text, so their residuals are computed once per step and shared by every branch.

**Step-invariant work** (VAE latents of the input and the references, RLF, identity
embeddings and tokens, text embeddings, default prompts) is done once per call, before the
denoising loop.

**Defaults** for the prompts come from ``captioning``: without ``prompt`` the positive and
negative-attribute prompts are built from the first reference's attributes (offline
extractor); the negative-quality prompt is captioning's default list of defects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from reface_core.registry import Registry

from .adapters import DualControlAdapter
from .model import MGFRModel, images_to_tensor

#: scheduler names for ``--scheduler`` -> diffusers class names
SCHEDULERS = Registry("scheduler", {
    "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}, hint="or a diffusers scheduler class name")

#: defaults of ``MGFRPipeline.__call__`` (and of ``config_for_record``); a preset's
#: ``inference`` dict overrides them for that scale (``MGFRPipeline.call_defaults``).
#: ``strength`` 1.0 samples from pure noise; below 1 sampling starts from the LQ latent
#: noised to ``strength`` of the schedule (SDEdit); ``one_step`` returns the model's
#: deterministic clean estimate from that start instead of sampling.
CALL_DEFAULTS = {"guidance_scale": 4.0, "lambda_na": 1.0, "lambda_nq": 1.0,
                 "num_inference_steps": 30, "lca_scale": 1.0, "rca_scale": 1.0,
                 "strength": 1.0, "one_step": False}

#: aligned crops for whole photos are made at this size, then resized to the resolution
ALIGN_SIZE = 512


class NoFaceError(ValueError):
    """A photo or reference in which no face was found (the message names it)."""


def get_scheduler(name: str, config: dict):
    """A diffusers scheduler by short name (``ddim``, ``dpm++``, ...) or class name."""
    import diffusers

    cls_name = SCHEDULERS.get(name, name)
    cls = getattr(diffusers, cls_name, None) if cls_name.endswith("Scheduler") else None
    if cls is None:
        raise SCHEDULERS.error(name)
    return cls.from_config(config)


@dataclass
class MGFRPipelineOutput(BaseOutput):
    """``images``: restored faces, uint8 (S, S, 3) at the pipeline's resolution.
    ``prompts``: per image, the (positive, negative-attribute, negative-quality) prompts used."""

    images: list
    prompts: list = field(default_factory=list)


@dataclass
class PhotoResult:
    """A restored photo and one record per face (box, score, prompts; ``face``: the
    restored crop)."""

    image: np.ndarray
    faces: list[dict[str, Any]]


def check_face(image, what: str) -> np.ndarray:
    """An aligned face: uint8 (S, S, 3), square, at least 16 px."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected a uint8 (H, W, 3) RGB face, got dtype {a.dtype} "
                         f"shape {a.shape}")
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{what}: an aligned face must be square, got {a.shape[1]}x{a.shape[0]} "
                         f"(pass whole photos to restore_photo)")
    if a.shape[0] < 16:
        raise ValueError(f"{what}: face is {a.shape[0]} px; at least 16 px is needed")
    return a


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.shape[0] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


class MGFRPipeline(DiffusionPipeline):
    """Reference-guided face restoration (see the module doc for guidance and defaults).

    Components: the frozen ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, a diffusers
    ``scheduler``, and the trainable ``adapter`` (:class:`~mgfr.adapters.DualControlAdapter`).
    ``save_pretrained`` writes the usual diffusers layout (``model_index.json``); the
    adapter's identity embedder is in its config and is built on first use.
    """

    model_cpu_offload_seq = "text_encoder->adapter->unet->vae"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler,
                 adapter: DualControlAdapter, resolution: int = 64, preset: str = "tiny",
                 base: str = "", adapters_path: str = ""):
        super().__init__()
        for m in (unet, vae, text_encoder):
            m.requires_grad_(False)  # the prior is frozen, whatever loaded it
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=scheduler, adapter=adapter)
        self.register_to_config(resolution=int(resolution), preset=preset, base=base,
                                adapters_path=adapters_path)
        from .presets import vae_scale_factor
        self.vae_scale_factor = vae_scale_factor(vae.config)
        self._embedder = None
        self._captioner = None
        self._adapters_hash = None

    # ---- parts ---------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.config.resolution)

    @property
    def embedder_name(self) -> str:
        return self.adapter.config.id_embedder

    def set_embedder(self, embedder) -> None:
        """Use ``embedder`` (a name or a built ``faces.FaceEmbedder``) for identity vectors;
        one other than the adapter was trained with is refused."""
        import faces

        if isinstance(embedder, str):
            faces.check_same_embedder(self.embedder_name, embedder)
            embedder = faces.get_embedder(embedder)
        else:
            name = getattr(embedder, "registry_name", None) or self.embedder_name
            faces.check_same_embedder(self.embedder_name, name)
            if int(getattr(embedder, "dim", self.adapter.config.id_embed_dim)) != \
                    int(self.adapter.config.id_embed_dim):
                raise ValueError(f"embedder gives {embedder.dim}-d vectors; the adapter expects "
                                 f"{self.adapter.config.id_embed_dim}-d ({self.embedder_name!r})")
        self._embedder = embedder

    @property
    def embedder(self):
        if self._embedder is None:
            self.set_embedder(self.embedder_name)
        return self._embedder

    def set_scheduler(self, name: str) -> None:
        self.scheduler = get_scheduler(name, self.scheduler.config)

    def enable_vae_slicing(self):
        self.vae.enable_slicing()

    def enable_vae_tiling(self):
        self.vae.enable_tiling()

    def adapters_hash(self) -> str:
        """sha256 of the adapter weights (names, dtypes and bytes), for records."""
        if self._adapters_hash is None:
            h = hashlib.sha256()
            for name, t in sorted(self.adapter.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(name.encode())
                h.update(str(t.dtype).encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._adapters_hash = h.hexdigest()
        return self._adapters_hash

    @property
    def call_defaults(self) -> dict:
        """``CALL_DEFAULTS`` with this pipeline's preset's own inference defaults."""
        from .presets import PRESETS

        preset = PRESETS.get(self.config.preset, None) if self.config.preset in PRESETS else None
        return {**CALL_DEFAULTS, **(preset.inference if preset is not None else {})}

    def config_for_record(self, **call_options) -> dict:
        """Everything that determines the output, JSON-able (for benchmark records)."""
        unknown = set(call_options) - set(CALL_DEFAULTS) - {"prompt", "negative_attribute_prompt",
                                                             "negative_quality_prompt", "seed"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        opts = {**self.call_defaults,
                **{k: v for k, v in call_options.items() if v is not None or k not in CALL_DEFAULTS}}
        sched = {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        return {
            "restorer": "mgfr", "base": self.config.base, "preset": self.config.preset,
            "resolution": self.resolution, "adapters": self.config.adapters_path,
            "adapters_sha256": self.adapters_hash(), "embedder": self.embedder_name,
            "scheduler": type(self.scheduler).__name__,
            "scheduler_config": json.loads(json.dumps(sched, default=str)),
            "dtype": str(self.unet.dtype).replace("torch.", ""), **opts,
        }

    # ---- step-invariant helpers -------------------------------------------------------------
    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tok.input_ids.to(self._execution_device)
        return self.text_encoder(ids)[0].to(self.unet.dtype)

    @torch.no_grad()
    def _encode_latents(self, faces: list[np.ndarray]) -> torch.Tensor:
        x = images_to_tensor(np.stack(faces), device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def _captioner_for_defaults(self):
        if self._captioner is None:
            from captioning.pipeline import build_captioner

            self._captioner = build_captioner(("offline",))
        return self._captioner

    def default_prompts(self, references: Sequence[np.ndarray] | None) -> tuple[str, str, str]:
        """(positive, negative-attribute, negative-quality) from the references' attributes
        (the first reference captioning can read); no reference: ("", "", default quality)."""
        from captioning.extractors import FaceSample
        from captioning.prompts import PromptBuilder

        if references:
            cap = self._captioner_for_defaults()
            for i, ref in enumerate(references):
                ann = cap.annotate([FaceSample(key=f"reference {i}", image=ref, aligned=True)])[0]
                if ann.status == "ok":
                    p = ann.prompts
                    return p.positive, p.negative_attribute, p.negative_quality
        return "", "", PromptBuilder().negative_quality("")

    # ---- the call ----------------------------------------------------------------------
    def _normalize(self, image, references, prompt, negative_attribute_prompt,
                   negative_quality_prompt):
        images = [image] if isinstance(image, np.ndarray) and np.asarray(image).ndim == 3 \
            else list(image)
        if not images:
            raise ValueError("no image given")
        images = [check_face(im, f"image {i}") for i, im in enumerate(images)]
        n = len(images)
        if references is None:
            refs = [[] for _ in range(n)]
        else:
            refs = list(references)
            if n == 1 and refs and isinstance(refs[0], np.ndarray) and np.asarray(refs[0]).ndim == 3:
                refs = [refs]  # one image with a flat list of references
            if len(refs) != n:
                raise ValueError(f"references: got {len(refs)} lists for {n} images")
            refs = [[check_face(r, f"reference {j} of image {i}") for j, r in enumerate(rs or [])]
                    for i, rs in enumerate(refs)]

        def per_image(value, what):
            if value is None or isinstance(value, str):
                return [value] * n
            value = list(value)
            if len(value) != n:
                raise ValueError(f"{what}: got {len(value)} prompts for {n} images")
            return value
        return (images, refs, per_image(prompt, "prompt"),
                per_image(negative_attribute_prompt, "negative_attribute_prompt"),
                per_image(negative_quality_prompt, "negative_quality_prompt"))

    @torch.no_grad()
    def __call__(self, image, references=None, prompt=None, negative_attribute_prompt=None,
                 negative_quality_prompt=None, guidance_scale: float | None = None,
                 lambda_na: float | None = None, lambda_nq: float | None = None,
                 num_inference_steps: int | None = None,
                 generator: torch.Generator | None = None, output_type: str = "np",
                 lca_scale: float | None = None, rca_scale: float | None = None,
                 strength: float | None = None, one_step: bool | None = None,
                 id_embeds: np.ndarray | None = None, progress: bool = False,
                 callback=None) -> MGFRPipelineOutput:
        """Restore aligned face(s); see the module doc. ``image``: one uint8 (H, W, 3) square
        face or a list; ``references``: per image a list of aligned faces (or one flat list
        for one image). ``id_embeds``: optional precomputed (B, R, D) identity vectors from
        the adapter's embedder. ``output_type``: ``"np"`` (uint8 arrays), ``"pil"`` or
        ``"latent"``. Options left as None take ``call_defaults`` (the preset's own, else
        ``CALL_DEFAULTS``); ``strength`` and ``one_step``: see ``CALL_DEFAULTS``."""
        d = self.call_defaults
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        lambda_na = d["lambda_na"] if lambda_na is None else lambda_na
        lambda_nq = d["lambda_nq"] if lambda_nq is None else lambda_nq
        num_inference_steps = d["num_inference_steps"] if num_inference_steps is None \
            else num_inference_steps
        lca_scale = d["lca_scale"] if lca_scale is None else lca_scale
        rca_scale = d["rca_scale"] if rca_scale is None else rca_scale
        strength = float(d["strength"] if strength is None else strength)
        one_step = bool(d["one_step"] if one_step is None else one_step)
        if not (np.isfinite(strength) and 0 < strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if one_step and strength >= 1:
            raise ValueError("one_step needs strength < 1 (the estimate starts from the "
                             "noised LQ latent)")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        for name, v in (("guidance_scale", guidance_scale), ("lambda_na", lambda_na),
                        ("lambda_nq", lambda_nq)):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if output_type not in ("np", "pil", "latent"):
            raise ValueError(f"output_type must be 'np', 'pil' or 'latent', got {output_type!r}")
        images, refs, prompts, neg_attr, neg_qual = self._normalize(
            image, references, prompt, negative_attribute_prompt, negative_quality_prompt)
        n, res = len(images), self.resolution
        device, dtype = self._execution_device, self.unet.dtype

        # -- step-invariant work, once per image ------------------------------------------
        used = []
        for i in range(n):
            need_default = prompts[i] is None or neg_attr[i] is None or neg_qual[i] is None
            d = self.default_prompts(refs[i]) if need_default else ("", "", "")
            used.append((d[0] if prompts[i] is None else prompts[i],
                         d[1] if neg_attr[i] is None else neg_attr[i],
                         d[2] if neg_qual[i] is None else neg_qual[i]))
        lq = self._encode_latents([resize_square(im, res) for im in images])
        r_max = max(len(r) for r in refs)
        ref_latents = ref_mask = ids = None
        if r_max and self.adapter.config.enable_rca:
            flat = [resize_square(r, res) for rs in refs for r in rs]
            z = self._encode_latents(flat)
            ref_latents = z.new_zeros(n, r_max, *z.shape[1:])
            ref_mask = torch.zeros(n, r_max, device=device)
            d = int(self.adapter.config.id_embed_dim)
            if id_embeds is None:
                vecs = self.embedder.embed([r for rs in refs for r in rs])
            else:
                vecs = np.asarray(id_embeds, dtype=np.float32)
                if vecs.ndim != 3 or vecs.shape[0] != n or vecs.shape[1] != r_max \
                        or vecs.shape[2] != d:
                    raise ValueError(f"id_embeds must be (B, R, {d}) = ({n}, {r_max}, {d}) "
                                     f"for embedder {self.embedder_name!r} (R: the most "
                                     f"references of any image); got {vecs.shape}")
            ids = torch.zeros(n, r_max, d, device=device, dtype=dtype)
            k = 0
            for i, rs in enumerate(refs):
                for j in range(len(rs)):
                    ref_latents[i, j] = z[k]
                    ids[i, j] = torch.as_tensor(vecs[k] if id_embeds is None else vecs[i, j])
                    ref_mask[i, j] = 1
                    k += 1
            if bool((ref_mask == 1).all()):
                ref_mask = None  # same count everywhere: no padding to mask
        model = MGFRModel(self.unet, self.adapter)
        cond = model.prepare(lq, ref_latents, ids, ref_mask)

        branches = self._branches(guidance_scale, lambda_na, lambda_nq, used)
        texts = [t for _, ts in branches for t in ts]
        ehs = self._encode_text(texts)

        # -- denoising loop ---------------------------------------------------------------
        steps = int(num_inference_steps)
        self.scheduler.set_timesteps(steps, device=device)
        shape = (n, self.unet.config.in_channels, res // self.vae_scale_factor,
                 res // self.vae_scale_factor)
        noise = torch.randn(shape, generator=generator, device=generator.device
                            if generator is not None else "cpu", dtype=torch.float32).to(device)
        k = len(branches)
        timesteps = self.scheduler.timesteps
        if strength < 1:
            # SDEdit: start from the LQ latent noised to the start timestep.
            keep = min(steps, max(1, int(round(steps * strength))))
            begin = (steps - keep) * getattr(self.scheduler, "order", 1)
            timesteps = timesteps[begin:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(begin)
            if one_step:
                latents = self._one_step_estimate(model, lq, noise, int(timesteps[0]), ehs,
                                                  cond, branches, guidance_scale, lambda_na,
                                                  lambda_nq, lca_scale, rca_scale)
                timesteps = timesteps[:0]
            else:
                latents = self.scheduler.add_noise(lq.float(), noise,
                                                   timesteps[:1].repeat(n)).to(dtype)
        else:
            latents = (noise * self.scheduler.init_noise_sigma).to(dtype)
        for step_i, t in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            x_in = self.scheduler.scale_model_input(latents, t)
            eps_all = model.step(x_in, t, ehs, cond, num_branches=k, lca_scale=lca_scale,
                                 rca_scale=rca_scale)
            eps = self._combine(eps_all.chunk(k), branches, guidance_scale, lambda_na, lambda_nq)
            latents = self.scheduler.step(eps, t, latents, generator=generator,
                                          return_dict=False)[0]
            if callback is not None:
                callback(step_i, t, latents)
        if output_type == "latent":
            return MGFRPipelineOutput(images=list(latents), prompts=used)
        out = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor,
                              return_dict=False)[0]
        arr = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arr = arr.permute(0, 2, 3, 1).cpu().numpy()
        faces_out = [a for a in arr]
        if output_type == "pil":
            from PIL import Image

            faces_out = [Image.fromarray(a) for a in faces_out]
        self.maybe_free_model_hooks()
        return MGFRPipelineOutput(images=faces_out, prompts=used)

    def _one_step_estimate(self, model, lq, noise, t: int, ehs, cond, branches, g, lna, lnq,
                           lca_scale, rca_scale) -> torch.Tensor:
        """The clean latent the model predicts in one call from the LQ latent noised to
        ``t`` (the DDPM forward process of the base's training schedule, whatever
        sampler is set): x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t) for an epsilon base,
        sqrt(a_t) z_t - sqrt(1 - a_t) v for a v-prediction base."""
        from .base import clean_estimate, noise_schedule, prediction_type

        alphas = noise_schedule(self.scheduler).alphas_cumprod
        a = alphas[t].to(lq.device, torch.float32)
        zt = (a.sqrt() * lq.float() + (1 - a).sqrt() * noise).to(lq.dtype)
        tt = torch.full((lq.shape[0],), t, device=lq.device, dtype=torch.long)
        pred_all = model.step(zt, tt, ehs, cond, num_branches=len(branches),
                              lca_scale=lca_scale, rca_scale=rca_scale)
        pred = self._combine(pred_all.chunk(len(branches)), branches, g, lna, lnq)
        return clean_estimate(prediction_type(self.scheduler), pred, zt, t, alphas).to(lq.dtype)

    @staticmethod
    def _branches(g, lna, lnq, used) -> list[tuple[str, list[str]]]:
        """Guidance branches in batch order, with their per-image prompts; zero-weight or
        empty-prompt branches are left out."""
        out = []
        cfg = g > 1.0 or (lna > 0 and any(u[1] for u in used)) or (lnq > 0 and any(u[2] for u in used))
        if cfg:
            out.append(("u", [""] * len(used)))
        out.append(("p", [u[0] for u in used]))
        if lna > 0 and any(u[1] for u in used):
            out.append(("na", [u[1] for u in used]))
        if lnq > 0 and any(u[2] for u in used):
            out.append(("nq", [u[2] for u in used]))
        return out

    @staticmethod
    def _combine(eps: Sequence[torch.Tensor], branches, g, lna, lnq) -> torch.Tensor:
        by = {name: e for (name, _), e in zip(branches, eps, strict=False)}
        if "u" not in by:
            return by["p"]
        u = by["u"]
        out = u + g * (by["p"] - u)
        if "na" in by:
            out = out - lna * (by["na"] - u)
        if "nq" in by:
            out = out - lnq * (by["nq"] - u)
        return out

    # ---- whole photos -------------------------------------------------------------------
    def align_references(self, references: Sequence[np.ndarray], names: Sequence[str] | None = None,
                         detector: str = "dlib-hog") -> list[np.ndarray]:
        """The largest face of each reference photo, FFHQ-aligned at 512 px; a reference in
        which no face is found raises :class:`NoFaceError` naming it."""
        import faces

        out = []
        for i, ref in enumerate(references):
            name = names[i] if names else f"reference {i}"
            found = faces.detect_and_align(np.asarray(ref), detector=detector,
                                           output_size=ALIGN_SIZE)
            if not found:
                raise NoFaceError(f"{name}: no face found in the reference")
            out.append(max(found, key=lambda f: f.detection.size).image)
        return out

    def restore_photo(self, photo: np.ndarray, references=None, upscale: float = 1,
                      detector: str = "dlib-hog", reference_names=None, aligned_references=False,
                      name: str = "photo", **options) -> PhotoResult:
        """Detect, align, restore and paste back (soft mask) every face of ``photo``.

        ``references``: photos of the same person (their largest face is aligned), or aligned
        faces with ``aligned_references=True``. The photo outside the pasted faces is kept
        (upsampled with ``upscale`` > 1). ``options`` go to ``__call__``."""
        import cv2

        import faces
        from faces.detection import check_image

        photo = check_image(photo, name)
        if not (1 <= float(upscale) <= 8):
            raise ValueError(f"upscale must be between 1 and 8, got {upscale}")
        found = faces.detect_and_align(photo, detector=detector, output_size=ALIGN_SIZE)
        if not found:
            raise NoFaceError(f"{name}: no face found")
        refs = []
        if references:
            refs = [check_face(r, f"reference {i}") for i, r in enumerate(references)] \
                if aligned_references else self.align_references(references, reference_names,
                                                                  detector)
        result = self(image=[f.image for f in found], references=[refs] * len(found), **options)
        u = float(upscale)
        out = photo if u == 1 else cv2.resize(photo, None, fx=u, fy=u,
                                              interpolation=cv2.INTER_CUBIC)
        records = []
        for i, (f, face) in enumerate(zip(found, result.images, strict=False)):
            m = f.matrix.astype(np.float64).copy()
            m[:, :2] /= u                       # upscaled photo -> crop
            m *= face.shape[0] / ALIGN_SIZE     # crop at 512 -> crop at the restored size
            out = faces.paste_back(out, face, m, soft_mask=True)
            d = f.detection
            records.append({"face": i, "box": [float(v) for v in d.box],
                            "score": float(d.score), "matrix": m.tolist(), "restored": face,
                            "prompts": result.prompts[i]})
        return PhotoResult(image=out, faces=records)


#: the shipped mini model (asset ``mgfr-mini``): its prior folder holds both adapter stages
MINI_ASSET = "mgfr-mini"


def shipped_adapters(stage: int = 2) -> Path:
    """The shipped mini model's stage-``stage`` adapter folder (asset ``mgfr-mini``; a
    missing or altered copy raises the asset error naming it)."""
    from reface_core.assets import resolve

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    return resolve(MINI_ASSET) / f"adapters-stage{stage}"


def is_pipeline_folder(path) -> bool:
    """Whether ``path`` holds a saved :class:`MGFRPipeline`: its ``model_index.json`` names
    the class. A Stable Diffusion folder has a ``model_index.json`` too (naming
    ``StableDiffusionPipeline``), and is a base, not a saved MGFR pipeline."""
    index = Path(str(path)).expanduser() / "model_index.json"
    try:
        info = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("_class_name") == MGFRPipeline.__name__


def load_pipeline(base: str | None = None, adapters: str | None = None, device: str = "cpu",
                  dtype: torch.dtype | str = torch.float32, scheduler: str = "ddim",
                  embedder: str | None = None) -> MGFRPipeline:
    """An :class:`MGFRPipeline` from an adapter folder (its ``mgfr_adapters.json`` names the
    base) and/or a base (preset name, prior folder, any diffusers Stable Diffusion folder
    or Hugging Face cache folder of one, or a saved pipeline folder: ``model_index.json``
    naming ``MGFRPipeline``). With neither, or with ``base="mini"`` alone, the shipped mini
    model (stage-2 adapters). Other bases without ``adapters`` get an untrained adapter
    (zero residuals: the frozen prior alone)."""
    from .base import load_base

    dtype = parse_dtype(dtype)
    if adapters is None and base in (None, "mini"):
        base, adapters = "mini", str(shipped_adapters(2))
    if base is not None and adapters is None and is_pipeline_folder(base):
        pipe = MGFRPipeline.from_pretrained(base, torch_dtype=dtype)
        pipe.to(device)
    else:
        if adapters is not None:
            model = MGFRModel.load_adapters(adapters, base=base, device=device, dtype=dtype,
                                            embedder=embedder)
            base_models = model.base
        else:
            base_models = load_base(base or "tiny", device=device, dtype=dtype)
            model = MGFRModel.from_base(base_models)
        pipe = pipeline_from_model(base_models, model, adapters_path=adapters)
    pipe.set_scheduler(scheduler)
    if embedder is not None:
        pipe.set_embedder(embedder)
    return pipe


def pipeline_from_model(base_models, model: MGFRModel, adapters_path=None,
                        scheduler: str = "ddim") -> MGFRPipeline:
    """An :class:`MGFRPipeline` from built parts (``mgfr.base.BaseModels`` and a model)."""
    return MGFRPipeline(
        unet=base_models.unet, vae=base_models.vae, text_encoder=base_models.text_encoder,
        tokenizer=base_models.tokenizer,
        scheduler=get_scheduler(scheduler, base_models.noise_scheduler.config),
        adapter=model.adapter, resolution=base_models.resolution, preset=base_models.preset,
        base=base_models.base, adapters_path=str(adapters_path) if adapters_path else "")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if str(dtype) not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose from fp32, fp16, bf16")
    return names[str(dtype)]
