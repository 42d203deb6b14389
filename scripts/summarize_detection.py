"""The detection tables of a folder written by scripts/cpu_detection.sh.

    python scripts/summarize_detection.py runs/cpu_detection \
        [--reference results/cpu_grid/results.csv \
         --reference_methods spectral,activation_clustering,craig,grad_align]

Prints three Markdown tables from what has finished:

- STRIP (`strip_<attack>/summary.json`, scripts/detect.py): the examined model's clean
  accuracy and ASR (the detection's `model_test`; for an older detection, its source run's
  summary where that run is at hand), the threshold,
  FRR on the clean test set, FAR on the triggered non-target test images, ROC AUC;
- the training-set detectors as selection methods, read from the reference grid's
  `results.csv` (scripts/cpu_grid.sh runs them beside the coresets; `--reference_methods`
  picks the rows): removed-set precision and recall, poison retention, the dense model's
  clean accuracy and ASR after training on what was kept — mean ± sample std over seeds (n);
- the model zoo (`zoo/auc.json`, scripts/zoo.py): each detector's ROC AUC with its bootstrap
  interval.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
from collections import defaultdict


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _mean_std(rows, key, digits=1) -> str:
    """Mean ± sample std over seeds of a fraction column, in percent."""
    values = [100.0 * float(r[key]) for r in rows if r[key] not in ("", None)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def strip_table(folder: str) -> list[str]:
    lines = [
        "| model | clean acc. | ASR | threshold (bits) | FRR (clean test) | FAR (triggered) | "
        "ROC AUC | overlays | held-out images |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path in sorted(glob.glob(os.path.join(folder, "strip_*", "summary.json"))):
        with open(path) as f:
            s = json.load(f)
        # The examined model's test metrics: the detection's own record (`model_test`), or,
        # for a detection written before it kept one, its source run's summary if at hand.
        src = s.get("model_test") or {"clean_accuracy": None, "attack_success_rate": None}
        source_summary = os.path.join(s["source"], "summary.json")
        if "model_test" not in s and os.path.exists(source_summary):
            with open(source_summary) as f:
                src = json.load(f)
        lines.append(
            f"| {s['attack']} | {_pct(src['clean_accuracy'])} | "
            f"{_pct(src['attack_success_rate'])} | {s['threshold']:.3f} | {_pct(s['frr'])} | "
            f"{_pct(s['far'])} | {s['roc_auc']:.3f} | {s['overlays']} | {s['num_val']} |"
        )
    return lines


def _rows(path: str, methods=None):
    by_method = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            if methods is None or row["method"] in methods:
                by_method[row["method"]].append(row)
    return by_method


def selection_table(reference: str | None, reference_methods) -> list[str]:
    lines = [
        "| method | removed precision (%) | removed recall (%) | poison retention (%) | "
        "dense clean acc. (%) | dense ASR (%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    if reference and os.path.exists(reference):
        by_method = _rows(reference, set(reference_methods))
        for method in reference_methods:
            rows = by_method.get(method)
            if not rows:
                continue
            lines.append(
                f"| {method} | {_mean_std(rows, 'removed_precision')} | "
                f"{_mean_std(rows, 'removed_recall')} | "
                f"{_mean_std(rows, 'poison_retention')} | "
                f"{_mean_std(rows, 'clean_accuracy', digits=2)} | "
                f"{_mean_std(rows, 'attack_success_rate', digits=2)} |"
            )
    return lines


def zoo_table(folder: str) -> list[str]:
    path = os.path.join(folder, "zoo", "auc.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        report = json.load(f)
    lines = [
        "| detector | ROC AUC | 95% bootstrap interval | backdoored | clean | excluded |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, a in sorted(report["auc"].items()):
        auc = "–" if a["auc"] is None else f"{a['auc']:.3f}"
        low = "–" if a["low"] is None else f"{a['low']:.3f}"
        high = "–" if a["high"] is None else f"{a['high']:.3f}"
        excluded = ", ".join(a.get("excluded", [])) or "none"
        lines.append(
            f"| {name} | {auc} | [{low}, {high}] | {a['positives']} | {a['negatives']} "
            f"| {excluded} |"
        )
    took = f"{report['seconds'] / 60:.1f} min in the last invocation"
    if "model_seconds" in report:  # older reports kept only the last invocation's time
        took = f"{report['model_seconds'] / 60:.1f} min of runs ({took})"
    lines.append(f"\n{report['models']} models, {took}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--reference", help="the reference grid's results.csv")
    parser.add_argument(
        "--reference_methods", default="spectral,activation_clustering,craig,grad_align"
    )
    args = parser.parse_args()
    if not os.path.isdir(args.folder):
        parser.error(f"no folder {args.folder}")
    methods = [m for m in args.reference_methods.split(",") if m]
    for title, lines in (
        ("STRIP", strip_table(args.folder)),
        ("Training-set detectors", selection_table(args.reference, methods)),
        ("Model zoo", zoo_table(args.folder)),
    ):
        print(f"## {title}\n")
        print("\n".join(lines) if len(lines) > 2 else "(nothing finished)")
        print()


if __name__ == "__main__":
    main()
