"""Docs as tests: every shell command in README.md and docs/*.md runs as written.

Parsing is Sybil's (its Markdown lexers find the ```bash fences and the HTML-comment
markers, in document order); running is ours, because each command is a subprocess in a
scratch folder, not Python code in a namespace.

Markers, an HTML comment on the line(s) before a ```bash fence (invisible on GitHub):

    <!-- docs-test: run -->                        the default: every command exits 0
    <!-- docs-test: fails-cleanly "needs a GPU" --> this machine cannot serve it (GPU,
        downloadable weights, network, a Hub repo): every command must end with exactly one
        `error:` line, exit 2 and no traceback. It runs with no GPU visible and every
        HTTP(S) request sent to a closed port, so it fails the same way on every machine
    <!-- docs-test: skip "why" -->                 not run; the reason is reported

A marker without a reason is refused, so nothing is skipped silently. A block is split
into commands (backslash continuations joined, comment lines dropped) and each command is
run and reported on its own, in order, in one scratch folder (pages in the order given).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from sybil import Document, Region
from sybil.parsers.markdown.lexers import (
    DirectiveInHTMLCommentLexer,
    FencedCodeBlockLexer,
    RawFencedCodeBlockLexer,
)

MODES = ("run", "fails-cleanly", "skip")
SHELL_LANGUAGES = r"bash|sh|shell|console"
#: what a command line of a fence with no language starts with
COMMAND_START = re.compile(r"^(python3?|\.venv/bin/python|make|reface-[a-z]+|mgfr|accelerate|"
                           r"pip|huggingface-cli)\s")
MARKER = re.compile(r'^(?P<mode>[a-z-]+)(?:\s+"(?P<reason>[^"]+)")?\s*$')


#: What a fails-cleanly command runs under, so that it fails the same way on every machine:
#: no GPU, and every HTTP(S) request sent to a closed local port (no network).
OFFLINE = {"CUDA_VISIBLE_DEVICES": "", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": "",
           "HF_HUB_OFFLINE": "0"}


class DocsMarkupError(ValueError):
    """A marker the harness cannot read (unknown mode, a skip without a reason...)."""


@dataclasses.dataclass
class Block:
    page: str
    line: int
    mode: str
    reason: str | None
    commands: list[str]


@dataclasses.dataclass
class Outcome:
    page: str
    line: int
    command: str
    kind: str          # "ran", "failed-cleanly", "skipped"
    ok: bool
    detail: str = ""
    seconds: float = 0.0


def _marker(region) -> tuple[str, str | None]:
    text = region.lexemes["arguments"].strip()
    m = MARKER.match(text)
    if not m or m["mode"] not in MODES:
        raise DocsMarkupError(f"docs-test marker {text!r}: expected one of {MODES}, "
                              'then a quoted reason (`skip "why"`)')
    if m["mode"] != "run" and not m["reason"]:
        raise DocsMarkupError(f'docs-test marker {text!r}: {m["mode"]} needs a reason in quotes')
    return m["mode"], m["reason"]


def split_commands(source: str) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blanks dropped."""
    commands, current = [], ""
    for raw in source.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line.strip() if current else line
        commands.append(_strip_comment(current).strip())
        current = ""
    if current.strip():
        commands.append(_strip_comment(current).strip())
    return [c for c in commands if c]


def _strip_comment(command: str) -> str:
    """``cmd --flag   # says what`` -> ``cmd --flag`` (a ``#`` inside quotes stays)."""
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=True)
        lex.commenters = "#"
        lex.whitespace_split = True
        list(lex)  # raises on unbalanced quotes
    except ValueError:
        return command
    m = re.search(r"\s+#\s", command + " ")
    if not m:
        return command
    before = command[:m.start()]
    return before if before.count('"') % 2 == 0 and before.count("'") % 2 == 0 else command


def parse_page(path: Path, root: Path) -> list[Block]:
    """Every shell block of ``path`` with the mode its marker gives, in document order."""
    lexers = [
        FencedCodeBlockLexer(SHELL_LANGUAGES, mapping={"language": "language", "source": "source"}),
        RawFencedCodeBlockLexer(re.compile(r"$\n", re.MULTILINE), mapping={"source": "bare"}),
        DirectiveInHTMLCommentLexer("docs-test", arguments=".+?"),
    ]
    document = Document.parse(str(path), _RegionCollector(lexers))
    regions = sorted((ex.region for ex in document.examples()), key=lambda r: r.start)
    blocks, pending, pending_at = [], None, None
    for region in regions:
        line = document.text.count("\n", 0, region.start) + 1
        if "directive" in region.lexemes:
            pending, pending_at = _marker(region), line
            continue
        if "bare" in region.lexemes:
            # A fence with no language is a diagram or output, unless it holds commands:
            # those are reported as skipped, never silently left out.
            commands = split_commands(str(region.lexemes["bare"]))
            if commands and COMMAND_START.match(commands[0]):
                blocks.append(Block(str(path.relative_to(root)), line, "skip",
                                    "a fence with no language: label it ```bash to have it run",
                                    commands))
            continue
        mode, reason = pending or ("run", None)
        pending = None
        blocks.append(Block(str(path.relative_to(root)), line, mode, reason,
                            split_commands(str(region.lexemes["source"]))))
    if pending is not None:
        raise DocsMarkupError(f"{path.name}:{pending_at}: docs-test marker with no shell "
                              "block after it")
    return blocks


class _RegionCollector:
    """A Sybil parser that yields the lexers' regions as they are (evaluated by us)."""

    def __init__(self, lexers):
        self.lexers = lexers

    def __call__(self, document):
        for lexer in self.lexers:
            for r in lexer(document):
                yield Region(r.start, r.end, lexemes=r.lexemes, evaluator=lambda ex: None)


def run_command(command: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def clean_failure(done: subprocess.CompletedProcess) -> str | None:
    """Why ``done`` is not one clean failure (exit 2, one `error:` line, no traceback)."""
    err = done.stderr
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error: " in ln]
    if "Traceback (most recent call last)" in err:
        return "traceback: " + err.strip().splitlines()[-1][:300]
    if done.returncode != 2:
        return f"exit {done.returncode}, expected 2: " + (err or done.stdout).strip()[-300:]
    if len(errors) != 1:
        return f"{len(errors)} error lines, expected 1: " + err.strip()[-300:]
    return None


def run_blocks(blocks: list[Block], cwd: Path, env: dict, timeout: float = 900.0) -> list[Outcome]:
    out = []
    for b in blocks:
        for cmd in b.commands:
            if b.mode == "skip":
                out.append(Outcome(b.page, b.line, cmd, "skipped", True, b.reason))
                continue
            t0 = time.perf_counter()
            try:
                done = run_command(cmd, cwd, env if b.mode == "run" else dict(env, **OFFLINE),
                                   timeout)
            except subprocess.TimeoutExpired:
                out.append(Outcome(b.page, b.line, cmd, "ran" if b.mode == "run"
                                   else "failed-cleanly", False, f"timed out after {timeout:.0f} s"))
                continue
            secs = time.perf_counter() - t0
            if b.mode == "run":
                ok = done.returncode == 0
                detail = "" if ok else (f"exit {done.returncode}: "
                                        + (done.stderr or done.stdout).strip()[-400:])
                out.append(Outcome(b.page, b.line, cmd, "ran", ok, detail, secs))
            else:
                why = clean_failure(done)
                out.append(Outcome(b.page, b.line, cmd, "failed-cleanly", why is None,
                                   why or b.reason, secs))
    return out


def report(outcomes: list[Outcome]) -> str:
    """Counts (run / checked for a clean failure / skipped), then every skip with its
    reason and every command that broke its promise."""
    kinds = {k: [o for o in outcomes if o.kind == k] for k in ("ran", "failed-cleanly", "skipped")}
    counts = (f"docs commands: {len(kinds['ran'])} run, {len(kinds['failed-cleanly'])} checked "
              f"for a clean failure, {len(kinds['skipped'])} skipped")
    lines = [counts]
    for o in kinds["skipped"]:
        lines.append(f"  skipped {o.page}:{o.line} `{o.command[:70]}`: {o.detail}")
    for o in outcomes:
        if not o.ok:
            lines.append(f"  BROKEN {o.page}:{o.line} `{o.command[:90]}`: {o.detail}")
    return "\n".join(lines)


def command_env(workspace: Path, repo: Path, venv: Path, extra: dict | None = None) -> dict:
    """The environment a newcomer's shell has after `make demo`: the venv's scripts first
    on PATH, the repository importable, the asset cache of the test session."""
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    env.update(extra or {})
    return env
