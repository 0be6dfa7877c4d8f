"""``python -m mgfr restore``: restore photos (or aligned faces) into a folder, resumably.

Every input gets one row in ``OUT/results.jsonl`` (``input``, ``output``, ``status``
``done``/``failed``, ``error``, ``faces``, ``seconds``) and, when done, ``OUT/<stem>.png``
(written under a temporary name, then renamed). ``OUT/run.json`` records the settings
(``MGFRPipeline.config_for_record``); a rerun with the same settings skips the inputs that
have a row (``--retry-failed`` redoes the failed ones), so a killed run resumes without
duplicating or losing rows; a rerun with other settings is refused unless ``--overwrite``,
which starts over. Each input's seed is
``--seed`` itself (a fresh generator per input), so a resumed run writes what an
uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from reface_core.argtypes import at_least, seed, torch_device
from reface_core.cli import add_input, add_out, add_quiet, add_resume_flags

RESULTS = "results.jsonl"
RUN_FILE = "run.json"


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "restore", help="restore photos or aligned faces with references and prompts",
        description="Restore every face of each input photo (or each aligned face with "
                    "--aligned) with MGFR, guided by reference photos of the same person. "
                    "A status row per input goes to OUT/results.jsonl; reruns resume.")
    add_input(p, "a photo or a folder of photos")
    p.add_argument("--refs", nargs="*", default=[],
                   help="reference photos of the same person, or a folder of them")
    add_out(p, "output folder", required=True)
    p.add_argument("--aligned", action="store_true",
                   help="inputs and references are FFHQ-aligned face crops (no detection)")
    p.add_argument("--prompt", default=None,
                   help="positive attribute prompt (default: built from the references)")
    p.add_argument("--negative-attribute-prompt", default=None)
    p.add_argument("--negative-quality-prompt", default=None)
    p.add_argument("--lambda-na", type=at_least(0.0, float), default=None,
                   help="weight of the negative-attribute prompt (0 turns it off; default: "
                        "the preset's, 1.0 for sd21-base, 0 for mini)")
    p.add_argument("--lambda-nq", type=at_least(0.0, float), default=None,
                   help="weight of the negative-quality prompt (0 turns it off; default: the "
                        "preset's, 1.0 for sd21-base, 0.5 for mini)")
    p.add_argument("--guidance", type=at_least(0.0, float), default=None,
                   help="classifier-free guidance scale (default: the preset's, 4.0 for "
                        "sd21-base, 1.0 for mini)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="denoising steps of the whole schedule (default: the preset's, 30 "
                        "for sd21-base, 20 for mini); with --strength < 1 only that share runs")
    p.add_argument("--strength", type=_strength, default=None,
                   help="start from the LQ face's latent noised to this share of the schedule "
                        "(SDEdit; 1 = pure noise; default: the preset's, 0.3 for mini, 1.0 "
                        "for sd21-base)")
    p.add_argument("--rca-scale", type=at_least(0.0, float), default=None,
                   help="multiply the reference branch's residuals into the UNet (0 ignores "
                        "the references; default 1; docs/mgfr-training.md measures 2 and 3)")
    p.add_argument("--one-step", action="store_true",
                   help="return the model's deterministic one-step clean estimate from the "
                        "--strength start instead of sampling (for fidelity scores)")
    p.add_argument("--scheduler", default="ddim", help="ddim, dpm++, euler, unipc, ...")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--upscale", type=at_least(1.0, float), default=1.0,
                   help="upsample the photo by this factor before pasting faces back")
    p.add_argument("--adapters", default=None,
                   help="adapter folder (RUN_DIR/adapters written by `mgfr train`)")
    p.add_argument("--base", default=None,
                   help="mini, sd21-base, sd21, sd15, tiny, a base folder, any diffusers "
                        "Stable Diffusion folder (or its Hugging Face cache folder "
                        "models--org--name), or a saved MGFRPipeline folder (default: the one "
                        "the adapters name, else the shipped mini model with its stage-2 "
                        "adapters)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read a base folder's pickled .bin weights (torch's restricted "
                        "unpickler; the default reads safetensors only)")
    p.add_argument("--device", default="cpu", type=torch_device,
                   help="torch device (checked before any model is loaded)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--detector", default="dlib-hog", help="faces detector for photos")
    add_resume_flags(p, overwrite_help="start over, redoing every input (also when OUT "
                                       "holds results of other settings)",
                     retry_help="on resume, redo the inputs whose row says failed (default: "
                                "keep their row)")
    add_quiet(p, dest="no_progress", help="no progress bar")
    from reface_core.lock import add_wait_lock_argument
    add_wait_lock_argument(p)
    from .video import add_video_arguments
    add_video_arguments(p)
    p.set_defaults(func=_locked_restore)


def _strength(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def _locked_restore(args: argparse.Namespace) -> int:
    from reface_core.lock import lock_for
    with lock_for(args, args.out):
        from reface_core.video import is_video_path
        if is_video_path(args.input):
            from .video import run_video_restore
            return run_video_restore(args)
        return run_restore(args)


def _files(spec: list[str] | str, what: str) -> list[Path]:
    from reface_core.imageio import iter_image_files

    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list(iter_image_files(p))
            if not found:
                raise ValueError(f"{what} folder {p} holds no images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{what} {p} does not exist")
    return out


def _read_rows(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill; its input is redone
        if isinstance(row, dict) and "input" in row:
            rows[row["input"]] = row  # the last row of an input wins
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    from reface_core.atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _append_row(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _output_name(path: Path, root: Path | None, used: set[str]) -> str:
    from reface_core.fsnames import name_id

    rel = path.relative_to(root) if root is not None else Path(path.name)
    stem = name_id("__".join(rel.with_suffix("").parts))  # bytes not UTF-8 as %XX
    name = f"{stem}.png"
    if name in used:  # a.jpg and a.png in one folder get their own outputs
        name = f"{stem}.{name_id(path.suffix.lstrip('.').lower())}.png"
    used.add(name)
    return name


def run_restore(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from reface_core.atomic import atomic_path, safe_child, write_json_atomic
    from reface_core.imageio import load_image, save_image

    from .pipeline import load_pipeline

    out = Path(args.out)
    # An output folder inside the input folder: its own outputs are not new inputs.
    inputs = [p for p in _files(args.input, "input")
              if not p.resolve().is_relative_to(out.resolve())]
    if not inputs:
        raise ValueError(f"input {args.input}: no images outside the output folder {out}")
    in_root = Path(args.input) if Path(args.input).is_dir() else None
    ref_files = _files(args.refs, "reference") if args.refs else []
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")

    if args.allow_pickle:  # read by mgfr.base.allow_pickled_bases
        os.environ["MGFR_ALLOW_PICKLE"] = "1"
    pipe = load_pipeline(base=args.base, adapters=args.adapters, device=args.device,
                         dtype=args.dtype, scheduler=args.scheduler)
    options = dict(guidance_scale=args.guidance, lambda_na=args.lambda_na,
                   lambda_nq=args.lambda_nq, num_inference_steps=args.steps,
                   strength=args.strength, one_step=True if args.one_step else None,
                   rca_scale=args.rca_scale,
                   prompt=args.prompt, negative_attribute_prompt=args.negative_attribute_prompt,
                   negative_quality_prompt=args.negative_quality_prompt)
    record = pipe.config_for_record(seed=args.seed, **options)
    record.update(aligned=bool(args.aligned), upscale=args.upscale, detector=args.detector,
                  references=[str(p) for p in ref_files])

    # References once for every input: loaded, checked, aligned (a face-less one stops here).
    refs = []
    for p in ref_files:
        img = load_image(p)
        refs.append(img)
    if refs and args.aligned:
        from .pipeline import check_face

        refs = [check_face(r, str(p)) for r, p in zip(refs, ref_files, strict=False)]
    elif refs:
        refs = pipe.align_references(refs, [str(p) for p in ref_files], args.detector)

    out.mkdir(parents=True, exist_ok=True)
    run_file, results = out / RUN_FILE, out / RESULTS
    if run_file.is_file() and not args.overwrite:
        old = json.loads(run_file.read_text())
        diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        if diff:
            raise ValueError(f"{out} holds results of other settings (they differ in "
                             f"{', '.join(diff)}); use another --out or --overwrite")
    if args.overwrite and results.exists():
        results.unlink()
    write_json_atomic(run_file, record)

    used: set[str] = set()
    names = {str(p): _output_name(p, in_root, used) for p in inputs}
    rows = _read_rows(results)
    # Compact first: one row per input, so a kill during this run leaves no duplicates of
    # earlier rows behind.
    _write_rows(results, [rows[str(p)] for p in inputs if str(p) in rows])
    def finished(p: Path) -> bool:
        row = rows.get(str(p), {})
        if row.get("status") == "done":
            return safe_child(out, names[str(p)]).is_file()
        return row.get("status") == "failed" and not args.retry_failed
    todo = [p for p in inputs if not finished(p)]
    skipped = len(inputs) - len(todo)
    bar = tqdm(todo, desc="restore", unit="img", disable=args.no_progress, file=sys.stderr)
    for p in bar:
        key = str(p)
        row = {"input": key, "output": None, "status": "failed", "error": None, "faces": 0,
               "seconds": None}
        t0 = time.perf_counter()
        try:
            dest = safe_child(out, names[key])
            img = load_image(p)
            gen = torch.Generator().manual_seed(int(args.seed))
            if args.aligned:
                from .pipeline import check_face

                res = pipe(check_face(img, key), references=[refs] if refs else None,
                           generator=gen, **options)
                result, n_faces = res.images[0], 1
            else:
                res = pipe.restore_photo(img, references=refs or None, upscale=args.upscale,
                                         detector=args.detector, aligned_references=True,
                                         name=key, generator=gen, **options)
                result, n_faces = res.image, len(res.faces)
            with atomic_path(dest) as tmp:
                save_image(tmp, np.ascontiguousarray(result))
            row.update(output=dest.name, status="done", faces=n_faces)
        except (ValueError, OSError, RuntimeError) as e:
            row["error"] = _one_line(e)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        _append_row(results, row)
        rows[key] = row
    _write_rows(results, [rows[str(p)] for p in inputs if str(p) in rows])
    failed = [rows[str(p)] for p in inputs if rows.get(str(p), {}).get("status") != "done"]
    done = len(inputs) - len(failed)
    print(f"restored {done}/{len(inputs)} inputs into {out} ({skipped} already done or "
          f"failed before, {len(failed)} failed)", file=sys.stderr)
    for r in failed:
        print(f"failed: {r['input']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
