"""Command line of ``faces`` (``python -m faces`` / ``reface-faces``).

Every command takes image files and/or folders (searched recursively) and an output
folder. Each input gets one JSON record ``<out>/<relative path>.json`` written atomically
and last, so a killed run resumes where it stopped (``--overwrite`` redoes everything);
a failed input gets a record with ``status: "failed"`` and the error instead of stopping
the run. At the end all records are gathered into ``<out>/<command>.jsonl`` (and
``embeddings.npz`` for ``embed``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from reface_core.argtypes import at_least, between, finite_float
from reface_core.assets_cli import add_subcommands as add_asset_commands
from reface_core.cli import add_quiet, exit_with, run_main

IMAGE_HELP = "image files or folders (folders are searched recursively)"


class InputError(ValueError):
    """A command-line input or output path is unusable; the message names it."""


def _inputs(paths: list[str], out: Path) -> list[tuple[Path, str]]:
    """(file, name relative to its argument) for every image named or found in a folder.

    Files under the output folder are left out, so ``-o`` inside an input folder does not
    make a rerun process the run's own outputs. Two inputs with the same relative name
    would share one record (the second silently taking the first's result): refused.
    """
    from reface_core.imageio import iter_image_files

    out = out.resolve()
    items: list[tuple[Path, str]] = []
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise InputError(f"input {arg}: no such file or folder")
        if p.is_dir():
            if p.resolve() == out:
                raise InputError(f"input folder {arg} is also the output folder; write the "
                                 "outputs elsewhere (a subfolder is fine)")
            items += [(f, f.relative_to(p).as_posix()) for f in iter_image_files(p)]
        else:
            # An unreadable file still gets a record (status "failed").
            items.append((p, p.name))
    items = [(f, rel) for f, rel in items if out not in f.resolve().parents]
    seen: dict[str, Path] = {}
    for f, rel in items:
        if rel in seen and seen[rel].resolve() != f.resolve():
            raise InputError(f"inputs {seen[rel]} and {f} both map to the output name {rel!r}; "
                             "pass their common parent folder instead, or run them separately")
        seen.setdefault(rel, f)
    # The same file named twice is done once.
    return list({rel: (f, rel) for f, rel in items}.values())


# A full disk or quota, a read-only file system: the output folder itself is unusable.
_OUTPUT_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _out_folder(arg: str) -> Path:
    out = Path(arg)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {arg}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"output folder {arg}: cannot create it ({e.strerror})") from None
    return out


def _settings(**parts) -> dict:
    """Everything that changes a record, in JSON form (so a reloaded record compares equal)."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def _run(args, work: Callable[[Path, str], dict], *, command: str, settings: dict,
         items: list[tuple[Path, str]] | None = None) -> int:
    """Apply ``work`` to every input with resume, status records and a progress bar.

    A record counts as done only when it was made with the same ``settings``: rerunning
    into the same folder with another detector, embedder or size redoes the inputs instead
    of mixing results of two settings.
    """
    from tqdm.auto import tqdm

    from reface_core.assets import AssetNotFoundError
    from reface_core.atomic import safe_child, write_json_atomic, write_text_atomic
    from reface_core.imageio import ImageLoadError

    from .detection import ModelLoadError

    out = _out_folder(args.out)
    if items is None:
        items = _inputs(args.inputs, out)
    if not items:
        print(f"error: no images found in {args.inputs}", file=sys.stderr)
        return 2
    records, done = [], 0
    for src, rel in tqdm(items, desc=command, unit="img", disable=args.quiet):
        try:
            record_path = safe_child(out, rel + ".json")
        except ValueError as e:
            print(f"skipping {src}: {e}", file=sys.stderr)
            continue
        if record_path.exists() and not args.overwrite:
            try:
                old = json.loads(record_path.read_text())
            except ValueError:
                old = None  # unreadable record: redo it
            if (isinstance(old, dict) and old.get("settings") == settings
                    and not (args.retry_failed and old.get("status") != "ok")):
                records.append(old)
                done += 1
                continue
        record = {"input": str(src), "name": rel, "settings": settings}
        try:
            record.update(work(src, rel))
            record["status"] = "ok"
        except (AssetNotFoundError, ModelLoadError):
            raise  # a missing or broken model fails every input: stop and say why
        except OSError as e:
            if e.errno in _OUTPUT_FULL:
                raise  # every further input would fail the same way: stop and say why
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        except (ImageLoadError, ValueError) as e:
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        write_json_atomic(record_path, record)
        records.append(record)
    write_text_atomic(out / f"{command}.jsonl",
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    n_faces = sum(len(r.get("faces", [])) for r in records)
    failed = sum(r.get("status") != "ok" for r in records)
    print(f"{command}: {len(records)} images ({done} already done), {n_faces} faces, "
          f"{failed} failed -> {out / (command + '.jsonl')}")
    return 0 if failed == 0 else 1  # the grammar's exit codes: 1 when some rows failed


def _detection_settings(args, det) -> dict:
    return {"detector": det.config, "model_path": args.model_path, "min_score": args.min_score,
            "min_size": args.min_size}


def _detector(args):
    from .detection import get_detector

    opts = {}
    if args.max_side is not None:
        opts["max_side"] = None if args.max_side <= 0 else args.max_side
    if args.upsample is not None:
        opts["upsample"] = args.upsample
    if args.model_path:
        opts["model_path"] = args.model_path
    return get_detector(args.detector, **opts)


def _faces_of(args, det, src) -> tuple[object, list]:
    """Load ``src`` and return (image, aligned faces) for align/embed/attributes."""
    from reface_core.imageio import load_image

    from . import AlignedFace, detect_and_align

    image = load_image(src)
    if getattr(args, "aligned", False):
        return image, [AlignedFace(image=image, detection=None)]
    return image, detect_and_align(image, detector=det, output_size=args.size,
                                   min_score=args.min_score, min_size=args.min_size)


def cmd_detect(args) -> int:
    from reface_core.imageio import load_image

    det = _detector(args)

    def work(src, rel):
        image = load_image(src)
        found = det.detect(image, min_score=args.min_score, min_size=args.min_size)
        return {"width": image.shape[1], "height": image.shape[0], "detector": det.config,
                "faces": [d.to_dict() for d in found]}

    return _run(args, work, command="detect", settings=_settings(**_detection_settings(args, det)))


def _previous_crops(out: Path, rel: str) -> set[str]:
    """Crop files the existing record of input ``rel`` lists (none if no readable record)."""
    from reface_core.atomic import safe_child

    try:
        old = json.loads(safe_child(out, rel + ".json").read_text())
        return {str(f["file"]) for f in old.get("faces", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()


def cmd_align(args) -> int:
    from collections import Counter

    from reface_core.atomic import safe_child
    from reface_core.imageio import save_image

    det = _detector(args)
    out = _out_folder(args.out)
    items = _inputs(args.inputs, out)
    # Crops are named after the input without its suffix; inputs that differ only in the
    # suffix (a.jpg, a.png) keep it, so their crops do not overwrite each other.
    stems = Counter(rel.rsplit(".", 1)[0] for _, rel in items)

    def work(src, rel):
        _, crops = _faces_of(args, det, src)
        stem = rel.rsplit(".", 1)[0]
        stem = stem if stems[stem] == 1 else rel
        faces = []
        for k, c in enumerate(crops):
            name = f"{stem}_{k:02d}.{args.format}"
            save_image(safe_child(out, name), c.image)
            faces.append({"file": name, **c.detection.to_dict(),
                          "matrix": c.matrix.round(6).tolist()})
        # Crops an earlier run (other settings, --overwrite) made for this input and this
        # run did not: removed, so the folder holds exactly the crops the records list.
        for name in _previous_crops(out, rel) - {f["file"] for f in faces}:
            safe_child(out, name).unlink(missing_ok=True)
        return {"size": args.size, "faces": faces}

    return _run(args, work, command="align", items=items, settings=_settings(
        **_detection_settings(args, det), size=args.size, format=args.format))


#: Mean landmark distance to the FFHQ template, in inter-ocular distances, above which an
#: input of ``embed --aligned`` is not an aligned crop. Measured with dlib-hog at 256 px:
#: FFHQ/CelebA-HQ aligned crops 0.03-0.14, centre squares of unaligned photos 0.38-2.2.
MAX_ALIGNMENT_ERROR = 0.25


@functools.lru_cache(maxsize=1)
def _check_detector():
    from .detection import get_detector
    return get_detector("dlib-hog", upsample=0)


def alignment_error(image) -> float | None:
    """Mean distance of the 5 detected landmarks from the FFHQ template of a square crop,
    in inter-ocular distances of the template (None: no face found)."""
    import cv2
    import numpy as np

    from .alignment import ffhq_template
    side = 256
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    found = _check_detector().detect(small)
    if not found:
        return None
    best = max(found, key=lambda d: d.size)
    tpl = ffhq_template(side).astype(np.float64)
    lm = np.asarray(best.landmarks5, dtype=np.float64)
    return float(np.linalg.norm(lm - tpl, axis=1).mean() / np.linalg.norm(tpl[1] - tpl[0]))


def _check_aligned(args, image, rel: str) -> float | None:
    """Landmark agreement of an ``--aligned`` input; warns on stderr or raises per input."""
    mode = getattr(args, "aligned_check", "off")
    if not getattr(args, "aligned", False) or mode == "off":
        return None
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        return None  # the embedder refuses non-square inputs with its own message
    err = alignment_error(image)
    if err is not None and err <= MAX_ALIGNMENT_ERROR:
        return err
    why = ("no face found where an FFHQ-aligned crop has one" if err is None else
           f"landmarks {err:.2f} inter-ocular distances from the FFHQ template "
           f"(aligned crops: <= {MAX_ALIGNMENT_ERROR})")
    if mode == "refuse":
        raise ValueError(f"not an FFHQ-aligned crop: {why} (drop --aligned to detect and align)")
    print(f"warning: {rel}: may not be an FFHQ-aligned crop: {why}", file=sys.stderr)
    return err


def cmd_embed(args) -> int:
    import numpy as np

    from reface_core.atomic import atomic_path

    from .embedding import get_embedder

    det = None if args.aligned else _detector(args)
    opts = {"model_path": args.embedder_path} if args.embedder_path else {}
    emb = get_embedder(args.embedder, **opts)

    def work(src, rel):
        image, crops = _faces_of(args, det, src)
        check = _check_aligned(args, image, rel)
        vecs = emb.embed([c.image for c in crops]) if crops else np.zeros((0, 1))
        return {"embedder": emb.name, **({} if check is None else {"alignment_error":
                                                                   round(check, 4)}), "faces": [
            {"embedding": v.round(7).tolist(),
             **({} if c.detection is None else {"box": c.detection.box.tolist()})}
            for c, v in zip(crops, vecs, strict=False)]}

    rc = _run(args, work, command="embed", settings=_settings(
        embedder=emb.name, embedder_config=emb.config, embedder_path=args.embedder_path,
        aligned=args.aligned, size=args.size,
        **({"aligned_check": args.aligned_check} if args.aligned else {}),
        **({} if det is None else _detection_settings(args, det))))
    if rc == 2:
        return rc
    # Gather every vector into one array file next to the records.
    names, faces_idx, vectors = [], [], []
    for line in (Path(args.out) / "embed.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("status") != "ok" or r.get("embedder") != emb.name:
            continue
        for k, f in enumerate(r["faces"]):
            names.append(r["name"])
            faces_idx.append(k)
            vectors.append(f["embedding"])
    if vectors:
        array = np.array(vectors, dtype=np.float32)
    else:  # no face at all: an empty (0, dim) array, not a reshape error
        dim = emb.dim if isinstance(type(emb).__dict__.get("dim"), int) else 0
        array = np.zeros((0, dim), dtype=np.float32)
    with atomic_path(Path(args.out) / "embeddings.npz") as tmp:
        np.savez(tmp, names=np.array(names, dtype=str), face=np.array(faces_idx, dtype=np.int64),
                 vectors=array,
                 embedder=np.array(emb.name))
    return rc


def cmd_attributes(args) -> int:
    from .attributes import get_attribute_predictor

    det = None if args.aligned else _detector(args)
    pred = get_attribute_predictor(args.predictor)

    def work(src, rel):
        _, crops = _faces_of(args, det, src)
        attrs = pred.predict([c.image for c in crops])
        return {"predictor": pred.name, "faces": [
            {**a.to_dict(), **({} if c.detection is None else {"box": c.detection.box.tolist()})}
            for c, a in zip(crops, attrs, strict=False)]}

    return _run(args, work, command="attributes", settings=_settings(
        predictor=pred.name, predictor_config=getattr(pred, "config", {}), aligned=args.aligned,
        size=args.size, **({} if det is None else _detection_settings(args, det))))


def _common(p: argparse.ArgumentParser, *, detection: bool = True, align: bool = False,
            aligned_flag: bool = False) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=IMAGE_HELP)
    p.add_argument("-o", "--out", required=True, help="output folder (created; resumable)")
    if aligned_flag:
        p.add_argument("--aligned", action="store_true",
                       help="inputs are already FFHQ-aligned square crops: skip detection")
    if detection:
        from .detection import DETECTORS

        p.add_argument("--detector", default="dlib-hog", type=DETECTORS.argtype(),
                       help="face detector (default: dlib-hog; retinaface/scrfd need weights)")
        p.add_argument("--model-path", help="detector weights file (else the asset resolver)")
        p.add_argument("--min-score", type=finite_float, default=None,
                       help="confidence threshold (default: the detector's own)")
        p.add_argument("--min-size", type=at_least(0, float), default=0, help="drop faces smaller than this (px)")
        p.add_argument("--max-side", type=between(0, 65536), default=None,
                       help="downscale larger images to this side before detecting (0: never)")
        p.add_argument("--upsample", type=between(0, 4), default=None,
                       help="dlib detectors: pyramid upsampling steps (finds smaller faces)")
    if align or aligned_flag:
        p.add_argument("--size", type=between(8, 2048), default=512, help="FFHQ-aligned crop size (default 512)")
    p.add_argument("--overwrite", action="store_true", help="redo inputs that already have a record")
    p.add_argument("--retry-failed", action="store_true",
                   help="redo inputs whose record says failed (e.g. a file fixed since)")
    add_quiet(p, help="no progress bar")
    from reface_core.lock import add_wait_lock_argument
    add_wait_lock_argument(p)


def _holding_out_lock(func):
    """Run a command holding the lock of its output folder for the whole run."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from reface_core.lock import lock_for
        with lock_for(args, _out_folder(args.out)):
            return func(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m faces",
        description="Face detection, landmarks, FFHQ alignment, identity embeddings and attributes.",
        epilog="Outputs: one JSON record per input in the output folder (resume: rerun the same "
               "command), gathered into <out>/<command>.jsonl at the end.")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("detect", help="detect faces: boxes, scores, 5/68-point landmarks",
                       description="Detect faces and write boxes, confidences and landmarks.")
    _common(p)
    p.set_defaults(func=_holding_out_lock(cmd_detect))

    p = sub.add_parser("align", help="detect and write FFHQ-aligned face crops",
                       description="Detect faces and write FFHQ-aligned crops "
                                   "(<name>_<k>.png) plus landmarks and the image->crop matrix.")
    _common(p, align=True)
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"], help="crop file format")
    p.set_defaults(func=_holding_out_lock(cmd_align))

    p = sub.add_parser("embed", help="identity embeddings of faces",
                       description="Identity embeddings (L2-normalised) of every face; also "
                                   "<out>/embeddings.npz (names, face, vectors, embedder).")
    _common(p, aligned_flag=True)
    from .embedding import EMBEDDERS
    p.add_argument("--embedder", default="dlib", type=EMBEDDERS.argtype(),
                   help="embedder (default dlib; arcface-* need an insightface pack)")
    p.add_argument("--embedder-path", help="embedder weights file (else the asset resolver)")
    p.add_argument("--aligned-check", choices=("warn", "refuse", "off"), default="warn",
                   help="with --aligned: compare each input's landmarks (dlib-hog) with the "
                        "FFHQ template; warn (default) or refuse (a failed record) when they "
                        "disagree, e.g. an unaligned square photo")
    p.set_defaults(func=_holding_out_lock(cmd_embed))

    p = sub.add_parser("attributes", help="age and gender of faces",
                       description="Age (years) and gender (with its probability) of every face.")
    _common(p, aligned_flag=True)
    p.add_argument("--predictor", default="age-gender-onnx", help="attribute predictor")
    p.set_defaults(func=_holding_out_lock(cmd_attributes))

    add_asset_commands(sub, package="faces")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Bad options, missing assets, a full disk and Ctrl-C end in one line with the shared
    # exit codes.
    return run_main(build_parser, argv)


if __name__ == "__main__":
    exit_with(main)
