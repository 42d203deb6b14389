"""The summary stage: one `summary.json` per experiment, which marks it finished."""

from __future__ import annotations

import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd import select
from jaxbd.pipeline.stages.arms import Cell


def write_summary(cell: Cell, trained_together: int) -> dict[str, Any]:
    """Writes and returns the cell's summary: the dense arm's test metrics at the top level,
    the selection's poison report, what ran where, and the pruned arm under "pruned".

    Args:
        cell: a cell whose arms have trained.
        trained_together: how many cells' arms trained as one batched model.
    """
    s, trainer, state, setup = cell.settings, cell.trainer, cell.state, cell.setup
    train_set, test_set, poisoned = setup.splits.train, setup.splits.test, setup.poisoned
    mesh = trainer.mesh
    result, last_row, pruned = cell.dense, cell.last_row, cell.pruned
    report = select.selection_report(
        cell.selection.indices,
        poisoned.is_poison,
        poisoned.original_labels,
        train_set.num_classes,
        is_backdoor=poisoned.is_backdoor,  # backdoor_total, backdoor_kept, backdoor_retention
    )
    summary = {
        **result,
        **report,
        "selection": s.select.name or "full",
        "selection_seconds": cell.selection_info.get("selection_seconds", 0.0),
        "num_train": len(train_set),
        "num_poison": len(poisoned.poison_indices),
        "num_test": len(test_set),
        "num_test_triggered_eligible": int(np.sum(setup.triggered.eligible)),
        "attack": setup.attack.name,
        "target": setup.attack.target,
        "data_source": setup.splits.source,
        "final_train_loss": last_row.get("loss"),
        "final_train_accuracy": last_row.get("accuracy"),
        "epochs": s.train.epochs,
        "seed": s.seed,
        "model": s.model.name,
        "width": s.model.width,
        "compute_dtype": jnp.dtype(trainer.model.dtype).name,
        "num_parameters": int(sum(p.size for p in jax.tree.leaves(state.params))),
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
        "device_kind": mesh.devices.flat[0].device_kind,
        "platform": jax.default_backend(),
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "resumed": cell.resumed,
        "trained_together": trained_together,
        "train_seconds_this_invocation": cell.train_seconds,
        "wall_seconds": time.perf_counter() - cell.started,
    }
    if pruned is not None:
        summary["pruned"] = pruned
    pruned_metrics = {f"pruned_{k}": pruned[k] for k in result if pruned and k in pruned}
    # Logged once even if a kill lands between this row and summary.json.
    cell.rundir.log_once({"event": "end", **result, **pruned_metrics}, key=("event",))
    cell.rundir.write_summary(summary)
    return summary
