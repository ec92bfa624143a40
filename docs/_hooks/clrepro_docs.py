"""mkdocs hooks for clrepro's docs: tables generated from the code at build time, and included result files.

In a page, `<!-- clrepro:hparams algorithm hat -->` becomes the table of that registered component's
hyperparameters (name, type, default, allowed values, meaning, reference-bug id) exactly as `clrepro list`
reads them from its Config dataclass, so the docs cannot drift from the code. `<!-- clrepro:include PATH -->`
becomes the content of PATH (relative to the repository root), or a note that it does not exist yet.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"(?<!`)<!--\s*clrepro:(\w+)\s+([^>]*?)\s*-->(?!`)")  # not inside `code`


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    if dataclasses.is_dataclass(value):  # a nested config (e.g. benchmark.augmentation): its fields' defaults
        value = dataclasses.asdict(value)
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def hparams_table(kind: str, name: str) -> str:
    """The Markdown table of a registered component's hyperparameters."""
    from clrepro.config.hparams import describe
    from clrepro.registry import ALGORITHMS, BACKBONES, BENCHMARKS

    registry = {"algorithm": ALGORITHMS, "backbone": BACKBONES, "benchmark": BENCHMARKS}[kind]
    cls = registry.get(name)
    rows = describe(cls.Config)
    if not rows:
        return f"*`{kind}.name: {name}` has no hyperparameters.*\n"
    out = [f"`{kind}.name: {name}`: {_cell(getattr(cls, 'summary', '') or (cls.__doc__ or '').strip().splitlines()[0])}",
           "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['name']}` | {_cell(r['type'])} | {_cell(_default(r['default']))} | "
                   f"{_cell(r['allowed'] or '')} | {_cell(r['doc'])} |")
    return "\n".join(out) + "\n"


def include(path: str) -> str:
    file = (ROOT / path).resolve()
    if ROOT not in file.parents:
        raise ValueError(f"clrepro:include {path}: outside the repository")
    if not file.exists():
        return (f'!!! note "Not yet run"\n    `{path}` does not exist yet: it is written by the run described '
                "above. Rebuild the docs (`make docs`) once it is there.\n")
    lines = file.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):  # the page has its own title
        lines = lines[1:]
    return "\n".join(lines) + "\n"


def _render(match) -> str:
    kind, arg = match.group(1), match.group(2).split()
    if kind == "hparams" and len(arg) == 2:
        return hparams_table(*arg)
    if kind == "include" and len(arg) == 1:
        return include(arg[0])
    raise ValueError(f"unknown docs marker: {match.group(0)}")


def on_page_markdown(markdown, page, config, files):
    return MARK.sub(_render, markdown)
