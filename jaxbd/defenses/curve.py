"""The trade-off curve of a repair, its Δ budget, and the oracle number.

Every `eval_every` steps, and at step 0, a repair records a row: the step, the validation
accuracy on the defender's held-out images, the test clean accuracy, ASR and robust accuracy
(for reporting only), and the loss terms. The *budget* Δ (default 0.02 absolute) is on
validation accuracy: the repair stops once it falls more than Δ below the undefended model's,
and returns the last model within the budget. `oracle_asr_at_delta` is Pick your Poison's
η_Δ read off the curve: the lowest test ASR among rows whose test clean accuracy is at least
the undefended model's minus Δ — chosen on the test set, hence an oracle, reported beside the
defense's own result and never instead of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def within_budget(val_accuracy: float, base_val_accuracy: float, delta: float) -> bool:
    """Whether a validation accuracy is at most `delta` below the undefended model's."""
    return val_accuracy >= base_val_accuracy - delta - 1e-12


def tolerated_errors(delta: float, num_val: int) -> int:
    """How many more validation errors than the undefended model's a repair may make and
    stay within the budget Δ on `num_val` held-out images (`within_budget`'s rule)."""
    return math.floor(delta * num_val + 1e-12 * num_val)


def budget_warning(delta: float, num_val: int, field: str) -> str | None:
    """A warning when Δ tolerates no validation error at all (Δ·n < 1), else None: then the
    first row with one more error ends the repair, and it may return the undefended model."""
    if num_val < 1 or tolerated_errors(delta, num_val) >= 1:
        return None
    return (
        f"{field}={delta} tolerates no error on the defender's {num_val} held-out images "
        f"(one is {100 / num_val:.2f}%): one extra error stops the repair, possibly at step 0; "
        f"raise it to at least 1/{num_val}, or give the defender more images"
    )


def oracle_asr_at_delta(rows: Sequence[Mapping[str, Any]], delta: float) -> float | None:
    """η_Δ: the lowest test ASR among curve rows whose test clean accuracy is at least the
    step-0 (undefended) row's minus `delta`; None if the rows carry no test metrics."""
    rows = [r for r in rows if r.get("test_clean_accuracy") is not None]
    if not rows:
        return None
    base = rows[0]["test_clean_accuracy"]
    eligible = [
        r["test_attack_success_rate"]
        for r in rows
        if r["test_clean_accuracy"] >= base - delta - 1e-12
        and r.get("test_attack_success_rate") is not None
        and math.isfinite(r["test_attack_success_rate"])
    ]
    return min(eligible) if eligible else None


def oracle_candidate_at_delta(
    rows: Sequence[Mapping[str, Any]], base_clean_accuracy: float, delta: float
) -> Mapping[str, Any] | None:
    """The candidate a test-set choice would keep: the lowest test ASR among candidates
    (rows with `test_clean_accuracy` and `test_attack_success_rate`, e.g. ANP's thresholds)
    whose test clean accuracy is at least `base_clean_accuracy` − `delta`; ties go to the
    earlier row. None if no candidate qualifies. An oracle: it reads the test set."""
    best = None
    for row in rows:
        asr, acc = row.get("test_attack_success_rate"), row.get("test_clean_accuracy")
        if asr is None or acc is None or not math.isfinite(asr):
            continue
        if acc >= base_clean_accuracy - delta - 1e-12 and (
            best is None or asr < best["test_attack_success_rate"]
        ):
            best = row
    return best


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, title=""):
    """ASR against clean accuracy (test), one line per repair, step 0 marked; a PNG.

    Args:
        curves: repair name -> its curve rows.
        path: where the PNG goes.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, rows in curves.items():
        xs = [r["test_clean_accuracy"] for r in rows]
        ys = [r["test_attack_success_rate"] for r in rows]
        (line,) = ax.plot(xs, ys, marker=".", label=name)
        ax.plot(xs[:1], ys[:1], marker="o", color=line.get_color(), markersize=8)
    ax.set_xlabel("test clean accuracy")
    ax.set_ylabel("attack success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "repair trade-off (circle: undefended)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
