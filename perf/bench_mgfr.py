"""Speed and memory of MGFR restoration: seconds per image and peak memory by resolution,
steps and dtype, against plain Stable Diffusion sampling measured in the same run.

    python perf/bench_mgfr.py                                   # tiny on CPU
    python perf/bench_mgfr.py --preset sd21-base --device cuda --dtype fp16 --resolutions 512

The model is built from the preset's config with random weights (no download), so the same
command runs unchanged on a GPU at paper scale. Per setting it times ``--repeats`` calls
(median, after one warm-up) of:

* MGFR: ``MGFRPipeline`` on one aligned face with ``--refs`` references, explicit prompts,
  dual negative guidance (4 UNet branches per step), identity vectors given (the dlib
  embedder's CPU time is in ``python -m mgfr profile``);
* baseline: plain classifier-free-guided SD sampling with the same UNet, VAE, text
  encoder, scheduler and steps (2 UNet branches per step, no adapter);
* ratio: MGFR / baseline, the two timed interleaved (a, b, a, b, ...) so that load from
  other processes falls on both alike. The MGFR step against a bare-UNet step at the same
  number of branches is in ``python -m mgfr profile``.

It also counts, with forward hooks, how often the step-invariant parts run per image
(VAE encoder, text encoder, RLF, identity projection) at two step counts: the counts must
not grow with the steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reface_core.argtypes import torch_device  # noqa: E402


def timed_pair(fn_a, fn_b, repeats: int, device) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` after a warm-up each, their calls interleaved
    (a, b, a, b, ...) so that load from other processes falls on both alike."""
    import torch

    fn_a()
    fn_b()
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, ts in zip((fn_a, fn_b), times, strict=False):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def peak_mib(fn, device) -> float:
    import torch

    from mgfr.profile import _PeakRSS

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with _PeakRSS() as m:
        fn()
    return m.used / 2**20


def build(preset: str, device: str, dtype, **adapter_options):
    import torch

    from mgfr.base import build_base_from_config
    from mgfr.model import MGFRModel
    from mgfr.pipeline import pipeline_from_model

    base = build_base_from_config(preset, 0, device=device, dtype=dtype)
    model = MGFRModel.from_base(base, **adapter_options)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained" adapter: no exact zeros anywhere
        for p in model.adapter.parameters():
            if not p.any():
                p.copy_((torch.randn(p.shape, generator=g) * 1e-3).to(p))
    return pipeline_from_model(base, model)


def bare_sd(pipe, steps: int, guidance: float, generator):
    """Plain CFG sampling with the same parts: the baseline MGFR is compared with."""
    import torch

    res = pipe.resolution
    ehs = pipe._encode_text(["", "a photo of a man"])
    pipe.scheduler.set_timesteps(steps, device=pipe.device)
    h = res // pipe.vae_scale_factor
    c = pipe.unet.config.in_channels
    lat = torch.randn((1, c, h, h), generator=generator).to(pipe.device, pipe.unet.dtype)
    lat = lat * pipe.scheduler.init_noise_sigma
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.scale_model_input(torch.cat([lat] * 2), t)
            eu, ep = pipe.unet(x, t, ehs, return_dict=False)[0].chunk(2)
            lat = pipe.scheduler.step(eu + guidance * (ep - eu), t, lat, return_dict=False)[0]
        return pipe.vae.decode(lat / pipe.vae.config.scaling_factor, return_dict=False)[0]


def invariant_counts(pipe, face, refs, ids, steps, prompts) -> dict:
    calls: dict[str, int] = {}
    vae_encoder = getattr(pipe.vae, "encoder", None) or pipe.vae.enc_linear
    mods = {"vae_encoder": vae_encoder, "text_encoder": pipe.text_encoder,
            "rlf": pipe.adapter.rlf, "id_proj": pipe.adapter.id_proj, "unet": pipe.unet}

    def hook(name):
        def f(*_):
            calls[name] = calls.get(name, 0) + 1
        return f
    hs = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        pipe(face, references=refs, id_embeds=ids, num_inference_steps=steps, **prompts)
    finally:
        for h in hs:
            h.remove()
    return calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu", type=torch_device,
                    help="cpu, cuda or cuda:N (checked before any model is built)")
    ap.add_argument("--dtypes", default="fp32", help="comma-separated: fp32,fp16,bf16")
    ap.add_argument("--resolutions", default=None,
                    help="comma-separated pixel sizes (default: the preset's)")
    ap.add_argument("--steps", default="10,20", help="comma-separated step counts")
    ap.add_argument("--refs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--text-blind", action="store_true",
                    help="also time the same model with text-blind adapters (read_prompt=False, "
                         "the adapter once per step) interleaved with the default one, and "
                         "print the ratio: the cost advantage of text-blind adapters")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from mgfr.pipeline import parse_dtype
    from mgfr.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    resolutions = [int(r) for r in (args.resolutions or str(preset.resolution)).split(",")]
    steps_list = [int(s) for s in args.steps.split(",")]
    prompts = dict(prompt="a photo of a man", negative_attribute_prompt="woman, child",
                   negative_quality_prompt="blurry, noisy, low quality")
    rng = np.random.default_rng(0)
    rows = []
    for dt_name in args.dtypes.split(","):
        dtype = parse_dtype(dt_name)
        pipe = build(args.preset, args.device, dtype)
        d = pipe.adapter.config.id_embed_dim
        for res in resolutions:
            pipe.register_to_config(resolution=res)
            face = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
            refs = [rng.integers(0, 256, (res, res, 3), dtype=np.uint8) for _ in range(args.refs)]
            ids = rng.standard_normal((1, args.refs, d)).astype(np.float32) if args.refs else None
            counts = [invariant_counts(pipe, face, refs or None, ids, s, prompts)
                      for s in (1, 2)]
            once = all(counts[0][k] == counts[1][k] for k in counts[0] if k != "unet")
            for steps in steps_list:
                def run_mgfr():
                    pipe(face, references=refs or None, id_embeds=ids, num_inference_steps=steps,  # noqa: B023
                         generator=torch.Generator().manual_seed(0), **prompts)

                def run_bare():
                    bare_sd(pipe, steps, 4.0, torch.Generator().manual_seed(0))  # noqa: B023
                t_m, t_b = timed_pair(run_mgfr, run_bare, args.repeats, device)
                if args.text_blind:
                    blind = build(args.preset, args.device, dtype, read_prompt=False)
                    blind.register_to_config(resolution=res)

                    def run_blind():
                        blind(face, references=refs or None, id_embeds=ids,  # noqa: B023
                              num_inference_steps=steps, generator=torch.Generator().manual_seed(0),  # noqa: B023
                              **prompts)
                    t_read, t_blind = timed_pair(run_mgfr, run_blind, args.repeats, device)
                    print(f"{args.preset} {res}px {steps} steps, 4 guidance branches: adapters "
                          f"reading the prompt {t_read:.3f} s/img, text-blind {t_blind:.3f} "
                          f"s/img ({t_read / t_blind:.2f}x)", flush=True)
                rows.append({"preset": args.preset, "device": str(device), "dtype": dt_name,
                             "resolution": res, "steps": steps, "refs": args.refs,
                             "mgfr_s": t_m, "bare_cfg_s": t_b, "ratio": t_m / t_b,
                             "mgfr_peak_mib": peak_mib(run_mgfr, device),
                             "bare_peak_mib": peak_mib(run_bare, device),
                             "invariant_once": once, "calls_1_step": counts[0],
                             "calls_2_steps": counts[1]})
                r = rows[-1]
                print(f"{r['preset']} {r['dtype']} {res}px {steps} steps: MGFR {t_m:.3f} s/img, "
                      f"plain CFG {t_b:.3f} s/img, ratio {r['ratio']:.2f}, peak "
                      f"{r['mgfr_peak_mib']:.0f} MiB vs {r['bare_peak_mib']:.0f} MiB; "
                      f"step-invariant work once per image: {once}", flush=True)
    print()
    print("| preset | dtype | px | steps | MGFR s/img | plain CFG s/img | ratio | MGFR peak MiB "
          "| plain peak MiB | invariant once |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['dtype']} | {r['resolution']} | {r['steps']} | "
              f"{r['mgfr_s']:.3f} | {r['bare_cfg_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['mgfr_peak_mib']:.0f} | {r['bare_peak_mib']:.0f} | {r['invariant_once']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
