"""Docs as tests: every shell command of README.md and docs/*.md, run as written in a
scratch folder set up from what `make demo` leaves behind (see tests/docs_harness.py for
the markers). The scratch folder holds:

    demo_out/           the demo's outputs (`scripts/demo.py --out demo_out`): its Reface-HQ
                        build demo_out/reface_hq/dataset, its results store
                        demo_out/benchmark, its adapters demo_out/mgfr/stage2/adapters ...
    mgfr/ scripts/ perf/ Makefile pyproject.toml   links into the repository
    .venv/              a link to the Python running the tests

`REFACE_DOCS_DEMO_OUT=DIR` reuses a finished demo folder instead of running the demo
(about 6 minutes on 2 free cores). `REFACE_DOCS_PAGES=README.md,docs/faces.md` runs only
those pages. The counts (run, checked for a clean failure, skipped with a reason) are
printed at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docs_harness as H
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
LINKED = ("mgfr", "scripts", "perf", "Makefile", "pyproject.toml")
#: every outcome of this session, for the summary conftest prints
OUTCOMES: list[H.Outcome] = []


def _selected_pages() -> list[str]:
    wanted = os.environ.get("REFACE_DOCS_PAGES")
    return [p for p in PAGES if not wanted or p in wanted.split(",")]


# --- the harness itself (fast) ------------------------------------------------------

SAMPLE = '''# sample

```bash
echo hello > made.txt   # a comment after a command
# a comment line
cat made.txt \\
    made.txt
```

<!-- docs-test: fails-cleanly "no such photo on any machine" -->
```bash
python -m faces detect no/such.png -o out/x
```

<!-- docs-test: skip "needs a Ray cluster" -->
```bash
python -m reface_hq build ... --executor ray
```

```python
print("a Python block is not a shell command")
```
'''


def test_harness_runs_checks_and_skips_with_reasons(tmp_path):
    page = tmp_path / "sample.md"
    page.write_text(SAMPLE)
    blocks = H.parse_page(page, tmp_path)
    assert [(b.line, b.mode) for b in blocks] == [(3, "run"), (11, "fails-cleanly"), (16, "skip")]
    assert blocks[0].commands == ["echo hello > made.txt", "cat made.txt made.txt"]
    env = H.command_env(tmp_path, REPO, Path(sys.prefix))
    outcomes = H.run_blocks(blocks, tmp_path, env, timeout=300)
    assert all(o.ok for o in outcomes), H.report(outcomes)
    text = H.report(outcomes)
    assert text.startswith("docs commands: 2 run, 1 checked for a clean failure, 1 skipped")
    assert "needs a Ray cluster" in text


def test_harness_reports_broken_promises(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text('```bash\nfalse\n```\n\n<!-- docs-test: fails-cleanly "x" -->\n```bash\n'
                    'python -c "raise SystemExit(1)"\npython -c "import json; json.loads(1)"\n```\n')
    outcomes = H.run_blocks(H.parse_page(page, tmp_path), tmp_path,
                            H.command_env(tmp_path, REPO, Path(sys.prefix)), timeout=300)
    assert [o.ok for o in outcomes] == [False, False, False]
    text = H.report(outcomes)
    assert "exit 1, expected 2" in text and "traceback: TypeError" in text


@pytest.mark.parametrize("marker", ['skip', 'pass "x"', 'fails-cleanly'])
def test_markers_without_a_reason_or_unknown_are_refused(tmp_path, marker):
    page = tmp_path / "m.md"
    page.write_text(f"<!-- docs-test: {marker} -->\n```bash\necho x\n```\n")
    with pytest.raises(H.DocsMarkupError):
        H.parse_page(page, tmp_path)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_parses(page):
    H.parse_page(REPO / page, REPO)


# --- the docs (slow: the demo first) ----------------------------------------------------

@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory, data_root) -> Path:
    ws = tmp_path_factory.mktemp("docs")
    reuse = os.environ.get("REFACE_DOCS_DEMO_OUT")
    if reuse:
        if not (Path(reuse) / "reface_hq" / "dataset" / "manifest.parquet").is_file():
            pytest.fail(f"REFACE_DOCS_DEMO_OUT={reuse} is not a finished demo folder")
        (ws / "demo_out").symlink_to(Path(reuse).resolve())
    else:
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--data",
                               str(data_root), "--out", str(ws / "demo_out")],
                              capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert done.returncode == 0, "the demo failed:\n" + (done.stderr or done.stdout)[-3000:]
    for name in LINKED:
        (ws / name).symlink_to(REPO / name)
    (ws / ".venv").symlink_to(Path(sys.prefix))
    return ws


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("page", PAGES)
def test_docs_commands_run_as_written(page, docs_workspace, data_root):
    if page not in _selected_pages():
        pytest.skip(f"{page} not in REFACE_DOCS_PAGES")
    env = H.command_env(docs_workspace, REPO, Path(sys.prefix),
                        {"REFACE_TEST_DATA": str(data_root)})
    outcomes = H.run_blocks(H.parse_page(REPO / page, REPO), docs_workspace, env,
                            timeout=float(os.environ.get("REFACE_DOCS_TIMEOUT", "1800")))
    OUTCOMES.extend(outcomes)
    print(H.report(outcomes))
    assert all(o.ok for o in outcomes), H.report(outcomes)
