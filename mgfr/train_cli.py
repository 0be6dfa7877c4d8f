"""Training commands of ``python -m mgfr``: ``train`` and ``pretrain-prior``.

``mgfr/cli.py`` calls :func:`add_subcommands`; heavy imports (torch, diffusers,
accelerate) happen only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from reface_core.argtypes import at_least, seed
from reface_core.cli import add_input, add_out
from reface_core.lock import add_wait_lock_argument


def _run(job, args) -> int:
    """Run ``job(args)``; expected failures become one ``error:`` line and exit 2."""
    from reface_core.assets import AssetNotFoundError
    from reface_core.lock import lock_for

    from .errors import TrainingError
    try:
        with lock_for(args, args.out):
            return int(job(args) or 0)
    except (TrainingError, AssetNotFoundError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 130


def _config_names_stage(args) -> bool:
    """Whether ``--set stage=N`` or the ``--config`` YAML gives the stage (a config that
    does not read is left to the trainer's own error)."""
    if any(item.split("=", 1)[0].strip() == "stage" for item in args.set):
        return True
    if not args.config:
        return False
    import yaml
    try:
        recipe = yaml.safe_load(open(args.config, encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return True
    return not isinstance(recipe, dict) or recipe.get("stage") is not None


def _train(args) -> int:
    from .train import train_from_args
    if args.stage is None and not _config_names_stage(args):
        raise ValueError("--stage 1 or 2 is required: "
                         + (f"config {args.config} has no 'stage' field" if args.config
                            else "no --config gives it"))
    return train_from_args(args)


def _pretrain(args) -> int:
    from .prior import pretrain_from_args
    return pretrain_from_args(args)


def add_subcommands(subparsers) -> None:
    """Add ``train`` and ``pretrain-prior`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train the MGFR adapters (stage 1: LQ adapter; stage 2: + references)",
        description="Train MGFR's adapters on a Reface-HQ folder over a frozen base. "
                    "Checkpoints are written atomically every --checkpoint-every steps; "
                    "--resume continues a killed run exactly. Multi-GPU: "
                    "`accelerate launch -m mgfr train ...`.")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="1: LQ adapter; 2: + references (default: the config's `stage`)")
    add_input(p, "Reface-HQ dataset folder (reface_hq build)", dest="data", deprecated=("--data",))
    p.add_argument("--base", default=None,
                   help="tiny, sd21-base, sd21, sd15, a folder written by `pretrain-prior`, "
                        "or any diffusers Stable Diffusion folder (or its Hugging Face cache "
                        "folder models--org--name) (default: the config's base)")
    add_out(p, "run folder (checkpoints, adapters/, logs)", required=True)
    p.add_argument("--config", default=None,
                   help="YAML recipe (mgfr/configs/*.yaml or your own); flags override it")
    p.add_argument("--init", default=None,
                   help="stage 2: the stage-1 run folder (or its adapters/) to start from")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's last checkpoint")
    p.add_argument("--max-steps", type=at_least(1), default=None)
    p.add_argument("--batch-size", type=at_least(1), default=None)
    p.add_argument("--lr", type=at_least(0.0, float), default=None)
    p.add_argument("--seed", type=seed, default=None)
    p.add_argument("--checkpoint-every", type=at_least(1), default=None)
    p.add_argument("--validate-every", type=at_least(0), default=None,
                   help="steps between validations (0: only at the end)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)
    p.add_argument("--cache-dir", default=None,
                   help="cache folder of identity embeddings and VAE latents (default "
                        "DATA/cache)")
    p.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=None,
                   help="encode the HQ faces' VAE latents once (per dataset and VAE) instead "
                        "of every step (default: the config's cache_latents; off unless the "
                        "recipe sets it, on in the sd21-base recipes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (repeatable), e.g. --set ema_decay=0.99")
    add_wait_lock_argument(p)
    p.set_defaults(func=lambda a: _run(_train, a))

    q = subparsers.add_parser(
        "pretrain-prior", help="pretrain a CPU-scale base (VAE + text-conditioned UNet) on HQ faces",
        description="Train the preset's AutoencoderKL (reconstruction) and UNet "
                    "(text-conditioned noise prediction) on the HQ faces of a Reface-HQ "
                    "folder, so that stages 1 and 2 have a frozen prior on a CPU. Writes a "
                    "diffusers-layout folder that `--base PATH` loads. Resumable.")
    add_input(q, "Reface-HQ dataset folder", dest="data", deprecated=("--data",))
    q.add_argument("--config", default=None,
                   help="YAML recipe of mgfr.prior.PriorConfig fields (e.g. "
                        "mgfr/configs/mini-prior.yaml); flags override it")
    q.add_argument("--base", default=None, help="preset to pretrain: mini or tiny (default: "
                                                "the config's, else tiny)")
    add_out(q, "prior folder to write", required=True)
    q.add_argument("--min-vae-psnr", type=at_least(0.0, float), default=None,
                   help="round-trip PSNR (dB) the VAE must reach on the test-split faces "
                        "before the UNet phase (default: the preset's gate; 0 turns it off)")
    q.add_argument("--vae-steps", type=at_least(0), default=None)
    q.add_argument("--unet-steps", type=at_least(0), default=None)
    q.add_argument("--batch-size", type=at_least(1), default=None)
    q.add_argument("--lr", type=at_least(0.0, float), default=None)
    q.add_argument("--seed", type=seed, default=None)
    q.add_argument("--checkpoint-every", type=at_least(1), default=None)
    q.add_argument("--resume", action="store_true",
                   help="continue a killed pretraining from its last checkpoint")
    add_wait_lock_argument(q)
    q.set_defaults(func=lambda a: _run(_pretrain, a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgfr.train_cli")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (the same commands without the rest of ``mgfr``'s CLI)."""
    from reface_core.cli import run_main
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from reface_core.cli import exit_with
    exit_with(main)
