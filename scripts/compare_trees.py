"""Runs the smoke config in two source trees and compares their summary.json metrics.

Used to show that a refactoring changes no result: each case (every selection method, and
the attacks with their own training hooks) runs once with the old tree's `jaxbd` and once
with the new one's, on the same seed, and every numeric field of the two summaries is
compared (wall-clock fields excepted).

    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare
    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare --cases pcb,random

Each tree runs its own `scripts/train.py` with its package first on `PYTHONPATH`. Finished
runs under `--out` are reused (run directories are never overwritten), so an interrupted
comparison resumes. Prints one line per case: `bitwise` when every metric is identical,
otherwise the largest absolute difference and the fields that differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

# case name -> overrides of configs/smoke.py
CASES = {
    "badnets": [],
    "random": ["--config.select.name=random"],
    "el2n": ["--config.select.name=el2n"],
    "grand": ["--config.select.name=grand"],
    "forgetting": ["--config.select.name=forgetting"],
    "craig": ["--config.select.name=craig"],
    "grad_align": ["--config.select.name=grad_align"],
    "pcb": ["--config.attack.name=pcb"],
    "adv_clean_label": ["--config.attack.name=adv_clean_label"],
}
# Fields that measure the machine or the clock, not the computation.
MACHINE_FIELDS = ("platform", "jax_version", "python_version", "device_kind", "devices")


def _run(tree: str, case: str, out: str) -> dict:
    workdir = os.path.join(out, case)
    summary_path = os.path.join(workdir, "summary.json")
    if not os.path.exists(summary_path):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        cmd = [
            sys.executable,
            os.path.join(tree, "scripts", "train.py"),
            "--config",
            os.path.join(tree, "configs", "smoke.py"),
            "--workdir",
            workdir,
            "--config.runtime.progress=False",
            *CASES[case],
        ]
        log_path = os.path.join(out, f"{case}.log")
        os.makedirs(out, exist_ok=True)
        with open(log_path, "w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(summary_path) as f:
        return json.load(f)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in MACHINE_FIELDS or "seconds" in key:
                continue
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), tree


def compare(old: dict, new: dict) -> tuple[float, list[str]]:
    """Returns the largest absolute numeric difference and the fields that differ."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    differing, largest = [], 0.0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            differing.append(f"{key} (only in {'new' if key in b else 'old'})")
            continue
        x, y = a[key], b[key]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if x != y and not (math.isnan(x) and math.isnan(y)):
                largest = max(largest, abs(x - y))
                differing.append(f"{key}: {x} -> {y}")
        elif x != y:
            differing.append(f"{key}: {x!r} -> {y!r}")
    return largest, differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the tree before the change")
    parser.add_argument("--new", required=True, help="the tree after the change")
    parser.add_argument("--out", required=True, help="folder for the runs (old/, new/)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--only", choices=("old", "new"), help="run one tree, compare nothing")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    for case in cases:
        trees = {"old": args.old, "new": args.new}
        if args.only:
            trees = {args.only: trees[args.only]}
        summaries = {side: _run(t, case, os.path.join(args.out, side)) for side, t in trees.items()}
        if args.only:
            print(f"{case}: ran {args.only}", flush=True)
            continue
        largest, differing = compare(summaries["old"], summaries["new"])
        if not differing:
            print(f"{case}: bitwise", flush=True)
        else:
            print(f"{case}: max |diff| {largest:.4g} in {len(differing)} field(s)", flush=True)
            for line in differing:
                print(f"    {line}", flush=True)


if __name__ == "__main__":
    main()
