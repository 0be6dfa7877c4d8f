"""Does the stage-2 mini model use its references? A few-minute diagnosis on held-out faces.

    python scripts/diag_mini_refs.py --data runs/mini/reface-hq [--faces 12] [--weights DIR]
                                     [--adapters DIR]

For the first ``--faces`` test faces of the build (identities never trained on) and each LQ
preset it prints:

* the output change, in mean absolute 8-bit pixel values, of the default sampled
  restoration when the reference branch is switched off (``rca_scale`` 0 against 1) and
  when another person's references replace the person's own (the model can only be said to
  use references where these are well above the change from the sampling noise alone,
  printed as ``seed``: the same call with another generator seed);
* ``ids`` (dlib cosine to the HQ face) of stage 2 with same-person, other-person and no
  reference branch;
* the norms of the adapter's residuals into the UNet, summed over skips, split into the
  LCA's and the RCA's part, at the first step of the default schedule and at t = 100
  (the RCA's share is what the reference branch adds to the frozen UNet).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the Reface-HQ build the model was trained on")
    p.add_argument("--faces", type=int, default=12)
    p.add_argument("--presets", default="mgfr-medium,mgfr-severe")
    p.add_argument("--weights", default=None, help="mini weights folder (default: shipped)")
    p.add_argument("--adapters", default=None,
                   help="stage-2 adapters folder (default: WEIGHTS/adapters-stage2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from faces.embedding import get_embedder
    from mgfr.model import MGFRModel
    from mgfr.pipeline import load_pipeline
    from mgfr.train import to_uint8
    from reface_core.assets import resolve
    from reface_hq.dataset import FaceTrainingDataset

    sys.path.insert(0, str(REPO / "scripts"))
    from eval_mini import lq_faces

    torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else resolve("mgfr-mini")
    adapters = Path(args.adapters) if args.adapters else weights / "adapters-stage2"
    ds = FaceTrainingDataset(args.data, "test", n_references=2, size=64, seed=args.seed,
                             embedder="dlib")
    order = sorted(range(len(ds)), key=lambda i: ds.items[i]["face_id"])
    # Spread the faces over the held-out identities (every k-th face in id order).
    order = [order[int(i)] for i in np.linspace(0, len(order) - 1, args.faces).round()]
    items = [ds[i] for i in order]
    hq = np.stack([to_uint8(it["target"][None])[0] for it in items])
    refs = np.stack([to_uint8(it["references"]) for it in items])
    vecs = np.stack([it["reference_embeddings"].numpy() for it in items])
    identity = [it["identity"] for it in items]
    face_ids = [it["face_id"] for it in items]
    other = [next(k for k in list(range(i + 1, len(items))) + list(range(i))
                  if identity[k] != ident) for i, ident in enumerate(identity)]
    target_vecs = np.stack([ds.embeddings[f] for f in face_ids])
    emb = get_embedder("dlib")
    pipe = load_pipeline(base=str(weights), adapters=str(adapters))
    d = pipe.call_defaults

    def run(lq, r, v, seed_off=0, **kw):
        outs = []
        for i in range(len(lq)):
            g = torch.Generator().manual_seed(args.seed + i + seed_off)
            outs.append(pipe(lq[i], references=[list(r[i])], id_embeds=v[i:i + 1],
                             generator=g, **kw).images[0])
        return np.stack(outs)

    def ids(imgs):
        return float(np.mean(np.sum(emb.embed(list(imgs)) * target_vecs, axis=1)))

    def mad(a, b):
        return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))

    model = MGFRModel(pipe.unet, pipe.adapter)
    sched = pipe.scheduler
    sched.set_timesteps(int(d.get("num_inference_steps", 20)))
    keep = max(1, round(len(sched.timesteps) * float(d["strength"])))
    t_first = int(sched.timesteps[len(sched.timesteps) - keep])
    print(f"{len(items)} held-out faces of {len(set(identity))} identities; defaults {d}")
    for preset in args.presets.split(","):
        lq = lq_faces(hq, face_ids, preset, args.seed)
        same = run(lq, refs, vecs)
        same2 = run(lq, refs, vecs, seed_off=1000)
        oth = run(lq, refs[other], vecs[other])
        off = run(lq, refs, vecs, rca_scale=0.0)
        print(f"\n{preset}: mean |diff| (8-bit): seed {mad(same, same2):.2f}, "
              f"rca 0 vs 1 {mad(same, off):.2f}, other vs same refs {mad(same, oth):.2f}")
        print(f"{preset}: ids same {ids(same):.4f}, other {ids(oth):.4f}, rca off "
              f"{ids(off):.4f}, bicubic {ids(lq):.4f}")
        # Residual norms at the first sampled step and at t = 100.
        with torch.no_grad():
            zl = pipe._encode_latents(list(lq))
            b = zl.shape[0]
            zr = pipe._encode_latents([r for rs in refs for r in rs]).unflatten(0, (b, 2))
            cond = model.prepare(zl, zr, torch.as_tensor(vecs, dtype=zl.dtype), None)
            text = pipe._encode_text([""] * b)
            for t in (t_first, 100):
                g = torch.Generator().manual_seed(args.seed)
                noise = torch.randn(zl.shape, generator=g)
                tt = torch.full((b,), t, dtype=torch.long)
                x = sched.add_noise(zl, noise, tt)
                parts = {}
                for name, (ls, rs) in {"lca": (1.0, 0.0), "rca": (0.0, 1.0)}.items():
                    down, mid = pipe.adapter(x, tt, cond, encoder_hidden_states=text,
                                             lca_scale=ls, rca_scale=rs)
                    parts[name] = float(sum(r.norm() for r in down) + mid.norm()) / b
                print(f"{preset}: t={t}: residual norm per face: LCA {parts['lca']:.2f}, "
                      f"RCA {parts['rca']:.2f} (ratio {parts['rca'] / parts['lca']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
