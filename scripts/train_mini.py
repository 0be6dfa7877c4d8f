"""Reproduce the shipped ``mini`` MGFR weights with the toolkit's own commands.

    python scripts/train_mini.py --data ../shared/data --work runs/mini \
        --extra-faces runs/extra-faces --fetch-extra-faces                       # train
    python scripts/train_mini.py --data ../shared/data --work runs/mini \
        --extra-faces runs/extra-faces --ship                # + write mgfr/weights/mini

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
6. ``reface_hq build`` of the extra faces (``--extra-faces DIR``: 402 photos of 35 other
   people from three public repositories, listed with their sources and sha256 in
   ``mgfr/configs/mini-extra-faces.csv``; ``--fetch-extra-faces`` downloads them into DIR),
   every face train, and ``combine``: the step-1 build (its split kept) plus those faces.
7. ``mgfr train --stage 2 --config mgfr/configs/mini-stage2-more.yaml --base PRIOR --init
   STAGE2_REFS`` on that combined build: 1,000 more reference-branch steps on 48 people
   instead of 13, which is what makes the references help on ``mgfr-medium`` too.
8. ``--ship``: the prior and both adapter folders, in float16 (half the bytes; the shipped
   files are what every figure in docs/mgfr-training.md was measured on), into
   ``mgfr/weights/mini``; prints the folder digest that ``reface_core/asset_registry.py``
   pins (asset ``mgfr-mini``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "mgfr" / "configs"
SHIP_DIR = REPO / "mgfr" / "weights" / "mini"
#: the extra faces of step 6: file (inside --extra-faces), repository, commit, path, sha256
EXTRA_LIST = CONFIGS / "mini-extra-faces.csv"
#: where --fetch-extra-faces reads a repository's file at a commit
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"


def extra_faces() -> list[dict]:
    with EXTRA_LIST.open(newline="") as f:
        return list(csv.DictReader(f))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_extra_faces(folder: Path) -> list[dict]:
    """The listed extra faces that ``folder`` lacks or holds with other bytes."""
    bad = []
    for row in extra_faces():
        f = folder / row["file"]
        if not f.is_file() or _sha256(f) != row["sha256"]:
            bad.append(row)
    return bad


def fetch_extra_faces(folder: Path, url: str = RAW_URL, timeout: float = 30.0) -> int:
    """Download the listed extra faces that ``folder`` lacks (each checked against its
    sha256, written to a temporary name and renamed); returns how many were fetched."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from tqdm import tqdm

    from reface_core.atomic import write_bytes_atomic
    todo = missing_extra_faces(folder)
    for row in tqdm(todo, desc="extra faces", unit="photo", disable=not todo):
        src = url.format(repository=row["repository"], commit=row["commit"],
                         path=urllib.parse.quote(row["path"]))
        try:
            with urllib.request.urlopen(src, timeout=timeout) as r:
                data = r.read(20_000_000)
        except (urllib.error.URLError, OSError) as e:
            raise SystemExit(f"error: cannot download {row['file']} from {src} "
                             f"({getattr(e, 'reason', e)}); rerun to resume") from None
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise SystemExit(f"error: {src} does not have the listed sha256 of {row['file']} "
                             f"({EXTRA_LIST.name})")
        write_bytes_atomic(folder / row["file"], data)
    return len(todo)


def combine(base: Path, extra: Path, out: Path) -> dict:
    """A Reface-HQ folder holding ``base`` (its split kept) and every face of ``extra`` as
    train, each extra identity named ``extra-<its folder name>``. Refuses when an extra
    person looks like a held-out one (``reface_hq.dataset.leakage`` at the base build's
    merge distance). Written to a temporary folder and renamed; returns the split counts."""
    import pandas as pd

    from reface_core.atomic import atomic_dir
    from reface_hq.dataset import _leak_thresholds, leakage
    a = pd.read_parquet(base / "manifest.parquet")
    b = pd.read_parquet(extra / "manifest.parquet")
    b = b.assign(split="train", identity="extra-" + b["identity_hint"].astype(str))
    both = pd.concat([a, b], ignore_index=True)
    for col in ("face_id", "image_path"):
        dup = both[col][both[col].duplicated()]
        if len(dup):
            raise SystemExit(f"error: {base} and {extra} share {col} {dup.iloc[0]}")
    leaks = leakage(both[["face_id", "embedding", "split", "identity"]].to_dict("records"),
                    **_leak_thresholds(base))
    if leaks:
        raise SystemExit(f"error: an extra person looks like a held-out one: {leaks[0]}")
    with atomic_dir(out) as tmp:
        for src, df in ((base, a), (extra, b)):
            for rel in df["image_path"]:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src / rel, dest)
                except OSError:
                    shutil.copyfile(src / rel, dest)
        both.to_parquet(tmp / "manifest.parquet", index=False)
        counts = {s: {"faces": int((both.split == s).sum()),
                      "identities": int(both[both.split == s].identity.nunique())}
                  for s in ("train", "test")}
        (tmp / "stats.json").write_text(json.dumps(
            {"combined_from": [base.name, extra.name], "splits": counts}, indent=2))
    return counts


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


def train(data: Path, work: Path, extra_dir: Path, quiet: bool) -> None:
    q = ["-q"] if quiet else []
    ds, prior = work / "reface-hq", work / "prior"
    s1, s2, s2r = work / "stage1", work / "stage2", work / "stage2-refs"
    extra_ds, more_ds, s2m = work / "extra-hq", work / "reface-hq-more", work / "stage2-more"
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
    # The extra faces' own quality bars: LFW faces are 100-150 px, so the 512 px aligned
    # face is upsampled (no sharpness or MUSIQ cut; the 64 px training size is what
    # matters) and each labelled person stays one identity (no merging by distance).
    run("reface_hq", "build", "-i", f"folder:{extra_dir}?identity=folder&folder_level=1",
        "-o", str(extra_ds), "--transform-size", "1024", "--test-fraction", "0", "--seed", "0",
        "--captions", "--min-sharpness", "0", "--musiq", "off", "--min-face-size", "64",
        "--merge-distance", "0", *q)
    if not (more_ds / "manifest.parquet").is_file():
        counts = combine(ds, extra_ds, more_ds)
        print(f"  {more_ds}: train {counts['train']}, test {counts['test']}", flush=True)
    if not finished_stage(s2m, CONFIGS / "mini-stage2-more.yaml"):
        run("mgfr", "train", "--stage", "2", "--config", str(CONFIGS / "mini-stage2-more.yaml"),
            "-i", str(more_ds), "--base", str(prior), "--init", str(s2r), "--out", str(s2m),
            "--resume")


def ship(work: Path, dest: Path = SHIP_DIR) -> str:
    """Write the float16 prior and adapters into ``dest`` (atomically); returns the folder
    digest to pin."""
    import pandas as pd
    import torch

    from mgfr.base import load_base
    from mgfr.model import read_adapter, read_adapters_info
    from reface_core.assets import folder_sha256
    from reface_core.atomic import atomic_dir

    prior, ds = work / "prior", work / "reface-hq"
    base = load_base(str(prior))
    with atomic_dir(dest) as tmp:
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
            run_dir = work / ("stage1" if stage == 1 else "stage2-more") / "adapters"
            adapter = read_adapter(run_dir).to(torch.float16)
            out = tmp / f"adapters-stage{stage}"
            adapter.save_pretrained(out, safe_serialization=True)
            meta = read_adapters_info(run_dir)
            meta.update(base="mini", init=None)
            if stage == 2:
                meta.update(init="mini stage 2 (3000 steps of mini-stage2.yaml)",
                            recipe=["mini-stage2.yaml", "mini-stage2-refs.yaml",
                                    "mini-stage2-more.yaml"])
            (out / "mgfr_adapters.json").write_text(json.dumps(meta, indent=2, default=str))
        (tmp / "mgfr_base.json").write_text(json.dumps(info, indent=2))
        # save_pretrained records where each part was read from: keep this machine's paths
        # out of the shipped files (the recipe's own folder names instead).
        for cfg in tmp.glob("*/config.json"):
            conf = json.loads(cfg.read_text())
            if "_name_or_path" in conf:
                src = {"unet": "prior/unet", "vae": "prior/vae", "text_encoder": "prior/text_encoder",
                       "adapters-stage1": "stage1/adapters",
                       "adapters-stage2": "stage2-more/adapters"}.get(cfg.parent.name, "")
                conf["_name_or_path"] = f"runs/mini/{src}" if src else ""
                cfg.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    return folder_sha256(dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                   help="the shared real-photo folder (holds identities_512/)")
    p.add_argument("--work", default="runs/mini", help="folder for the dataset and the runs")
    p.add_argument("--ship", action="store_true",
                   help="afterwards write the float16 weights into mgfr/weights/mini")
    p.add_argument("--extra-faces", required=True, metavar="DIR",
                   help="folder of the extra faces of step 6 (the files of "
                        "mgfr/configs/mini-extra-faces.csv, checked by sha256)")
    p.add_argument("--fetch-extra-faces", action="store_true",
                   help="download the listed extra faces that DIR lacks from GitHub first")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars in the build")
    args = p.parse_args(argv)
    data, work, extra_dir = Path(args.data), Path(args.work), Path(args.extra_faces)
    if not (data / "identities_512").is_dir():
        print(f"error: --data {data} has no identities_512 folder", file=sys.stderr)
        return 2
    if args.fetch_extra_faces:
        fetch_extra_faces(extra_dir)
    missing = missing_extra_faces(extra_dir)
    if missing:
        first = missing[0]
        print(f"error: --extra-faces {extra_dir} lacks {len(missing)} of the "
              f"{len(extra_faces())} listed photos (or holds other bytes), e.g. {first['file']} "
              f"= {first['repository']}@{first['commit'][:7]}:{first['path']}; add "
              "--fetch-extra-faces to download them", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    train(data, work, extra_dir, args.quiet)
    if args.ship:
        digest = ship(work)
        print(f"wrote {SHIP_DIR.relative_to(REPO)}; its folder sha256 is {digest} "
              "(pin it as MGFR_MINI_SHA256 in reface_core/asset_registry.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
