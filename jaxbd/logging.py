"""The run directory: `config.json`, `metrics.jsonl`, `summary.json`.

A run directory is never deleted or silently overwritten. Opening one either starts a new
run (empty or missing directory), resumes an interrupted run (same configuration, no summary
yet), or refuses with a message that says why and what to do.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

# Settings that change how a run executes, not what it computes; a resumed run may differ
# in them (e.g. resuming on a machine with another device count or without a terminal).
RESUMABLE_KEYS = ("runtime.", "data.cache_dir", "select.pretrain_dir")


class RunDirError(RuntimeError):
    """A run directory cannot be used for this run (finished, or another configuration)."""


def _jsonable(value: Any) -> Any:
    """Converts NumPy/JAX scalars and tuples so `json` can write them; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON so that a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict, ignore: tuple[str, ...] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable `key: old -> new` lines for settings that differ, except those whose
    dotted key starts with a prefix in `ignore` (default: the settings a resumed run may
    change)."""
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(ignore):
            continue
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            lines.append(f"{key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return lines


class RunDir:
    """One experiment's output directory.

    Args:
        path: the directory (created if missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def check_not_finished(self) -> None:
        """Raises RunDirError if the directory holds a finished run (writes nothing)."""
        if os.path.exists(self.file(SUMMARY_FILE)):
            raise RunDirError(
                f"workdir {self.path} holds a finished run ({SUMMARY_FILE} exists); it is "
                f"never overwritten. Choose another --workdir, or move that one away yourself."
            )

    def open(self, config: dict) -> bool:
        """Claims the directory for a run with `config`.

        Returns:
            True if an interrupted run with the same configuration is being resumed, False
            for a new run.

        Raises:
            RunDirError: the run already finished, the directory belongs to a run with a
                different configuration, or it holds files that are not a jaxbd run.
        """
        config = _jsonable(config)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"workdir {self.path} exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)
        self.check_not_finished()
        if os.path.exists(self.file(CONFIG_FILE)):
            with open(self.file(CONFIG_FILE)) as f:
                try:
                    old = json.load(f)
                except json.JSONDecodeError as e:
                    raise RunDirError(f"{self.file(CONFIG_FILE)} is not valid JSON: {e}") from e
            diff = config_differences(old, config)
            if diff:
                raise RunDirError(
                    f"workdir {self.path} holds an unfinished run with a different "
                    f"configuration, so it cannot be resumed with this one:\n  "
                    + "\n  ".join(diff)
                    + "\nUse the same configuration to resume, or choose another --workdir."
                )
            # Record the resumable settings of this invocation (device count etc.).
            write_json_atomic(self.file(CONFIG_FILE), config)
            return True
        if os.listdir(self.path):
            raise RunDirError(
                f"workdir {self.path} is not empty and holds no {CONFIG_FILE}: it is not a "
                f"jaxbd run directory, and jaxbd will not write into it. Choose another --workdir."
            )
        write_json_atomic(self.file(CONFIG_FILE), config)
        return False

    def log(self, row: dict) -> None:
        """Appends one event to metrics.jsonl (flushed, so a crash loses nothing logged)."""
        with open(self.file(METRICS_FILE), "a") as f:
            f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        """All rows of metrics.jsonl (empty if none yet)."""
        if not os.path.exists(self.file(METRICS_FILE)):
            return []
        with open(self.file(METRICS_FILE)) as f:
            return [json.loads(line) for line in f if line.strip()]

    def write_summary(self, summary: dict) -> None:
        """Writes summary.json, which marks the run finished."""
        write_json_atomic(self.file(SUMMARY_FILE), summary)
