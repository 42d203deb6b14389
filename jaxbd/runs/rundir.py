"""The run directory: `config.json`, `metrics.jsonl`, `summary.json`.

A run directory is never deleted or silently overwritten. Opening one either starts a new
run (empty or missing directory), resumes an interrupted run (the same run, as
`jaxbd.runs.identity` defines it, and no summary yet), or refuses with a message that says
why and what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from jaxbd.runs.identity import differences, jsonable

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class RunDirError(RuntimeError):
    """A run directory cannot be used for this run (finished, or another configuration)."""


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON so that a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(obj), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
        config = jsonable(config)
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
            diff = differences(old, config)
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
            f.write(json.dumps(jsonable(row), sort_keys=True) + "\n")
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
