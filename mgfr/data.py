"""Training batches for MGFR: on-the-fly LQ synthesis, negative-quality samples, dropouts.

``reface_hq.dataset.FaceTrainingDataset`` gives one dict per HQ face (target, references,
prompts, reference identity embeddings). This module turns a collated batch of them into
what a training step needs, on the step's device:

* **LQ input**: ``degradations.BatchDegrader`` applied to the HQ target, with a preset
  (or one drawn from a weighted mix) per face; the record is seeded by the run seed and
  ``image_id = f"{face_id}/e{epoch}"``, so ``degradations.Degrader(preset)(hq, seed=seed,
  image_id=...)`` re-creates any training input.
* **Negative-quality samples** (rate ``negative_rate``): the *target* is the HQ face
  degraded with the negative preset (``mgfr-negative``), the prompt is the face's
  negative-quality prompt, and the LQ input is the ordinary one. The model thus learns
  what "low quality" looks like given an LQ input, and guidance at inference pushes away
  from it (MGFR's negative-quality guidance).
* **Prompt dropout** (rate ``prompt_dropout``): the prompt becomes "" on positive samples,
  which trains the unconditional branch of classifier-free guidance. Negative samples keep
  their negative prompt: an empty prompt with a degraded target would teach the
  unconditional branch to degrade.
* **Reference dropout** (rate ``reference_dropout``, stage 2): the references and identity
  embeddings of a face are masked out, so the model also restores with no reference.

Every decision comes from a generator seeded by ``(seed, epoch, face_id)`` (SHA-256, not
Python's salted hash): the same epoch of the same run gives the same batches on any
machine, number of workers or restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SamplePlan:
    """What happens to one face in one epoch."""

    preset: str            # degradation preset of its LQ input
    negative: bool         # a negative-quality sample
    drop_prompt: bool      # prompt replaced by "" (positive samples only)
    drop_references: bool  # references and identity embeddings masked out


def _face_rng(seed: int, epoch: int, face_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"mgfr-train\x1f{int(seed)}\x1f{int(epoch)}\x1f{face_id}".encode())
    return np.random.default_rng(int.from_bytes(digest.digest()[:16], "little"))


def normalize_mix(degradation: str | Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    """A preset name, a list of names (equal weights) or {name: weight} -> {name: p}."""
    from degradations import get_preset

    if isinstance(degradation, str):
        mix = {degradation: 1.0}
    elif isinstance(degradation, Mapping):
        mix = {str(k): float(v) for k, v in degradation.items()}
    else:
        mix = {str(k): 1.0 for k in degradation}
    if not mix:
        raise ValueError("degradation: give at least one preset")
    bad = {k: v for k, v in mix.items() if not (v >= 0)}
    if bad or sum(mix.values()) <= 0:
        raise ValueError(f"degradation weights must be >= 0 with a positive sum, got {mix}")
    for name in mix:
        get_preset(name)  # unknown names fail here, with a did-you-mean
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def plan_sample(seed: int, epoch: int, face_id: str, *, mix: Mapping[str, float],
                negative_rate: float, prompt_dropout: float,
                reference_dropout: float) -> SamplePlan:
    """The seeded plan of one face in one epoch (pure: same inputs, same plan)."""
    rng = _face_rng(seed, epoch, face_id)
    u = rng.random(4)  # always four draws, so changing one rate never moves the others
    names = list(mix)
    cum = np.cumsum([mix[n] for n in names])
    preset = names[min(int(np.searchsorted(cum, u[0] * cum[-1], side="right")), len(names) - 1)]
    negative = bool(u[1] < negative_rate)
    return SamplePlan(preset=preset, negative=negative,
                      drop_prompt=bool(not negative and u[2] < prompt_dropout),
                      drop_references=bool(u[3] < reference_dropout))


def collate(items: Sequence[dict]) -> dict:
    """Stack a list of ``FaceTrainingDataset`` items (tensors stacked, the rest as lists)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return out


class BatchBuilder:
    """Turns a collated dataset batch into a training batch (see the module docstring).

    ``degradation``: a preset name, a list, or {preset: weight}; ``negative_preset``: the
    degradation of negative-quality targets. The constructor is the config (``config``).
    """

    def __init__(self, degradation="mgfr-medium", *, negative_preset: str = "mgfr-negative",
                 negative_rate: float = 0.1, prompt_dropout: float = 0.1,
                 reference_dropout: float = 0.0, seed: int = 0, jpeg: str = "auto"):
        from degradations import BatchDegrader, get_preset

        self.mix = normalize_mix(degradation)
        get_preset(negative_preset)
        self.negative_preset = negative_preset
        self.negative_rate = _check_rate("negative_rate", negative_rate)
        self.prompt_dropout = _check_rate("prompt_dropout", prompt_dropout)
        self.reference_dropout = _check_rate("reference_dropout", reference_dropout)
        self.seed = int(seed)
        self.degraders = {name: BatchDegrader(name, jpeg=jpeg)
                          for name in {*self.mix, negative_preset}}
        self.config = {"degradation": dict(self.mix), "negative_preset": negative_preset,
                       "negative_rate": self.negative_rate, "prompt_dropout": self.prompt_dropout,
                       "reference_dropout": self.reference_dropout, "seed": self.seed,
                       "jpeg": jpeg}

    def plan(self, epoch: int, face_id: str) -> SamplePlan:
        return plan_sample(self.seed, epoch, face_id, mix=self.mix,
                           negative_rate=self.negative_rate, prompt_dropout=self.prompt_dropout,
                           reference_dropout=self.reference_dropout)

    def _degrade(self, preset: str, x: torch.Tensor, ids: list[str]) -> torch.Tensor:
        lq, _ = self.degraders[preset](x, seed=self.seed, image_ids=ids)
        if lq.shape[-2:] != x.shape[-2:]:  # presets with an LQ size of their own
            lq = torch.nn.functional.interpolate(lq, size=x.shape[-2:], mode="bicubic",
                                                 align_corners=False)
        return lq.clamp(0, 1)

    def degrade_by_plan(self, hq: torch.Tensor, ids: list[str], presets: list[str]) -> torch.Tensor:
        out = torch.empty_like(hq)
        for name in dict.fromkeys(presets):
            rows = [i for i, p in enumerate(presets) if p == name]
            out[rows] = self._degrade(name, hq[rows], [ids[i] for i in rows]).to(hq.dtype)
        return out

    def __call__(self, batch: Mapping, epoch: int, device: torch.device | str | None = None) -> dict:
        """``batch``: :func:`collate` output. Returns ``target``/``lq`` (B, 3, S, S) in
        [0, 1], ``prompts`` (list of str), ``references`` (B, R, 3, S, S),
        ``reference_mask`` (B,) bool (False: dropped), ``reference_embeddings`` (B, R, D)
        when present, ``plans`` and ``face_ids``."""
        hq = batch["target"]
        if device is not None:
            hq = hq.to(device)
        face_ids = list(batch["face_id"])
        plans = [self.plan(epoch, f) for f in face_ids]
        ids = [f"{f}/e{int(epoch)}" for f in face_ids]
        lq = self.degrade_by_plan(hq, ids, [p.preset for p in plans])
        target = hq.clone()
        neg = [i for i, p in enumerate(plans) if p.negative]
        if neg:
            target[neg] = self._degrade(self.negative_preset, hq[neg],
                                        [f"{ids[i]}/neg" for i in neg]).to(hq.dtype)
        prompts = []
        for p, pos, nq in zip(plans, batch["prompt"], batch["negative_quality_prompt"], strict=False):
            prompts.append(nq if p.negative else ("" if p.drop_prompt else pos))
        out = {"target": target, "lq": lq, "prompts": prompts, "plans": plans,
               "face_ids": face_ids,
               "negative_attribute_prompts": list(batch["negative_attribute_prompt"]),
               "reference_mask": torch.tensor([not p.drop_references for p in plans],
                                              device=hq.device)}
        if "references" in batch:
            out["references"] = batch["references"].to(hq.device)
        if "reference_embeddings" in batch:
            out["reference_embeddings"] = batch["reference_embeddings"].to(hq.device)
        return out


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded order of ``n`` faces in ``epoch`` (a permutation)."""
    digest = hashlib.sha256(f"mgfr-order\x1f{int(seed)}\x1f{int(epoch)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little")).permutation(n)


def batch_indices(step: int, *, n: int, batch_size: int, seed: int, num_processes: int = 1,
                  process_index: int = 0) -> tuple[int, list[int]]:
    """``(epoch, indices)`` of global optimisation micro-step ``step`` for one process.

    The whole run's data order is a function of ``step`` alone (epochs of seeded
    permutations, last partial batch dropped), which is what makes ``--resume`` exact:
    a restarted run asks for the next step and gets the batch the killed one would have.
    With several processes each takes its slice of a global batch of
    ``batch_size * num_processes``.
    """
    global_batch = batch_size * num_processes
    per_epoch = n // global_batch
    if per_epoch < 1:
        raise ValueError(f"the dataset has {n} faces, fewer than one global batch of "
                         f"{global_batch}; lower the batch size")
    epoch, k = divmod(int(step), per_epoch)
    order = epoch_order(seed, epoch, n)
    chunk = order[k * global_batch:(k + 1) * global_batch]
    mine = chunk[process_index * batch_size:(process_index + 1) * batch_size]
    return epoch, [int(i) for i in mine]
