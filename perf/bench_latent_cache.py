"""What the VAE-latent cache (``cache_latents``) saves: step time measured at a small
preset, FLOPs counted at ``sd21-base``.

    python perf/bench_latent_cache.py --data REFACE_HQ_DIR --threads 1 --repeats 9

Per stage it builds two ``mgfr.train.Trainer`` on the same random-weight base and data,
one with ``cache_latents`` off and one on, and times their ``train_step`` (data,
degradation, VAE and text encoding, adapter forward/backward, optimizer) interleaved
(off, on, off, on, ...) after one warm-up step each, so load from other processes falls
on both alike; it reports the medians, their ratio and the one-off time to build the
cache. Stage 2 starts from the stage-1 run without the cache.

The FLOPs saved are counted with ``torch.utils.flop_counter`` on the meta device (no
memory, no weights): the VAE encoder at the preset's resolution, times the encodes the
cache removes per sample: the HQ target of every positive sample (``1 - negative_rate``:
negative targets are degraded per step and still encoded) and, in stage 2, every
reference. The LQ input is degraded per step and always encoded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vae_encode_gflop(preset: str) -> float:
    """GFLOPs of one VAE encode of one image at the preset's resolution (meta device)."""
    import torch

    from mgfr.base import build_base_from_config
    from mgfr.profile import count_gflops
    base = build_base_from_config(preset, 0, device="meta", with_tokenizer=False)
    x = torch.zeros(1, 3, base.resolution, base.resolution, device="meta")
    with torch.no_grad():
        return count_gflops(lambda: base.vae.encode(x))


def flops_saved(preset: str, stage: int, refs: int, negative_rate: float,
                batch_size: int) -> dict:
    """VAE-encoder FLOPs a step no longer spends with the cache, and the share of the
    sample's training FLOPs (``bench_mgfr_train.flops_per_sample``) that is."""
    from perf.bench_mgfr_train import flops_per_sample
    per = flops_per_sample(preset, stage, refs)
    vae = vae_encode_gflop(preset)  # attention counted through the math SDPA backend
    saved_encodes = (1 - negative_rate) + (refs if stage == 2 else 0)
    saved = saved_encodes * vae
    return {"preset": preset, "stage": stage, "refs": refs if stage == 2 else 0,
            "vae_encode_gflop": vae, "encodes_per_sample": per["vae_encodes"],
            "encodes_saved_per_sample": saved_encodes, "saved_gflop_per_sample": saved,
            "total_gflop_per_sample": per["total_gflop"],
            "saved_share": saved / per["total_gflop"], "batch_size": batch_size,
            "saved_tflop_per_step": saved * batch_size / 1e3}


def time_stage(args, stage: int, data: Path, work: Path, init: Path | None):
    import torch

    from mgfr.base import build_base_from_config
    from mgfr.train import TrainConfig, Trainer
    base = build_base_from_config(args.preset, 0)
    trainers, build_s = {}, None
    for cached in (False, True):
        cfg = TrainConfig(stage=stage, base=args.preset, batch_size=args.batch_size,
                          n_references=args.refs, max_steps=10 ** 6, ema_decay=0.999, seed=0,
                          negative_rate=args.negative_rate, cache_latents=cached)
        t0 = time.perf_counter()
        trainers[cached] = Trainer(cfg, data, work / f"stage{stage}-{cached}", init=init,
                                   progress=False, base_models=base, cache_dir=work / "cache")
        if cached and trainers[cached].latent_cache.built:  # stage 2 reuses stage 1's file
            build_s = time.perf_counter() - t0
    for tr in trainers.values():
        tr.train_step()  # warm-up
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for cached, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train_step()
            times[cached].append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    tr = trainers[True]
    return {"stage": stage, "preset": args.preset, "resolution": tr.resolution,
            "batch_size": args.batch_size, "refs": args.refs if stage == 2 else 0,
            "step_s_without_cache": off, "step_s_with_cache": on, "speedup": off / on,
            "cache_build_s": build_s, "cached_faces": len(tr.dataset),
            "cache_rows": tr.latent_cache.rows, "threads": torch.get_num_threads(),
            "all_without": times[False], "all_with": times[True]}, trainers[False]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a Reface-HQ folder (reface_hq build)")
    p.add_argument("--preset", default="tiny", help="the preset timed (default tiny)")
    p.add_argument("--count-preset", default="sd21-base", help="the preset FLOPs are counted at")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--count-batch-size", type=int, default=4,
                   help="per-GPU batch of the counted step (the sd21-base recipes: 4)")
    p.add_argument("--refs", type=int, default=2)
    p.add_argument("--negative-rate", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--stages", default="1,2")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch
    os.environ["ACCELERATE_USE_CPU"] = "true"
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = [int(s) for s in args.stages.split(",")]
    timed, counted = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = None
        for stage in stages:
            if stage == 2 and init is None:
                raise SystemExit("error: --stages 2 needs stage 1 first (its run is the init)")
            row, tr = time_stage(args, stage, Path(args.data), work, init)
            timed.append(row)
            if stage == 1:
                tr.save_adapters()
                init = tr.out
    for stage in stages:
        for preset, bs in ((args.preset, args.batch_size),
                           (args.count_preset, args.count_batch_size)):
            counted.append(flops_saved(preset, stage, args.refs, args.negative_rate, bs))
    print("| stage | preset | batch | step s, no cache | step s, cache | speed-up | "
          "Trainer start with cache build s (rows) |")
    print("|---|---|---|---|---|---|---|")
    for r in timed:
        print(f"| {r['stage']} | {r['preset']} {r['resolution']} px | {r['batch_size']} | "
              f"{r['step_s_without_cache']:.3f} | {r['step_s_with_cache']:.3f} | "
              f"{r['speedup']:.2f}x | "
              + (f"{r['cache_build_s']:.1f}" if r["cache_build_s"] is not None
                 else "reused") + f" ({r['cache_rows']}) |")
    print()
    print("| stage | preset | VAE encode GFLOP | encodes/sample | saved/sample | "
          "GFLOP saved/sample | share of sample FLOPs | TFLOP saved/step (batch) |")
    print("|---|---|---|---|---|---|---|---|")
    for c in counted:
        print(f"| {c['stage']} | {c['preset']} | {c['vae_encode_gflop']:.1f} | "
              f"{c['encodes_per_sample']} | {c['encodes_saved_per_sample']:.2f} | "
              f"{c['saved_gflop_per_sample']:.1f} | {100 * c['saved_share']:.0f} % | "
              f"{c['saved_tflop_per_step']:.2f} ({c['batch_size']}) |")
    if args.json:
        from reface_core.atomic import write_json_atomic
        write_json_atomic(Path(args.json), {"timed": timed, "counted": counted})
    return 0


if __name__ == "__main__":
    sys.exit(main())
