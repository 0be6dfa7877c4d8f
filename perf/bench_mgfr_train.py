"""Speed and memory of MGFR training: samples/s and peak memory per stage, against a plain
UNet fine-tuning step measured in the same run, and the FLOPs of one training sample.

    python perf/bench_mgfr_train.py --data REFACE_HQ_DIR                       # tiny, CPU
    python perf/bench_mgfr_train.py --data REFACE_HQ_DIR --preset sd21-base \\
        --device cuda --mixed-precision bf16 --batch-size 4 --gradient-checkpointing

The base is built from the preset's config with random weights (no download), so the
same command runs unchanged on a GPU at paper scale. Per stage it runs ``mgfr.train``'s
own ``Trainer.train_step`` (data, on-the-fly degradation, VAE and text encoding, adapter
forward/backward through the frozen UNet, optimizer, EMA): one warm-up step, then the
median of ``--repeats`` steps. The baseline is one step of plain text-conditioned UNet
training (all UNet weights trainable, the same batch of latents), timed interleaved with
the MGFR steps so that load from other processes falls on both alike. FLOPs per sample
are counted on the meta device (``torch.utils.flop_counter``), so they need no memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reface_core.argtypes import torch_device  # noqa: E402


def peak_memory_reset(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device) -> float:
    import resource

    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_sample(preset: str, stage: int, n_refs: int) -> dict:
    """Training FLOPs of one sample: UNet + adapter forward and backward, VAE encodes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mgfr.base import build_base_from_config
    from mgfr.model import MGFRModel
    base = build_base_from_config(preset, 0, device="meta", with_tokenizer=False)
    model = MGFRModel.from_base(base, copy_unet_weights=False)
    model.trainable_parameters(stage)
    res, f = base.resolution, base.vae_scale_factor
    with torch.device("meta"):
        c = base.unet.config.in_channels
        z = torch.randn(1, c, res // f, res // f)
        t = torch.zeros(1, dtype=torch.long)
        hidden = torch.randn(1, 77, base.unet.config.cross_attention_dim)
        refs = torch.randn(1, n_refs, c, res // f, res // f) if stage == 2 else None
        ids = torch.randn(1, n_refs, model.adapter.config.id_embed_dim) if stage == 2 else None
        x = torch.randn(1, 3, res, res)
    with FlopCounterMode(display=False) as fc:
        model(z, t, hidden, z, refs, ids).sum().backward()
    with FlopCounterMode(display=False) as fv, torch.no_grad():
        base.vae.encode(x)
    encodes = 2 + (n_refs if stage == 2 else 0)  # target, LQ, references
    step, vae = fc.get_total_flops(), fv.get_total_flops()
    return {"unet_adapter_fwd_bwd_gflop": step / 1e9, "vae_encode_gflop": vae / 1e9,
            "vae_encodes": encodes, "total_gflop": (step + encodes * vae) / 1e9}


def attention_at_top(preset: str) -> str:
    """Register ``<preset>-attn-top``: the preset with the UNet's attention moved to the
    largest latent level and off the smallest (the tiny layout, and mini's before the
    change); returns its name."""
    import dataclasses

    from mgfr.presets import get_preset, register_preset
    p = get_preset(preset)
    n = len(p.unet["down_block_types"])
    unet = {**p.unet, "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)}
    name = f"{preset}-attn-top"
    register_preset(dataclasses.replace(p, name=name, unet=unet, asset=None,
                                        description=f"{preset} with attention at the top level"))
    return name


def bench_stage(args, stage: int, data: Path, work: Path, init: Path | None,
                preset: str | None = None):
    import torch
    import torch.nn.functional as F

    from mgfr.base import build_base_from_config
    from mgfr.train import TrainConfig, Trainer
    preset = preset or args.preset
    cfg = TrainConfig(stage=stage, base=preset, batch_size=args.batch_size,
                      mixed_precision=args.mixed_precision, n_references=args.refs,
                      gradient_checkpointing=args.gradient_checkpointing, max_steps=10 ** 6,
                      ema_decay=0.999, seed=0)
    base = build_base_from_config(preset, 0)
    tr = Trainer(cfg, data, work / f"{preset}-stage{stage}", init=init, progress=False,
                 base_models=base, cache_dir=work / "cache")
    device = tr.accelerator.device
    # Baseline: plain UNet training on the same kind of batch (a copy of the UNet, all of
    # it trainable): what fine-tuning Stable Diffusion itself costs per step.
    import copy
    unet = copy.deepcopy(tr.base.unet).requires_grad_(True).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    _, batch = tr._micro_batch(0)
    lat = tr._latents(batch["target"])
    hidden = tr._text(batch["prompts"])

    def plain():
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (lat.shape[0],), device=lat.device)
        with tr.accelerator.autocast():
            pred = unet(tr.base.noise_scheduler.add_noise(lat, noise, t), t, hidden).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    peak_memory_reset(device)
    tr.train_step()  # warm-up
    sync()
    times_mgfr, times_plain = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tr.train_step()
        sync()
        times_mgfr.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain()
        sync()
        times_plain.append(time.perf_counter() - t0)
    mgfr_s, plain_s = statistics.median(times_mgfr), statistics.median(times_plain)
    row = {"stage": stage, "preset": preset, "device": str(device),
           "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
           "gradient_checkpointing": args.gradient_checkpointing,
           "trainable_m": sum(p.numel() for p in tr.params) / 1e6,
           "step_s": mgfr_s, "samples_per_s": args.batch_size / mgfr_s,
           "plain_unet_step_s": plain_s, "ratio_vs_plain_unet": mgfr_s / plain_s,
           "peak_memory_mib": peak_memory_mib(device)}
    tr.save_adapters()
    return row, tr.out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a Reface-HQ folder (reface_hq build)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu", type=torch_device,
                   help="cpu or cuda (accelerate picks the GPU)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--refs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier numbers on a shared machine)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--attention-at-top", action="store_true",
                   help="also time stage 1 with the preset's UNet attention moved to the "
                        "largest latent level (the layout before the mini change) and print "
                        "the speed ratio")
    args = p.parse_args(argv)
    import os

    import torch
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        row1, run1 = bench_stage(args, 1, Path(args.data), work, None)
        rows.append(row1)
        row2, _ = bench_stage(args, 2, Path(args.data), work, run1)
        rows.append(row2)
        if args.attention_at_top:
            before, _ = bench_stage(args, 1, Path(args.data), work, None,
                                    preset=attention_at_top(args.preset))
            rows.append(before)
    for r in rows:
        r.update(flops_per_sample(r["preset"], r["stage"], args.refs))
    print("| stage | preset | device | batch | samples/s | step s | plain UNet step s | ratio | "
          "peak MiB | trainable M | GFLOP/sample |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['preset']} | {r['device']} | {r['batch_size']} | "
              f"{r['samples_per_s']:.3g} | {r['step_s']:.3g} | {r['plain_unet_step_s']:.3g} | "
              f"{r['ratio_vs_plain_unet']:.2f} | {r['peak_memory_mib']:.0f} | "
              f"{r['trainable_m']:.2f} | {r['total_gflop']:.0f} |")
    if args.attention_at_top:
        print(f"\nstage 1, no attention at the largest latent level vs attention there: "
              f"{rows[-1]['step_s'] / rows[0]['step_s']:.2f}x faster per step "
              f"({rows[0]['step_s']:.3g} s vs {rows[-1]['step_s']:.3g} s), "
              f"{rows[-1]['total_gflop'] / rows[0]['total_gflop']:.2f}x fewer FLOPs")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
