"""Command line of ``captioning`` (``python -m captioning``).

    python -m captioning annotate -i DIR/manifest.parquet --backend offline,labels
    python -m captioning caption photo.jpg other.png
    python -m captioning prompt gender=female age=27 smiling=yes eyeglasses=no
    python -m captioning vocabulary --celeba
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reface_core.argtypes import at_least, between
from reface_core.assets_cli import add_subcommands as add_asset_commands
from reface_core.cli import add_input, add_quiet, exit_with, run_main

from .attribute_values import DEFAULT_PRECEDENCE

_EPILOG = ("Backends: offline (age, gender, grayscale, head pose; no download), vlm (BLIP "
           "captions and VQA; needs the blip-vqa-base / blip-caption-base weights), blip2 "
           "(the same with BLIP-2; needs blip2-opt-2.7b), labels "
           "(CelebA attribute file or manifest columns). Precedence per attribute, first "
           f"wins: {' > '.join(DEFAULT_PRECEDENCE)}.")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _add_backend_options(p: argparse.ArgumentParser, default_backends: str) -> None:
    g = p.add_argument_group("backends")
    g.add_argument("--backend", "--backends", dest="backends", default=default_backends,
                   help=f"comma-separated backends: offline, vlm, blip2, labels "
                        f"(default: {default_backends})")
    g.add_argument("--precedence", default=",".join(DEFAULT_PRECEDENCE),
                   help="backend order per attribute, most trusted first (default: %(default)s)")
    g.add_argument("--detector", default="dlib-hog",
                   help="faces detector for landmarks and for photos that are not aligned "
                        "crops (default: %(default)s)")
    g.add_argument("--detector-max-side", type=between(0, 65536), default=None, metavar="PX",
                   help="downscale photos to this longer side for detection (faster; the "
                        "detector's default when unset)")
    g.add_argument("--alignment", choices=("similarity", "ffhq"), default="similarity",
                   help="crop photos that are not aligned yet with a similarity warp onto the "
                        "FFHQ template (fast, default) or the full FFHQ recipe")
    g.add_argument("--celeba-attributes", type=Path, default=None, metavar="FILE",
                   help="labels: a CelebA-format attribute file (list_attr_celeba.txt)")
    g.add_argument("--label-columns", type=_csv, default=[], metavar="COL,...",
                   help="labels: manifest columns holding labels: a column named after a vocabulary "
                        "attribute, COLUMN=ATTRIBUTE for one named otherwise, or "
                        "a column of JSON objects of vocabulary/CelebA names")
    g.add_argument("--vqa-model", default=None, metavar="DIR",
                   help="vlm: BLIP VQA checkpoint folder (default: asset blip-vqa-base)")
    g.add_argument("--caption-model", default=None, metavar="DIR",
                   help="vlm: BLIP captioning checkpoint folder (default: asset blip-caption-base)")
    g.add_argument("--blip2-model", default=None, metavar="DIR",
                   help="blip2: BLIP-2 checkpoint folder (default: asset blip2-opt-2.7b)")
    g.add_argument("--no-vlm-caption", action="store_true",
                   help="vlm: answer questions only, no BLIP caption")
    g.add_argument("--vlm-attributes", type=_csv, default=None, metavar="NAME,...",
                   help="vlm: attributes to ask about (default: the paper's set)")
    g.add_argument("--vqa-mode", choices=("rank", "generate"), default="rank",
                   help="vlm: rank candidate answers (confidences) or parse free answers")
    g.add_argument("--device", default="auto", help="vlm: auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--vlm-batch-size", type=between(1, 1024), default=8, help="vlm: images per forward pass")


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompts")
    g.add_argument("--tokenizer", default="auto",
                   help="token counting: auto (CLIP if installed), clip, words, or a Hugging "
                        "Face tokenizer folder (default: %(default)s)")
    g.add_argument("--max-tokens", type=between(1, 4096), default=77,
                   help="token budget per prompt, markers included (default: %(default)s)")
    g.add_argument("--min-confidence", type=between(0.0, 1.0, float), default=0.6,
                   help="attributes below this confidence stay out of prompts (default: %(default)s)")
    g.add_argument("--exclude", type=_csv, default=[], metavar="NAME,...",
                   help="attributes never put in prompts")
    g.add_argument("--phrase", action="append", default=[], metavar="KEY=TEXT",
                   help="override a phrase: eyeglasses=glasses or gender=female=lady (repeatable)")
    g.add_argument("--prefix", default="a photo of", help="positive prompt start (default: %(default)r)")
    g.add_argument("--extra-positive", default="", help="text appended to every positive prompt")
    g.add_argument("--negative-quality", type=_csv, default=None, metavar="TERM,...",
                   help="replace the negative-quality terms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captioning",
        description="Facial attribute extraction and attribute / negative prompts.",
        epilog=_EPILOG)
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("annotate", help="add attribute, caption and prompt columns to a manifest",
                       description="Add attributes, caption, prompt, negative_attribute_prompt "
                                   "and negative_quality_prompt columns to a Reface-HQ manifest "
                                   "(Parquet, CSV or JSONL). Resumable: rerun the same command "
                                   "after a kill and it continues where it stopped.",
                       epilog=_EPILOG)
    add_input(p, "manifest file; image_path is read relative to its folder", dest="manifest",
              type=Path, metavar="PATH", deprecated=("--manifest",))
    p.add_argument("--images-root", type=Path, default=None, metavar="DIR",
                   help="read image_path relative to DIR instead (paths must stay inside it)")
    p.add_argument("--batch-size", type=between(1, 4096), default=16, help="faces per batch (default: %(default)s)")
    p.add_argument("--limit", type=at_least(1), default=None, metavar="N",
                   help="stop after N faces (rest on the next run)")
    p.add_argument("--overwrite", action="store_true", help="redo faces annotated before")
    p.add_argument("--retry-failed", action="store_true", help="redo faces whose annotation failed")
    p.add_argument("--restart", action="store_true",
                   help="discard the progress of an interrupted run with other settings")
    p.add_argument("--not-aligned", action="store_true",
                   help="images are whole photos: detect and align the largest face first")
    add_quiet(p, help="no progress bar")
    _add_backend_options(p, "offline")
    _add_prompt_options(p)
    from reface_core.lock import add_wait_lock_argument
    add_wait_lock_argument(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("caption", help="caption and describe image files",
                       description="Detect and align the largest face of each image, extract "
                                   "attributes and print caption and prompts.",
                       epilog=_EPILOG)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--aligned", action="store_true", help="images already are FFHQ-aligned crops")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    _add_backend_options(p, "offline")
    _add_prompt_options(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("prompt", help="print the three prompts for given attributes",
                       description="Build positive, negative-attribute and negative-quality "
                                   "prompts from NAME=VALUE pairs and/or a JSON object.")
    p.add_argument("pairs", nargs="*", metavar="NAME=VALUE",
                   help="e.g. gender=female age=27 smiling=yes eyeglasses=no hair_color=blond")
    p.add_argument("--attributes", default=None, metavar="JSON",
                   help="attributes JSON (the manifest's form or {name: value}); @FILE reads a file")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    _add_prompt_options(p)
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("vocabulary", help="list the attribute vocabulary",
                       description="List the attributes, their kinds, phrases and questions.")
    p.add_argument("--celeba", action="store_true", help="show the CelebA-40 mapping instead")
    p.set_defaults(func=cmd_vocabulary)

    add_asset_commands(sub, package="captioning")
    return parser


# --- building parts from arguments ---------------------------------------------------------
def _prompt_builder(args):
    from .prompts import DEFAULT_NEGATIVE_QUALITY, PromptBuilder
    phrases = {}
    for item in args.phrase:
        key, sep, text = item.rpartition("=")
        if not sep or not key:
            raise ValueError(f"--phrase {item!r}: write KEY=TEXT, e.g. eyeglasses=glasses")
        phrases[key] = text
    tokenizer = args.tokenizer
    if tokenizer not in ("auto", "clip", "words") and Path(tokenizer).is_dir():
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except Exception as e:  # transformers raises many types, with multi-line messages
            reason = " ".join(str(e).split())[:200]
            raise ValueError(f"--tokenizer {tokenizer}: not a loadable Hugging Face tokenizer "
                             f"folder ({type(e).__name__}: {reason})") from None
    elif tokenizer not in ("auto", "clip", "words"):
        raise ValueError(f"--tokenizer {tokenizer!r}: not auto, clip, words or a folder")
    return PromptBuilder(tokenizer=tokenizer, max_tokens=args.max_tokens,
                         min_confidence=args.min_confidence, exclude=args.exclude,
                         phrases=phrases, prefix=args.prefix, extra_positive=args.extra_positive,
                         negative_quality=(args.negative_quality if args.negative_quality is not None
                                           else DEFAULT_NEGATIVE_QUALITY))


def _captioner(args):
    from .pipeline import build_captioner
    backends = _csv(args.backends)
    if not backends:
        raise ValueError("--backend: name at least one backend")
    options: dict[str, dict] = {}
    detector_options = ({"max_side": args.detector_max_side}
                        if args.detector_max_side is not None else {})
    if "offline" in backends:
        options["offline"] = {"detector": args.detector}
    if "labels" in backends:
        options["labels"] = {"celeba_file": args.celeba_attributes, "columns": args.label_columns}
    for family in ("vlm", "blip2"):
        if family not in backends:
            continue
        vlm = {"caption": not args.no_vlm_caption, "mode": args.vqa_mode,
               "device": args.device, "batch_size": args.vlm_batch_size}
        if family == "vlm":
            vlm.update(vqa_model=args.vqa_model, caption_model=args.caption_model)
        else:
            vlm.update(model=args.blip2_model)
        if args.vlm_attributes is not None:
            vlm["attributes"] = args.vlm_attributes
            vlm["vqa"] = bool(args.vlm_attributes)
        options[family] = vlm
    return build_captioner(backends, prompt_builder=_prompt_builder(args),
                           precedence=_csv(args.precedence), detector=args.detector,
                           detector_options=detector_options, alignment=args.alignment,
                           options=options)


# --- commands ------------------------------------------------------------------------------
def cmd_annotate(args) -> int:
    import contextlib

    from reface_core.lock import lock_for

    from .manifest import annotate_manifest
    # The manifest is rewritten in place: its folder is the output folder to hold (a
    # missing folder is left to annotate_manifest's error, not created here).
    folder = Path(args.manifest).parent
    with lock_for(args, folder) if folder.is_dir() else contextlib.nullcontext():
        report = annotate_manifest(args.manifest, _captioner(args), batch_size=args.batch_size,
                                   overwrite=args.overwrite, restart=args.restart,
                                   retry_failed=args.retry_failed, limit=args.limit,
                                   aligned=not args.not_aligned, progress=not args.quiet,
                                   images_root=args.images_root)
    print(report.summary())
    return 0 if report.failed == 0 else 1


def cmd_caption(args) -> int:
    from tqdm.auto import tqdm

    from .attribute_values import attributes_to_json
    from .extractors import FaceSample
    for img in args.images:
        if img.is_dir():
            raise ValueError(f"{img}: is a folder; name image files (or annotate a manifest)")
        if not img.is_file():
            raise ValueError(f"{img}: no such image file")
    captioner = _captioner(args)
    failed = 0
    annotations = []
    batch = 16
    with tqdm(total=len(args.images), desc="captioning", unit="image",
              disable=len(args.images) < 4 or args.json) as bar:
        for start in range(0, len(args.images), batch):
            chunk = args.images[start:start + batch]
            annotations += captioner.annotate(
                [FaceSample(key=str(img), path=img, aligned=args.aligned) for img in chunk])
            bar.update(len(chunk))
    for img, ann in zip(args.images, annotations, strict=False):
        failed += ann.status != "ok"
        if args.json:
            row = ann.to_row()
            row["attributes"] = json.loads(attributes_to_json(ann.attributes))
            print(json.dumps({"image": str(img), **row}, sort_keys=True))
            continue
        print(f"{img}: [{ann.status}] {ann.caption}")
        if ann.status == "ok":
            print(f"  prompt:             {ann.prompts.positive}")
            print(f"  negative attribute: {ann.prompts.negative_attribute}")
            print(f"  negative quality:   {ann.prompts.negative_quality}")
            shown = ", ".join(f"{k}={v.value if not isinstance(v.value, float) else round(v.value, 1)}"
                              f" ({v.confidence:.2f} {v.source})"
                              for k, v in sorted(ann.attributes.items()))
            print(f"  attributes:         {shown}")
        if ann.error:
            print(f"  note: {ann.error}")
    return 0 if failed == 0 else 1


def cmd_prompt(args) -> int:
    from .attribute_values import attributes_from_json
    data: dict = {}
    if args.attributes:
        text, where = args.attributes, "--attributes"
        if text.startswith("@"):
            where = f"--attributes {text}"
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"{where}: cannot read the file ({e.strerror})") from None
        try:
            parsed = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{where}: expected a JSON object of attributes, got "
                             f"{type(parsed).__name__}")
        data.update(parsed)
    for pair in args.pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r}: write NAME=VALUE, e.g. smiling=yes")
        data[name.strip()] = value.strip()
    prompts = _prompt_builder(args).build(attributes_from_json(data))
    if args.json:
        print(json.dumps({"prompt": prompts.positive,
                          "negative_attribute_prompt": prompts.negative_attribute,
                          "negative_quality_prompt": prompts.negative_quality,
                          "dropped": list(prompts.dropped)}, sort_keys=True))
    else:
        print(f"prompt:                    {prompts.positive}")
        print(f"negative_attribute_prompt: {prompts.negative_attribute}")
        print(f"negative_quality_prompt:   {prompts.negative_quality}")
        if prompts.dropped:
            print(f"dropped to fit {args.max_tokens} tokens: {', '.join(prompts.dropped)}")
    return 0


def cmd_vocabulary(args) -> int:
    from .vocabulary import ATTRIBUTES, CELEBA_40
    if args.celeba:
        for name, m in CELEBA_40.items():
            target = (f"{m.attribute}: +1 -> {m.if_positive!r}, -1 -> {m.if_negative!r}"
                      if m.attribute else "not used")
            print(f"{name:20s} {target}" + (f"  ({m.note})" if m.note else ""))
        return 0
    for a in ATTRIBUTES:
        what = a.phrase if a.kind == "binary" else ", ".join(a.values)
        extra = f"  VQA: {a.question}" if a.question else ""
        print(f"{a.name:20s} {a.kind:11s} {what}{extra}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # KeyError: an unknown attribute or column name (its message names it).
    return run_main(build_parser, argv, errors=(KeyError,))


if __name__ == "__main__":
    exit_with(main)
