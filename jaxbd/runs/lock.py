"""One process at a time in a directory: an exclusive `flock` on `<directory>/.lock`.

`lock_directory` takes the lock (the lock file then holds the holder's pid) and keeps it
until the handle is released or the process ends: the kernel releases an flock when its
process dies, so the lock file a killed run leaves behind never blocks a resume. A run
directory (`jaxbd.runs.rundir.RunDir.open`), a sweep directory and a shared stage's folder
are all locked this way.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

LOCK_FILE = ".lock"


class RunDirError(RuntimeError):
    """A run directory cannot be used for this run (finished, in use, another configuration,
    or damaged beyond what jaxbd repairs itself)."""


class _Held:
    """One flock this process holds: its file descriptor, owning thread and users."""

    def __init__(self, fd: int, thread: int):
        self.fd, self.thread, self.users = fd, thread, 0


# Lock file (real path) -> the flock this process holds on it. A second `lock_directory` of
# the same directory from the thread that holds it shares the flock: that thread's earlier
# run has ended (a thread runs one thing at a time), typically by an exception whose
# traceback still references the old handle, and an in-process retry must not be refused by
# its own leftover. Another thread is refused, like another process.
_HELD: dict[str, _Held] = {}
_HELD_MUTEX = threading.Lock()


def _release(key: str) -> None:
    with _HELD_MUTEX:
        held = _HELD.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del _HELD[key]
            # Closing the descriptor releases the flock; the file stays (unlinking it would
            # let a process that opened the old file and one that creates a new one both
            # "hold" the lock).
            os.close(held.fd)


class DirectoryLock:
    """An exclusive lock on a directory, held until `release()` (or the process ends).

    Made by `lock_directory`. Also a context manager, and released when garbage collected.

    Attributes:
        path: the locked directory.
        file: its lock file (`<path>/.lock`, holding the holder's pid).
    """

    def __init__(self, path: str, key: str):
        self.path, self.file = path, os.path.join(path, LOCK_FILE)
        self._release = weakref.finalize(self, _release, key)

    @property
    def held(self) -> bool:
        """Whether this handle still holds the lock."""
        return self._release.alive

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        self._release()

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(lock_file: str) -> str:
    """'pid N' from a lock file, or a description of why it is unknown."""
    for _ in range(20):  # the holder writes its pid right after taking the lock
        try:
            with open(lock_file) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text:
            return f"pid {text.split()[0]}"
        time.sleep(0.01)
    return "a process whose pid is not recorded"


def lock_directory(path: str | os.PathLike, *, what: str = "workdir") -> DirectoryLock:
    """Takes the exclusive lock of directory `path` (created if missing) for this process.

    The lock is an `flock` on `<path>/.lock`, which then holds this process's pid. It is held
    until the returned handle is released, or the process ends, however it ends: a lock file
    left by a dead process does not block anyone.

    Args:
        path: the directory (a run directory, a sweep directory, a shared stage's folder).
        what: what the directory is, for the error message (e.g. "workdir", "sweep workdir").

    Returns:
        The lock's handle: call `release()` (or use it as a context manager) when done.

    Raises:
        RunDirError: another process, or another thread of this one, holds the lock; the
            message names the holder's pid.
    """
    import fcntl  # POSIX only; imported here so that importing jaxbd.runs works anywhere

    path = os.path.abspath(os.fspath(path))
    lock_file = os.path.join(path, LOCK_FILE)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {what} {path} ({e}): choose another {what}.") from e
    key = os.path.realpath(lock_file)
    thread = threading.get_ident()
    with _HELD_MUTEX:
        held = _HELD.get(key)
        if held is not None:
            if held.thread != thread:
                raise RunDirError(
                    f"{what} {path} is in use by another thread of this process (pid "
                    f"{os.getpid()}): wait for that run to end, or use another {what}."
                )
            held.users += 1
            return DirectoryLock(path, key)
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(
                f"cannot write the lock file {lock_file} ({e}): make {path} writable, or "
                f"choose another {what}."
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{what} {path} is in use by {_holder(lock_file)} (see {lock_file}): wait "
                f"for that run to finish or stop it, then rerun this command to resume it; "
                f"or choose another {what}."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        held = _HELD[key] = _Held(fd, thread)
        held.users = 1
        return DirectoryLock(path, key)
