"""The repair table and trade-off figure of a folder of defense runs.

    python scripts/summarize_defenses.py runs/cpu_defenses [--figure results/x.png]

Reads every `<folder>/*/summary.json` written by `scripts/defend.py` (and its `curve.jsonl`),
prints a Markdown table — before/after clean accuracy, ASR and robust accuracy, DER, the
oracle ASR at Δ (for ANP and CLP also the test-set choice among their thresholds or u
values), steps, seconds — and draws every curve on one figure (ASR against clean
accuracy, test set), one panel per defender budget, with ANP's and CLP's candidates
(`candidates.jsonl`) dashed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict


def _load(folder: str):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "summary.json"))):
        with open(path) as f:
            summary = json.load(f)
        if "defense" not in summary:
            continue  # the source training run
        with open(os.path.join(os.path.dirname(path), "curve.jsonl")) as f:
            curve = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(os.path.dirname(path), "config.json")) as f:
            config = json.load(f)
        candidates_path = os.path.join(os.path.dirname(path), "candidates.jsonl")
        if os.path.exists(candidates_path):  # ANP's thresholds, CLP's u values (test set)
            with open(candidates_path) as f:
                summary["_candidates"] = [json.loads(line) for line in f if line.strip()]
        runs.append((summary, curve, config))
    return runs


def _budget(config) -> str:
    d = config["defender"]
    if d.get("per_class") is not None:
        return f"{d['per_class']}/class"
    if d["fraction"] == 0:
        return "none (data-free)"
    return f"r = {100 * d['fraction']:g}%"


def _name(summary) -> str:
    """The defense's name, with the hyper-parameters that differ from its defaults (e.g.
    `anp (anp_eps=0.1)`), so that two runs of one defense at one budget stay apart."""
    from jaxbd.defenses import REPAIRS
    from jaxbd.defenses.registry import hparams_config

    name = summary["defense"]
    defaults = hparams_config(REPAIRS[name]).to_dict() if name in REPAIRS else {}
    changed = [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(summary.get("hparams", {}).items())
        if k in defaults and v != defaults[k] and not isinstance(v, list | tuple)
    ]
    return f"{name} ({', '.join(changed)})" if changed else name


def _oracle(summary) -> str:
    """The curve's oracle ASR at Δ, and for a method with discrete alternatives the
    test-set choice among them (`oracle_candidate_at_delta`) with what identifies it."""
    text = _pct(summary["oracle_asr_at_delta"])
    if "oracle_candidate_at_delta" not in summary:
        return text
    best = summary["oracle_candidate_at_delta"]
    if best is None:
        return f"{text}; candidates: none within Δ"
    label = ", ".join(f"{k} {best[k]:g}" for k in ("threshold", "rate", "u") if k in best)
    return f"{text}; candidates: {_pct(best['test_attack_success_rate'])} ({label})"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--figure", help="PNG of every curve (default <folder>/curves.png)")
    args = parser.parse_args()
    runs = _load(args.folder)
    if not runs:
        parser.error(f"no defense summaries under {args.folder}")
    print(
        "| repair | defender | clean acc. before → after | ASR before → after | "
        "RA before → after | DER | oracle ASR at Δ | steps (returned) | seconds |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    panels = defaultdict(dict)
    for summary, curve, config in runs:
        b, a = summary["before"], summary["after"]
        name = _name(summary)
        print(
            f"| {name} | {_budget(config)} ({summary['defender_examples']}) | "
            f"{_pct(b['clean_accuracy'])} → {_pct(a['clean_accuracy'])} | "
            f"{_pct(b['attack_success_rate'])} → {_pct(a['attack_success_rate'])} | "
            f"{_pct(b['robust_accuracy'])} → {_pct(a['robust_accuracy'])} | "
            f"{summary['der']:.3f} | {_oracle(summary)} | "
            f"{summary['steps']} ({summary['returned_step']}) | {summary['wall_seconds']:.0f} |"
        )
        panels[_budget(config)][name] = curve
        if summary.get("_candidates"):
            panels[_budget(config)][f"{name}: candidates"] = summary["_candidates"]
    _figure(panels, args.figure or os.path.join(args.folder, "curves.png"))


def _figure(panels, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    names = sorted({name for curves in panels.values() for name in curves})
    # One colour per repair (a repair's candidates share its colour, dashed); tab20 has
    # enough distinct colours for every row of the table.
    cmap = plt.get_cmap("tab20")
    runs = sorted({name.split(": ")[0] for name in names})
    colors = {name: cmap(runs.index(name.split(": ")[0]) % 20) for name in names}
    for ax, (budget, curves) in zip(axes[0], sorted(panels.items()), strict=True):
        for name, rows in sorted(curves.items()):
            xs = [r["test_clean_accuracy"] for r in rows]
            ys = [r["test_attack_success_rate"] for r in rows]
            if name.endswith(": candidates"):  # not a curve over steps: no start marker
                ax.plot(xs, ys, ls="--", marker="x", label=name, color=colors[name])
                continue
            ax.plot(xs, ys, marker=".", label=name, color=colors[name])
            ax.plot(xs[:1], ys[:1], marker="o", color=colors[name], markersize=8)
        ax.set_title(f"defender {budget} (circle: undefended)", fontsize=9)
        ax.set_xlabel("test clean accuracy")
        ax.set_ylabel("attack success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
