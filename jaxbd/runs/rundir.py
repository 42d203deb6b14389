"""The run directory: `config.json`, `metrics.jsonl`, `summary.json`, and its lock.

A run directory is never deleted or silently overwritten. Opening one either starts a new
run (empty or missing directory), resumes an interrupted run (the same run, as
`jaxbd.runs.identity` defines it, and no summary yet), or refuses with a message that says
why and what to do. One process at a time: `RunDir.open` holds the directory's lock
(`jaxbd.runs.lock`) until `RunDir.close()`, and claims a new directory by linking a complete
`config.json` into place, which fails if one exists.

With several processes (`jaxbd.train.distributed`) process 0 is the one writer: it claims,
locks and writes every file of this module, and `RunDir.open` broadcasts the outcome (new,
resumed or refused) to the others, whose writes are no-ops. The directory must be on a file
system every process sees (all of them write the checkpoints).

`metrics.jsonl` is a faithful record: each row is one `write` of a line, a line torn by a
kill mid-write is repaired when the directory is next opened, and a resumed phase drops the
rows of epochs its checkpoints do not contain (`drop_rows`, used by `jaxbd.runs.phase`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence

from absl import logging

from jaxbd.files import TMP_PREFIX, write_text
from jaxbd.files import write_json as write_json_atomic
from jaxbd.runs.identity import differences
from jaxbd.runs.lock import LOCK_FILE, DirectoryLock, RunDirError, lock_directory
from jaxbd.train import distributed
from jaxbd.types import jsonable

__all__ = [
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "DirectoryLock",
    "RunDir",
    "RunDirError",
    "WriterRefusedError",
    "lock_directory",
    "write_json_atomic",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class WriterRefusedError(RunDirError):
    """Process 0 could not claim the run directory (its own error says why); raised on the
    other processes, so that they stop too instead of waiting for it."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, RunDirError) else f"{type(error).__name__}: {text}"


# ---------------------------------------------------------------------------------------------
# metrics.jsonl as lines.


def _parse(line: str) -> dict | None:
    """The row of one line, or None if it is not a JSON object."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _matches(row: dict, like: dict, key: Sequence[str]) -> bool:
    return all(k in row and row[k] == like.get(k) for k in key)


class RunDir:
    """One experiment's output directory.

    `open` claims it (and takes its lock); `close` releases the lock (a `RunDir` is also a
    context manager that closes on exit). Only the writer (process 0 of several; the one
    process otherwise) claims, locks and writes; for the other processes the methods that
    write do nothing.

    Args:
        path: the directory (created by `open` if missing).
        writer: whether this process writes the files (None: `distributed.is_writer()`,
            asked on first use, so that constructing a `RunDir` does not start JAX).
    """

    def __init__(self, path: str | os.PathLike, *, writer: bool | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self._lock: DirectoryLock | None = None
        self._writer = writer

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files."""
        if self._writer is None:
            self._writer = distributed.is_writer()
        return self._writer

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def locked(self) -> bool:
        """Whether this `RunDir` holds the directory's lock (between `open` and `close`)."""
        return self._lock is not None and self._lock.held

    def check_not_finished(self) -> None:
        """Raises RunDirError if the directory holds a finished run (writes nothing)."""
        if os.path.exists(self.file(SUMMARY_FILE)):
            raise RunDirError(
                f"workdir {self.path} holds a finished run ({SUMMARY_FILE} exists); it is "
                f"never overwritten. Choose another --workdir, or move that one away yourself."
            )

    def _check_is_a_run(self) -> None:
        """Raises RunDirError for a non-empty directory that is not a jaxbd run (writes
        nothing: jaxbd does not even put its lock file there)."""
        if not os.path.isdir(self.path) or os.path.exists(self.file(CONFIG_FILE)):
            return
        # A lock file or temporary file of a claim that was killed half-way is ours.
        foreign = [n for n in os.listdir(self.path) if n != LOCK_FILE]
        if any(not n.startswith(TMP_PREFIX) for n in foreign):
            raise RunDirError(
                f"workdir {self.path} is not empty and holds no {CONFIG_FILE}: it is not a "
                f"jaxbd run directory, and jaxbd will not write into it. Choose another --workdir."
            )

    def open(self, config: dict) -> bool:
        """Claims the directory for a run with `config`, and takes its lock until `close()`.

        Also repairs a torn last line of `metrics.jsonl` (a process killed mid-write).

        Returns:
            True if an interrupted run with the same configuration is being resumed, False
            for a new run.

        Raises:
            RunDirError: the run already finished, another process holds the directory, the
                directory belongs to a run with a different configuration, or it holds files
                that are not a jaxbd run.
        """
        if distributed.process_count() == 1:
            return self._open(config)
        # Several processes: the writer claims, and every process continues as it did.
        if self.writer:
            try:
                resumed = self._open(config)
            except BaseException as e:
                distributed.broadcast_text(f"error\n{_one_line(e)}")
                raise
            distributed.broadcast_text("resumed" if resumed else "new")
            return resumed
        outcome = distributed.broadcast_text(None)
        if outcome.startswith("error\n"):
            raise WriterRefusedError(outcome.removeprefix("error\n"))
        return outcome == "resumed"

    def _open(self, config: dict) -> bool:
        config = jsonable(config)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(
                f"workdir {self.path} exists and is not a directory: choose another --workdir."
            )
        # Refusals that need no lock come first, so they write nothing.
        self.check_not_finished()
        self._check_is_a_run()
        lock = lock_directory(self.path)
        try:
            # Again under the lock: the previous holder may have finished meanwhile.
            self.check_not_finished()
            self._check_is_a_run()
            resumed = self._claim(config)
            self._repair_tail()
        except BaseException:
            lock.release()
            raise
        if self.locked:  # opened twice: keep one handle
            lock.release()
        else:
            self._lock = lock
        return resumed

    def _claim(self, config: dict) -> bool:
        """Writes config.json for a new run, or checks it for a resumed one (under the lock).

        Returns:
            True for a resumed run.
        """
        path = self.file(CONFIG_FILE)
        if not os.path.exists(path):
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=TMP_PREFIX)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                # `link` fails if config.json exists: exactly one claim of a new directory
                # wins, and config.json is complete whenever it exists.
                os.link(tmp, path)
                return False
            except FileExistsError:
                pass  # claimed meanwhile: compare with it below
            finally:
                os.remove(tmp)
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as e:
                raise RunDirError(
                    f"{path} is not valid JSON ({e}): restore it, or choose another --workdir."
                ) from e
        diff = differences(old, config)
        if diff:
            raise RunDirError(
                f"workdir {self.path} holds an unfinished run with a different "
                f"configuration, so it cannot be resumed with this one:\n  "
                + "\n  ".join(diff)
                + "\nUse the same configuration to resume, or choose another --workdir."
            )
        # Record the resumable settings of this invocation (device count etc.).
        write_json_atomic(path, config)
        return True

    def close(self) -> None:
        """Releases the directory's lock (idempotent; the files stay as they are)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metrics.jsonl -----------------------------------------------------------------------

    def _lines(self) -> list[str]:
        """metrics.jsonl split into lines, each with its newline (the last may lack it)."""
        try:
            with open(self.file(METRICS_FILE)) as f:
                return f.read().splitlines(keepends=True)
        except FileNotFoundError:
            return []

    def _rewrite(self, lines: Sequence[str]) -> None:
        """Replaces metrics.jsonl by `lines` atomically (a kill leaves the old or the new)."""
        path = self.file(METRICS_FILE)
        # `like`: the temporary file is created private; the log stays as readable as before.
        write_text(path, "".join(lines), like=path)

    def _repair_tail(self) -> None:
        """Repairs a last line torn by a kill mid-write, so the next row starts on its own
        line: a complete row that only lacks its newline gets one; a fragment is cut off."""
        if not self.writer:
            return
        lines = self._lines()
        if not lines or lines[-1].endswith("\n"):
            return
        last = lines[-1]
        if _parse(last) is not None:
            lines[-1] = last + "\n"
        else:
            lines = lines[:-1]
            logging.warning(
                "%s: removed a torn last line (%d characters, %r...), written by a process "
                "killed mid-write",
                self.file(METRICS_FILE),
                len(last),
                last[:60],
            )
        self._rewrite(lines)

    def log(self, row: dict) -> None:
        """Appends one event to metrics.jsonl (flushed, so a crash loses nothing logged)."""
        if not self.writer:
            return
        line = json.dumps(jsonable(row), sort_keys=True) + "\n"
        with open(self.file(METRICS_FILE), "a") as f:
            f.write(line)
            f.flush()

    def log_once(self, row: dict, key: Sequence[str]) -> bool:
        """Appends `row` unless a row with the same values of the fields `key` is logged.

        For events that a resumed run replays, e.g. `log_once({"event": "imp_round",
        "round": 2, ...}, key=("event", "round"))`.

        Args:
            row: the event.
            key: the fields that identify it (all must be in `row`).

        Returns:
            True if the row was appended, False if it was already there (or this process
            does not write).
        """
        missing = [k for k in key if k not in row]
        if missing:
            raise ValueError(f"log_once: key fields {missing} are not in the row {row}")
        if not self.writer:
            return False
        like = jsonable({k: row[k] for k in key})
        if any(_matches(r, like, key) for r in self.read_metrics()):
            return False
        self.log(row)
        return True

    def read_metrics(self) -> list[dict]:
        """All rows of metrics.jsonl (empty if none yet).

        A torn last line (the file of a process killed mid-write, not yet repaired by
        `open`) is left out; so is any other line that is not a JSON object, with a warning
        naming it (jaxbd never writes one; the file is not changed).
        """
        lines = self._lines()
        rows, bad = [], []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = _parse(line)
            if row is not None:
                rows.append(row)
            elif number < len(lines) or line.endswith("\n"):
                bad.append(number)
        if bad:
            logging.warning(
                "%s: line(s) %s are not JSON objects and are left out",
                self.file(METRICS_FILE),
                ", ".join(map(str, bad)),
            )
        return rows

    def drop_rows(self, drop: Callable[[dict], bool]) -> list[dict]:
        """Removes the rows for which `drop(row)` is true from metrics.jsonl, atomically.

        Used when a phase resumes from a checkpoint: rows of later epochs (logged before a
        kill prevented their checkpoint) would otherwise appear twice. Lines that are not
        JSON objects are kept as they are.

        Args:
            drop: row -> whether to remove it.

        Returns:
            The removed rows (nothing is rewritten when there are none; none on a process
            that does not write).
        """
        if not self.writer:
            return []
        kept, dropped = [], []
        for line in self._lines():
            row = _parse(line)
            if row is not None and drop(row):
                dropped.append(row)
            else:
                kept.append(line)
        if dropped:
            # A torn last line stays, but on a line of its own: the next row is not glued on.
            if kept and not kept[-1].endswith("\n"):
                kept[-1] += "\n"
            self._rewrite(kept)
        return dropped

    def write_summary(self, summary: dict) -> None:
        """Writes summary.json, which marks the run finished (the writer only)."""
        if self.writer:
            write_json_atomic(self.file(SUMMARY_FILE), summary)
