"""The two front ends over one implementation.

* :class:`Degrader` - one ``uint8`` RGB image in, one ``uint8`` LQ image and its record
  out; always on the CPU with real libjpeg, so its bytes are exact and replayable.
* :class:`BatchDegrader` - a float ``(B, 3, H, W)`` tensor on CPU or CUDA in, the LQ batch
  and its records out, for data loaders and training steps.

Both sample with :func:`degradations.sampling.sample_record` and apply records with
:func:`apply_records`, which walks the records' op lists in step, batching each op over
the samples that share it and their current size.

Agreement between the fronts (tested): with ``jpeg="libjpeg"`` (the CPU default) the
batch is byte-identical to the per-image output, whatever the thread count. With the
torch JPEG model (the CUDA default, differentiable) a face preset stays within 2 8-bit
levels mean absolute difference over a batch (libjpeg's integer DCT and rounding are
modelled, not bit-exact); Real-ESRGAN's Poisson noise is drawn from the image entering
it, so there a JPEG difference re-draws the noise and only the degradation level agrees.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from . import presets as P
from .ops import KNOWN_OPS, LEVELS, OPS, quantize, resize_many, to_tensor, to_uint8
from .records import validate_record
from .sampling import RECORD_VERSION, sample_record

JPEG_BACKENDS = ("auto", "libjpeg", "torch")


def _check_records(records: Sequence[dict], size: tuple[int, int]) -> None:
    for r in records:
        validate_record(r, size)  # types, caps and sizes of every field, one-line errors
        if not isinstance(r, dict) or "ops" not in r or "input_size" not in r:
            raise ValueError(f"not a degradation record (needs 'ops' and 'input_size'): {str(r)[:120]}")
        if r.get("version", RECORD_VERSION) != RECORD_VERSION:
            raise ValueError(f"record for image {r.get('image_id')!r} has version {r['version']}, "
                             f"this release replays version {RECORD_VERSION} (resample it)")
        if list(r["input_size"]) != [int(size[0]), int(size[1])]:
            raise ValueError(f"record for image {r.get('image_id')!r} was sampled for input size "
                             f"{r['input_size']}, but the image is {list(size)}")
        for op in r["ops"]:
            if op.get("op") not in KNOWN_OPS:
                raise ValueError(f"record for image {r.get('image_id')!r} has unknown op {op.get('op')!r}")


def apply_records(x: torch.Tensor, records: Sequence[dict], jpeg: str = "auto",
                  out: torch.Tensor | None = None, *, checked: bool = False) -> torch.Tensor:
    """Apply one record per sample to ``x`` ``(B, 3, H, W)`` float in [0, 1].

    ``jpeg``: ``"libjpeg"`` (exact, CPU round trip), ``"torch"`` (differentiable model on
    the tensor's device) or ``"auto"`` (libjpeg for CPU tensors, torch otherwise).
    Returns the LQ batch on ``x``'s device, on the 8-bit grid (written into ``out`` when
    given, a tensor of the output shape that does not need gradients).
    """
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float (B, 3, H, W) tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
    if len(records) != x.shape[0]:
        raise ValueError(f"got {len(records)} records for a batch of {x.shape[0]} images")
    if jpeg not in JPEG_BACKENDS:
        raise ValueError(f"jpeg must be one of {JPEG_BACKENDS}, got {jpeg!r}")
    if not checked:  # done already by a caller that split a checked batch (chunks, dtype)
        _check_records(records, tuple(x.shape[-2:]))
    backend = ("libjpeg" if x.device.type == "cpu" else "torch") if jpeg == "auto" else jpeg
    if x.dtype != torch.float32:  # the ops compute in float32; the result takes x's dtype
        out_dtype = x.dtype
        return apply_records(x.float(), records, jpeg=backend, checked=True).to(out_dtype)
    n_img = x.shape[0]
    # ``whole`` holds the batch while all samples share one size (``cur`` are its views);
    # once sizes diverge (per-sample resizes), samples live in ``cur`` until a resize to a
    # common size brings them back together.
    whole: torch.Tensor | None = x
    cur = [x[i:i + 1] for i in range(n_img)]
    owned = False  # whether ``whole`` may be written in place (never the caller's tensor)
    op_lists = [r["ops"] for r in records]
    for j in range(max((len(o) for o in op_lists), default=0)):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, ops in enumerate(op_lists):
            if j < len(ops) and ops[j].get("applied", True) and ops[j]["op"] != "one_of":
                e = ops[j]
                key = (("resize", tuple(e["size"]), e["mode"]) if e["op"] == "resize"
                       else (e["op"], tuple(cur[i].shape[-2:])))
                groups[key].append(i)
        for key, idx in groups.items():
            entries = [op_lists[i][j] for i in idx]
            full = len(idx) == n_img
            if key[0] == "resize":
                res = resize_many([cur[i] for i in idx], key[1], key[2])
            elif not full and owned and whole is not None and whole.device.type == "cpu" \
                    and not whole.requires_grad:
                # A few samples of a CPU batch (colour ops that fire with some probability):
                # run on row views and copy back, instead of gathering and scattering rows.
                for i, e in zip(idx, entries, strict=False):
                    whole[i].copy_(OPS[key[0]](whole[i:i + 1], [e], backend)[0])
                continue
            else:
                if whole is not None:
                    batch = whole if full else whole[idx]
                else:
                    batch = torch.cat([cur[i] for i in idx]) if len(idx) > 1 else cur[idx[0]]
                res = OPS[key[0]](batch, entries, backend)
            if full:
                whole, owned = res, True
                cur = [whole[i:i + 1] for i in range(n_img)]
            elif whole is not None and res.shape[-2:] == whole.shape[-2:]:
                if not owned:
                    whole, owned = whole.clone(), True
                whole[idx] = res  # only the subset is copied, the batch stays whole
                cur = [whole[i:i + 1] for i in range(n_img)]
            else:
                whole = None
                for n, i in enumerate(idx):
                    cur[i] = res[n:n + 1]
    if whole is None:
        sizes = {tuple(c.shape[-2:]) for c in cur}
        if len(sizes) > 1:
            raise ValueError(f"records end at different sizes {sorted(sizes)}; batch images of one preset")
        whole, owned = torch.cat(cur), True
    if out is not None and out.shape != whole.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, the result is {tuple(whole.shape)}")
    if whole.device.type == "cpu" and not whole.requires_grad:
        target = out if out is not None else (whole if owned else torch.empty_like(whole))
        _quantize_cpu(whole.numpy(), target.numpy())
        return target
    if out is not None:
        return torch.clamp(whole, 0, 1, out=out).mul_(255.0).round_().div_(255.0)
    return quantize(whole)


def _quantize_cpu(src: np.ndarray, dst: np.ndarray) -> None:
    """``round(clip(src, 0, 1) * 255) / 255`` into ``dst``, plane by plane through 8-bit:
    OpenCV rounds half to even like ``torch.round``; three passes instead of four, two of
    them on bytes, the last a table look-up."""
    flat_src = src.reshape(-1, *src.shape[-2:])
    flat_dst = dst.reshape(-1, *dst.shape[-2:])
    for s_, d_ in zip(flat_src, flat_dst, strict=False):
        np.clip(s_, 0, 1, out=d_)
        levels = cv2.convertScaleAbs(d_, alpha=255.0)
        if d_.flags.c_contiguous:  # OpenCV writes in place only into a contiguous plane
            cv2.LUT(levels, LEVELS, dst=d_)
        else:
            np.divide(levels, np.float32(255.0), out=d_, dtype=np.float32)

@contextlib.contextmanager
def _one_thread():
    """Run torch ops on one intra-op thread.

    torch's CPU kernels can round differently with 1 and with 2+ threads (last-bit
    differences that can flip an 8-bit level), so a fixed count makes the bytes independent
    of the caller's setting and the two front ends identical. It is also faster here: the
    per-sample ops are small and memory-bound, and OpenMP threads that spin at barriers
    lose badly on a shared CPU. The batched front end gets its parallelism from threads
    over chunks of the batch instead.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


class Degrader:
    """Per-image degradation with a preset (name, ``Preset``, or a .yaml/.json file).

    >>> lq, record = Degrader("gfpgan")(image_uint8, seed=0, image_id="00001")
    >>> np.array_equal(Degrader.replay(image_uint8, record), lq)
    True
    """

    def __init__(self, preset: str | P.Preset = "gfpgan"):
        self.preset = P.get_preset(preset)

    def sample(self, seed: int, image_id: str, size: tuple[int, int]) -> dict:
        return sample_record(self.preset, seed, image_id, size)

    def __call__(self, image: np.ndarray, seed: int, image_id: str) -> tuple[np.ndarray, dict]:
        x = to_tensor(image)
        record = self.sample(seed, image_id, tuple(x.shape[-2:]))
        with _one_thread():  # (torch ops at 2+ threads crawl on a busy CPU: see above)
            lq = to_uint8(apply_records(x, [record], jpeg="libjpeg"))
        return lq, record

    @staticmethod
    def replay(image: np.ndarray, record: dict) -> np.ndarray:
        """Re-apply a stored record to its HQ image: the same bytes as the first time
        (same machine type and library versions; tested on CPU)."""
        with _one_thread():
            return to_uint8(apply_records(to_tensor(image), [record], jpeg="libjpeg"))


class BatchDegrader:
    """Batched degradation on the tensor's device, for data loaders and training steps.

    ``jpeg``: see :func:`apply_records`; use ``"torch"`` for a differentiable pipeline.
    ``threads``: CPU threads over chunks of the batch (default: torch's thread count);
    ``chunk``: images per CPU chunk (CUDA batches run whole). While a CPU batch runs, torch's
    intra-op thread count is set to 1 process-wide (and restored after), so run it from
    the data-loading side rather than beside CPU training threads.

    >>> deg = BatchDegrader("mgfr-medium")
    >>> lq, records = deg(hq_batch, seed=step, image_ids=[f"{i}" for i in batch_indices])
    """

    def __init__(self, preset: str | P.Preset = "gfpgan", jpeg: str = "auto", threads: int | None = None,
                 chunk: int = 2):
        if jpeg not in JPEG_BACKENDS:
            raise ValueError(f"jpeg must be one of {JPEG_BACKENDS}, got {jpeg!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.preset = P.get_preset(preset)
        self.jpeg = jpeg
        self.threads = threads
        self.chunk = int(chunk)

    def sample(self, seed: int, image_ids: Sequence[str], size: tuple[int, int]) -> list[dict]:
        return [sample_record(self.preset, seed, i, size) for i in image_ids]

    def __call__(self, x: torch.Tensor, seed: int, image_ids: Sequence[str]) -> tuple[torch.Tensor, list[dict]]:
        if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
            # An integer batch (0-255) cast to float would be degraded as if it were in [0, 1].
            raise ValueError(f"expected a float (B, 3, H, W) tensor in [0, 1], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
        if len(image_ids) != x.shape[0]:
            raise ValueError(f"got {len(image_ids)} image ids for a batch of {x.shape[0]}")
        records = self.sample(seed, [str(i) for i in image_ids], tuple(x.shape[-2:]))
        return self.apply(x, records), records

    def apply(self, x: torch.Tensor, records: Sequence[dict]) -> torch.Tensor:
        """Apply stored records (one per sample) to a batch."""
        if not (torch.is_tensor(x) and x.device.type == "cpu" and x.is_floating_point()):
            return apply_records(x, records, jpeg=self.jpeg)  # checks x, raises the clear error
        if len(records) != (x.shape[0] if torch.is_tensor(x) and x.ndim == 4 else -1):
            return apply_records(x, records, jpeg=self.jpeg)  # raises the clear error
        with _one_thread() as threads:
            workers = self.threads or threads
            # CPU batches run in chunks of a few images, spread over threads: every op
            # releases the GIL (torch, OpenCV, NumPy), so chunks run in parallel without
            # OpenMP barriers; and chunk-sized buffers (a few MB) are recycled by the
            # allocator and stay in cache, where whole-batch buffers would be fresh
            # memory-mapped pages on every call.
            starts = list(range(0, x.shape[0], self.chunk))
            _check_records(records, tuple(x.shape[-2:]))  # before output_size is read below
            oh, ow = records[0]["output_size"] if records else x.shape[-2:]
            # NumPy allocates large buffers on huge pages: far fewer page faults than a
            # fresh torch buffer of the same size.
            if x.dtype != torch.float32:
                return self.apply(x.float(), records).to(x.dtype)
            result = torch.from_numpy(np.empty((x.shape[0], 3, oh, ow), dtype=np.float32))
            def run(a):
                return apply_records(x[a:a + self.chunk], records[a:a + self.chunk], jpeg=self.jpeg,
                                                      out=result[a:a + self.chunk], checked=True)
            if workers <= 1 or len(starts) == 1:
                for a in starts:
                    run(a)
            else:
                with ThreadPoolExecutor(min(workers, len(starts))) as pool:
                    list(pool.map(run, starts))
            return result
