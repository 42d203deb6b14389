"""The run machinery: what makes a pipeline resumable and its outputs safe.

- `rundir`: the run directory (`config.json`, `metrics.jsonl`, `summary.json`), never
  deleted or silently overwritten;
- `identity`: what makes two runs the same run (resuming, shared stages);
- `checkpoint`: per-epoch orbax checkpoints of a pytree with JSON metadata;
- `phase`: a named, checkpointed, resumable training phase (`train_phase`,
  `train_phase_group`).

The method libraries (`jaxbd.attacks`, `select`, `prune`, `metrics`, ...) never import
this package: they run in a user's own loop without a run directory.
"""

from jaxbd.runs.identity import EXECUTION, differences, fingerprint, identity
from jaxbd.runs.phase import TrainingDivergedError, train_phase, train_phase_group
from jaxbd.runs.rundir import RunDir, RunDirError, write_json_atomic

__all__ = [
    "EXECUTION",
    "RunDir",
    "RunDirError",
    "TrainingDivergedError",
    "differences",
    "fingerprint",
    "identity",
    "train_phase",
    "train_phase_group",
    "write_json_atomic",
]
