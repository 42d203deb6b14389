"""Score-based selection: keep the hardest or easiest examples of each class.

Used by EL2N and GraNd (Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet") and by
forgetting scores (Toneva et al. 2019, "An empirical study of example forgetting during deep
neural network learning").

EL2N, GraNd and forgetting all reduce to "rank the examples of each class by a score and keep
a window of the ranking". The window starts after an `offset` fraction of the ranking (Paul
et al. 2021 drop the very hardest examples, which are often mislabelled, then keep the next
k). Ties are broken by a random permutation when a key is given — forgetting scores have
many ties (every never-forgotten example scores 0), and breaking them by index would bias
the subset towards the start of the dataset.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.method import Inputs
from jaxbd.settings import require

KEEP = ("hard", "easy")
"""The ranking policies of `rank_within_class` (`config.select.score.keep`, `.forgetting.keep`)."""
KEEP_POLICIES = KEEP  # the former name


def check_keep(keep: str, offset: float) -> None:
    """Validates a ranking's `keep` policy and `offset` (settings fields of those names)."""
    require(keep in KEEP, "keep", f"must be one of {list(KEEP)}", keep)
    require(0 <= offset < 1, "offset", "must be in [0, 1)", offset)


def rank_within_class(
    scores,
    labels,
    fraction: float,
    *,
    keep: str = "hard",
    offset: float = 0.0,
    key: jax.Array | None = None,
    num_classes: int | None = None,
) -> Selection:
    """Keeps, per class, a window of the examples ranked by score.

    For class c with n_c members and budget k_c (`class_budgets`), the members are ordered
    from the most to the least preferred (`keep="hard"`: highest score first; `"easy"`:
    lowest first; +inf counts as the hardest), then the window
    `[start, start + k_c)` of that order is kept, with `start = round(offset · n_c)` moved
    back to `n_c − k_c` if the window would run past the end.

    Args:
        scores: float[N], higher = harder (EL2N, GraNd, forgetting counts; +inf allowed).
        labels: int[N] observed labels.
        fraction: in (0, 1]; the total budget is `num_to_select(N, fraction)`.
        keep: "hard" or "easy".
        offset: in [0, 1), the fraction of each class's ranking skipped before the window.
        key: PRNG key for breaking ties randomly; None breaks ties by lower index first.
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        An unweighted `Selection`.

    Raises:
        ValueError: for mismatched shapes, NaN scores, an unknown policy or a bad offset.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if np.any(np.isnan(scores)):
        raise ValueError("scores contain NaN")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not 0 <= offset < 1:
        raise ValueError(f"offset must be in [0, 1), got {offset!r}")
    budgets = class_budgets(labels, num_to_select(labels.size, fraction), num_classes)
    # Tie-breaking rank: a random permutation, or the index itself.
    tiebreak = (
        np.arange(labels.size)
        if key is None
        else np.asarray(jax.random.permutation(key, labels.size))
    )
    preference = -scores if keep == "hard" else scores
    chosen = []
    for c, budget in enumerate(budgets):
        if budget == 0:
            continue
        members = np.flatnonzero(labels == c)
        order = members[np.lexsort((tiebreak[members], preference[members]))]
        start = min(round(offset * members.size), members.size - int(budget))
        chosen.append(order[start : start + int(budget)])
    return make_selection(np.concatenate(chosen) if chosen else np.zeros(0, np.int64))


def rank_inputs(inputs: Inputs, scores: np.ndarray) -> tuple[Selection, np.ndarray]:
    """`rank_within_class` of a score-based method's `scores`, with the keep policy and
    offset of its effective settings; returns the selection and the scores."""
    selection = rank_within_class(
        scores,
        inputs.labels,
        inputs.fraction,
        keep=inputs.effective["keep"],
        offset=inputs.effective["offset"],
        key=inputs.key,
        num_classes=inputs.num_classes,
    )
    return selection, scores
