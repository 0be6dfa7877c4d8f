"""``python -m mgfr profile``: parameters, GFLOPs, latency and peak memory per MGFR component.

The architecture is built from the preset's config with random weights (no download), so
the paper-scale numbers can be measured anywhere. Components: VAE encoder and decoder, text
encoder, UNet, LCA, RCA (with its exchange links), RLF, identity projection, identity
embedder. Then one denoising step of MGFR against one bare-UNet step, and the cost of one
restored image (step-invariant work once, plus ``steps`` steps).

* GFLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
  attention, the latter counted through the math SDPA backend; one multiply-add = 2 FLOPs).
  The dlib embedder is not torch: no count.
* latency: median of ``--repeats`` timed calls after one warm-up call.
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the level before the call;
  on CPU the peak resident set size above the level before the call (sampled every 2 ms;
  0 when the allocator reuses memory freed by earlier calls), and the process's high-water
  mark.
* step ratio: the bare-UNet and MGFR calls are timed interleaved (a, b, a, b, ...) so load
  from other processes falls on both alike. An MGFR step runs the adapter once (once per
  branch when the adapter reads the prompt) and the UNet over the guidance branches;
  the ratio is reported for the same number of UNet branches with and without the adapter
  (1 branch: the adapter's own overhead; 4 branches: MGFR's dual negative guidance), and
  for MGFR with 4 branches against plain CFG (2 branches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reface_core.argtypes import at_least, torch_device


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "profile", help="parameters, GFLOPs, latency and memory per component (random weights)",
        description="Build the MGFR architecture of a preset from config with random weights "
                    "and measure every component, one denoising step and one restored image.")
    p.add_argument("--preset", default="tiny", help="tiny, sd15, sd21-base")
    p.add_argument("--resolution", type=at_least(16), default=None,
                   help="image size in pixels (default: the preset's)")
    p.add_argument("--steps", type=at_least(1), default=20,
                   help="denoising steps of the per-image estimate")
    p.add_argument("--refs", type=at_least(0), default=1, help="references per image")
    p.add_argument("--repeats", type=at_least(1), default=3, help="timed calls per component")
    p.add_argument("--device", default="cpu", type=torch_device,
                   help="torch device (checked before any model is loaded)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--channel-mult", type=float, default=None,
                   help="adapter width (default: the preset's)")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="CPU threads for torch (default: torch's; 1 gives stable numbers on a "
                        "shared machine)")
    p.add_argument("--branches", default="1,2,4",
                   help="guidance branch counts to time one step at (1 is always included)")
    p.add_argument("--skip-embedder", action="store_true",
                   help="do not time the dlib identity embedder")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown here")
    p.set_defaults(func=run_profile)


class _PeakRSS:
    """Peak resident memory above the starting level, sampled in a thread (CPU)."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def used(self) -> int:
        return self.peak - self.base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(fn: Callable[[], object], device: torch.device, repeats: int = 3,
            flops: bool = True) -> dict:
    """GFLOPs, median seconds and peak MiB of ``fn()``.

    The first call counts FLOPs and is the warm-up; then ``repeats`` timed calls, the first
    of which also records peak memory (sampling costs nothing the timing would notice)."""

    gflops = count_gflops(fn) if flops else (fn(), None)[1]
    _sync(device)
    times, peak = [], 0
    for i in range(repeats):
        if device.type == "cuda" and i == 0:
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        mem = _PeakRSS() if device.type != "cuda" and i == 0 else None
        if mem is not None:
            mem.__enter__()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if mem is not None:
            mem.__exit__(None, None, None)
            peak = mem.used
        elif device.type == "cuda" and i == 0:
            peak = torch.cuda.max_memory_allocated(device) - before
    return {"gflops": gflops, "seconds": statistics.median(times), "peak_mib": peak / 2**20}


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call. Attention runs through the math SDPA backend here: the fused CPU
    and flash kernels are not known to the FLOP counter and would count as zero."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


@torch.no_grad()
def measure_pair(fn_a, fn_b, device: torch.device, repeats: int = 3) -> tuple[dict, dict]:
    """``measure`` for two functions with their timed calls interleaved (a, b, a, b, ...),
    so that load from other processes falls on both alike and their ratio stays fair."""
    out = []
    for fn in (fn_a, fn_b):
        g = count_gflops(fn)
        out.append({"gflops": g, "times": []})
    for i in range(repeats):
        for fn, o in zip((fn_a, fn_b), out, strict=False):
            mem = _PeakRSS() if device.type != "cuda" and i == 0 else None
            if device.type == "cuda" and i == 0:
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            if mem is not None:
                mem.__enter__()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            o["times"].append(time.perf_counter() - t0)
            if mem is not None:
                mem.__exit__(None, None, None)
                o["peak_mib"] = mem.used / 2**20
            elif device.type == "cuda" and i == 0:
                o["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return tuple({"gflops": o["gflops"], "seconds": statistics.median(o["times"]),
                  "peak_mib": o["peak_mib"], "all_seconds": o["times"]} for o in out)


def _count(params) -> int:
    return sum(p.numel() for p in params)


def profile(preset: str = "tiny", resolution: int | None = None, steps: int = 20,
            refs: int = 1, repeats: int = 3, device: str = "cpu", dtype: str = "fp32",
            channel_mult: float | None = None, embedder: bool = True, seed: int = 0,
            branches=(1, 2, 4), log=None) -> dict:
    """Measure every component; returns ``{"components": [...], "step": {...}, ...}``."""
    from .adapters import DualControlAdapter
    from .base import build_base_from_config
    from .pipeline import parse_dtype
    from .presets import get_preset

    log = log or (lambda msg: None)
    p = get_preset(preset)
    res = int(resolution or p.resolution)
    dev = torch.device(device)
    dt = parse_dtype(dtype)
    f = p.vae_scale_factor
    if res % f:
        raise ValueError(f"resolution {res} must be a multiple of the VAE factor {f}")
    log(f"building {preset} from config (random weights)")
    base = build_base_from_config(p, seed, device=dev, dtype=dt, with_tokenizer=False)
    opts = dict(p.adapter, id_embedder=p.embedder)
    if channel_mult is not None:
        opts["channel_mult"] = float(channel_mult)
    adapter = DualControlAdapter.from_unet(base.unet, copy_unet_weights=False, **opts)
    adapter.to(dev)
    if dt != torch.float32:
        adapter.to(dtype=dt)
    adapter.eval()
    # Zero-initialised weights cost the same FLOPs, but a trained adapter has none; give
    # them small random values so nothing in the measurement depends on exact zeros.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in adapter.parameters():
            if not prm.any():
                prm.copy_((torch.randn(prm.shape, generator=g) * 1e-3).to(prm))

    h = res // f
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=dev, dtype=dt)

    image = rnd(1, 3, res, res).clamp(-1, 1)
    c = base.unet.config.in_channels
    z = rnd(1, c, h, h)
    lq = rnd(1, c, h, h)
    ref_z = rnd(1, max(refs, 1), c, h, h)
    ids = rnd(1, max(refs, 1), adapter.config.id_embed_dim)
    tokens = torch.randint(0, 49407, (1, 77), generator=gen).to(dev)
    t = torch.tensor([500], device=dev)
    ehs1 = base.text_encoder(tokens)[0]
    cond_lca = adapter.prepare(lq)
    cond_full = adapter.prepare(lq, ref_z, ids) if refs else cond_lca

    from .model import MGFRModel

    model = MGFRModel(base.unet, adapter)
    rows = []

    def add(name, fn, params_frozen=0, params_trainable=0, calls="", flops=True):
        log(f"measuring {name}")
        m = measure(fn, dev, repeats, flops=flops)
        rows.append({"component": name, "frozen_params": int(params_frozen),
                     "trainable_params": int(params_trainable), "calls": calls, **m})
        return m

    vae = base.vae
    def vae_part(prefixes):
        return sum(prm.numel() for n, prm in vae.named_parameters() if n.startswith(prefixes))
    add("VAE encoder", lambda: vae.encode(image), vae_part(("encoder.", "quant_conv.", "enc_")),
        calls=f"{1 + refs} per image")
    add("VAE decoder", lambda: vae.decode(z),
        vae_part(("decoder.", "post_quant_conv.", "dec_")), calls="1 per image")
    add("text encoder", lambda: base.text_encoder(tokens), _count(base.text_encoder.parameters()),
        calls="1 per image (all prompts in one batch)")
    add("UNet", lambda: base.unet(z, t, ehs1), _count(base.unet.parameters()),
                 calls="branches per step")
    lca_params = _count(adapter.lca_parameters())
    # An adapter that reads the prompt runs once per guidance branch; a text-blind one
    # once per step, shared by the branches.
    calls_adapter = "branches per step" if adapter.config.read_prompt else "1 per step"
    if refs:
        rca_params = (_count(adapter.rca.parameters()) + _count(adapter.rca_out.parameters())
                      + _count(adapter.rca_mid_out.parameters())
                      + (_count(adapter.link_l2r.parameters()) + _count(adapter.link_r2l.parameters())
                         if adapter.config.exchange_links else 0))
        # The RCA runs interleaved with the LCA block by block, so it is measured as the
        # whole adapter with references minus the LCA alone, the two timed interleaved.
        log("measuring LCA and the adapter with references")
        lca_m, full_m = measure_pair(lambda: adapter(z, t, cond_lca, encoder_hidden_states=ehs1),
                                     lambda: adapter(z, t, cond_full, encoder_hidden_states=ehs1), dev, repeats)
        rows.append({"component": "LCA (+ output convs)", "frozen_params": 0,
                     "trainable_params": lca_params, "calls": calls_adapter,
                     **{k: v for k, v in lca_m.items() if k != "all_seconds"}})
        rows.append({"component": "RCA (+ links, output convs)", "frozen_params": 0,
                     "trainable_params": rca_params, "calls": calls_adapter,
                     "gflops": full_m["gflops"] - lca_m["gflops"],
                     "seconds": full_m["seconds"] - lca_m["seconds"],
                     "peak_mib": full_m["peak_mib"],
                     "note": "adapter with references minus LCA alone"})
    else:
        add("LCA (+ output convs)", lambda: adapter(z, t, cond_lca, encoder_hidden_states=ehs1), 0, lca_params,
            calls=calls_adapter)
    if refs:
        add("RLF", lambda: adapter.rlf(ref_z, lq), 0, _count(adapter.rlf.parameters()),
            calls="1 per image")
        add("identity projection", lambda: adapter.id_proj(ids), 0,
            _count(adapter.id_proj.parameters()), calls="1 per image")
    if embedder and refs:
        import numpy as np

        import faces

        emb = faces.get_embedder(p.embedder)
        face = (np.random.default_rng(seed).integers(0, 255, (512, 512, 3))).astype(np.uint8)
        log("measuring identity embedder")
        emb.embed([face])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            emb.embed([face])
            times.append(time.perf_counter() - t0)
        rows.append({"component": f"identity embedder ({p.embedder}, CPU)", "frozen_params": None,
                     "trainable_params": 0, "calls": f"{refs} per image", "gflops": None,
                     "seconds": statistics.median(times), "peak_mib": None})

    # One denoising step: MGFR (adapter once, or once per branch when it reads the
    # prompt; UNet over K branches) vs the bare UNet.
    step = {}
    branches = sorted({1, *(int(k) for k in branches)})
    for k in branches:
        ehs = ehs1.repeat(k, 1, 1)
        zk = z.repeat(k, 1, 1, 1)
        log(f"measuring one step with {k} branch(es)")
        if k == 2:  # plain CFG: the bare UNet only
            step["unet_2"] = measure(lambda: base.unet(zk, t, ehs), dev, repeats)  # noqa: B023
        else:
            step[f"unet_{k}"], step[f"mgfr_{k}"] = measure_pair(
                lambda: base.unet(zk, t, ehs),  # noqa: B023
                lambda: model.step(z, t, ehs, cond_full, num_branches=k), dev, repeats)  # noqa: B023
    ratios = {"mgfr_vs_unet_1_branch": step["mgfr_1"]["seconds"] / step["unet_1"]["seconds"],
              "gflops_mgfr_vs_unet_1_branch": step["mgfr_1"]["gflops"] / step["unet_1"]["gflops"]}
    if "mgfr_4" in step:
        ratios["mgfr_vs_unet_4_branches"] = step["mgfr_4"]["seconds"] / step["unet_4"]["seconds"]
    if "mgfr_4" in step and "unet_2" in step:
        ratios["mgfr_4_vs_plain_cfg_2"] = step["mgfr_4"]["seconds"] / step["unet_2"]["seconds"]
    kmax = max(k for k in branches if k != 2) if any(k != 2 for k in branches) else 1
    by = {r["component"]: r for r in rows}
    invariant = (by["VAE encoder"]["seconds"] * (1 + refs) + by["text encoder"]["seconds"]
                 + (by["RLF"]["seconds"] + by["identity projection"]["seconds"] if refs else 0)
                 + sum(r["seconds"] * refs for n, r in by.items() if n.startswith("identity embedder")))
    per_image = {"steps": steps, "step_invariant_seconds": invariant,
                 "branches": kmax,
                 "seconds": invariant + steps * step[f"mgfr_{kmax}"]["seconds"]
                 + by["VAE decoder"]["seconds"],
                 "peak_mib": max((r["peak_mib"] or 0) for r in rows + list(step.values())),
                 "note": f"component medians: step-invariant work once, then steps x one "
                         f"{kmax}-branch MGFR step, then the VAE decoder"}
    import resource

    # Resident memory growth per call reads 0 when the allocator reuses freed memory, so
    # the process's own high-water mark (weights included) is reported too.
    per_image["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"preset": preset, "resolution": res, "device": str(dev), "dtype": dtype,
            "refs": refs, "repeats": repeats, "channel_mult": adapter.config.channel_mult,
            "adapter_channels": list(adapter.channels), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "components": rows, "step": step,
            "ratios": ratios, "per_image": per_image}


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def to_markdown(r: dict) -> str:
    lines = [f"Preset `{r['preset']}` at {r['resolution']} px, {r['device']}, {r['dtype']}, "
             f"{r['refs']} reference(s), adapter width x{r['channel_mult']} "
             f"(channels {r['adapter_channels']}), median of {r['repeats']}, "
             f"torch {r['torch']} on {r['threads']} threads.", "",
             "| component | frozen params | trainable params | GFLOPs / call | median s / call "
             "| peak MiB | calls |", "|---|---:|---:|---:|---:|---:|---|"]
    for c in r["components"]:
        lines.append(f"| {c['component']} | {_fmt(c['frozen_params'], ',')} | "
                     f"{_fmt(c['trainable_params'], ',')} | {_fmt(c['gflops'], '.2f')} | "
                     f"{_fmt(c['seconds'], '.4f')} | {_fmt(c['peak_mib'], '.0f')} | {c['calls']} |")
    s = r["step"]
    lines += ["", "| one denoising step | GFLOPs | median s | peak MiB |", "|---|---:|---:|---:|"]
    for key, label in (("unet_1", "bare UNet, 1 branch"), ("mgfr_1", "MGFR, 1 branch"),
                       ("unet_2", "bare UNet, 2 branches (plain CFG)"),
                       ("unet_4", "bare UNet, 4 branches"),
                       ("mgfr_4", "MGFR, 4 branches (dual negative guidance)")):
        if key not in s:
            continue
        m = s[key]
        lines.append(f"| {label} | {_fmt(m['gflops'], '.1f')} | {m['seconds']:.4f} | "
                     f"{m['peak_mib']:.0f} |")
    q = r["ratios"]
    pi = r["per_image"]
    text = (f"MGFR step / bare-UNet step: **{q['mgfr_vs_unet_1_branch']:.2f}x** at 1 branch "
            f"({q['gflops_mgfr_vs_unet_1_branch']:.2f}x in GFLOPs)")
    if "mgfr_vs_unet_4_branches" in q:
        text += f"; {q['mgfr_vs_unet_4_branches']:.2f}x at 4 branches"
    if "mgfr_4_vs_plain_cfg_2" in q:
        text += f"; MGFR with 4 branches / plain CFG (2 branches): {q['mgfr_4_vs_plain_cfg_2']:.2f}x"
    lines += ["", text + ".", "",
              f"Per restored image ({pi['steps']} steps of {pi['branches']} branch(es), "
              f"estimated from the medians): "
              f"{pi['seconds']:.2f} s, of which {pi['step_invariant_seconds']:.3f} s "
              f"step-invariant (done once); peak {pi['peak_mib']:.0f} MiB above the level "
              f"before the largest call; process high-water mark "
              f"{pi['process_max_rss_mib']:.0f} MiB (weights included)."]
    return "\n".join(lines) + "\n"


def run_profile(args: argparse.Namespace) -> int:
    from reface_core.atomic import write_json_atomic, write_text_atomic

    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        branches = [int(k) for k in str(args.branches).split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--branches must be comma-separated whole numbers, got "
                         f"{args.branches!r}") from None
    if any(k < 1 for k in branches):
        raise ValueError(f"--branches must be >= 1, got {args.branches!r}")
    result = profile(args.preset, args.resolution, args.steps, args.refs, args.repeats,
                     args.device, args.dtype, args.channel_mult, not args.skip_embedder,
                     branches=branches, log=lambda m: print(m, file=sys.stderr))
    md = to_markdown(result)
    print(md)
    if args.json:
        write_json_atomic(Path(args.json), result)
    if args.markdown:
        write_text_atomic(Path(args.markdown), md)
    return 0

