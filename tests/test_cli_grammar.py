"""Every command follows the one command-line grammar (README, "Command-line grammar").

The commands are discovered from the parsers: each entry point's ``build_parser()`` is walked
through every subcommand, and every leaf's ``--help`` is rendered.
"""

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reface_core import cli as C

# The entry points (``python -m X``); their subcommands are found by walking the parsers.
ENTRY_MODULES = ["faces.cli", "degradations.cli", "captioning.cli", "reface_hq.cli", "mgfr.cli",
                 "benchmarks.cli", "reface_core.assets_cli", "benchmarks.run", "benchmarks.sweep",
                 "benchmarks.publish", "benchmarks.study", "mgfr.train_cli"]

#: short flag -> the long option it must always stand for
SHORT_FLAGS = {"-h": "--help", "-i": "--input", "-o": "--out", "-q": "--quiet", "-v": "--verbose"}
#: old spellings: only as hidden, deprecated aliases
OLD_SPELLINGS = {"--output", "--no-progress", "--manifest", "--source", "--results"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _walk(sub, (*path, name))


def _commands():
    out = []
    for module in ENTRY_MODULES:
        parser = importlib.import_module(module).build_parser()
        out += [(module, path, p) for path, p in _walk(parser, ())]
    return out


COMMANDS = _commands()


def test_walk_finds_every_command():
    names = {f"{m} {' '.join(p)}" for m, p, _ in COMMANDS}
    assert len(COMMANDS) >= 30
    for expected in ("faces.cli detect", "degradations.cli synth", "captioning.cli annotate",
                     "reface_hq.cli build", "mgfr.cli restore", "benchmarks.cli study serve",
                     "benchmarks.publish ", "reface_core.assets_cli fetch"):
        assert expected in names


@pytest.mark.parametrize("module, path, parser", COMMANDS,
                         ids=[f"{m}:{'-'.join(p) or 'main'}" for m, p, _ in COMMANDS])
def test_command_follows_the_grammar(module, path, parser, capsys):
    where = f"{module} {' '.join(path)}"
    actions = [a for a in parser._actions if a.option_strings]
    visible = [a for a in actions if a.help is not argparse.SUPPRESS]
    by_option = {s: a for a in actions for s in a.option_strings}

    # Short flags mean one thing everywhere and always come with their long option.
    for a in actions:
        for s in a.option_strings:
            if not s.startswith("--"):
                assert s in SHORT_FLAGS, f"{where}: unknown short flag {s}"
                assert SHORT_FLAGS[s] in a.option_strings, f"{where}: {s} without {SHORT_FLAGS[s]}"
    for short, long in SHORT_FLAGS.items():
        if long in by_option and long != "--help":
            assert short in by_option[long].option_strings, f"{where}: {long} without {short}"
    if "--quiet" in by_option:
        assert by_option["--quiet"].nargs == 0, f"{where}: --quiet takes no value"

    # Old spellings are hidden aliases that store where the new option does.
    for a in visible:
        old = OLD_SPELLINGS.intersection(a.option_strings)
        assert not old, f"{where}: {sorted(old)} is an old spelling; use the grammar's option"
    for a in actions:
        if isinstance(a, C._DeprecatedAlias):
            assert a.help is argparse.SUPPRESS
            new = [b for b in visible if a.new.split("/")[-1] in b.option_strings]
            assert new and new[0].dest == a.dest, f"{where}: {a.option_strings} stores elsewhere"

    # The thing read: positional, or -i/--input, not both.
    positional = [a for a in parser._actions if not a.option_strings
                  and not isinstance(a, argparse._SubParsersAction)]
    assert not (positional and "--input" in by_option), f"{where}: positional input and --input"

    # Shared value options parse alike.
    if "--workers" in by_option:
        t = by_option["--workers"].type
        assert t("2") == 2
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            t("0")
    if "--seed" in by_option:
        t = by_option["--seed"].type
        assert t("7") == 7
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            t("x")
    if "--retry-failed" in by_option:
        assert "--overwrite" in by_option, f"{where}: --retry-failed without --overwrite"

    # --help renders and exits 0.
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_old_spellings_still_work_and_warn(capsys):
    from benchmarks.run import build_parser as run_parser
    from captioning.cli import build_parser as cap_parser
    from degradations.cli import build_parser as deg_parser
    from reface_hq.cli import build_parser as hq_parser

    args = deg_parser().parse_args(["synth", "--input", "in", "--output", "out"])
    assert args.output == "out" and args.input == "in"
    assert capsys.readouterr().err.strip() == \
        "warning: --output is deprecated and will be removed in 0.2; use -o/--out"
    args = hq_parser().parse_args(["build", "--source", "a", "--source", "b", "-o", "o",
                                   "--no-progress"])
    assert args.source == ["a", "b"] and args.no_progress is True
    err = capsys.readouterr().err
    assert err.count("--source is deprecated") == 2 and "--no-progress is deprecated" in err
    assert hq_parser().parse_args(["build", "-i", "a", "-o", "o"]).no_progress is False
    args = cap_parser().parse_args(["annotate", "--manifest", "m.parquet"])
    assert str(args.manifest) == "m.parquet"
    assert "use -i/--input" in capsys.readouterr().err
    args = run_parser().parse_args(["--methods", "lq", "--dataset", "d", "--no-progress"])
    assert args.no_progress is True and args.out == "results"
    # Old and new spelling of one option together is a usage error (exit 2).
    with pytest.raises(SystemExit) as e:
        deg_parser().parse_args(["synth", "-i", "x", "-o", "a", "--output", "b"])
    assert e.value.code == 2


def test_run_main_maps_outcomes_to_exit_codes(capsys):
    def parser_for(func):
        def build():
            p = argparse.ArgumentParser(prog="t")
            p.set_defaults(func=func)
            return p
        return build

    def bad_input(args):
        raise ValueError("photo.png: not an image\n  (second line)")

    def interrupted(args):
        raise KeyboardInterrupt

    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", "x.parquet")

    assert C.run_main(parser_for(lambda a: 1), []) == 1
    assert C.run_main(parser_for(bad_input), []) == 2
    assert capsys.readouterr().err == "error: photo.png: not an image; (second line)\n"
    assert C.run_main(parser_for(missing), []) == 2
    assert capsys.readouterr().err == "error: No such file or directory: x.parquet\n"
    previous = signal.getsignal(signal.SIGINT)
    assert C.run_main(parser_for(interrupted), []) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGINT) is previous  # in-process callers keep Ctrl-C


def _ctrl_c_as_in_a_terminal():
    # A suite started in the background by a script (`make test &`) inherits SIGINT
    # ignored, and a Python started so never turns SIGINT into KeyboardInterrupt: give the
    # job the default disposition a job in a terminal's foreground has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.realdata
def test_ctrl_c_exits_130_without_traceback(data_root, tmp_path):
    """SIGINT to a running job (as Ctrl-C sends it to the process group): exit 130, one line."""
    out = tmp_path / "lq"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "degradations", "synth", "-i", str(data_root / "celeba_hq_1024"),
         "-o", str(out), "-q", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)

    def committed():
        # A record is written to ".<id>.xxxx.tmp.json" and renamed: under load the wait can
        # see that temporary, which an interrupt then removes. Count renamed records only.
        if not (out / "records").exists():
            return []
        return [p for p in (out / "records").rglob("*.json") if not p.name.startswith(".")]

    try:
        deadline = time.monotonic() + 180
        # Wait until the job is inside its loop (its first record committed), then interrupt.
        while not committed():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"synth ended or stalled before it could be interrupted: "
                            f"{proc.communicate()}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    n_images = sum(1 for p in (data_root / "celeba_hq_1024").rglob("*.jpg"))
    n_done = len(committed())
    assert 1 <= n_done < n_images  # stopped early, with whole records only
    left = [p.name for p in (out / "records").rglob(".*")]
    assert not left, f"an interrupt left temporaries behind: {left}"
