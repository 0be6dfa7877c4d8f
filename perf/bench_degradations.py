"""Images per second at 512x512 for every degradation preset, side by side with BasicSR.

* ``basicsr`` (gfpgan only): the anchor. GFPGAN's training degradation
  (``FFHQDegradationDataset.__getitem__``: ``random_mixed_kernels`` + ``cv2.filter2D``,
  downsample, ``random_add_gaussian_noise``, ``random_add_jpg_compression``, resize back,
  colour shift, gray, torchvision colour jitter, rounding) per image, calling the
  functions of BasicSR's own ``basicsr/data/degradations.py`` (basicsr 1.4.2) with the
  options of GFPGAN's ``options/train_gfpgan_v1.yml``. The file is taken from the sdist
  (``pip download --no-deps basicsr==1.4.2``) into ``$REFACE_HOME/perf/basicsr-1.4.2/``,
  never into the repository, and loaded alone with two in-memory patches for current
  libraries (see ``load_basicsr``); pass ``--basicsr-file PATH`` to use a copy you have.
  When it cannot be had, the baseline is skipped with the reason.
* ``single``: the per-image front end (``Degrader``), one image at a time;
* ``batched``: ``BatchDegrader`` on CPU tensors (libjpeg JPEG, the same bytes as single),
  and ``batched-torchjpeg`` with the differentiable torch JPEG model;
* ``batched-nocolour`` (gfpgan only): ``BatchDegrader`` with the preset's first five
  stages (blur to resize back), the same work as the ``basicsr`` row; ``basicsr-full``
  adds GFPGAN's colour shift, gray and torchvision colour jitter, the same work as our
  full ``gfpgan`` preset. The headline ratio is the strict one: our full preset against
  ``basicsr`` without colour (which the issue measured).
* ``reference`` (gfpgan only): our straightforward per-image OpenCV implementation
  (``degradations.reference``) on the same records.

All paths include parameter sampling; inputs are float images already in memory (no
file reading). Methods are interleaved within each round so that they see the same
background load; the script reports the median over rounds and each path's ratio to
BasicSR measured in the same run, plus the median of back-to-back gfpgan
batched/basicsr pairs (steadier while the load drifts), once per thread count.

    .venv/bin/python perf/bench_degradations.py [--rounds 5] [--batch 16] [--threads 2 1] [--presets gfpgan ...]
        [--basicsr-file PATH] [--no-fetch] [--profile 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from degradations.ops import to_tensor  # noqa: E402
from degradations.pipeline import BatchDegrader, Degrader  # noqa: E402
from degradations.presets import get_preset, list_presets  # noqa: E402
from degradations.reference import reference_apply  # noqa: E402
from degradations.sampling import sample_record  # noqa: E402
from reface_core.assets import reface_home  # noqa: E402

BASICSR_VERSION = "1.4.2"
BASICSR_MEMBER = f"basicsr-{BASICSR_VERSION}/basicsr/data/degradations.py"
# SHA-256 of that member in the PyPI sdist, so a cached copy is the file we mean.
BASICSR_SHA256 = "b78e36137ff8e4d783779b5ed611fcf80305633c492ac494ee52b213806f2d83"
# The two lines of basicsr 1.4.2 that current libraries reject, and what they become:
# torchvision 0.17 removed ``functional_tensor``; OpenCV 5 no longer truncates a float
# JPEG quality to int (OpenCV 4 did, which is what the published training ran).
BASICSR_PATCHES = (
    ("from torchvision.transforms.functional_tensor import rgb_to_grayscale",
     "from torchvision.transforms.functional import rgb_to_grayscale"),
    ("encode_param = [int(cv2.IMWRITE_JPEG_QUALITY), quality]",
     "encode_param = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]"),
)

# GFPGAN options/train_gfpgan_v1.yml, the options FFHQDegradationDataset reads (plus its
# colour-jitter defaults); our ``gfpgan`` preset has the same ranges (checked in main).
GFPGAN_OPT = {"blur_kernel_size": 41, "kernel_list": ["iso", "aniso"], "kernel_prob": [0.5, 0.5],
              "blur_sigma": [0.1, 10], "downsample_range": [0.8, 8], "noise_range": [0, 20],
              "jpeg_range": [60, 100], "color_jitter_prob": 0.3, "color_jitter_shift": 20,
              "color_jitter_pt_prob": 0.3, "gray_prob": 0.01, "brightness": (0.5, 1.5),
              "contrast": (0.5, 1.5), "saturation": (0, 1.5), "hue": (-0.1, 0.1)}


def fetch_basicsr(cache: Path) -> Path:
    """``basicsr/data/degradations.py`` of the basicsr sdist, cached under ``cache``
    (downloaded with pip on first use). Raises RuntimeError with the reason."""
    dest = cache / "degradations.py"
    if dest.is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               f"basicsr=={BASICSR_VERSION}", "-d", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"pip download basicsr=={BASICSR_VERSION} failed: {e}") from None
        sdists = sorted(Path(tmp).glob("basicsr-*.tar.gz"))
        if run.returncode != 0 or not sdists:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no sdist"]
            raise RuntimeError(f"pip download basicsr=={BASICSR_VERSION} failed: {tail[0]}")
        with tarfile.open(sdists[0]) as tar:  # read one member by name: no extraction paths
            try:
                data = tar.extractfile(BASICSR_MEMBER).read()
            except (KeyError, AttributeError):
                raise RuntimeError(f"{sdists[0].name} has no {BASICSR_MEMBER}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != BASICSR_SHA256:  # never run code other than the pinned file
            raise RuntimeError(f"{BASICSR_MEMBER} from PyPI has sha256 {digest}, expected {BASICSR_SHA256}")
        part = dest.with_suffix(".part")
        part.write_bytes(data)
        os.replace(part, dest)
    return dest


def load_basicsr(path: Path) -> types.ModuleType:
    """Load BasicSR's ``degradations.py`` alone as a module, patched in memory only."""
    src = Path(path).read_bytes()
    digest = hashlib.sha256(src).hexdigest()
    if digest != BASICSR_SHA256:
        print(f"note: {path} is not basicsr {BASICSR_VERSION}'s degradations.py (sha256 {digest[:12]}...)")
    text = src.decode("utf-8")
    for old, new in BASICSR_PATCHES:
        text = text.replace(old, new)
    mod = types.ModuleType("basicsr_degradations")
    mod.__file__ = str(path)
    exec(compile(text, str(path), "exec"), mod.__dict__)  # noqa: S102 (the pinned file, or the one --basicsr-file names)
    return mod


class Steps:
    """Seconds per named step, accumulated over calls (``--profile``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.t
        self.t = now


def basicsr_gfpgan(bsr, img_gt: np.ndarray, opt: dict = GFPGAN_OPT, colour: bool = True,
                   steps: Steps | None = None) -> torch.Tensor:
    """The LQ half of GFPGAN's ``FFHQDegradationDataset.__getitem__`` for one BGR float32
    HWC image in [0, 1], through BasicSR's functions and the dataset's own steps (no
    flip, no facial-component crops, no normalisation: not degradations). Global RNGs
    (``random``, ``np.random``, torch) as there. ``colour=False`` stops after the resize
    back (blur, downsample, noise, JPEG, resize: the part that calls BasicSR), then
    converts and rounds as the dataset does. ``steps`` times each step."""
    from torchvision.transforms import functional as TF
    mark = steps or (lambda name: None)
    if steps:
        steps.t = time.perf_counter()
    h, w, _ = img_gt.shape
    kernel = bsr.random_mixed_kernels(opt["kernel_list"], opt["kernel_prob"], opt["blur_kernel_size"],
                                      opt["blur_sigma"], opt["blur_sigma"], [-math.pi, math.pi],
                                      noise_range=None)
    mark("kernel")
    img = cv2.filter2D(img_gt, -1, kernel)
    mark("blur")
    scale = np.random.uniform(*opt["downsample_range"])
    img = cv2.resize(img, (int(w // scale), int(h // scale)), interpolation=cv2.INTER_LINEAR)
    mark("resize")
    img = bsr.random_add_gaussian_noise(img, opt["noise_range"])
    mark("noise")
    img = bsr.random_add_jpg_compression(img, opt["jpeg_range"])
    mark("jpeg")
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    mark("resize")
    if colour and np.random.uniform() < opt["color_jitter_prob"]:
        shift = opt["color_jitter_shift"] / 255.0
        img = np.clip(img + np.random.uniform(-shift, shift, 3).astype(np.float32), 0, 1)
    if colour and np.random.uniform() < opt["gray_prob"]:
        img = np.tile(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None], [1, 1, 3])
    # basicsr's img2tensor: BGR -> RGB, HWC -> CHW
    t = torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)).float()
    if colour and np.random.uniform() < opt["color_jitter_pt_prob"]:
        for fn in torch.randperm(4):
            if fn == 0:
                t = TF.adjust_brightness(t, torch.tensor(1.0).uniform_(*opt["brightness"]).item())
            elif fn == 1:
                t = TF.adjust_contrast(t, torch.tensor(1.0).uniform_(*opt["contrast"]).item())
            elif fn == 2:
                t = TF.adjust_saturation(t, torch.tensor(1.0).uniform_(*opt["saturation"]).item())
            else:
                t = TF.adjust_hue(t, torch.tensor(1.0).uniform_(*opt["hue"]).item())
    mark("colour + to tensor")
    out = torch.clamp((t * 255.0).round(), 0, 255) / 255.0
    mark("quantize")
    return out


def check_preset_matches_gfpgan(preset) -> None:
    """Our ``gfpgan`` preset must draw from GFPGAN's ranges, or the comparison is moot."""
    st = {type(s).__name__: s for s in preset.stages}
    missing = {"Blur", "Downsample", "Noise", "Jpeg", "ColorShift", "Gray", "ColorJitter"} - set(st)
    if missing:
        raise SystemExit(f"error: preset {preset.name!r} lacks GFPGAN's stages {sorted(missing)}")
    o = GFPGAN_OPT
    pairs = {"blur_kernel_size": st["Blur"].kernel_size, "kernel_list": st["Blur"].kernel_list,
             "kernel_prob": st["Blur"].kernel_prob, "blur_sigma": st["Blur"].sigma_x,
             "blur_sigma (y)": st["Blur"].sigma_y, "downsample_range": st["Downsample"].scale,
             "noise_range": st["Noise"].sigma, "jpeg_range": st["Jpeg"].quality,
             "color_jitter_prob": st["ColorShift"].prob, "color_jitter_shift": st["ColorShift"].shift,
             "gray_prob": st["Gray"].prob, "color_jitter_pt_prob": st["ColorJitter"].prob,
             "brightness": st["ColorJitter"].brightness, "contrast": st["ColorJitter"].contrast,
             "saturation": st["ColorJitter"].saturation, "hue": st["ColorJitter"].hue}
    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (tuple, list)) else \
            (float(v) if isinstance(v, (int, float)) else v)
    for key, ours in pairs.items():
        theirs = o[key.split(" ")[0]]
        if norm(ours) != norm(theirs):
            raise SystemExit(f"error: gfpgan preset has {key} {ours}, GFPGAN's options {theirs}")
    if st["Noise"].gaussian_prob != 1.0 or st["Noise"].gray_prob != 0.0 or st["Downsample"].mode != "bilinear":
        raise SystemExit("error: gfpgan preset's noise or downsample differ from GFPGAN's")


def load_faces(n: int, size: int = 512) -> list[np.ndarray]:
    """Real 512x512 faces from $REFACE_TEST_DATA/identities_512 when present, else
    deterministic structured images (so the script runs anywhere)."""
    roots = [os.environ.get("REFACE_TEST_DATA"), str(REPO.parent / "shared" / "data")]
    for root in filter(None, roots):
        files = sorted(Path(root).glob("identities_512/*/*.png")) + sorted(
            Path(root).glob("identities_512/*/conditioning/*.png"))
        if files:
            from reface_core.imageio import load_image
            imgs = [load_image(f) for f in files[:n]]
            imgs = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) if i.shape[:2] != (size, size)
                    else i for i in imgs]
            return (imgs * (n // len(imgs) + 1))[:n]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx, yy, (xx + yy) // 2], -1) % 256
    return [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def run_single(preset, imgs, seed):
    deg = Degrader(preset)
    for i, im in enumerate(imgs):
        deg(im, seed, str(i))


def run_batched(preset, batch, seed, jpeg):
    deg = BatchDegrader(preset, jpeg=jpeg)
    deg(batch, seed, [str(i) for i in range(batch.shape[0])])


def run_reference(preset, imgs, seed):
    for i, im in enumerate(imgs):
        rec = sample_record(preset, seed, str(i), im.shape[:2])
        reference_apply(im, rec)


def run_basicsr(bsr, imgs_bgr, seed, colour):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for im in imgs_bgr:
        basicsr_gfpgan(bsr, im, colour=colour)


def bench(methods: dict, rounds: int, pairs: int, pair_keys) -> tuple[dict, list]:
    for fn in methods.values():  # warm-up: imports, DFT plans, allocator
        fn()
    times: dict = {k: [] for k in methods}
    paired: list[float] = []  # gfpgan batched / basicsr, measured back to back
    for _ in range(rounds):
        for key, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        if pair_keys:
            # The load of a shared machine drifts between rounds; a ratio of two runs
            # measured seconds apart is steadier than a ratio of two medians.
            base, fast = pair_keys
            for _ in range(pairs):
                t0 = time.perf_counter()
                methods[base]()
                t1 = time.perf_counter()
                methods[fast]()
                t2 = time.perf_counter()
                paired.append((t1 - t0) / (t2 - t1))
    return times, paired


def profile(bsr, imgs, imgs_bgr, batch, n: int) -> dict:
    """Milliseconds per image by step, one thread: BasicSR's pipeline (without colour, as
    the issue measured) and ``BatchDegrader`` with the full gfpgan preset."""
    import degradations.ops as ops_mod
    import degradations.pipeline as pipe_mod
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = {}
    if bsr is not None:
        steps = Steps()
        np.random.seed(0)
        for _ in range(n):
            for im in imgs_bgr:
                basicsr_gfpgan(bsr, im, colour=False, steps=steps)
        out["basicsr"] = {k: 1000 * v / (n * len(imgs_bgr)) for k, v in steps.seconds.items()}
    acc: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return wrapper
    saved = (dict(ops_mod.OPS), pipe_mod.resize_many, pipe_mod._quantize_cpu, pipe_mod.sample_record,
             ops_mod.make_kernel)
    try:
        for k, fn in saved[0].items():
            ops_mod.OPS[k] = timed("blur" if k in ("blur", "sinc", "motion") else k, fn)
        pipe_mod.resize_many = timed("resize", saved[1])
        pipe_mod._quantize_cpu = timed("quantize", saved[2])
        pipe_mod.sample_record = timed("sample", saved[3])
        ops_mod.make_kernel = timed("kernel", saved[4])
        deg = BatchDegrader("gfpgan", jpeg="libjpeg")
        ids = [str(i) for i in range(batch.shape[0])]
        t0 = time.perf_counter()
        for s in range(n):
            deg(batch, s, ids)
        total = time.perf_counter() - t0
    finally:
        ops_mod.OPS.update(saved[0])
        pipe_mod.resize_many, pipe_mod._quantize_cpu, pipe_mod.sample_record, ops_mod.make_kernel = saved[1:]
    acc["blur"] = acc.get("blur", 0.0) - acc.get("kernel", 0.0)  # blur's time includes building kernels
    acc["other (batching, copies, Python)"] = total - sum(acc.values())
    out["batched"] = {k: 1000 * v / (n * batch.shape[0]) for k, v in acc.items()}
    for name, d in out.items():
        print(f"\nprofile, 1 thread, {name}: ms per image (total {sum(d.values()):.2f})")
        for k, v in sorted(d.items(), key=lambda kv: -kv[1]):
            print(f"  {k:34s} {v:6.2f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (median reported)")
    ap.add_argument("--batch", type=int, default=16, help="images per round (and batch size)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="torch and OpenCV thread counts, measured one after the other (default 2 1)")
    ap.add_argument("--presets", nargs="*", default=None, help="presets (default: all)")
    ap.add_argument("--pairs", type=int, default=3, help="back-to-back gfpgan batched/basicsr pairs per round")
    ap.add_argument("--basicsr-file", type=Path, default=None,
                    help="basicsr's data/degradations.py (default: fetched once into "
                         "$REFACE_HOME/perf/basicsr-1.4.2/)")
    ap.add_argument("--no-fetch", action="store_true", help="do not download basicsr; skip it if not cached")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also time each step of BasicSR and of BatchDegrader (gfpgan, 1 thread) over N batches")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.rounds < 1 or args.batch < 1:
        print("error: --threads, --rounds and --batch must be >= 1", file=sys.stderr)
        return 2
    names = args.presets or list_presets()
    for name in names:
        try:
            get_preset(name)
        except (ValueError, OSError) as e:
            print(f"error: --presets {name}: {e}", file=sys.stderr)
            return 2
    if args.basicsr_file is not None and not args.basicsr_file.is_file():
        print(f"error: --basicsr-file {args.basicsr_file} is not a file", file=sys.stderr)
        return 2
    bsr, skip_reason = None, None
    if "gfpgan" in names:
        check_preset_matches_gfpgan(get_preset("gfpgan"))
        try:
            if args.basicsr_file is not None:
                path = args.basicsr_file
            else:
                cache = reface_home() / "perf" / f"basicsr-{BASICSR_VERSION}"
                if args.no_fetch and not (cache / "degradations.py").is_file():
                    raise RuntimeError(f"not cached in {cache} and --no-fetch given")
                path = fetch_basicsr(cache)
            bsr = load_basicsr(path)
        except Exception as e:  # noqa: BLE001 (any failure to get or import it only skips the baseline)
            skip_reason = f"{type(e).__name__}: {e}"
            print(f"skipped the basicsr baseline: {skip_reason}")
    imgs = load_faces(args.batch)
    imgs_bgr = [np.ascontiguousarray(i[..., ::-1], dtype=np.float32) / np.float32(255.0) for i in imgs]
    batch = torch.cat([to_tensor(i) for i in imgs])
    out = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        methods = {}
        for name in names:
            p = get_preset(name)
            if name == "gfpgan" and bsr is not None:
                methods[(name, "basicsr")] = lambda s=0: run_basicsr(bsr, imgs_bgr, s, False)
                methods[(name, "basicsr-full")] = lambda s=0: run_basicsr(bsr, imgs_bgr, s, True)
            methods[(name, "single")] = lambda p=p, s=0: run_single(p, imgs, s)
            methods[(name, "batched")] = lambda p=p, s=0: run_batched(p, batch, s, "libjpeg")
            methods[(name, "batched-torchjpeg")] = lambda p=p, s=0: run_batched(p, batch, s, "torch")
            if name == "gfpgan":
                methods[(name, "reference")] = lambda p=p, s=0: run_reference(p, imgs, s)
                # like for like with the ``basicsr`` row: our pipeline without the colour stages
                core = dataclasses.replace(p, name="gfpgan-nocolour", stages=p.stages[:5])
                methods[(name, "batched-nocolour")] = lambda p=core, s=0: run_batched(p, batch, s, "libjpeg")
        pair_keys = (("gfpgan", "basicsr"), ("gfpgan", "batched")) if ("gfpgan", "basicsr") in methods else None
        times, paired = bench(methods, args.rounds, args.pairs, pair_keys)
        rates = {k: args.batch / statistics.median(v) for k, v in times.items()}
        base = rates.get(("gfpgan", "basicsr"))
        print(f"\n512x512, batch {args.batch}, {args.rounds} rounds, torch/OpenCV threads {threads}, "
              f"median images/s")
        print(f"{'preset':14s} {'path':18s} {'img/s':>8s} {'vs basicsr':>10s}")
        for (name, path), rate in rates.items():
            ratio = rate / base if base else float("nan")
            print(f"{name:14s} {path:18s} {rate:8.1f} {ratio:10.2f}")
            out.append({"threads": threads, "preset": name, "path": path, "images_per_s": rate,
                        "ratio_vs_basicsr": ratio, "round_seconds": times[(name, path)]})
        if base:
            b = rates[("gfpgan", "batched")]
            print(f"gfpgan, {threads} thread(s): BatchDegrader {b:.1f} img/s vs BasicSR {BASICSR_VERSION} "
                  f"{base:.1f} img/s: ratio of medians {b / base:.2f}; median of {len(paired)} back-to-back "
                  f"ratios {statistics.median(paired):.2f} [min {min(paired):.2f}, max {max(paired):.2f}] "
                  f"(target >= 2)")
            out.append({"threads": threads, "preset": "gfpgan", "path": "paired_ratio_batched_vs_basicsr",
                        "median": statistics.median(paired), "all": paired})
        elif "gfpgan" in names:
            print(f"gfpgan: no ratio against BasicSR ({skip_reason})")
    prof = profile(bsr, imgs, imgs_bgr, batch, args.profile) if args.profile > 0 else None
    if args.json:
        args.json.write_text(json.dumps({"load_average": os.getloadavg(), "basicsr_skipped": skip_reason,
                                         "results": out, "profile_ms_per_image": prof}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
