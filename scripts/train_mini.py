"""Reproduce the shipped ``mini`` MGFR weights with the toolkit's own commands.

    python scripts/train_mini.py --data ../shared/data --work runs/mini          # train
    python scripts/train_mini.py --data ../shared/data --work runs/mini --ship   # + write
                                                                     # mgfr/weights/mini

Each step is a command a user would type, run in order; each resumes after a kill (the
build reuses its finished shards, the prior and both stages continue from their last
checkpoint), so rerunning the same line finishes the job:

1. ``reface_hq build`` of ``identities_512`` (CelebRef-HQ samples: 18 people, 270 photos;
   the folder name is the identity), captions on, 25 % of the identities held out as the
   test split (split seed 0). Nothing of the test identities is ever trained on.
2. ``mgfr pretrain-prior --config mgfr/configs/mini-prior.yaml`` (VAE with the 30 dB
   round-trip gate on the test faces, then the text-conditioned UNet).
3. ``mgfr train --stage 1 --config mgfr/configs/mini-stage1.yaml --base PRIOR``.
4. ``mgfr train --stage 2 --config mgfr/configs/mini-stage2.yaml --base PRIOR --init STAGE1``.
5. ``mgfr train --stage 2 --config mgfr/configs/mini-stage2-refs.yaml --base PRIOR --init
   STAGE2``: 1,000 more reference-branch steps, half of them started from the noised LQ
   latent (``lq_start_rate``), which is what makes the model use its references.
6. ``--ship``: the prior and both adapter folders, in float16 (half the bytes; the shipped
   files are what every figure in docs/mgfr-training.md was measured on), into
   ``mgfr/weights/mini``; prints the folder digest that ``reface_core/asset_registry.py``
   pins (asset ``mgfr-mini``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "mgfr" / "configs"
SHIP_DIR = REPO / "mgfr" / "weights" / "mini"


def run(*cmd: str) -> None:
    print("$ python -m " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: `python -m {' '.join(cmd)}` failed (exit {done.returncode}); "
                         "rerun this script to resume")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def finished_stage(run_dir: Path, config: Path) -> bool:
    import yaml
    info = run_dir / "adapters" / "mgfr_adapters.json"
    if not info.is_file():
        return False
    steps = yaml.safe_load(config.read_text())["max_steps"]
    return int(json.loads(info.read_text()).get("step", -1)) >= int(steps)


def train(data: Path, work: Path, quiet: bool) -> None:
    q = ["-q"] if quiet else []
    ds, prior = work / "reface-hq", work / "prior"
    s1, s2, s2r = work / "stage1", work / "stage2", work / "stage2-refs"
    source = f"folder:{data / 'identities_512'}?identity=folder&folder_level=0"
    run("reface_hq", "build", "-i", source, "-o", str(ds), "--transform-size", "1024",
        "--test-fraction", "0.25", "--seed", "0", "--captions", *q)
    run("mgfr", "pretrain-prior", "--config", str(CONFIGS / "mini-prior.yaml"), "-i", str(ds),
        "--out", str(prior), "--resume")
    if not finished_stage(s1, CONFIGS / "mini-stage1.yaml"):
        run("mgfr", "train", "--stage", "1", "--config", str(CONFIGS / "mini-stage1.yaml"),
            "-i", str(ds), "--base", str(prior), "--out", str(s1), "--resume")
    if not finished_stage(s2, CONFIGS / "mini-stage2.yaml"):
        run("mgfr", "train", "--stage", "2", "--config", str(CONFIGS / "mini-stage2.yaml"),
            "-i", str(ds), "--base", str(prior), "--init", str(s1), "--out", str(s2),
            "--resume")
    if not finished_stage(s2r, CONFIGS / "mini-stage2-refs.yaml"):
        run("mgfr", "train", "--stage", "2", "--config", str(CONFIGS / "mini-stage2-refs.yaml"),
            "-i", str(ds), "--base", str(prior), "--init", str(s2), "--out", str(s2r),
            "--resume")


def ship(work: Path, dest: Path = SHIP_DIR) -> str:
    """Write the float16 prior and adapters into ``dest`` (atomically); returns the folder
    digest to pin."""
    import pandas as pd
    import torch

    from mgfr.base import load_base
    from mgfr.model import read_adapter, read_adapters_info
    from reface_core.assets import folder_sha256

    prior, ds = work / "prior", work / "reface-hq"
    base = load_base(str(prior))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mini.", dir=dest.parent))
    try:
        base.unet.to(torch.float16).save_pretrained(tmp / "unet")
        base.vae.to(torch.float16).save_pretrained(tmp / "vae")
        base.text_encoder.to(torch.float16).save_pretrained(tmp / "text_encoder")
        base.noise_scheduler.save_pretrained(tmp / "scheduler")
        info = json.loads((prior / "mgfr_base.json").read_text())
        man = pd.read_parquet(ds / "manifest.parquet")
        info["prior"]["heldout_identities"] = sorted(
            str(i).split("-")[-1] for i in man[man.split == "test"].identity.unique())
        info["shipped_dtype"] = "float16"
        for stage in (1, 2):
            run_dir = work / ("stage1" if stage == 1 else "stage2-refs") / "adapters"
            adapter = read_adapter(run_dir).to(torch.float16)
            out = tmp / f"adapters-stage{stage}"
            adapter.save_pretrained(out, safe_serialization=True)
            meta = read_adapters_info(run_dir)
            meta.update(base="mini", init=None)
            if stage == 2:
                meta.update(init="mini stage 2 (3000 steps of mini-stage2.yaml)",
                            recipe=["mini-stage2.yaml", "mini-stage2-refs.yaml"])
            (out / "mgfr_adapters.json").write_text(json.dumps(meta, indent=2, default=str))
        (tmp / "mgfr_base.json").write_text(json.dumps(info, indent=2))
        os.chmod(tmp, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder_sha256(dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                   help="the shared real-photo folder (holds identities_512/)")
    p.add_argument("--work", default="runs/mini", help="folder for the dataset and the runs")
    p.add_argument("--ship", action="store_true",
                   help="afterwards write the float16 weights into mgfr/weights/mini")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars in the build")
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    if not (data / "identities_512").is_dir():
        print(f"error: --data {data} has no identities_512 folder", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    train(data, work, args.quiet)
    if args.ship:
        digest = ship(work)
        print(f"wrote {SHIP_DIR.relative_to(REPO)}; its folder sha256 is {digest} "
              "(pin it as MGFR_MINI_SHA256 in reface_core/asset_registry.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
