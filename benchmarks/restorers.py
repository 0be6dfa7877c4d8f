"""Restorers registry: anything that maps an LQ face (plus optional references) to a face.

=============  =========================================================================
name           what (options)
=============  =========================================================================
lq             the LQ input itself (a floor for every metric)
bicubic        the LQ resized to the target size with OpenCV bicubic (``size``)
folder         precomputed outputs of another method, ``DIR/<image_id>.<png|jpg|...>``
               (``dir``; required)
codeformer     CodeFormer through spandrel + spandrel-extra-arches, official weights from
               the asset resolver (``w``: fidelity weight, default 0.5; ``path``)
gfpgan         GFPGAN v1.4 through spandrel (``path``)
mgfr           an adapter folder from ``mgfr train`` on its base
               (``adapters``, ``base``, ``steps``, ``guidance_scale``, ``lambda_na``,
               ``lambda_nq``, ``prompt``, ``negative_attribute_prompt``,
               ``negative_quality_prompt``, ``seed``, ``use_references``,
               ``strength``, ``one_step``, ``rca_scale``)
=============  =========================================================================

A restorer whose weights are missing raises :class:`RestorerUnavailable` from ``load()``
with the resolver's message; the harness records the run as ``skipped`` with it.
Options are the constructor's keywords; ``config_for_record()`` is everything that
determines the output (weights digest included), hashed into the run id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from reface_core.registry import Registry, UnknownNameError


class RestorerUnavailable(Exception):
    """The restorer cannot run here (weights missing); the message says how to fix it."""


class UnknownRestorerError(UnknownNameError):
    """A method name that is not registered (a ``ValueError``)."""


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    from reface_core.assets import sha256_file
    return sha256_file(path)


def file_digest(path) -> str:
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime)


def resize_to(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize to (height, width): bicubic up, area down; unchanged when already there."""
    import cv2
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    h, w = size
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=interp))


#: Bounds of method options, checked when a method is built (before any work): a typo
#: such as ``size=60000`` or ``steps=-1`` is one line, not a 10 GB allocation or a row per
#: image. ``MAX_SIZE`` is the largest output side a restorer is asked for.
MAX_SIZE = 4096
MAX_STEPS = 1000
MAX_WEIGHT = 100.0


def whole_option(method: str, key: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; 1.5, inf, nan and text are refused by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        number = int(number) if math.isfinite(number) and number == int(number) else None
    if number is None or not lo <= number <= hi:
        raise ValueError(f"{method}: {key} must be a whole number in [{lo}, {hi}], "
                         f"got {value!r}")
    return number


def number_option(method: str, key: str, value, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and lo <= number <= hi):
        raise ValueError(f"{method}: {key} must be a finite number in [{lo:g}, {hi:g}], "
                         f"got {value!r}")
    return number


def flag_option(method: str, key: str, value) -> bool:
    """true/false, yes/no, 1/0 (any case); anything else is refused, not read as false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{method}: {key} must be true or false, got {value!r}")


class Restorer:
    name = ""
    uses_references = False

    def config(self) -> dict:
        return {}

    def load(self, device: str = "cpu") -> None:
        self.device = device

    def config_for_record(self) -> dict:
        return {"restorer": self.name, **self.config()}

    def restore(self, lq: np.ndarray, references: list[np.ndarray], *, image_id: str,
                out_size: tuple[int, int] | None) -> np.ndarray:
        raise NotImplementedError


class LQ(Restorer):
    name = "lq"

    def restore(self, lq, references, *, image_id, out_size):
        return lq


class Bicubic(Restorer):
    name = "bicubic"

    def __init__(self, size: int | None = None):
        self.size = None if size is None else whole_option("bicubic", "size", size, 1, MAX_SIZE)

    def config(self):
        return {"size": self.size, "interpolation": "cv2.INTER_CUBIC"}

    def restore(self, lq, references, *, image_id, out_size):
        import cv2
        size = (self.size, self.size) if self.size else (out_size or lq.shape[:2])
        if tuple(size) == lq.shape[:2]:
            return lq
        return np.ascontiguousarray(cv2.resize(lq, (size[1], size[0]), interpolation=cv2.INTER_CUBIC))


class Folder(Restorer):
    """Outputs of another method, matched by image id (any image suffix)."""

    name = "folder"

    def __init__(self, dir: str | None = None, method: str | None = None):
        if not dir:
            raise ValueError("folder: needs dir=PATH (the folder of precomputed outputs), "
                             "e.g. --methods folder:dir=outputs/diffbir")
        self.dir = Path(dir).expanduser().resolve()
        if not self.dir.is_dir():
            raise ValueError(f"folder: dir={dir} is not a folder")
        self.method = method or self.dir.name
        self.files = self._list_files()

    def _list_files(self) -> dict[str, Path]:
        """image id -> file; two files of one id (``a.png`` and ``a.jpg``) are refused
        rather than one picked at random."""
        from reface_core.fsnames import name_id, shown
        from reface_core.imageio import iter_image_files
        files: dict[str, Path] = {}
        for p in iter_image_files(self.dir):
            key = name_id(p.relative_to(self.dir).with_suffix("").as_posix())
            if key in files:
                raise ValueError(f"folder: {shown(files[key])} and {shown(p.name)} are both "
                                 f"outputs of image id {key!r}; keep one")
            files[key] = p
        return files

    def config(self):
        h = hashlib.sha256()
        self.files = self._list_files()
        for key, p in self.files.items():
            h.update(key.encode() + b"\0" + file_digest(p).encode())
        # The content digest, not the path, names the outputs: a refilled folder is a new run.
        return {"method": self.method, "content_sha256": h.hexdigest()}

    def restore(self, lq, references, *, image_id, out_size):
        from reface_core.imageio import load_image
        p = self.files.get(image_id)
        if p is None:
            raise FileNotFoundError(f"{self.dir}: no output for image id {image_id!r}")
        return load_image(p)


class _SpandrelFace(Restorer):
    """A face restorer whose official state dict spandrel recognises."""

    asset = ""
    arch_id = ""

    def __init__(self, path: str | None = None):
        self.path = path

    def load(self, device="cpu"):
        import torch

        from reface_core.assets import AssetNotFoundError, resolve
        try:
            self.weights = resolve(self.asset, self.path)
        except AssetNotFoundError as e:
            raise RestorerUnavailable(str(e)) from None
        state = torch.load(str(self.weights), map_location="cpu", weights_only=True)
        self.descriptor = load_state_dict(state, self.arch_id, str(self.weights))
        self.descriptor.to(device).eval()
        self.device = device

    def config_for_record(self):
        cfg = super().config_for_record()
        if getattr(self, "weights", None) is not None:
            cfg["weights_sha256"] = file_digest(self.weights)
        return cfg

    def _forward(self, x):
        raise NotImplementedError

    def restore(self, lq, references, *, image_id, out_size):
        import torch
        x = resize_to(lq, (512, 512))
        t = torch.from_numpy(x).permute(2, 0, 1)[None].float().div(255).to(self.device)
        t = (t - 0.5) / 0.5  # both official inference scripts normalise to [-1, 1]
        with torch.inference_mode():
            y = self._forward(t)
        y = ((y.clamp(-1, 1) + 1) / 2 * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()
        return resize_to(np.ascontiguousarray(y), out_size or lq.shape[:2])


def load_state_dict(state: dict, arch_id: str, label: str = "state dict"):
    """A spandrel descriptor for ``state`` (official key names), checked to be ``arch_id``."""
    import spandrel_extra_arches
    from spandrel import ModelLoader, UnsupportedModelError

    if not getattr(load_state_dict, "_installed", False):
        spandrel_extra_arches.install(ignore_duplicates=True)
        load_state_dict._installed = True
    if isinstance(state, dict):
        for key in ("params_ema", "params", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        desc = ModelLoader().load_from_state_dict(state)
    except (UnsupportedModelError, KeyError, RuntimeError, ValueError) as e:
        # an unknown layout, or known keys with the wrong shapes
        raise RestorerUnavailable(f"{label}: not a recognised model ({e})") from None
    if desc.architecture.id != arch_id:
        raise RestorerUnavailable(f"{label}: is a {desc.architecture.id} model, expected {arch_id}")
    return desc


class CodeFormer(_SpandrelFace):
    name, asset, arch_id = "codeformer", "codeformer", "CodeFormer"

    def __init__(self, w: float = 0.5, path: str | None = None):
        super().__init__(path)
        self.w = number_option("codeformer", "w", w, 0.0, 1.0)

    def config(self):
        return {"w": self.w, "adain": True, "input": "resize to 512 (area/bicubic)"}

    def _forward(self, x):
        return self.descriptor.model(x, weight=self.w)[0]


class GFPGAN(_SpandrelFace):
    name, asset, arch_id = "gfpgan", "gfpgan-v1.4", "GFPGAN"

    def config(self):
        return {"version": "1.4", "input": "resize to 512 (area/bicubic)"}

    def _forward(self, x):
        out = self.descriptor.model(x, return_rgb=False)
        return out[0] if isinstance(out, (tuple, list)) else out


class MGFR(Restorer):
    """MGFR through ``mgfr.load_pipeline``; references are passed when the item has them."""

    name = "mgfr"
    uses_references = True

    def __init__(self, adapters: str | None = None, base: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None,
                 lambda_na: float | None = None, lambda_nq: float | None = None,
                 prompt: str | None = None, negative_attribute_prompt: str | None = None,
                 negative_quality_prompt: str | None = None, seed: int = 0,
                 use_references: bool = True, strength: float | None = None,
                 one_step: bool | None = None, rca_scale: float | None = None):
        self.adapters, self.base = adapters, base
        if isinstance(one_step, str):
            one_step = one_step.lower() in ("1", "true", "yes")
        if strength is not None:
            strength = number_option("mgfr", "strength", strength, 0.0, 1.0)
            if strength <= 0:
                raise ValueError(f"mgfr: strength must be in (0, 1], got {strength}")
        # Checked here, before any model loads (the pipeline would refuse them only per image).
        weights = {k: None if v is None else number_option("mgfr", k, v, 0.0, MAX_WEIGHT)
                   for k, v in (("guidance_scale", guidance_scale), ("lambda_na", lambda_na),
                                ("lambda_nq", lambda_nq), ("rca_scale", rca_scale))}
        self.call_options = {k: v for k, v in {
            "strength": strength,
            "one_step": None if one_step is None else bool(one_step),
            "num_inference_steps": None if steps is None
            else whole_option("mgfr", "steps", steps, 1, MAX_STEPS),
            **weights,
            "prompt": prompt, "negative_attribute_prompt": negative_attribute_prompt,
            "negative_quality_prompt": negative_quality_prompt}.items() if v is not None}
        self.seed = whole_option("mgfr", "seed", seed, 0, 2 ** 63 - 1)
        self.use_references = flag_option("mgfr", "use_references", use_references)

    def config(self):
        return {"adapters": self.adapters, "base": self.base, "seed": self.seed,
                "use_references": self.use_references, **self.call_options}

    def load(self, device="cpu"):
        # No adapters and no base (or base=mini): the shipped mini model.
        if self.adapters and not Path(self.adapters).expanduser().exists():
            raise RestorerUnavailable(f"mgfr: adapters={self.adapters}: no such folder")
        try:
            import mgfr
            load_pipeline = mgfr.load_pipeline
        except (ImportError, AttributeError) as e:
            raise RestorerUnavailable(f"mgfr: this version of the mgfr package has no "
                                      f"load_pipeline ({e})") from None
        from reface_core.assets import AssetNotFoundError
        try:
            adapters = str(Path(self.adapters).expanduser()) if self.adapters else None
            self.pipe = load_pipeline(base=self.base, adapters=adapters, device=device)
        except AssetNotFoundError as e:
            raise RestorerUnavailable(str(e)) from None
        self.device = device

    def config_for_record(self):
        cfg = super().config_for_record()
        if getattr(self, "pipe", None) is not None:
            cfg["pipeline"] = self.pipe.config_for_record(**self.call_options)
            cfg.pop("adapters", None)  # the pipeline's record has the adapters' hash instead
        return cfg

    def restore(self, lq, references, *, image_id, out_size):
        import torch
        # One generator per image, seeded from the run seed and the image id, so an
        # image's output does not depend on which images ran before it (resume).
        digest = hashlib.sha256(f"{self.seed}\0{image_id}".encode()).digest()
        gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        refs = [list(references)] if (references and self.use_references) else None
        out = self.pipe(lq, references=refs, generator=gen, output_type="np", **self.call_options)
        img = np.asarray(out.images[0])
        return resize_to(img, out_size or lq.shape[:2])


#: name -> class. Data: register a restorer by adding a line.
RESTORERS = Registry("method", {
    "lq": LQ, "bicubic": Bicubic, "folder": Folder, "codeformer": CodeFormer,
    "gfpgan": GFPGAN, "mgfr": MGFR,
}, error=UnknownRestorerError)


def list_restorers() -> list[str]:
    return list(RESTORERS)


def parse_method(spec: str) -> tuple[str, dict]:
    """``"codeformer:w=0.5,path=x.pth"`` -> ("codeformer", {"w": "0.5", "path": "x.pth"})."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"method {spec!r}: option {part!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return name, options


def _coerce(value):
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def create_restorer(name: str, **options) -> Restorer:
    cls = RESTORERS.get(name)
    try:
        return cls(**{k: _coerce(v) for k, v in options.items()})
    except TypeError as e:
        import inspect
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"method {name!r}: bad options {sorted(options)} ({e}); "
                         f"options: {', '.join(params) or 'none'}") from None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
