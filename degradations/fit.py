"""Fit a preset's ranges to real LQ faces: CMA-ES over a search space that is data.

A search space is a template preset plus the ranges to search (``DEFAULT_SPACE``; any YAML
file of the same layout): each parameter names a stage of the template (by index), the
fields it sets, and its bounds. A ``pair`` parameter is a [low, high] range (two
coordinates, sorted when decoded), a scalar one a single value (a probability, a shift).
Coordinates live in [0, 1] (log-spaced between the bounds where ``log``), so one CMA-ES
step size fits all.

Each candidate preset degrades the same HQ faces with the same seed and the same preset
name (common random numbers: two candidates differ only by their ranges), and its score
comes from :func:`degradations.realism.compare` with the real faces: by default its
``distance`` (mean standardised Wasserstein-1 over the statistics), or the classifier
two-sample AUC (``objective="auc"``, see :data:`OBJECTIVES`). Every evaluated candidate is appended to a JSONL log
beside the output; a rerun replays the log through the same seeded CMA-ES (its candidates
must agree to 1e-9) and goes on from there, so a killed fit resumes and a finished one
costs nothing to redo.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .presets import PI, Preset

#: The default template: the gfpgan family at mgfr-medium's ranges, plus a JPEG pass at the
#: output size (real LQ photos are stored as JPEG after their last resize), grayscale and a
#: mild colour jitter, those three off to start with.
DEFAULT_SPACE: dict = {
    "template": {
        "name": "real-world",
        "out_scale": 1,
        "stages": [
            {"kind": "blur", "kernel_size": 41, "kernel_list": ["iso", "aniso"], "kernel_prob": [0.5, 0.5],
             "sigma_x": [2.0, 5.0], "sigma_y": [2.0, 5.0], "rotation": [-PI, PI]},
            {"kind": "downsample", "scale": [2.0, 6.0], "mode": "bilinear"},
            {"kind": "noise", "sigma": [5.0, 12.0], "gaussian_prob": 1.0},
            {"kind": "jpeg", "quality": [50.0, 80.0]},
            {"kind": "resize_to", "target": "input", "modes": ["bilinear"]},
            {"kind": "jpeg", "quality": [50.0, 90.0], "prob": 0.0},
            {"kind": "gray", "prob": 0.01},
            {"kind": "color_jitter", "brightness": [0.8, 1.2], "contrast": [0.7, 1.2],
             "saturation": [0.5, 1.2], "hue": [-0.03, 0.03], "prob": 0.0},
        ],
    },
    "params": [
        {"name": "blur.sigma", "stage": 0, "fields": ["sigma_x", "sigma_y"], "pair": True,
         "bounds": [0.2, 12.0], "log": True},
        {"name": "downsample.scale", "stage": 1, "fields": ["scale"], "pair": True,
         "bounds": [1.0, 16.0], "log": True},
        {"name": "noise.sigma", "stage": 2, "fields": ["sigma"], "pair": True, "bounds": [0.0, 25.0]},
        {"name": "jpeg.quality", "stage": 3, "fields": ["quality"], "pair": True, "bounds": [10.0, 100.0]},
        {"name": "output_jpeg.quality", "stage": 5, "fields": ["quality"], "pair": True,
         "bounds": [10.0, 100.0]},
        {"name": "output_jpeg.prob", "stage": 5, "fields": ["prob"], "bounds": [0.0, 1.0]},
        {"name": "gray.prob", "stage": 6, "fields": ["prob"], "bounds": [0.0, 0.5]},
        {"name": "color_jitter.prob", "stage": 7, "fields": ["prob"], "bounds": [0.0, 1.0]},
    ],
}


#: What a candidate's score minimises, from its :class:`realism.Comparison` with the real
#: faces (the log's ``distance`` field holds this score). ``distance``: the mean standardised
#: Wasserstein-1 over the statistics (each marginal alone). ``auc``: the classifier
#: two-sample AUC (out-of-fold, the statistics jointly; what the realism table reports).
#: ``distance+auc``: their sum, the AUC's steps smoothed by the marginals.
OBJECTIVES = {
    "distance": lambda c: c.distance,
    "auc": lambda c: c.auc,
    "distance+auc": lambda c: c.distance + c.auc,
}


@dataclass(frozen=True)
class SearchSpace:
    """A template preset and the parameters searched in it (see the module docstring)."""
    template: dict
    params: tuple[dict, ...]

    @classmethod
    def from_dict(cls, d: dict, where: str = "search space") -> SearchSpace:
        if not isinstance(d, dict) or set(d) != {"template", "params"}:
            raise ValueError(f"{where}: expected a mapping with exactly 'template' and 'params'")
        template = Preset.from_dict(d["template"]).to_dict()  # validates the template
        params = d["params"]
        if not isinstance(params, list) or not params:
            raise ValueError(f"{where}: 'params' must be a non-empty list")
        known = {"name", "stage", "fields", "pair", "bounds", "log"}
        out = []
        for i, p in enumerate(params):
            if not isinstance(p, dict) or set(p) - known or not {"stage", "fields", "bounds"} <= set(p):
                raise ValueError(f"{where}: params[{i}] must have stage, fields, bounds (and "
                                 f"optionally name, pair, log), got {p!r}")
            stage = p["stage"]
            if not isinstance(stage, int) or not 0 <= stage < len(template["stages"]):
                raise ValueError(f"{where}: params[{i}].stage {stage!r} is not a stage index of "
                                 f"the template (0-{len(template['stages']) - 1})")
            st = template["stages"][stage]
            for f in p["fields"]:
                if f not in st or f == "kind":
                    raise ValueError(f"{where}: params[{i}]: stage {stage} ({st['kind']}) has no "
                                     f"field {f!r}")
            lo, hi = (float(b) for b in p["bounds"])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"{where}: params[{i}].bounds must be finite with low < high, "
                                 f"got {p['bounds']}")
            if p.get("log") and lo <= 0:
                raise ValueError(f"{where}: params[{i}]: log bounds must be positive, got {p['bounds']}")
            out.append({"name": p.get("name", f"{st['kind']}.{p['fields'][0]}"), "stage": stage,
                        "fields": list(p["fields"]), "pair": bool(p.get("pair", False)),
                        "bounds": [lo, hi], "log": bool(p.get("log", False))})
        return cls(template=template, params=tuple(out))

    def to_dict(self) -> dict:
        return {"template": copy.deepcopy(self.template), "params": [dict(p) for p in self.params]}

    @property
    def dim(self) -> int:
        return sum(2 if p["pair"] else 1 for p in self.params)

    @staticmethod
    def _to_unit(p, v: float) -> float:
        lo, hi = p["bounds"]
        if p["log"]:
            u = (math.log(max(v, lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        else:
            u = (v - lo) / (hi - lo)
        return min(max(u, 0.0), 1.0)

    @staticmethod
    def _from_unit(p, u: float) -> float:
        lo, hi = p["bounds"]
        u = min(max(float(u), 0.0), 1.0)
        v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if p["log"] else lo + u * (hi - lo)
        return round(v, 4)

    def encode(self, preset: dict | None = None) -> np.ndarray:
        """The unit coordinates of a preset dict of the template's layout (default: the template)."""
        st = (preset or self.template)["stages"]
        x = []
        for p in self.params:
            v = st[p["stage"]][p["fields"][0]]
            x += [self._to_unit(p, v[0]), self._to_unit(p, v[1])] if p["pair"] else [self._to_unit(p, v)]
        return np.array(x)

    def decode(self, x, name: str | None = None) -> Preset:
        d = copy.deepcopy(self.template)
        if name:
            d["name"] = name
        i = 0
        for p in self.params:
            if p["pair"]:
                a, b = sorted((self._from_unit(p, x[i]), self._from_unit(p, x[i + 1])))
                value, i = [a, b], i + 2
            else:
                value, i = self._from_unit(p, x[i]), i + 1
            for f in p["fields"]:
                d["stages"][p["stage"]][f] = value
        for st in d["stages"]:
            if st["kind"] == "jpeg":  # the sampler rounds JPEG bounds to integers: say so
                st["quality"] = [float(round(q)) for q in st["quality"]]
        return Preset.from_dict(d)

    def describe(self, x) -> dict:
        """{parameter name: its decoded value} (the report's view of a candidate)."""
        preset = self.decode(x).to_dict()
        return {p["name"]: preset["stages"][p["stage"]][p["fields"][0]] for p in self.params}


def load_space(path: str | Path | None) -> SearchSpace:
    if path is None:
        return SearchSpace.from_dict(DEFAULT_SPACE)
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"search space {path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"search space {path}: not valid YAML ({e})") from None
    try:
        return SearchSpace.from_dict(data, where=f"search space {path}")
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("search space") else f"search space {path}: {msg}") from None


def log_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".fit.jsonl")


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".fit.json")


def _read_log(path: Path) -> tuple[dict | None, list[dict]]:
    if not path.exists():
        return None, []
    header, rows = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it stands
            if "settings" in entry and header is None:
                header = entry
            elif "index" in entry:
                rows.append(entry)
    return header, rows


def _append(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fit(real, hq, out: str | Path, *, space: SearchSpace | None = None, name: str = "real-world",
        budget: int = 120, popsize: int | None = None, n_synthetic: int = 32, seed: int = 0,
        size: int = 512, sigma0: float = 0.25, overwrite: bool = False, progress: bool = True,
        describe_real: str = "", n_boot: int = 1000, objective: str = "distance") -> dict:
    """Search ``space`` for the preset closest to ``real`` (a :class:`realism.FaceSet`) when
    applied to ``hq`` ([(id, face)]); write it to ``out`` (YAML) with a ``.fit.json`` report
    and the ``.fit.jsonl`` candidate log beside it. Returns the report.

    ``objective`` is what a candidate's score minimises (see :data:`OBJECTIVES`)."""
    import cma
    import yaml
    from tqdm import tqdm

    from reface_core.atomic import write_json_atomic, write_text_atomic

    from . import realism

    space = space or load_space(None)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if budget < 1:
        raise ValueError(f"budget must be at least 1 candidate, got {budget}")
    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"output {out}: must end in .yaml or .yml (a preset file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    real_table = realism.statistics_table(real, progress=progress, desc="real statistics")
    settings = {"space": space.to_dict(), "name": name, "popsize": popsize, "n_synthetic": n_synthetic,
                "seed": seed, "size": size, "sigma0": sigma0,
                "real": sorted(f"{f.group}:{f.face_id}" for f in real.faces),
                "hq": hashlib.sha256("\n".join(i for i, _ in hq).encode()).hexdigest()}
    if objective != "distance":  # (logs written before objectives existed keep their fingerprint)
        settings["objective"] = objective
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    log = log_path(out)
    header, done = _read_log(log)
    if header is not None and header["fingerprint"] != fingerprint:
        if not overwrite:
            raise ValueError(f"{log}: a fit with other settings (inputs, space, seed or sizes) is "
                             f"logged there; pass --overwrite to start over")
        header, done = None, []
    if header is None:
        log.unlink(missing_ok=True)
        _append(log, {"settings": settings, "fingerprint": fingerprint})
    by_index = {r["index"]: r for r in done}
    score = OBJECTIVES[objective]

    def evaluate(index: int, x: np.ndarray) -> float:
        if index in by_index:
            logged = np.array(by_index[index]["x"])
            if logged.shape != x.shape or np.max(np.abs(logged - x)) > 1e-9:
                raise ValueError(f"{log}: candidate {index} differs from the logged one (another "
                                 f"CMA-ES version?); pass --overwrite to start over")
            return float(by_index[index]["distance"])
        t0 = time.perf_counter()
        preset = space.decode(x, name=name)
        synth = realism.synthesize(preset, hq, n_synthetic, seed, size)
        d = score(realism.compare(real_table, realism.statistics_table(synth), seed=seed, n_boot=0,
                                  auc=objective != "distance"))
        entry = {"index": index, "x": [float(v) for v in x], "distance": d,
                 "seconds": round(time.perf_counter() - t0, 3)}
        _append(log, entry)
        by_index[index] = entry
        return d

    x0 = space.encode()
    opts = {"bounds": [0.0, 1.0], "seed": seed + 1, "verbose": -9}  # cma: seed 0 means "random"
    if popsize:
        opts["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(x0.tolist(), sigma0, opts)
    bar = tqdm(total=budget, desc="fit candidates", disable=not progress, unit="cand")
    best = (evaluate(0, x0), x0, 0)
    bar.update(1)
    index = 1
    while index < budget:
        xs = es.ask()
        fs = []
        for x in xs:
            x = np.asarray(x, dtype=float)
            fs.append(evaluate(index, x) if index < budget else float("inf"))
            if fs[-1] < best[0]:
                best = (fs[-1], x, index)
            index += 1
            bar.update(1 if index <= budget else 0)
            bar.set_postfix(best=f"{best[0]:.3f}")
        if all(math.isfinite(f) for f in fs):
            es.tell(xs, fs)
    bar.close()

    # The report: the template and the best candidate, per statistic, with the classifier test.
    before_set = realism.synthesize(space.decode(x0, name=name), hq, n_synthetic, seed, size)
    after_preset = space.decode(best[1], name=name)
    after_set = realism.synthesize(after_preset, hq, n_synthetic, seed, size)
    before = realism.compare(real_table, realism.statistics_table(before_set), seed=seed, n_boot=n_boot)
    after = realism.compare(real_table, realism.statistics_table(after_set), seed=seed, n_boot=n_boot)
    seconds = [float(by_index[i]["seconds"]) for i in sorted(by_index) if i < budget]
    what = {"distance": "mean standardised distance", "auc": "two-sample AUC",
            "distance+auc": "distance + two-sample AUC"}[objective]
    description = (f"Fitted to real LQ faces{f' ({describe_real})' if describe_real else ''}: "
                   f"{what} {score(before):.3f} (template) -> {score(after):.3f}")
    d = after_preset.to_dict()
    d["description"] = description
    d["source"] = (f"python -m degradations fit (CMA-ES, seed {seed}, {budget} candidates, "
                   f"{n_synthetic} synthetic faces at {size} px)")
    final = Preset.from_dict(d)
    write_text_atomic(out, yaml.safe_dump(final.to_dict(), sort_keys=False))
    report = {
        "preset": str(out.name), "fingerprint": fingerprint, "candidates": len(seconds),
        "objective": objective, "best_score": best[0],
        "seconds_per_candidate": float(np.median(seconds)) if seconds else None,
        "best_index": best[2],
        "parameters": {"template": space.describe(x0), "fitted": space.describe(best[1])},
        "before": before.to_dict(), "after": after.to_dict(), "real": describe_real,
        "n_real": len(real.faces), "n_synthetic": n_synthetic, "seed": seed, "size": size,
    }
    write_json_atomic(report_path(out), report)
    return report
