"""`clrepro list [SECTION]`: registered components with their hyperparameters and defaults."""

from __future__ import annotations


def _component_table(title, registry):
    from rich.table import Table

    from clrepro.config.hparams import describe

    table = Table(title=title, show_lines=True)
    for col in ("name", "description", "hyperparameters (default; allowed)"):
        table.add_column(col)
    for name in registry.names():
        cls = registry.get(name)
        doc = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().splitlines()[0]
        rows = describe(cls.Config)
        hps = "\n".join(f"{r['name']} = {r['default']!r}" + (f"; {r['allowed']}" if r["allowed"] else "")
                        for r in rows) or "—"
        table.add_row(name, doc, hps)
    return table


def main(args) -> int:
    from clrepro.config.load import _checked_config_dir, config_dir, experiment_names
    from clrepro.console import console
    from clrepro.data.sources import SOURCE_INFO
    from clrepro.registry import ALGORITHMS, BACKBONES, BENCHMARKS

    what = args.what
    if what in (None, "algorithms"):
        console.print(_component_table("algorithms", ALGORITHMS))
    if what in (None, "benchmarks"):
        console.print(_component_table("benchmarks", BENCHMARKS))
    if what in (None, "sources"):
        for name, info in SOURCE_INFO.items():
            console.print(f"source [bold]{name}[/bold]: {info}")
    if what in (None, "backbones"):
        console.print(_component_table("backbones", BACKBONES))
    if what in (None, "experiments"):
        _checked_config_dir()
        console.print(f"experiments in {config_dir() / 'experiment'}:")
        for name in experiment_names():
            try:
                first = (config_dir() / "experiment" / f"{name}.yaml").read_bytes()[:4096].decode(
                    "utf-8", "replace").splitlines()
            except OSError:
                first = []
            doc = next((l.lstrip("# ") for l in first if l.startswith("#") and "@package" not in l), "")
            console.print(f"  [bold]{name}[/bold]: {doc}")
    return 0
