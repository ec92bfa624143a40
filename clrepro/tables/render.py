"""Render a table: rich (terminal), Markdown, LaTeX (booktabs, best per column bold), CSV, and a plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from clrepro.tables.table import Table

DASH = "—"


def _num(v: float | None, d: int) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def ours(cell, d: int) -> str:
    if cell.mean is None:
        return DASH
    std = f" ± {_num(cell.std, d)}" if cell.std is not None else ""
    return f"{_num(cell.mean, d)}{std}"


def paper(cell, d: int) -> str:
    p = cell.published
    if p is None:
        return DASH
    return f"{_num(p.mean, d)}" + (f" ± {_num(p.std, d)}" if p.std is not None else "")


def verdict(cell) -> str:
    return {True: "✓", False: "✗", None: ""}[cell.within]


def _best_per_column(table: Table) -> list[int | None]:
    """Row index of the best reproduced mean per column (DD is 'lower is better', the rest 'higher')."""
    from clrepro.config.schema import LOWER_IS_BETTER

    best = []
    for j, col in enumerate(table.spec.columns):
        means = [(row[j].mean, i) for i, row in enumerate(table.cells)
                 if row[j].mean is not None and not table.spec.rows[i].gain_of]
        pick = min if col.metric in LOWER_IS_BETTER else max
        best.append(pick(means)[1] if means else None)
    return best


def to_csv(table: Table) -> str:
    """Long format: one line per row × column with n, mean, std, published, Δ, verdict, p and seeds."""
    d = table.spec.decimals + 2
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "benchmark", "metric", "n", "mean", "std", "published_mean", "published_std",
                "published_n", "delta", "within_tolerance", "p_value", "seeds"])
    for row, crow, orow in zip(table.spec.rows, table.cells, table.origins):
        for col, cell, seeds in zip(table.spec.columns, crow, orow):
            p = cell.published
            w.writerow([row.label, col.benchmark, col.metric, cell.n,
                        "" if cell.mean is None else f"{cell.mean:.{d}f}", "" if cell.std is None else f"{cell.std:.{d}f}",
                        "" if p is None else p.mean, "" if p is None or p.std is None else p.std,
                        "" if p is None or p.n is None else p.n,
                        "" if cell.delta is None else f"{cell.delta:.{d}f}",
                        "" if cell.within is None else cell.within,
                        "" if cell.p_value is None else f"{cell.p_value:.4f}",
                        " ".join(str(s.seed) for s in seeds)])
    return buf.getvalue()


def to_markdown(table: Table) -> str:
    """The paper's layout (reproduced / published ✓✗ per cell), then a detail table with Δ and p."""
    s, d = table.spec, table.spec.decimals
    lines = [f"## {s.title}", ""]
    if s.source:
        lines += ["Source: " + ", ".join(f"{k}: {v}" for k, v in s.source.items()), ""]
    lines += ["| approach | " + " | ".join(table.labels) + " |", "|---|" + "---:|" * len(table.labels)]
    for row, crow, note in zip(s.rows, table.cells, table.row_notes):
        cells = [f"{ours(c, d)} (n={c.n}) / {paper(c, d)} {verdict(c)}".strip() if c.n else f"{DASH} / {paper(c, d)}"
                 for c in crow]
        lines.append(f"| {row.label}{' ¹' if note else ''} | " + " | ".join(cells) + " |")
    lines += ["", f"Cells: reproduced mean ± sample std (n seeds) / published. Scale ×{s.scale:g}. "
              f"{_tolerance_text(s)}"]
    for row, note in zip(s.rows, table.row_notes):
        if note:
            lines.append(f"¹ {row.label}: {note}")
    for n in s.notes:
        lines.append(f"- {n}")
    lines += ["", "| approach | column | n | reproduced | published | Δ | verdict | Welch p |",
              "|---|---|---:|---:|---:|---:|:---:|---:|"]
    for row, crow in zip(s.rows, table.cells):
        for label, c in zip(table.labels, crow):
            if c.n or c.published:
                lines.append(f"| {row.label} | {label} | {c.n} | {ours(c, d)} | {paper(c, d)} | "
                             f"{_num(c.delta, d)} | {verdict(c)} | {_num(c.p_value, 3)} |")
    return "\n".join(lines) + "\n"


def _tolerance_text(s) -> str:
    t = s.tolerance
    if t.rule == "none":
        return "No tolerance verdict (the reproduction's scale differs from the paper's)."
    if t.rule == "std":
        return f"✓: |Δ| ≤ {t.value:g} × the published std."
    return f"✓: |Δ| ≤ {t.value:g} points."


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table: each column as 'ours' and 'paper' sub-columns, the best reproduced mean in bold."""
    s, d = table.spec, table.spec.decimals
    best = _best_per_column(table)
    ncol = len(s.columns)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{l" + "rr" * ncol + "}", r"\toprule",
           "Approach & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{latex_escape(l)}}}" for l in table.labels) + r" \\",
           "".join(rf"\cmidrule(lr){{{2 + 2 * j}-{3 + 2 * j}}}" for j in range(ncol)),
           " & " + " & ".join(["ours & paper"] * ncol) + r" \\", r"\midrule"]
    for i, (row, crow) in enumerate(zip(s.rows, table.cells)):
        cells = []
        for j, c in enumerate(crow):
            mine = ours(c, d).replace("±", r"$\pm$").replace(DASH, "--")
            if best[j] == i and c.mean is not None:
                mine = rf"\textbf{{{mine}}}"
            cells += [mine, paper(c, d).replace("±", r"$\pm$").replace(DASH, "--")]
        out.append(latex_escape(row.label) + " & " + " & ".join(cells) + r" \\")
    caption = latex_escape(s.title) + f". Reproduced: mean $\\pm$ sample std over seeds, scale $\\times{s.scale:g}$."
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_rich(table: Table):
    from rich.table import Table as RichTable

    s, d = table.spec, table.spec.decimals
    t = RichTable(title=s.title, show_lines=True)
    t.add_column("approach")
    for label in table.labels:
        t.add_column(label, justify="right")
    for row, crow, note in zip(s.rows, table.cells, table.row_notes):
        cells = []
        for c in crow:
            top = f"{ours(c, d)} (n={c.n})" if c.n else DASH
            bottom = f"paper {paper(c, d)} {verdict(c)}" if c.published else ""
            cells.append(f"{top}\n[dim]{bottom}[/dim]" if bottom else top)
        t.add_row(row.label + (f"\n[dim]{note}[/dim]" if note else ""), *cells)
    return t


def plot(table: Table, path: Path) -> Path:
    """One panel per column: reproduced (mean ± std) and published (mean ± std) per approach."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = table.spec
    ncol = len(s.columns)
    cols = min(4, ncol)
    rows = math.ceil(ncol / cols)
    fig = Figure(figsize=(3.2 * cols, 0.5 + 0.35 * len(s.rows) * rows + 0.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    ys = list(range(len(s.rows)))
    for j, label in enumerate(table.labels):
        ax = axes[j // cols][j % cols]
        for i, crow in enumerate(table.cells):
            c = crow[j]
            if c.mean is not None:
                ax.errorbar(c.mean, i + 0.12, xerr=c.std or 0, fmt="o", color="tab:blue", capsize=3,
                            label="reproduced" if i == 0 else None)
            if c.published is not None:
                ax.errorbar(c.published.mean, i - 0.12, xerr=c.published.std or 0, fmt="s", color="tab:orange",
                            capsize=3, label="published" if i == 0 else None)
        ax.set_yticks(ys, [r.label for r in s.rows] if j % cols == 0 else [""] * len(ys), fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
    for k in range(ncol, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.suptitle(s.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_all(table: Table, out: Path, stem: str) -> dict[str, Path]:
    """table.md, table.tex, table.csv and table.png (named after the spec) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / f"{stem}.md", "tex": out / f"{stem}.tex", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    files["md"].write_text(to_markdown(table))
    files["tex"].write_text(to_latex(table))
    files["csv"].write_text(to_csv(table))
    plot(table, files["png"])
    return files
