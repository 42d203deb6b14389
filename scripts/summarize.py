"""Prints a Markdown table of finished runs' `summary.json` figures.

Usage:
    python scripts/summarize.py runs/sel_* [--columns selection,poison_kept,...]

Each argument is a run directory; unfinished runs are listed as such. A run is labelled by
its folder name, and a sweep's cell (`<sweep>/cells/<method>/seed<k>`) by `<method>/seed<k>`,
so cells of different methods stay apart (`<attack>/<method>/seed<k>` in a grid with an
attack axis, `<sweep>/cells/<attack>/<method>/seed<k>`):

    python scripts/summarize.py runs/paper/cells/*/*

`--grid WORKDIR` instead writes a grid directory's report (`scripts/sweep.py`'s tables and
figures) from whatever is finished in it, e.g. once the jobs of a sharded grid ended:

    python scripts/summarize.py --grid runs/pyp_grid

The default columns are the selection report and the dense metrics; `--columns` picks others
(any summary key; dotted keys reach into objects, e.g.
`pruned.clean_accuracy,pruned.sparsity.total`).
"""

from __future__ import annotations

import argparse
import json
import os
import re

DEFAULT_COLUMNS = (
    "selection",
    "attack",
    "num_selected",
    "poison_total",
    "poison_kept",
    "poison_retention",
    "backdoor_retention",
    "removed_precision",
    "removed_recall",
    "clean_accuracy",
    "attack_success_rate",
    "selection_seconds",
    "wall_seconds",
)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.0f}"
    return "" if value is None else str(value)


def _get(summary: dict, column: str):
    value = summary
    for key in column.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def run_label(run: str) -> str:
    """The table's name for a run directory: its folder name, or `<method>/seed<k>` for a
    sweep cell, whose folder name alone (`seed0`) would not say which method it is."""
    path = os.path.normpath(run)
    name = os.path.basename(path)
    if re.fullmatch(r"seed\d+", name):
        method_dir = os.path.dirname(path)
        method, above = os.path.basename(method_dir), os.path.dirname(method_dir)
        if os.path.basename(os.path.dirname(above)) == "cells":  # cells/<attack>/<method>
            return f"{os.path.basename(above)}/{method}/{name}"
        if method:
            return f"{method}/{name}"
    return name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories")
    parser.add_argument("--columns", default=",".join(DEFAULT_COLUMNS))
    parser.add_argument("--grid", help="write this grid directory's report instead")
    args = parser.parse_args(argv)
    if args.grid:
        _grid_report(args.grid)
        return
    if not args.runs:
        parser.error("give run directories, or --grid WORKDIR")
    columns = args.columns.split(",")
    print("| run | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for run in args.runs:
        path = os.path.join(run, "summary.json")
        if not os.path.exists(path):
            print(f"| {run_label(run)} | (unfinished) |")
            continue
        with open(path) as f:
            summary = json.load(f)
        cells = [_format(_get(summary, c)) for c in columns]
        print(f"| {run_label(run)} | " + " | ".join(cells) + " |")


def _grid_report(workdir: str) -> None:
    from jaxbd import cli
    from jaxbd.pipeline.grid import defense_report, sweep

    cli.run_or_exit(
        lambda: sweep.report_only(workdir),
        on_interrupt="re-run the same command",
        workdir=workdir,
    )
    for name in ("table.md", defense_report.TABLE_MD):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                print(f.read())
    print(f"wrote the report of {workdir}")


if __name__ == "__main__":
    main()
