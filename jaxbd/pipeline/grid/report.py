"""The grid's report: one CSV row per cell, the study's table, plots.

Written by `jaxbd.pipeline.grid.sweep.run` after every cell (plots at the end), and usable
on its own: `write(workdir, rows)` with rows from `cell_row(method, seed, summary)`. A grid
with several attacks has a line per attack and method (labelled `attack / method`); the
defenses' tables are `jaxbd.pipeline.grid.defense_report`'s.

- `results.csv`: one row per (attack, method, seed) with the selection report, dense and pruned
  metrics, sparsity and timings (`COLUMNS`).
- `table.md`: per method, in grid order, mean ± sample standard deviation (ddof = 1) over
  seeds with n (docs/metrics.md, "Aggregation over seeds"): poison retention, dense and
  pruned clean accuracy, dense and pruned ASR (percentages; ASR excludes target-class test
  images), and the pruned arm's sparsity; below it, the grid's wall time.
- `retention.png`, `accuracy.png`, `asr.png` (matplotlib, `pip install -e ".[plot]"`): poison
  retention per method; clean accuracy and ASR, dense vs pruned, with ±1 std error bars.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from jaxbd import files, metrics

RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
PLOTS = ("retention.png", "accuracy.png", "asr.png")

COLUMNS = (
    "attack",
    "method",
    "seed",
    "num_train",
    "num_selected",
    "poison_total",
    "poison_kept",
    "poison_retention",
    "removed_precision",
    "removed_recall",
    "clean_accuracy",
    "attack_success_rate",
    "asr_all_images",
    "robust_accuracy",
    "pruned_clean_accuracy",
    "pruned_attack_success_rate",
    "pruned_asr_all_images",
    "pruned_robust_accuracy",
    "pruned_sparsity",
    "selection_seconds",
    "wall_seconds",
)

# (table header, results column, multiplier, digits)
TABLE_COLUMNS = (
    ("Poison retention (%)", "poison_retention", 100, 1),
    ("Dense acc. (%)", "clean_accuracy", 100, 2),
    ("Pruned acc. (%)", "pruned_clean_accuracy", 100, 2),
    ("Dense ASR (%)", "attack_success_rate", 100, 2),
    ("Pruned ASR (%)", "pruned_attack_success_rate", 100, 2),
    ("Sparsity (%)", "pruned_sparsity", 100, 1),
)


def cell_row(method: str, seed: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One `results.csv` row from a cell's summary (missing figures are None)."""
    pruned = summary.get("pruned") or {}
    row = {"attack": summary.get("attack"), "method": method, "seed": seed}
    for column in COLUMNS[3:]:
        if column == "pruned_sparsity":
            row[column] = (pruned.get("sparsity") or {}).get("total")
        elif column.startswith("pruned_"):
            row[column] = pruned.get(column.removeprefix("pruned_"))
        else:
            row[column] = summary.get(column)
    return row


def _key(row: dict) -> tuple:
    return row.get("attack"), row["method"]


def _values(rows: list[dict], key: tuple, column: str) -> list[float]:
    return [r[column] for r in rows if _key(r) == key and r[column] is not None]


def _keys(rows: list[dict]) -> list[tuple]:
    """The table's lines: (attack, method) in grid order."""
    return list(dict.fromkeys(_key(r) for r in rows))


def line_label(rows: list[dict], key: tuple) -> str:
    """A line's name: the method, or `attack / method` when the rows hold several attacks."""
    attack, method = key
    several = len({r.get("attack") for r in rows}) > 1
    return f"{attack} / {method}" if several else method


def table(rows: list[dict[str, Any]]) -> str:
    """The study's table as Markdown: one line per method, mean ± std (n) per column."""
    lines = [
        "| Method | " + " | ".join(h for h, *_ in TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for key in _keys(rows):
        cells = []
        for _, column, scale, digits in TABLE_COLUMNS:
            values = _values(rows, key, column)
            cells.append(
                metrics.format_mean_std(np.asarray(values) * scale, digits) if values else "–"
            )
        lines.append(f"| {line_label(rows, key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(
    workdir: str,
    rows: list[dict[str, Any]],
    *,
    grid_seconds: float | None = None,
    plots: bool = False,
) -> None:
    """Writes `results.csv` and `table.md` (and the plots) into `workdir`.

    Args:
        workdir: the grid directory.
        rows: `cell_row` dicts.
        grid_seconds: this invocation's wall time, noted under the table.
        plots: also draw the PNG plots (needs matplotlib; skipped with a warning without).
    """
    files.write_csv(os.path.join(workdir, RESULTS_FILE), rows, COLUMNS, private=False)

    cells_seconds = sum(r["wall_seconds"] or 0.0 for r in rows)
    text = table(rows) + (
        f"\nMean ± sample std over seeds (n = seeds). {len(rows)} cells; the cells' own wall "
        f"times sum to {cells_seconds / 60:.1f} min"
    )
    if grid_seconds is not None:
        text += f"; this invocation of the grid took {grid_seconds / 60:.1f} min"
    files.write_text(os.path.join(workdir, TABLE_FILE), text + ".\n", private=False)
    if plots and rows:
        try:
            import matplotlib
        except ImportError:
            logging.warning("matplotlib is not installed (pip install -e '.[plot]'): no plots")
            return
        matplotlib.use("Agg")
        draw_plots(workdir, rows)


def draw_plots(workdir: str, rows: list[dict[str, Any]]) -> list[str]:
    """Draws `PLOTS` into `workdir`; returns their paths."""
    import matplotlib.pyplot as plt

    keys = _keys(rows)
    methods = [line_label(rows, k) for k in keys]
    x = np.arange(len(methods))

    def stats(column):
        agg = [metrics.aggregate(np.asarray(_values(rows, k, column)) * 100) for k in keys]
        mean = np.array([a["mean"] for a in agg])
        std = np.nan_to_num(np.array([a["std"] for a in agg]))  # n = 1: no error bar
        return mean, std

    paths = []

    def save(fig, name):
        fig.tight_layout()
        path = os.path.join(workdir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    n = max(len(_values(rows, k, "poison_retention")) for k in keys)
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.5))
    mean, std = stats("poison_retention")
    ax.bar(x, mean, yerr=std, capsize=4, color="tab:red")
    ax.set_xticks(x, methods)
    ax.set_ylabel("poisons kept (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Poison retention per method (mean ± std, up to n={n} seeds)")
    save(fig, PLOTS[0])

    for name, column, label in (
        (PLOTS[1], "clean_accuracy", "clean accuracy (%)"),
        (PLOTS[2], "attack_success_rate", "attack success rate (%)"),
    ):
        fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.5))
        for offset, (prefix, arm) in ((-0.2, ("", "dense")), (0.2, ("pruned_", "pruned"))):
            mean, std = stats(prefix + column)
            ax.bar(x + offset, mean, width=0.4, yerr=std, capsize=4, label=arm)
        ax.set_xticks(x, methods)
        ax.set_ylabel(label)
        ax.set_ylim(0, 105)
        ax.legend(loc="lower right")
        ax.set_title(f"{label.split(' (')[0].capitalize()}: dense vs pruned (mean ± std)")
        save(fig, name)
    return paths
