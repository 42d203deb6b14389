"""Runs the smoke config, every repair and every detector in two source trees and compares.

Used to show that a refactoring changes no result. Each case runs once with the old tree's
`jaxbd` and once with the new one's, on the same seed, and its outputs are compared exactly:

- training cases (`configs/smoke.py`: every selection method, and the attacks with their own
  training hooks): `summary.json`, `metrics.jsonl` and `selection.npz` (where present);
- `defend_<repair>`: one `scripts/defend.py` run per registered repair on the `badnets`
  case's model, at step counts small enough for seconds: `summary.json`, `curve.jsonl`,
  `candidates.jsonl`, `metrics.jsonl`;
- `detect_<detector>`: one `scripts/detect.py` run per registered detector on the same
  model: `summary.json`, `scores.npz`, `metrics.jsonl`.

Every field of the JSON files is compared (wall-clock and machine fields excepted; the two
run folders are written `<run>` in paths), and every array of the `.npz` files (dtype, shape
and values). Commands:

    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare
    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare --cases pcb,random
    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare --side old
    python scripts/compare_trees.py --old ../old --new . --out /tmp/compare \
        --report results/refactor/compare.md

Each tree runs its own `scripts/` and `configs/` with its package first on `PYTHONPATH`, and
with the editable install's import hook removed, so that no module of another tree can fill
in (checked: every run prints the `jaxbd` it imported into its log). Runs go to
`--out/old/...` and `--out/new/...`; finished runs are reused (run directories are never
overwritten), so an interrupted comparison resumes and `--side old` prepares one side
ahead. Prints one line per case: `bitwise` when every compared value is identical,
otherwise the largest absolute difference and the fields that differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # "train" | "defend" | "detect"
    overrides: tuple[str, ...]
    covers: str


def _train(overrides, covers):
    return Case("train", tuple(overrides), covers)


# Common defense overrides: the smoke defense of `.ci/run` (10% of the training set as the
# defender's data; a curve row every 10 steps).
_DEFEND = ("--config.defender.fraction=0.1", "--config.defense.eval_every=10")

CASES = {
    "badnets": _train([], "smoke run: BadNets, no selection, dense + IMP pruned arm"),
    "random": _train(["--config.select.name=random"], "selection: random"),
    "el2n": _train(["--config.select.name=el2n"], "selection: EL2N (2-model ensemble)"),
    "grand": _train(["--config.select.name=grand"], "selection: GraNd (2-model ensemble)"),
    "forgetting": _train(["--config.select.name=forgetting"], "selection: forgetting"),
    "craig": _train(["--config.select.name=craig"], "selection: CRAIG"),
    "grad_align": _train(["--config.select.name=grad_align"], "selection: gradient alignment"),
    "pcb": _train(["--config.attack.name=pcb"], "attack with its own training: PCB"),
    "adv_clean_label": _train(
        ["--config.attack.name=adv_clean_label"],
        "attack with its own training: adversarial clean-label (surrogate)",
    ),
    "defend_anp": Case(
        "defend",
        (
            "--config.defense.name=anp",
            "--config.defense.steps=20",
            "--config.defense.anp.iterations=20",
            "--config.defense.anp.batch_size=64",
        ),
        "repair: ANP (20 mask iterations, pruning grid, 20 fine-tuning steps)",
    ),
    "defend_clp": Case(
        "defend",
        ("--config.defense.name=clp",),
        "repair: CLP (data-free: channel pruning at u = 3 and over the u grid, no steps)",
    ),
    "defend_finetune": Case(
        "defend",
        ("--config.defense.name=finetune", "--config.defense.steps=40"),
        "repair: fine-tuning (40 steps)",
    ),
    "defend_fine_pruning": Case(
        "defend",
        (
            "--config.defense.name=fine_pruning",
            "--config.defense.steps=20",
            "--config.defense.fine_pruning.batches=2",
        ),
        "repair: Fine-Pruning (activations over 2 batches, pruning, 20 steps)",
    ),
    "defend_grad_prune": Case(
        "defend",
        (
            "--config.defense.name=grad_prune",
            "--config.defense.steps=20",
            "--config.defense.grad_prune.max_rounds=5",
            "--config.defender.trigger_knowledge=True",
        ),
        "repair: gradient pruning (trigger knowledge, at most 5 rounds, 20 steps)",
    ),
    "defend_nad": Case(
        "defend",
        (
            "--config.defense.name=nad",
            "--config.defense.steps=20",
            "--config.defense.nad.teacher_steps=20",
        ),
        "repair: NAD (20 teacher steps, 20 attention-distillation steps)",
    ),
    "defend_neural_cleanse": Case(
        "defend",
        (
            "--config.defense.name=neural_cleanse",
            "--config.defense.steps=20",
            "--config.defense.neural_cleanse.epochs=2",
        ),
        "repair: Neural Cleanse (2 reverse-engineering epochs per label, 20 unlearning steps)",
    ),
    "defend_pivotal_tuning": Case(
        "defend",
        (
            "--config.defense.name=pivotal_tuning",
            "--config.defense.steps=40",
            "--config.defense.pivotal_tuning.batch_size=64",
        ),
        "repair: Pivotal Tuning with SLOL (40 steps, batch 64; `.ci/run`'s smoke defense)",
    ),
    "detect_strip": Case(
        "detect",
        ("--config.detector.name=strip", "--config.detector.strip.overlays=20"),
        "detector: STRIP (20 overlays)",
    ),
    "detect_neural_cleanse": Case(
        "detect",
        ("--config.detector.name=neural_cleanse", "--config.detector.neural_cleanse.epochs=2"),
        "detector: Neural Cleanse (2 reverse-engineering epochs per label)",
    ),
    "detect_cti": Case(
        "detect",
        (
            "--config.detector.name=cti",
            "--config.detector.cti.steps=10",
            "--config.detector.cti.repair_steps=20",
            "--config.detector.cti.repair_eval_every=10",
        ),
        "detector: CTI (20-step reference repair, 10 inversion steps)",
    ),
}
# The training run that the defense and detection cases examine.
SOURCE_CASE = "badnets"
# Files compared, per kind of case (those absent from both runs are skipped).
FILES = {
    "train": ("summary.json", "metrics.jsonl", "selection.npz"),
    "defend": ("summary.json", "curve.jsonl", "candidates.jsonl", "metrics.jsonl"),
    "detect": ("summary.json", "scores.npz", "metrics.jsonl"),
}
# Fields that measure the machine or the clock, not the computation.
MACHINE_FIELDS = ("platform", "jax_version", "python_version", "device_kind", "devices", "time")
# The launcher: the tree's script as `__main__`, without the editable install's import hook
# (it would fill in, from the installed tree, any module the tree on PYTHONPATH lacks).
_BOOT = """\
import os, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks
                     if not getattr(h, "__module__", "").startswith("__editable__")]
script, tree = sys.argv[1], sys.argv[2]
sys.argv = [script] + sys.argv[3:]
sys.path[0] = os.path.dirname(script)
import jaxbd
if not os.path.realpath(jaxbd.__file__).startswith(os.path.join(tree, "")):
    raise SystemExit(f"jaxbd imported from {jaxbd.__file__}, not from {tree}")
print(f"compare_trees: jaxbd from {jaxbd.__file__}", flush=True)
runpy.run_path(script, run_name="__main__")
"""


class RunError(RuntimeError):
    """A tree's run of a case exited with an error."""


def _is_clock(key: str) -> bool:
    return key in MACHINE_FIELDS or "seconds" in key or "per_second" in key


def _workdir(case: str, out: str) -> str:
    kind = CASES[case].kind
    if kind == "train":
        return os.path.join(out, case)
    return os.path.join(out, {"defend": "defenses", "detect": "detections"}[kind], case)


def _command(tree: str, case: str, out: str) -> list[str]:
    c = CASES[case]
    script = {"train": "train.py", "defend": "defend.py", "detect": "detect.py"}[c.kind]
    config = {"train": "smoke.py", "defend": "defend.py", "detect": "detect.py"}[c.kind]
    args = [
        os.path.join(tree, "scripts", script),
        "--config",
        os.path.join(tree, "configs", config),
        "--workdir",
        _workdir(case, out),
    ]
    if c.kind != "train":
        args.append(f"--config.source={_workdir(SOURCE_CASE, out)}")
    if c.kind == "defend":
        args += _DEFEND
    if c.kind == "detect":
        args.append("--config.defender.fraction=0.1")
    args.append("--config.runtime.progress=False")
    return args + list(c.overrides)


def _timings_path(out: str) -> str:
    return os.path.join(out, "timings.json")


def _read_json(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _run(tree: str, case: str, out: str) -> str:
    """Runs `case` with `tree` into `out` unless it finished before; returns its workdir."""
    if CASES[case].kind != "train":
        _run(tree, SOURCE_CASE, out)
    workdir = _workdir(case, out)
    tree = os.path.realpath(tree)
    script, *flags = _command(tree, case, out)
    header = f"$ PYTHONPATH={tree} python {shlex.join([script, *flags])}"
    log_path = os.path.join(out, f"{case}.log")
    if os.path.exists(os.path.join(workdir, "summary.json")):
        # Reused only when the finished run was made by the same command.
        with open(log_path) as f:
            last = [line.rstrip("\n") for line in f if line.startswith("$ ")][-1:]
        if last != [header]:
            raise RunError(
                f"{workdir} was made by another command ({log_path}); remove it to rerun"
            )
        return workdir
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, "-c", _BOOT, script, tree, *flags]
    os.makedirs(out, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"{header}\n# {tree} at {_describe(tree)}\n")
        log.flush()
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RunError(f"{tree} exited {proc.returncode}; see {log_path}")
    timings = _read_json(_timings_path(out), {})
    timings[case] = round(seconds, 1)
    with open(_timings_path(out) + ".tmp", "w") as f:
        json.dump(timings, f, indent=1, sort_keys=True)
    os.replace(_timings_path(out) + ".tmp", _timings_path(out))
    return workdir


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if _is_clock(key):
                continue
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), tree


def _load(path: str, out: str, tree: str):
    """A file's comparable content: JSON (one value, or a list of JSON lines) or arrays."""
    if not os.path.exists(path):
        return None
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    with open(path) as f:
        text = f.read()
    # The run folders differ by construction: <out>/old/... vs <out>/new/...
    # and each side runs its own tree's scripts and configs.
    text = text.replace(os.path.realpath(out), "<run>").replace(os.path.realpath(tree), "<tree>")
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def compare(old, new) -> tuple[float, list[str]]:
    """Returns the largest absolute numeric difference and the fields that differ."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    differing, largest = [], 0.0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            differing.append(f"{key} (only in {'new' if key in b else 'old'})")
            continue
        x, y = a[key], b[key]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
        if numeric:
            if x != y and not (math.isnan(x) and math.isnan(y)):
                if math.isfinite(x) and math.isfinite(y):
                    largest = max(largest, abs(x - y))
                else:
                    largest = math.inf
                differing.append(f"{key}: {x} -> {y}")
        elif x != y:
            differing.append(f"{key}: {x!r} -> {y!r}")
    return largest, differing


def compare_arrays(old: dict, new: dict) -> tuple[float, list[str]]:
    """Exact equality of every array (dtype, shape, values; NaN equals NaN), clock fields
    (`selection.npz`'s `selection_seconds`) excepted."""
    differing, largest = [], 0.0
    for key in sorted(k for k in set(old) | set(new) if not _is_clock(k)):
        if key not in old or key not in new:
            differing.append(f"{key} (only in {'new' if key in new else 'old'})")
            continue
        x, y = old[key], new[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            differing.append(f"{key}: {x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}")
            continue
        if x.dtype.kind in "fc":
            same = np.array_equal(x, y, equal_nan=True)
        else:
            same = np.array_equal(x, y)
        if same:
            continue
        if x.dtype.kind in "biufc":
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            mask = ~(np.isnan(x.astype(np.float64)) & np.isnan(y.astype(np.float64)))
            worst = float(np.nanmax(np.where(mask, diff, 0.0))) if diff.size else 0.0
            count = int(np.sum((x != y) & mask))
            largest = max(largest, worst if math.isfinite(worst) else math.inf)
            differing.append(f"{key}: {count} of {x.size} entries differ, max |diff| {worst:.4g}")
        else:
            differing.append(f"{key}: {int(np.sum(x != y))} of {x.size} entries differ")
    return largest, differing


def compare_case(case: str, outs: dict, trees: dict) -> tuple[float, list[str], list[str]]:
    """Compares a case's files; returns (largest difference, differing fields, files)."""
    largest, differing, files = 0.0, [], []
    for name in FILES[CASES[case].kind]:
        old, new = (
            _load(os.path.join(_workdir(case, outs[side]), name), outs[side], trees[side])
            for side in ("old", "new")
        )
        if old is None and new is None:
            continue
        files.append(name)
        if old is None or new is None:
            differing.append(f"{name} (only in {'new' if new is not None else 'old'})")
            continue
        if name.endswith(".npz"):
            big, fields = compare_arrays(old, new)
        else:
            big, fields = compare(old, new)
        largest = max(largest, big)
        differing += [f"{name}: {field}" for field in fields]
    return largest, differing, files


def _git(tree: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", tree, *args], capture_output=True, text=True)
    return proc.stdout.rstrip() if proc.returncode == 0 else f"(git failed: {proc.stderr.strip()})"


def _describe(tree: str) -> str:
    commit = _git(tree, "rev-parse", "HEAD")
    subject = _git(tree, "log", "-1", "--format=%s")
    changed = [line for line in _git(tree, "status", "--porcelain").splitlines() if line]
    text = f"`{commit}` ({subject})"
    if changed:
        paths = ", ".join(f"`{line[3:]}`" for line in changed[:10])
        more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
        text += f", with uncommitted changes in {len(changed)} path(s): {paths}{more}"
    return text


def _seconds(timings: dict, case: str) -> str:
    return f"{timings[case]:.0f}" if case in timings else "n/a"


def write_report(path: str, args, rows: list[tuple], failed: list[str]) -> None:
    old_t = _read_json(_timings_path(os.path.join(args.out, "old")), {})
    new_t = _read_json(_timings_path(os.path.join(args.out, "new")), {})
    lines = [
        "# Refactor comparison: old tree vs new tree",
        "",
        "Written by `scripts/compare_trees.py` (see `results/refactor/README.md`).",
        "",
        "    " + shlex.join(["python", "scripts/compare_trees.py", *sys.argv[1:]]),
        "",
        f"- old tree `{args.old}`: {_describe(args.old)}",
        f"- new tree `{args.new}`: {_describe(args.new)}",
        "- commits as at the report's writing (each run's log records its tree's state when "
        "it started)",
        f"- runs under `{args.out}` (old/, new/); seconds: each side's run of the case "
        "(n/a: reused from an earlier invocation that did not record it)",
        "",
        "| case | covers | files compared | result | old s | new s |",
        "|---|---|---|---|---:|---:|",
    ]
    details = []
    for case, largest, differing, files in rows:
        if differing:
            result = f"max \\|diff\\| {largest:.4g} in {len(differing)} field(s)"
            details += [f"### {case}", "", *(f"- `{d}`" for d in differing[:50])]
            if len(differing) > 50:
                details.append(f"- ... and {len(differing) - 50} more")
            details.append("")
        else:
            result = "bitwise"
        lines.append(
            f"| {case} | {CASES[case].covers} | {', '.join(files)} | {result} | "
            f"{_seconds(old_t, case)} | {_seconds(new_t, case)} |"
        )
    same = sum(1 for row in rows if not row[2])
    for case in failed:
        lines.append(f"| {case} | {CASES[case].covers} | | run failed | | |")
    lines += ["", f"{same} of {len(rows) + len(failed)} cases bitwise.", ""]
    if details:
        lines += ["## Differences", "", *details]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the tree before the change")
    parser.add_argument("--new", required=True, help="the tree after the change")
    parser.add_argument("--out", required=True, help="folder for the runs (old/, new/)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument(
        "--side", "--only", choices=("old", "new"), help="run one tree, compare nothing"
    )
    parser.add_argument("--report", help="also write a markdown report here")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    outs = {side: os.path.realpath(os.path.join(args.out, side)) for side in ("old", "new")}
    trees = {"old": args.old, "new": args.new}
    sides = [args.side] if args.side else ["old", "new"]
    rows, failed = [], []
    for case in cases:
        try:
            for side in sides:
                _run(trees[side], case, outs[side])
        except RunError as e:
            print(f"{case}: FAILED: {e}", flush=True)
            failed.append(case)
            continue
        if args.side:
            seconds = _read_json(_timings_path(outs[args.side]), {}).get(case)
            print(f"{case}: {args.side} side finished ({seconds} s when it ran)", flush=True)
            continue
        largest, differing, files = compare_case(case, outs, trees)
        rows.append((case, largest, differing, files))
        if not differing:
            print(f"{case}: bitwise ({', '.join(files)})", flush=True)
        else:
            print(f"{case}: max |diff| {largest:.4g} in {len(differing)} field(s)", flush=True)
            for line in differing:
                print(f"    {line}", flush=True)
    if args.report and rows:
        write_report(args.report, args, rows, failed)
        print(f"wrote {args.report}", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
