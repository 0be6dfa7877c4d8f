"""The VAE-latent cache of training faces (``cache_latents``): HQ targets and references.

A training step encodes three kinds of images with the frozen VAE: the HQ target, the LQ
input and (stage 2) the references. The LQ input is degraded afresh every step (a preset
and a seed per face and epoch), and negative-quality targets are degraded too, so neither
can be cached. The HQ faces themselves, as targets of positive samples and as references,
are the same images every epoch up to a horizontal flip, so their latents are encoded
once, in both orientations when the run flips (a convolutional VAE does not commute with
a flip exactly), and read back every step.

One safetensors file per VAE, resolution and encode dtype::

    CACHE_DIR/vae_latents/<vae digest[:16]>-<S>px-<dtype>.safetensors

holding ``latents`` (faces x orientations, C, h, w) in the dtype the training step
encodes in, and metadata: the digest of the dataset (face ids and image sha256 of every
face, in order, and the size), the digest of the VAE (its config and the bytes of every
weight), the orientations and the format version. A file whose digests do not match the
run's is rebuilt (a changed VAE names another file; a changed dataset rebuilds this one),
and a torn or foreign file is rebuilt rather than trusted. The file is written to a
temporary name and renamed.

Several processes (``accelerate launch``) each encode every ``num_processes``-th row into
a part file, the main process merges the parts, then every process opens the file.
Rows are read one by one through safetensors' memory map, so a large cache is not held
in memory by every process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

CACHE_SUBDIR = "vae_latents"
FORMAT = "1"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def vae_digest(vae) -> str:
    """sha256 of the VAE's config and of every weight's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    cfg = dict(getattr(vae, "config", {}) or {})
    h.update(json.dumps({k: v for k, v in cfg.items() if not str(k).startswith("_")},
                        sort_keys=True, default=str).encode())
    h.update(type(vae).__name__.encode())
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"\x1e{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1f".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dataset_digest(dataset) -> str:
    """sha256 of a ``FaceTrainingDataset``'s faces (ids and image hashes, in order) and size."""
    h = hashlib.sha256(f"size={dataset.size}\n".encode())
    for it in dataset.items:
        h.update(f"{it['face_id']}\x1f{it.get('image_sha256') or it['image_path']}\n".encode())
    return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike, vae_sha: str, size: int, dtype: torch.dtype) -> Path:
    return Path(cache_dir) / CACHE_SUBDIR / f"{vae_sha[:16]}-{size}px-{DTYPE_NAMES[dtype]}.safetensors"


class LatentCache:
    """Read access to a built cache file: ``get(indices, flips)`` -> (B, C, h, w)."""

    def __init__(self, path: Path, meta: dict):
        from safetensors import safe_open
        self.path = Path(path)
        self.meta = meta
        self.orientations = int(meta["orientations"])
        self.rows = int(meta["rows"])
        self._file = safe_open(str(path), framework="pt")
        self._slice = self._file.get_slice("latents")
        self.built = False  # True when this run encoded it

    def row(self, index: int, flipped: bool) -> int:
        if flipped and self.orientations < 2:
            raise ValueError(f"{self.path}: cached without flips, asked for a flipped face")
        r = int(index) * self.orientations + int(bool(flipped))
        if not 0 <= r < self.rows:
            raise IndexError(f"{self.path}: face {index} is not in the cache ({self.rows} rows)")
        return r

    def get(self, indices, flips, device=None, dtype=None) -> torch.Tensor:
        rows = [self.row(i, f) for i, f in zip(indices, flips, strict=False)]
        out = torch.cat([self._slice[r:r + 1] for r in rows])
        return out.to(device=device, dtype=dtype)


def _read_meta(path: Path) -> dict | None:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shape = f.get_slice("latents").get_shape()
        meta["rows"] = str(shape[0])
        return meta
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None  # torn or foreign: rebuilt


def _matches(meta: dict | None, want: dict) -> bool:
    return meta is not None and all(meta.get(k) == v for k, v in want.items()) and \
        int(meta.get("rows", -1)) == int(want["faces"]) * int(want["orientations"])


def _part_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f".{path.stem}.part{rank}-of-{world}.safetensors")


def load_or_build(dataset, vae, encode: Callable[[torch.Tensor], torch.Tensor], *,
                  cache_dir: str | os.PathLike, dtype: torch.dtype, flip: bool,
                  batch_size: int = 16, process_index: int = 0, num_processes: int = 1,
                  is_main: bool = True, wait: Callable[[], None] = lambda: None,
                  progress: bool = False) -> LatentCache:
    """The cache of ``dataset``'s faces for ``vae``: opened when it matches, else built.

    ``encode``: (B, 3, S, S) images in [0, 1] -> latents, exactly what the training step
    calls on its targets (so a cached latent equals an encoded one, up to the batch the
    convolutions ran in). ``wait``: a barrier across processes (``wait_for_everyone``).
    """
    from safetensors.torch import save_file

    from reface_core.atomic import atomic_path

    vae_sha = vae_digest(vae)
    orientations = 2 if flip else 1
    want = {"format": FORMAT, "dataset_sha256": dataset_digest(dataset), "vae_sha256": vae_sha,
            "size": str(dataset.size), "dtype": DTYPE_NAMES[dtype],
            "orientations": str(orientations), "faces": str(len(dataset))}
    path = cache_path(cache_dir, vae_sha, int(dataset.size), dtype)
    meta = _read_meta(path) if path.is_file() else None
    if _matches(meta, want):
        return LatentCache(path, meta)
    wait()  # every process has read the old file's verdict before anyone replaces it
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(k, f) for k in range(len(dataset)) for f in range(orientations)]
    mine = rows[process_index::num_processes]
    from tqdm.auto import tqdm
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(mine), batch_size), desc="caching VAE latents",
                      disable=not progress):
            part = mine[i:i + batch_size]
            x = torch.stack([dataset._tensor(k, bool(f)) for k, f in part])
            chunks.append(encode(x).detach().to("cpu"))
    lat = torch.cat(chunks) if chunks else torch.zeros(0)
    part_file = _part_path(path, process_index, num_processes)
    with atomic_path(part_file) as tmp:
        save_file({"latents": lat.contiguous()}, str(tmp))
    wait()
    if is_main:
        from safetensors.torch import load_file
        parts = [load_file(str(_part_path(path, r, num_processes)))["latents"]
                 for r in range(num_processes)]
        full = torch.empty((len(rows), *parts[0].shape[1:]), dtype=parts[0].dtype)
        for r, t in enumerate(parts):
            if t.numel():
                full[r::num_processes] = t
        with atomic_path(path) as tmp:
            save_file({"latents": full}, str(tmp), metadata=want)
        for r in range(num_processes):
            _part_path(path, r, num_processes).unlink(missing_ok=True)
    wait()
    meta = _read_meta(path)
    if not _matches(meta, want):
        raise RuntimeError(f"{path}: the latent cache just written does not read back")
    cache = LatentCache(path, meta)
    cache.built = True
    return cache
