"""The defense grid's figures (matplotlib, `pip install -e ".[plot]"`), drawn by
`jaxbd.pipeline.grid.defense_report.write` from what `defense_report.collect` read.

- `tradeoff_<attack>[_<method>].png`: per attack (× selection method), one panel per
  defender budget with every defense's trade-off curve — test clean accuracy against ASR,
  one line per seed, a circle at the undefended start, a star at the model the defense
  returned (chosen on the defender's validation images) — and the Δ band: clean accuracies
  within Δ of the undefended model's (the mean over seeds), where η_Δ is read. A data-free
  repair, which has no curve, is its star alone, in every panel.
- `heatmap_<budget>.png`: per budget, the remaining ASR (mean over seeds, %) of every attack
  × defense, the undefended model in the first column.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxbd.pipeline import grid as grid_lib
from jaxbd.pipeline.grid.defense_report import column_label, row_label


def draw(workdir: str, g: grid_lib.Grid, found: dict[str, Any], *, delta: float) -> list[str]:
    """Draws every figure of the grid into `workdir`; returns their paths.

    Args:
        workdir: the grid directory.
        g: the grid.
        found: `defense_report.collect(..., curves=True)`.
        delta: the Δ budget (absolute, e.g. 0.02).
    """
    paths = []
    for attack in g.attacks:
        for method in g.methods:
            cells = [c for c in found["cells"] if (c["attack"], c["method"]) == (attack, method)]
            if not cells:
                continue
            name = attack if len(g.methods) == 1 else f"{attack}_{method}"
            path = os.path.join(workdir, f"tradeoff_{name}.png")
            tradeoff(path, g, attack, method, cells, found, delta=delta)
            paths.append(path)
    for budget in g.budgets or (grid_lib.NO_DATA,):
        path = os.path.join(workdir, f"heatmap_{budget.dirname}.png")
        heatmap(path, g, budget, found["cells"], found["runs"])
        paths.append(path)
    return paths


def tradeoff(
    path: str,
    g: grid_lib.Grid,
    attack: str,
    method: str,
    cells: list[dict],
    found: dict[str, Any],
    *,
    delta: float,
) -> None:
    """One attack's trade-off figure (see the module docstring)."""
    import matplotlib.pyplot as plt

    curves = found["curves"]
    returned = {
        (r["attack"], r["method"], r["defense"], r["budget"], r["seed"]): r for r in found["runs"]
    }
    budgets = g.budgets or (grid_lib.NO_DATA,)
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(4.6 * len(budgets), 4.0), squeeze=False, sharey=True
    )
    colors = {d.label: f"C{i % 10}" for i, d in enumerate(g.defenses)}
    base = float(np.mean([c["clean_accuracy"] for c in cells])) * 100
    for ax, budget in zip(axes[0], budgets, strict=True):
        ax.axvspan(base - 100 * delta, base, color="tab:green", alpha=0.12, lw=0)
        ax.axvline(base - 100 * delta, color="tab:green", ls="--", lw=0.8)
        for defense in g.defenses:
            b = grid_lib.NO_DATA if defense.data_free else budget
            labelled = False
            for seed in g.seeds:
                key = (attack, method, defense.label, b.label, seed)
                rows, run = curves.get(key), returned.get(key)
                if not rows or run is None:
                    continue
                xs = [100 * r["test_clean_accuracy"] for r in rows]
                ys = [100 * r["test_attack_success_rate"] for r in rows]
                color = colors[defense.label]
                label = None if labelled else defense.label
                ax.plot(xs, ys, marker=".", ms=3, lw=1, alpha=0.8, color=color, label=label)
                ax.plot(xs[:1], ys[:1], "o", color=color, ms=5, alpha=0.8)
                # The model the defense returned (chosen on validation data; a data-free
                # repair's model is not on its one-row curve).
                after = (100 * run["clean_accuracy"], 100 * run["attack_success_rate"])
                ax.plot(*after, "*", color=color, ms=10, alpha=0.9, mec="black", mew=0.4)
                labelled = True
        ax.set_title(f"{row_label(g, attack, method)}: defender {budget.label}", fontsize=9)
        ax.set_xlabel("test clean accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("attack success rate (%)")
    fig.suptitle(
        f"Trade-off curves (circle: undefended, star: returned model; green: within Δ = "
        f"{100 * delta:g}% of the undefended accuracy)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap(
    path: str, g: grid_lib.Grid, budget: grid_lib.Budget, cells: list[dict], runs: list[dict]
) -> None:
    """One budget's heat map of remaining ASR, attacks × defenses (see the module docstring)."""
    import matplotlib.pyplot as plt

    columns = [(d, grid_lib.NO_DATA if d.data_free else budget) for d in g.defenses]
    keys = [(a, m) for a in g.attacks for m in g.methods]
    values = np.full((len(keys), len(columns) + 1), np.nan)
    for i, (attack, method) in enumerate(keys):
        own = [
            c["attack_success_rate"]
            for c in cells
            if (c["attack"], c["method"]) == (attack, method)
        ]
        values[i, 0] = 100 * np.mean(own) if own else np.nan
        for j, (defense, b) in enumerate(columns, start=1):
            asr = [
                r["attack_success_rate"]
                for r in runs
                if (r["attack"], r["method"], r["defense"], r["budget"])
                == (attack, method, defense.label, b.label)
            ]
            values[i, j] = 100 * np.mean(asr) if asr else np.nan
    fig, ax = plt.subplots(figsize=(1.3 * (len(columns) + 1) + 2.5, 0.5 * len(keys) + 1.8))
    image = ax.imshow(values, cmap="Reds", vmin=0, vmax=100, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                dark = values[i, j] > 60
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    names = ["undefended"] + [column_label(d, b) for d, b in columns]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)), [row_label(g, a, m) for a, m in keys], fontsize=8)
    fig.colorbar(image, ax=ax, label="remaining ASR (%)")
    ax.set_title(f"Remaining ASR, defender {budget.label} (mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
