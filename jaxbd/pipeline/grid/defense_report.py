"""The defense grid's report: what each defense leaves of each attack, and at what cost.

Written by `jaxbd.pipeline.grid.sweep` from the finished runs on disk (`collect`), so every job of
a sharded grid, and `scripts/summarize.py --grid`, writes the same report. All figures are
percentages of the test set (ASR excludes target-class images); aggregates are mean ± sample
std (ddof = 1) over seeds with n (docs/metrics.md).

The files (`write` says what each holds): `defense_results.csv`, one row per defense run;
`table_defenses.md` / `.csv`, Pick your Poison's table (remaining ASR per attack × defense ×
budget); `table_backdoorbench.md`, BackdoorBench's leaderboard layout; `table_detection.md`
and `detection_results.csv`, selection methods read as poison detectors and the detectors'
results; the figures of `jaxbd.pipeline.grid.defense_figures`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxbd import files, metrics
from jaxbd.pipeline import grid as grid_lib
from jaxbd.pipeline.defend import CURVE_FILE
from jaxbd.runs.rundir import SUMMARY_FILE

RUNS_FILE = "defense_results.csv"
TABLE_MD = "table_defenses.md"
TABLE_CSV = "table_defenses.csv"
BB_TABLE = "table_backdoorbench.md"
DETECTION_TABLE = "table_detection.md"
DETECTIONS_FILE = "detection_results.csv"
DETECTION_COLUMNS = (
    "attack",
    "method",
    "seed",
    "detector",
    "budget",
    "roc_auc",
    "frr",
    "far",
    "score",
    "flagged",
    "wall_seconds",
)

RUN_COLUMNS = (
    "attack",
    "method",
    "seed",
    "defense",
    "repair",
    "budget",
    "defender_examples",
    "before_clean_accuracy",
    "before_attack_success_rate",
    "before_robust_accuracy",
    "clean_accuracy",
    "attack_success_rate",
    "asr_all_images",
    "robust_accuracy",
    "der",
    "rir",
    "oracle_asr_at_delta",
    "repaired",
    "steps",
    "returned_step",
    "stopped_early",
    "wall_seconds",
)

# The aggregated figures of table_defenses.csv (defense_results.csv columns).
_AGGREGATES = (
    "attack_success_rate",
    "clean_accuracy",
    "oracle_asr_at_delta",
    "robust_accuracy",
    "der",
)
AGGREGATE_COLUMNS = (
    "attack",
    "method",
    "defense",
    "repair",
    "budget",
    "n",
    *(f"{name}_{stat}" for name in _AGGREGATES for stat in ("mean", "std")),
)
_METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


def collect(workdir: str, g: grid_lib.Grid, *, curves: bool = False) -> dict[str, Any]:
    """Reads every finished cell and defense run of the grid.

    Args:
        workdir: the grid directory.
        g: the grid.
        curves: also read each defense run's trade-off curve (for the figures).

    Returns:
        `{"cells": [...], "runs": [...], "curves": {...}}`: a dict per finished cell (attack,
        method, seed and the defended model's clean accuracy, ASR, robust accuracy), a
        `RUN_COLUMNS` row per finished defense run, and with `curves` its rows under
        (attack, method, defense label, budget label, seed).
    """
    cells, rows, detections, found = [], [], [], {}
    for cell in g.cells():
        path = os.path.join(g.cell_dir(workdir, cell), SUMMARY_FILE)
        if not os.path.exists(path):
            continue
        summary = _read(path)
        model = summary if g.source_arm == "dense" else summary.get("pruned") or {}
        cells.append(
            {"attack": cell.attack, "method": cell.method, "seed": cell.seed}
            | {k: model.get(k) for k in _METRICS}
        )
        for defense, budget in g.defense_runs():
            folder = g.defense_dir(workdir, cell, defense, budget)
            if not os.path.exists(os.path.join(folder, SUMMARY_FILE)):
                continue
            s = _read(os.path.join(folder, SUMMARY_FILE))
            row = {
                "attack": cell.attack,
                "method": cell.method,
                "seed": cell.seed,
                "defense": defense.label,
                "repair": defense.name,
                "budget": budget.label,
            }
            row |= {f"before_{k}": s["before"].get(k) for k in _METRICS}
            row |= {k: s["after"].get(k) for k in (*_METRICS, "asr_all_images")}
            row |= {k: s.get(k) for k in RUN_COLUMNS if k not in row}
            rows.append(row)
            if curves:
                with open(os.path.join(folder, CURVE_FILE)) as f:
                    key = (cell.attack, cell.method, defense.label, budget.label, cell.seed)
                    found[key] = [json.loads(line) for line in f if line.strip()]
        for detector, budget in g.detection_runs():
            path = os.path.join(g.detection_dir(workdir, cell, detector, budget), SUMMARY_FILE)
            if os.path.exists(path):
                s = _read(path)
                row = {"attack": cell.attack, "method": cell.method, "seed": cell.seed}
                row |= {"detector": detector, "budget": budget.label}
                detections.append(row | {k: s.get(k) for k in DETECTION_COLUMNS if k not in row})
    return {"cells": cells, "runs": rows, "detections": detections, "curves": found}


def write(
    workdir: str, g: grid_lib.Grid, config: ml_collections.ConfigDict, *, plots: bool = False
) -> list[str]:
    """Writes the defense tables (and with `plots` the figures) into `workdir`.

    - `defense_results.csv`: one row per defense run — attack, method, seed, defense, budget —
      with the undefended and the returned model's clean accuracy, ASR and robust accuracy,
      DER, RIR, the oracle ASR at Δ, steps and seconds (`RUN_COLUMNS`).
    - `table_defenses.md` / `table_defenses.csv`: Pick your Poison's table. A line per attack
      (× selection method when there are several), a column per defense × budget; each entry is
      the remaining ASR of the model the defense returned — chosen on the defender's own
      validation images: the deployable figure — with its clean accuracy, and beside them η_Δ,
      the oracle ASR at Δ (the lowest test ASR on the trade-off curve within Δ of the undefended
      test accuracy: read off the test set, so not deployable). The CSV holds the same
      aggregates, a line per (attack, method, defense, budget), defense `none` = undefended.
    - `table_backdoorbench.md`: BackdoorBench's leaderboard layout, per budget: a line per
      attack × defense, the undefended model first, with C-Acc, ASR, RA and DER.
    - `table_detection.md` (grids with selection methods or detectors): each selection method's
      removed set read as a poison detector — precision, recall, poisons kept — and the ASR of
      the model trained on what it kept; each detector's result on each attack's models per
      budget (STRIP: ROC AUC, FRR and FAR on the test set; a model-level detector: its score and
      how many models it flagged); `detection_results.csv`, one row per detection run.
    - figures (`jaxbd.pipeline.grid.defense_figures`): per attack, every defense's trade-off curve
      (`tradeoff_<attack>[_<method>].png`, one panel per budget, the Δ band marked) and per
      budget a heat map of remaining ASR, attacks × defenses (`heatmap_<budget>.png`).

    Args:
        workdir: the grid directory.
        g: the grid.
        config: its configuration (for Δ).
        plots: also draw the figures (needs matplotlib; skipped with a warning without).

    Returns:
        The paths written.
    """
    delta = float(config.sweep.get("defense", {}).get("delta", 0.02))
    found = collect(workdir, g, curves=plots)
    cells, rows = found["cells"], found["runs"]
    written = [
        _write_csv(workdir, RUNS_FILE, RUN_COLUMNS, rows),
        _write_text(workdir, TABLE_MD, defense_table(g, cells, rows, delta=delta)),
        _write_csv(workdir, TABLE_CSV, AGGREGATE_COLUMNS, aggregate_csv(g, cells, rows)),
        _write_text(workdir, BB_TABLE, backdoorbench_table(g, cells, rows)),
    ]
    selection = any(m != grid_lib.FULL for m in g.methods)
    if selection or g.detectors:
        summaries = _cell_summaries(workdir, g) if selection else []
        text = detection_table(g, summaries, found["detections"])
        written.append(_write_text(workdir, DETECTION_TABLE, text))
    if g.detectors:
        written.append(_write_csv(workdir, DETECTIONS_FILE, DETECTION_COLUMNS, found["detections"]))
    if plots and rows:
        try:
            import matplotlib
        except ImportError:
            logging.warning("matplotlib is not installed (pip install -e '.[plot]'): no figures")
            return written
        matplotlib.use("Agg")
        from jaxbd.pipeline.grid import defense_figures

        written += defense_figures.draw(workdir, g, found, delta=delta)
    return written


# -- the tables ------------------------------------------------------------------------------


def row_label(g: grid_lib.Grid, attack: str, method: str) -> str:
    """A table line's name: the attack, `attack / method` when there are several methods."""
    return f"{attack} / {method}" if len(g.methods) > 1 else attack


def column_label(defense: grid_lib.Defense, budget: grid_lib.Budget) -> str:
    """A column's name: `finetune r=1%`, `clp (no data)`."""
    if defense.data_free:
        return f"{defense.label} (no data)"
    return f"{defense.label} {budget.label}"


def mean_std(values: Sequence[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """ "mean ± std" of the values given (None left out), "mean" for one, "–" for none."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return "–"
    stats = metrics.aggregate(np.asarray(kept) * scale)
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def defense_table(g: grid_lib.Grid, cells: list[dict], rows: list[dict], *, delta: float) -> str:
    """`table_defenses.md`: remaining ASR · clean accuracy · η_Δ per attack × defense × budget."""
    columns = g.defense_runs()
    header = ["attack" if len(g.methods) == 1 else "attack / method", "undefended"]
    header += [column_label(d, b) for d, b in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for attack in g.attacks:
        for method in g.methods:
            own = [c for c in cells if c["attack"] == attack and c["method"] == method]
            entries = [row_label(g, attack, method)]
            entries.append(
                f"ASR {mean_std([c['attack_success_rate'] for c in own])} · acc "
                f"{mean_std([c['clean_accuracy'] for c in own])} (n={len(own)})"
                if own
                else "–"
            )
            for defense, budget in columns:
                runs = _runs(rows, attack, method, defense.label, budget.label)
                entries.append(
                    f"ASR {mean_std([r['attack_success_rate'] for r in runs])} · acc "
                    f"{mean_std([r['clean_accuracy'] for r in runs])} · η "
                    f"{mean_std([r['oracle_asr_at_delta'] for r in runs])} (n={len(runs)})"
                    if runs
                    else "–"
                )
            lines.append("| " + " | ".join(entries) + " |")
    note = (
        "\nPercentages of the test set, mean ± sample std over seeds (n). ASR: the attack "
        "success rate the defense leaves — the model it returned, chosen on the defender's "
        "own held-out images (the deployable figure); acc: that model's clean accuracy; "
        f"η: the oracle ASR at Δ = {100 * delta:g}% (the lowest ASR on the trade-off curve "
        "within Δ of the undefended test accuracy: chosen on the test set, not deployable). "
        "r: the defender's images as a fraction of the training set; spc: per class.\n"
    )
    return "\n".join(lines) + "\n" + note


def aggregate_csv(g: grid_lib.Grid, cells: list[dict], rows: list[dict]) -> list[dict]:
    """`table_defenses.csv`'s rows: the aggregates of `defense_table` (and RA, DER)."""
    out = []
    for attack in g.attacks:
        for method in g.methods:
            own = [c for c in cells if c["attack"] == attack and c["method"] == method]
            line = {"attack": attack, "method": method, "defense": "none", "repair": ""}
            line |= {"budget": "", "n": len(own)}
            for name in _AGGREGATES:  # the undefended model has no oracle or DER
                line |= _mean_std_fields(name, [c.get(name) for c in own])
            out.append(line)
            for defense, budget in g.defense_runs():
                runs = _runs(rows, attack, method, defense.label, budget.label)
                line = {"attack": attack, "method": method, "defense": defense.label}
                line |= {"repair": defense.name, "budget": budget.label, "n": len(runs)}
                for name in _AGGREGATES:
                    line |= _mean_std_fields(name, [r[name] for r in runs])
                out.append(line)
    return out


def backdoorbench_table(g: grid_lib.Grid, cells: list[dict], rows: list[dict]) -> str:
    """`table_backdoorbench.md`: C-Acc / ASR / RA / DER per attack × defense, per budget."""
    budgets = g.budgets or (grid_lib.NO_DATA,)
    parts = [
        "C-Acc: clean accuracy, ASR: attack success rate, RA: robust accuracy (triggered test "
        "images classified as their true class), all in % of the test set; DER = [max(0, "
        "ΔASR) − max(0, ΔC-Acc) + 1] / 2 (BackdoorBench; 0.5 = no change). The model each "
        "defense returned (chosen on the defender's held-out images); mean ± sample std over "
        "seeds (n).\n"
    ]
    for budget in budgets:
        parts.append(f"\n### Defender data {budget.label}\n")
        parts.append("| attack | defense | C-Acc (%) | ASR (%) | RA (%) | DER | n |")
        parts.append("|---|---|---:|---:|---:|---:|---:|")
        here = [(d, b) for d, b in g.defense_runs() if b == budget or d.data_free]
        for attack in g.attacks:
            for method in g.methods:
                label = row_label(g, attack, method)
                own = [c for c in cells if c["attack"] == attack and c["method"] == method]
                parts.append(_bb_line(label, "no defense", own, der=False))
                for defense, b in here:
                    runs = _runs(rows, attack, method, defense.label, b.label)
                    parts.append(_bb_line(label, defense.label, runs, der=True))
    return "\n".join(parts) + "\n"


def _bb_line(label: str, defense: str, items: list[dict], *, der: bool) -> str:
    def col(key):
        return mean_std([item[key] for item in items], 100, 2)

    rating = mean_std([item["der"] for item in items], 1, 3) if der else "–"
    return (
        f"| {label} | {defense} | {col('clean_accuracy')} | {col('attack_success_rate')} | "
        f"{col('robust_accuracy')} | {rating} | {len(items)} |"
    )


def detection_table(g: grid_lib.Grid, summaries: list[dict], detections: list[dict]) -> str:
    """`table_detection.md`: selection methods as training-set detectors; detectors' results."""
    parts = []
    if any(m != grid_lib.FULL for m in g.methods):
        parts += [
            "### Selection methods as training-set poison detectors\n",
            "| attack | method | removed precision | removed recall | poisons kept (%) | "
            "backdoor poisons kept (%) | clean acc. (%) | ASR (%) | n |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for attack in g.attacks:
            for method in g.methods:
                if method == grid_lib.FULL:
                    continue
                own = [s for s in summaries if s["_attack"] == attack and s["_method"] == method]

                def col(key, scale=100.0, digits=1, own=own):
                    return mean_std([s.get(key) for s in own], scale, digits)

                parts.append(
                    f"| {attack} | {method} | {col('removed_precision', 1, 3)} | "
                    f"{col('removed_recall', 1, 3)} | {col('poison_retention')} | "
                    f"{col('backdoor_retention')} | {col('clean_accuracy', 100, 2)} | "
                    f"{col('attack_success_rate', 100, 2)} | {len(own)} |"
                )
        parts.append(
            "\nThe examples a selection method removed read as its flags (precision: poisons "
            "among them; recall: poisons found), then the model trained on what it kept (dense "
            "arm). Mean ± sample std over seeds.\n"
        )
    if g.detectors:
        columns = g.detection_runs()
        header = ["attack" if len(g.methods) == 1 else "attack / method"]
        header += [f"{d} {b.label}" for d, b in columns]
        parts += [
            "### Detectors on the trained models\n",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for attack in g.attacks:
            for method in g.methods:
                entries = [row_label(g, attack, method)]
                for detector, budget in columns:
                    own = [
                        r
                        for r in detections
                        if (r["attack"], r["method"], r["detector"], r["budget"])
                        == (attack, method, detector, budget.label)
                    ]
                    entries.append(_detection_entry(own))
                parts.append("| " + " | ".join(entries) + " |")
        parts.append(
            "\nAn input detector (STRIP): ROC AUC of its scores on the clean against the "
            "triggered test images, and at the threshold set on the defender's held-out images "
            "its FRR (clean images rejected) and FAR (triggered images accepted), in %. A "
            "model-level detector: its score and how many of the n models it flagged. Mean ± "
            "sample std over seeds.\n"
        )
    return "\n".join(parts) + "\n"


def _detection_entry(own: list[dict]) -> str:
    if not own:
        return "–"
    if any(r.get("roc_auc") is not None for r in own):
        return (
            f"AUC {mean_std([r['roc_auc'] for r in own], 1, 3)} · FRR "
            f"{mean_std([r['frr'] for r in own])} · FAR {mean_std([r['far'] for r in own])} "
            f"(n={len(own)})"
        )
    flagged = sum(1 for r in own if r.get("flagged"))
    return f"score {mean_std([r['score'] for r in own], 1, 2)} · flagged {flagged}/{len(own)}"


# -- helpers ---------------------------------------------------------------------------------


def _runs(rows, attack, method, defense, budget) -> list[dict]:
    return [
        r
        for r in rows
        if (r["attack"], r["method"], r["defense"], r["budget"])
        == (attack, method, defense, budget)
    ]


def _mean_std_fields(name: str, values: Sequence[float | None]) -> dict[str, float | None]:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    stats = metrics.aggregate(kept) if kept else {"mean": None, "std": None}
    std = stats["std"]
    return {
        f"{name}_mean": stats["mean"],
        f"{name}_std": None if std is None or not math.isfinite(std) else std,
    }


def _cell_summaries(workdir: str, g: grid_lib.Grid) -> list[dict]:
    out = []
    for cell in g.cells():
        path = os.path.join(g.cell_dir(workdir, cell), SUMMARY_FILE)
        if os.path.exists(path):
            out.append(_read(path) | {"_attack": cell.attack, "_method": cell.method})
    return out


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _write_text(workdir: str, name: str, text: str) -> str:
    """Writes a file atomically (a reader never sees half of it); returns its path."""
    path = os.path.join(workdir, name)
    files.write_text(path, text, private=False)
    return path


def _write_csv(workdir: str, name: str, columns: Sequence[str], rows: list[dict]) -> str:
    """Writes a CSV atomically; returns its path."""
    path = os.path.join(workdir, name)
    files.write_csv(path, rows, columns, private=False)
    return path
