"""Memory plan of MGFR training: what fits on 24, 40 and 80 GB cards, per stage, precision,
gradient checkpointing and optimizer.

    python perf/mgfr_memory_plan.py                       # sd21-base at 512 px (meta device)
    python perf/mgfr_memory_plan.py --preset tiny --check-real

Parameters, gradients and optimizer state are counted from the architecture's parameter
counts (built from the preset's config on the meta device: no weights, no memory):

* frozen base (UNet, VAE, text encoder): 2 bytes per parameter in fp16/bf16, 4 in fp32;
* trainable adapter weights (``MGFRModel.trainable_parameters(stage)``): fp32 master
  weights (4 B, the trainer keeps them fp32 under autocast), their 16-bit copies autocast
  caches during the forward (2 B, mixed precision only), fp32 gradients (4 B), AdamW's two
  moments (8 B) or bitsandbytes' 8-bit AdamW (2 bytes plus one fp32 absmax per 256
  values per moment; measured on the CPU when bitsandbytes imports), and the EMA copy (4 B);
* frozen adapter weights (stage 2: the LCA): 4 B (+2 B autocast copy).

Activations are **measured** with ``torch.distributed._tools.mem_tracker.MemTracker`` on
the meta device: one training micro-step (adapter and frozen UNet forward, backward to
the trainable weights) at batch 1 and 2, with and without gradient checkpointing; the
peak of activation and temporary memory, its per-sample slope and its constant part. The
meta device runs attention through the math kernel, which keeps the N x N attention
matrix for backward; a GPU runs flash or memory-efficient attention, which keeps q, k, v,
the output and one log-sum-exp per row, so attention is swapped for a function that
saves exactly those (``--math-attention`` keeps the math kernel). The frozen VAE's encode
of the LQ batch (no gradients) is measured the same way; its transient peak comes before
the forward, so a step's peak is the larger of the two. ``--check-real`` runs the same
micro-step on real CPU tensors (the CPU runs flash attention too) and prints both peaks,
and the peak resident memory of the same step on the CPU sampled without the tracker.

Not counted: the CUDA context and cuDNN/cuBLAS workspaces (``--overhead-gb``, default
1.5 GB) and allocator fragmentation (``--fragmentation``, default 10 % of the rest).
Mixed precision is measured in bf16; fp16 has the same sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9


class _FlashLikeAttention:
    """``F.scaled_dot_product_attention`` that saves for backward what flash attention
    saves (q, k, v, output, log-sum-exp per query row), not the N x N matrix."""

    @staticmethod
    def make():
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                out = q.new_empty(*q.shape[:-1], v.shape[-1])
                if q.device.type != "meta":
                    out = _FlashLikeAttention.original(q, k, v)
                lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, g):
                q, k, v, _, _ = ctx.saved_tensors
                return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            if attn_mask is not None or is_causal or dropout_p:
                return _FlashLikeAttention.original(q, k, v, attn_mask=attn_mask,
                                                    dropout_p=dropout_p, is_causal=is_causal,
                                                    scale=scale, **kw)
            return Fn.apply(q, k, v)
        return sdpa

    original = None


@contextlib.contextmanager
def flash_like_attention(enabled: bool = True):
    import torch.nn.functional as F
    if not enabled:
        yield
        return
    _FlashLikeAttention.original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _FlashLikeAttention.make()
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _FlashLikeAttention.original


class LivePeak:
    """Peak bytes of the tensor storages created inside the block and still alive (a
    ``TorchDispatchMode`` sees every op's outputs, forward and backward; a storage counts
    until Python frees it). Works on the meta device, where nothing is allocated."""

    def __enter__(self):
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        tracker = self
        self.cur = self.peak = 0
        self.live: dict[int, int] = {}

        def free(key):
            tracker.cur -= tracker.live.pop(key, 0)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                # views, detach and in-place ops return a storage an input already has
                # (a weight's transpose is no new memory)
                seen = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                        if isinstance(t, torch.Tensor)}
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        key = st._cdata
                        if key not in tracker.live and key not in seen:
                            tracker.live[key] = st.nbytes()
                            tracker.cur += st.nbytes()
                            tracker.peak = max(tracker.peak, tracker.cur)
                            weakref.finalize(st, free, key)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def build(preset: str, device: str, dtype, stage: int, checkpointing: bool,
          resolution: int | None = None, seed: int = 0):
    from mgfr.base import build_base_from_config
    from mgfr.model import MGFRModel
    from mgfr.train import _enable_checkpointing
    base = build_base_from_config(preset, seed, device=device, dtype=dtype, with_tokenizer=False)
    for m in (base.unet, base.vae, base.text_encoder):
        m.to(device=device, dtype=dtype)
    model = MGFRModel.from_base(base, copy_unet_weights=False)
    model.adapter.to(device=device, dtype=dtype)
    params = model.trainable_parameters(stage)
    if checkpointing:
        base.unet.enable_gradient_checkpointing()
        _enable_checkpointing(model.adapter)
    model.adapter.train()
    res = int(resolution or base.resolution)
    return base, model, params, res


def _n(params) -> int:
    return sum(p.numel() for p in params)


def counts(preset: str, stage: int) -> dict:
    """Parameter counts (meta device)."""
    import torch
    base, model, params, res = build(preset, "meta", torch.float32, stage, False)
    trainable = _n(params)
    adapter = _n(model.adapter.parameters())
    return {"unet": _n(base.unet.parameters()), "vae": _n(base.vae.parameters()),
            "text_encoder": _n(base.text_encoder.parameters()), "trainable": trainable,
            "adapter_frozen": adapter - trainable, "resolution": res}


def measure_step(preset: str, device: str, dtype, stage: int, checkpointing: bool,
                 batch: int, refs: int, resolution: int | None = None,
                 flash: bool = True) -> dict:
    """Peak activation (+ temporary) bytes of one micro-step, and of the VAE encode of the
    LQ batch, measured by MemTracker."""
    import torch
    base, model, params, res = build(preset, device, dtype, stage, checkpointing, resolution)
    f = base.vae_scale_factor
    c = base.unet.config.in_channels
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt) if device != "meta" \
            else torch.empty(*shape, device="meta", dtype=dt)

    h = res // f
    z, lq = rnd(batch, c, h, h), rnd(batch, c, h, h)
    hidden = rnd(batch, 77, base.unet.config.cross_attention_dim)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    r = rnd(batch, refs, c, h, h) if stage == 2 else None
    ids = rnd(batch, refs, model.adapter.config.id_embed_dim) if stage == 2 else None
    images = rnd(batch, 3, res, res)

    def peak(fn):
        with flash_like_attention(flash), LivePeak() as lp:
            fn()
        out = {"act": lp.peak}
        if device == "cpu":  # an independent reading: resident memory, sampled (no tracker)
            from mgfr.profile import _PeakRSS
            fn()  # warm-up: the allocator's first-touch pages
            with flash_like_attention(flash), _PeakRSS() as rss:
                fn()
            out["rss"] = rss.used
        return out

    def step():
        model(z, t, hidden, lq, r, ids).float().square().mean().backward()

    def encode():
        with torch.no_grad():
            base.vae.encode(images)

    # Gradients are counted with the trainable state (fp32); here each is dropped as soon
    # as it is accumulated, so the peak is that of activations and temporaries.
    hooks = [p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None))
             for p in params]
    out = {"step": peak(step)}
    for h_ in hooks:
        h_.remove()
    out["vae_encode"] = peak(encode)
    out["resolution"] = res
    return out


def adam8bit_bytes_per_param() -> tuple[float, str]:
    """Bytes of 8-bit AdamW state per parameter: measured with bitsandbytes on the CPU
    when it imports, else counted (2 x (1 byte + 4 bytes / 256))."""
    counted = 2 * (1 + 4 / 256)
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as e:  # noqa: BLE001 - optional, any import failure means "not here"
        return counted, f"counted (bitsandbytes does not import: {type(e).__name__})"
    n = 256 * 4096
    p = torch.nn.Parameter(torch.zeros(n))
    opt = bnb.optim.AdamW8bit([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    state = sum(v.numel() * v.element_size() for v in opt.state[p].values()
                if torch.is_tensor(v) and v.numel() > 1024)  # the per-tensor qmaps aside
    return state / n, f"measured (bitsandbytes {bnb.__version__}, CPU)"


def plan(args) -> dict:
    import torch
    prec = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows, measured = [], {}
    a8, a8_how = adam8bit_bytes_per_param()
    for stage in args.stages:
        n = counts(args.preset, stage)
        for pname in args.precisions:
            for ckpt in (False, True):
                m = {b: measure_step(args.preset, "meta", prec[pname], stage, ckpt, b, args.refs,
                                     args.resolution, flash=not args.math_attention)
                     for b in (1, 2)}
                measured[f"stage{stage}-{pname}-ckpt{int(ckpt)}"] = m
                per_sample = m[2]["step"]["act"] - m[1]["step"]["act"]
                const = m[1]["step"]["act"] - per_sample
                vae_per = m[2]["vae_encode"]["act"] - m[1]["vae_encode"]["act"]
                vae_const = m[1]["vae_encode"]["act"] - vae_per
                half = pname != "fp32"
                wb = 2 if half else 4
                frozen = (n["unet"] + n["vae"] + n["text_encoder"]) * wb \
                    + n["adapter_frozen"] * (4 + (2 if half else 0))
                for opt, opt_b in (("AdamW", 8.0), ("8-bit AdamW", a8)):
                    train_b = n["trainable"] * (4 + (2 if half else 0) + 4 + opt_b + 4)
                    fixed = frozen + train_b
                    row = {"stage": stage, "precision": pname, "checkpointing": ckpt,
                           "optimizer": opt, "frozen_weights_gb": frozen / GB,
                           "trainable_state_gb": train_b / GB,
                           "activation_per_sample_gb": per_sample / GB,
                           "activation_constant_gb": const / GB,
                           "vae_encode_per_sample_gb": vae_per / GB,
                           "trainable_params": n["trainable"]}
                    for card in args.cards:
                        budget = (card - args.overhead_gb) * GB / (1 + args.fragmentation)
                        room = budget - fixed
                        best = 0
                        for b in range(1, 4097):
                            need = max(const + per_sample * b, vae_const + vae_per * b)
                            if need > room:
                                break
                            best = b
                        row[f"batch_{card}gb"] = best
                    row["batch_1_total_gb"] = (fixed + max(const + per_sample,
                                                           vae_const + vae_per)) / GB
                    rows.append(row)
    return {"preset": args.preset, "resolution": args.resolution or n["resolution"],
            "refs": args.refs, "counts": {s: counts(args.preset, s) for s in args.stages},
            "adam8bit_bytes_per_param": a8, "adam8bit": a8_how, "rows": rows,
            "measured": measured, "overhead_gb": args.overhead_gb,
            "fragmentation": args.fragmentation, "flash_like_attention": not args.math_attention}


def check_real(args) -> dict:
    """The same micro-step on real CPU tensors and on the meta device: both peaks."""
    import torch
    out = {}
    for device in ("cpu", "meta"):
        m = measure_step(args.preset, device, torch.float32, 1, False, 2, args.refs,
                         args.resolution, flash=True)
        out[device] = {"step_act_mb": m["step"]["act"] / 2 ** 20,
                       "vae_act_mb": m["vae_encode"]["act"] / 2 ** 20}
        if "rss" in m["step"]:
            out[device]["step_peak_rss_mb"] = m["step"]["rss"] / 2 ** 20
    return out


def to_markdown(r: dict) -> str:
    lines = [(f"`{r['preset']}` at {r['resolution']} px, stage 2 with {r['refs']} references; "
              f"8-bit AdamW state {r['adam8bit_bytes_per_param']:.3f} B/param, {r['adam8bit']}; "
              f"{r['overhead_gb']} GB CUDA context + {100 * r['fragmentation']:.0f} % "
              f"fragmentation reserved."), "",
             ("| stage | precision | checkpointing | optimizer | frozen weights GB | trainable "
              "state GB | step activations GB/sample | VAE encode GB/sample | batch 1 GB "
              "(before overhead) | batch on 24 GB | 40 GB | 80 GB |"),
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(
            f"| {x['stage']} | {x['precision']} | {'on' if x['checkpointing'] else 'off'} | "
            f"{x['optimizer']} | {x['frozen_weights_gb']:.2f} | {x['trainable_state_gb']:.2f} | "
            f"{x['activation_per_sample_gb']:.2f} | {x['vae_encode_per_sample_gb']:.2f} | "
            f"{x['batch_1_total_gb']:.1f} | "
            + " | ".join(str(x.get(f"batch_{c}gb", "")) for c in (24, 40, 80)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="sd21-base")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--refs", type=int, default=2)
    p.add_argument("--stages", default="1,2")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--cards", default="24,40,80")
    p.add_argument("--overhead-gb", type=float, default=1.5)
    p.add_argument("--fragmentation", type=float, default=0.10)
    p.add_argument("--math-attention", action="store_true")
    p.add_argument("--check-real", action="store_true",
                   help="only compare real CPU tensors with the meta count (small presets)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    args.stages = [int(s) for s in args.stages.split(",")]
    args.precisions = [s.strip() for s in args.precisions.split(",")]
    args.cards = [int(c) for c in args.cards.split(",")]
    if args.check_real:
        r = check_real(args)
        print(json.dumps(r, indent=2))
    else:
        r = plan(args)
        print(to_markdown(r))
    if args.json:
        from reface_core.atomic import write_json_atomic
        write_json_atomic(Path(args.json), r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
