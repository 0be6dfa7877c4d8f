"""The device check behind ``perf/gpu_check.sh``: MGFR at paper scale on one GPU, random
weights, one table.

On CUDA: ``sd21-base`` built from config with random weights (no download), fp16 at 512 px:

1. ``mgfr profile``'s denoising step: MGFR against the bare UNet at 1 branch (median
   seconds and GFLOPs, interleaved calls);
2. 20 stage-1 training steps as ``mgfr train`` runs them (frozen fp16 base, fp32 adapter
   under fp16 autocast with a gradient scaler, AdamW, gradient checkpointing, the LQ batch
   encoded by the VAE every step, HQ targets from the latent cache so not encoded), then
   20 steps of plain UNet fine-tuning on the same batch (the bare-UNet step, its UNet
   copy built after the MGFR steps); the medians of the steps after the first two, their
   ratio, and the peak memory of the MGFR steps (``torch.cuda.max_memory_allocated``,
   everything the process holds: the frozen base, the adapter, its optimizer state).

Without CUDA (or with ``--cpu``) it says so in one line and runs the reduced CPU variant
(``tiny``, 64 px, fp32, 3 steps of each), so the script itself is tested on any machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_steps(preset: str, device, dtype, resolution: int, batch: int, steps: int,
                checkpointing: bool, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    from mgfr.base import build_base_from_config
    from mgfr.model import MGFRModel
    from mgfr.train import AdapterStep, _enable_checkpointing
    base = build_base_from_config(preset, seed, device=device, dtype=dtype, with_tokenizer=False)
    for m in (base.unet, base.vae, base.text_encoder):
        m.to(device=device, dtype=dtype).requires_grad_(False)
    model = MGFRModel.from_base(base, copy_unet_weights=True)
    model.adapter.to(device=device, dtype=torch.float32)
    params = model.trainable_parameters(1)
    if checkpointing:
        base.unet.enable_gradient_checkpointing()
        _enable_checkpointing(model.adapter)
    step_module = AdapterStep(model.adapter).train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    plain = {}
    half = dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=half)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    g = torch.Generator().manual_seed(seed)
    f = base.vae_scale_factor
    c = base.unet.config.in_channels
    h = resolution // f
    sf = base.vae.config.scaling_factor
    hidden = base.text_encoder(torch.randint(0, 49407, (batch, 77), generator=g).to(device))[0]
    target = torch.randn(batch, c, h, h, generator=g).to(device, dtype)  # from the cache
    lq_images = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device,
                                                                                       dtype)
    sched = base.noise_scheduler

    def noised():
        noise = torch.randn(target.shape, generator=g).to(device, dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g).to(device)
        return sched.add_noise(target, noise, t), noise, t

    def mgfr_step():
        with torch.no_grad():
            lq = base.vae.encode(lq_images).latent_dist.mean * sf
        noisy, noise, t = noised()
        with autocast:
            down, mid = step_module(noisy, t, lq, None, None, None, hidden)
            pred = base.unet(noisy, t, hidden,
                             down_block_additional_residuals=[d.to(noisy.dtype) for d in down],
                             mid_block_additional_residual=mid.to(noisy.dtype),
                             return_dict=False)[0]
        scaler.scale(F.mse_loss(pred.float(), noise.float())).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def plain_step():
        if not plain:  # built after the MGFR steps, so their peak memory is theirs alone
            plain["unet"] = copy.deepcopy(base.unet).requires_grad_(True).train()
            if checkpointing:
                plain["unet"].enable_gradient_checkpointing()
            plain["opt"] = torch.optim.AdamW(plain["unet"].parameters(), lr=1e-5, eps=1e-4)
        plain_unet, opt_plain = plain["unet"], plain["opt"]
        noisy, noise, t = noised()
        pred = plain_unet(noisy, t, hidden, return_dict=False)[0]
        F.mse_loss(pred.float(), noise.float()).backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {"mgfr": [], "plain": []}
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for name, fn in (("mgfr", mgfr_step), ("plain", plain_step)):
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        if name == "mgfr" and device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
    skip = 2 if steps > 4 else 1
    med = {k: statistics.median(v[skip:]) for k, v in times.items()}
    if peak is None:
        import resource
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_what = "process max RSS (CPU)"
    else:
        peak_mib = peak / 2 ** 20
        peak_what = "torch.cuda.max_memory_allocated"
    return {"mgfr_step_s": med["mgfr"], "plain_unet_step_s": med["plain"],
            "ratio": med["mgfr"] / med["plain"], "peak_mib": peak_mib, "peak_what": peak_what,
            "steps": steps, "timed_steps": steps - skip, "batch": batch,
            "trainable_m": sum(p.numel() for p in params) / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the reduced CPU variant")
    p.add_argument("--batch-size", type=int, default=4, help="per-GPU batch (recipes: 4)")
    p.add_argument("--steps", type=int, default=20, help="training steps on CUDA")
    args = p.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        preset, res, dtype, dname, steps, device = ("sd21-base", 512, torch.float16, "fp16",
                                                    args.steps, torch.device("cuda"))
        repeats = 5
        print(f"device: {torch.cuda.get_device_name(0)}", flush=True)
    else:
        why = "--cpu given" if args.cpu else "CUDA not available"
        print(f"{why}: skipping the CUDA check (sd21-base, fp16, 512 px, {args.steps} steps); "
              "running the reduced CPU variant (tiny, 64 px, fp32, 3 steps)", flush=True)
        preset, res, dtype, dname, steps, device = ("tiny", 64, torch.float32, "fp32", 3,
                                                    torch.device("cpu"))
        repeats = 1
        torch.set_num_threads(1)
    t_start = time.perf_counter()
    from mgfr.profile import profile
    prof = profile(preset, res, steps=20, refs=1, repeats=repeats, device=str(device),
                   dtype=dname, embedder=False, branches=(1,))
    s = prof["step"]
    tr = train_steps(preset, device, dtype, res, args.batch_size, steps, checkpointing=True)
    total = time.perf_counter() - t_start
    rows = [
        ("preset, resolution, dtype", f"{preset}, {res} px, {dname}"),
        ("device", str(device)),
        ("denoising step, bare UNet (1 branch)", (f"{s['unet_1']['seconds']:.4f} s, "
                                                  f"{s['unet_1']['gflops']:.1f} GFLOP")),
        ("denoising step, MGFR (1 branch)", (f"{s['mgfr_1']['seconds']:.4f} s, "
                                             f"{s['mgfr_1']['gflops']:.1f} GFLOP")),
        ("denoising step ratio MGFR / bare UNet",
         (f"{prof['ratios']['mgfr_vs_unet_1_branch']:.2f}x "
          f"({prof['ratios']['gflops_mgfr_vs_unet_1_branch']:.2f}x in GFLOPs)")),
        (f"training steps (batch {tr['batch']}, checkpointing)",
         f"{tr['steps']}, median of the last {tr['timed_steps']}"),
        ("stage-1 training step, MGFR", f"{tr['mgfr_step_s']:.4f} s"),
        ("training step, plain UNet fine-tuning", f"{tr['plain_unet_step_s']:.4f} s"),
        ("training step ratio MGFR / bare UNet", f"{tr['ratio']:.2f}x"),
        ("peak memory, MGFR training", f"{tr['peak_mib']:.0f} MiB ({tr['peak_what']})"),
        ("trainable parameters", f"{tr['trainable_m']:.1f} M"),
        ("wall-clock of this check", f"{total:.0f} s"),
    ]
    print("| gpu_check | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
