"""The run machinery: what makes a pipeline resumable and its outputs safe.

- `rundir`: the run directory (`config.json`, `metrics.jsonl`, `summary.json`), never
  deleted or silently overwritten, locked by one process at a time;
- `lock`: that lock (`lock_directory` locks any directory the same way);
- `identity`: what makes two runs the same run (resuming, shared stages);
- `checkpoint`: per-epoch orbax checkpoints of a pytree with JSON metadata, falling back past
  a damaged newest one;
- `phase`: a named, checkpointed, resumable training phase (`train_phase`,
  `train_phase_group`); `phase_log`: one run's side of it (checkpoints, log rows).

The method libraries (`jaxbd.attacks`, `select`, `prune`, `metrics`, ...) never import
this package: they run in a user's own loop without a run directory.
"""

from jaxbd.runs.checkpoint import CheckpointError
from jaxbd.runs.identity import EXECUTION, differences, fingerprint, identity
from jaxbd.runs.lock import LOCK_FILE, DirectoryLock, RunDirError, lock_directory
from jaxbd.runs.phase import TrainingDivergedError, train_phase, train_phase_group
from jaxbd.runs.rundir import RunDir, write_json_atomic

__all__ = [
    "EXECUTION",
    "LOCK_FILE",
    "CheckpointError",
    "DirectoryLock",
    "RunDir",
    "RunDirError",
    "TrainingDivergedError",
    "differences",
    "fingerprint",
    "identity",
    "lock_directory",
    "train_phase",
    "train_phase_group",
    "write_json_atomic",
]
