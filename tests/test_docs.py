"""The docs site builds in strict mode (no broken link, page or anchor), stays inside the project, and the GitHub
workflow passes its linters; all offline."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PUBLIC_HOSTS = ("squidfunk.github.io", "www.mkdocs.org", "github.com", "arxiv.org", "doi.org", "zensical.org")
# The internal notes the docs must stand without (their file names, their folder).
UNSAID = ("algorithms.md", "metrics.md", "/work/shared", "../shared", "the spec")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists() and shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path if path.exists() else shutil.which(name))


def test_docs_build_strict_with_no_broken_link(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([_tool("mkdocs"), "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("index.html"))
    for page in ("index.html", "getting-started/index.html", "metrics/index.html", "algorithms/hat/index.html",
                 "algorithms/amnesiac_hat/index.html", "benchmarks/index.html", "reproducing/index.html",
                 "cluster/index.html", "extending/index.html", "parity/index.html", "tracking/index.html"):
        assert page in pages
    hat = (site / "algorithms/hat/index.html").read_text()
    assert "anneal_offset_parity" in hat and "B1" in hat  # the generated hyperparameter table
    for html in site.rglob("*.html"):
        text = html.read_text()
        for url in re.findall(r'href="(https?://[^"]+)"', text):
            assert url.split("/")[2] in PUBLIC_HOSTS, f"{html.relative_to(site)} links outside: {url}"
        for word in UNSAID[:3]:  # the generated tables carry the code's docstrings: they too stand alone
            assert word not in text, f"{html.relative_to(site)} mentions {word!r}"
        rest = re.sub(r"<code>.*?</code>", "", text, flags=re.S)
        assert "clrepro:hparams" not in rest and "clrepro:include" not in rest, html  # every marker rendered


def test_docs_and_readme_stand_alone():
    files = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").rglob("*.md"))]
    for f in files:
        text = f.read_text()
        for word in UNSAID:
            assert word not in text, f"{f.relative_to(ROOT)} mentions {word!r}"
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_included_results_or_not_yet_run(tmp_path):
    spec = importlib.util.spec_from_file_location("clrepro_docs", ROOT / "docs/_hooks/clrepro_docs.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert "Not yet run" in hooks.include("benchmarks/parity/results/no_such_file.md")
    results = ROOT / "benchmarks/parity/results"
    if (results / "parity.md").exists():
        assert "Not yet run" not in hooks.include("benchmarks/parity/results/parity.md")
    page = hooks.on_page_markdown("x\n<!-- clrepro:hparams algorithm lwf -->\n`<!-- clrepro:hparams x y -->`",
                                  None, None, None)
    assert "| `student_no_grad` | bool | `true` |" in page and "`<!-- clrepro:hparams x y -->`" in page


def test_workflow_passes_its_linters():
    workflow = ROOT / ".github/workflows/ci.yml"
    text = workflow.read_text()
    assert "make test" in text and "make tables TABLES_OUT=outputs/ci_tables" in text
    assert "actions/upload-artifact@" in text and "outputs/ci_tables/" in text
    schema = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)],
                            capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    audit = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", str(workflow)], capture_output=True,
                           text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
