"""What the command-line entry points (`scripts/train.py`, `scripts/sweep.py`) share: the
default run directory, flag parsing and logging, and turning a user's mistake or an
interruption into one line and an exit status instead of a traceback.

    if __name__ == "__main__":
        app.run(main, flags_parser=cli.parse_flags)

    def main(argv):
        cli.configure_logging()
        cli.run_or_exit(lambda: experiment.run(config, workdir), on_interrupt=..., workdir=workdir)

Exit statuses: 0 done, 2 a user error (a bad flag, configuration field or value, a missing
config file, bad data, a run directory that cannot be used or written, a full disk), 130
Ctrl-C, 143 stopped by SIGTERM after saving a checkpoint (`preemptible=True`). A user error
is one line on stderr, `error: <what, naming the field or path>; <what to do>`, and a
configuration error is reported before the run directory is created.

With several processes (`start_runtime`), process 0 prints the messages; the others exit
with the same status and print only what they alone can know (bad data, an `OSError`),
prefixed with their index.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
from absl import logging as absl_logging

from jaxbd import settings as settings_lib
from jaxbd.data import DataError
from jaxbd.runs import RunDirError, TrainingDivergedError
from jaxbd.settings import ConfigError
from jaxbd.train import preemption
from jaxbd.train.settings import RuntimeSettings

USER_ERRORS = (RunDirError, ConfigError, DataError, TrainingDivergedError)
"""Errors that mean "fix the command, the settings or the data", reported without a
traceback."""

_SHARED_ERRORS = (RunDirError, ConfigError, TrainingDivergedError)
"""User errors every process meets alike (one configuration, process 0's verdict on the run
directory, one replicated loss): printed by process 0 only."""

SIGTERM_EXIT = 128 + signal.SIGTERM
"""The exit status after a SIGTERM stopped training (as if the signal had ended it)."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SCRIPTS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "scripts")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_asked_verbosity: int | None = None


def default_workdir(config_path: str) -> str:
    """`runs/<config file name without extension>`."""
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def start_runtime(config) -> RuntimeSettings:
    """Validates `config.runtime` and starts `jax.distributed` as it says (exit 2 with one
    line if it cannot); call it first in `main`, before anything touches JAX.

    Args:
        config: the experiment configuration (its `runtime` section is read).

    Returns:
        The runtime settings.
    """
    try:
        runtime = settings_lib.from_config(RuntimeSettings, config.runtime, "config.runtime")
        runtime.start_distributed()
    except ConfigError as e:
        _exit_with(str(e))
    return runtime


def run_or_exit(
    fn: Callable[[], Any],
    *,
    on_interrupt: str,
    workdir: str | None = None,
    preemptible: bool = False,
) -> Any:
    """Calls `fn`; exits with status 2 and one line for a user error, 130 on Ctrl-C.

    Args:
        fn: the work (e.g. `lambda: experiment.run(config, workdir)`).
        on_interrupt: what to tell the user after Ctrl-C (how to resume).
        workdir: the run (or grid) directory `fn` writes; an `OSError` about a path in it
            (or above it), and a full disk anywhere, are user errors too.
        preemptible: SIGTERM asks training to stop at the next step
            (`jaxbd.train.preemption`); `fn`'s training phases then save a checkpoint and
            this exits with status 143 and the command that resumes.
    """
    try:
        if not preemptible:
            return fn()
        with preemption.catch_sigterm():
            return fn()
    except preemption.Preempted as e:
        if is_process_zero():
            print(
                f"\npreempted: {e}\nresume with the same command:\n  {_command_line()}",
                file=sys.stderr,
            )
        sys.exit(SIGTERM_EXIT)
    except USER_ERRORS as e:
        _exit_with(str(e), shared=isinstance(e, _SHARED_ERRORS))
    except OSError as e:
        message = os_error_message(e, workdir)
        if message is None:
            raise
        _exit_with(message)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {on_interrupt}", file=sys.stderr)
        sys.exit(130)


def _command_line() -> str:
    """This process's command line, as a shell would run it again."""
    return shlex.join([os.path.basename(sys.executable) or "python", *sys.argv])


def _process() -> tuple[int, int]:
    """(index, count) of this process; (0, 1) without `jax.distributed` (asked without
    starting JAX's backend, so a later `start_runtime` stays possible)."""
    import jax

    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def is_process_zero() -> bool:
    """Whether this is process 0 (the one that prints; True without `jax.distributed`)."""
    return _process()[0] == 0


def os_error_message(e: OSError, workdir: str | None) -> str | None:
    """One line for an `OSError` a user can fix (a full disk; a run directory that cannot
    be created or written), naming the path and the cause; None for any other.

    Args:
        e: the error.
        workdir: the directory the command writes, if any.
    """
    path = e.filename if e.filename is not None else workdir
    cause = e.strerror or type(e).__name__
    if e.errno in _NO_SPACE:
        where = f" writing {path}" if path is not None else ""
        return (
            f"{cause}{where}; free some space (or choose another --workdir), then re-run the "
            "same command: an interrupted run resumes from its last finished epoch"
        )
    if workdir is None or e.filename is None or not _related(os.fspath(e.filename), workdir):
        return None
    detail = f"{cause}: {e.filename}"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_above(workdir)):
        detail += f" ({blocker} is a file, not a directory)"
    workdir = os.path.abspath(workdir)
    return f"cannot write the workdir {workdir}: {detail}; choose a writable --workdir"


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing (`app.run(main, flags_parser=cli.parse_flags)`), with a bad flag,
    a missing config file or an unknown configuration field reported as one line (exit 2).

    Args:
        argv: the command line, program name first.
        flag_values: the flags to parse into (absl's global `FLAGS` by default).

    Returns:
        The arguments left after the flags (what `main` receives).
    """
    argv = list(argv)
    if (config_file := _config_file_argument(argv)) is not None:
        path = config_file.split(":", 1)[0]
        if not os.path.isfile(path):
            _exit_with(f"--config: config file {path} does not exist")
    try:
        return flag_values(argv)
    except flags.Error as e:
        _exit_with(f"{_one_line(str(e))}; pass --helpfull to see the flags")
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown configuration field
        _exit_with(_unknown_field_message(e, argv))
    except OSError as e:  # ml_collections: the config file could not be loaded
        _exit_with(f"--config: {_one_line(str(e))}")
    raise AssertionError("unreachable")


def configure_logging() -> None:
    """jaxbd's own messages at INFO, everything else from WARNING, unless `--verbosity` asks.

    By default (`--verbosity` <= 0) the log shows INFO messages of jaxbd's modules (and the
    progress bars, which are not log records) and only warnings and errors of the libraries
    below it (orbax alone logs hundreds of INFO lines per run). `--verbosity=1` shows every
    library's INFO messages as well; `--verbosity=2` and above are absl's debug levels.
    Call it at the start of `main` (after absl parsed the flags, and after `start_runtime`:
    with several processes only process 0 logs INFO messages).
    """
    global _asked_verbosity
    if _asked_verbosity is None:
        # Read once: `set_verbosity` below writes the flag, and a second call (once this
        # process knows its index) must still see what the user asked for.
        _asked_verbosity = flags.FLAGS["verbosity"].value if "verbosity" in flags.FLAGS else -1
    verbosity = _asked_verbosity
    handler = absl_logging.get_absl_handler()
    for f in list(handler.filters):
        if isinstance(f, OwnMessagesFilter):
            handler.removeFilter(f)
    if not is_process_zero():
        # Several processes log one run: its log is process 0's; the others keep only
        # their warnings and errors (something wrong on one host stays visible).
        absl_logging.set_verbosity(absl_logging.WARNING)
        std_logging.getLogger("orbax").setLevel(std_logging.WARNING)
        return
    if verbosity >= 2:
        return
    absl_logging.set_verbosity(absl_logging.INFO)
    quiet = verbosity < 1
    # orbax's python loggers (most of orbax logs through absl's, like jaxbd's pipeline).
    std_logging.getLogger("orbax").setLevel(std_logging.WARNING if quiet else std_logging.NOTSET)
    if quiet:
        # absl's logger cannot simply be set to WARNING: jaxbd logs through it too. Tell the
        # records apart by the file that logged them.
        handler.addFilter(OwnMessagesFilter())


class OwnMessagesFilter(std_logging.Filter):
    """Passes warnings and errors, and INFO records logged by jaxbd's modules or scripts."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or record.name.startswith("jaxbd"):
            return True
        path = os.path.abspath(record.pathname)
        return path.startswith((_PACKAGE_DIR + os.sep, _SCRIPTS_DIR + os.sep))


def _exit_with(message: str, *, shared: bool = False):
    """Prints `error: message` and exits with status 2; with several processes a `shared`
    error (the same on every process) is printed by process 0 only, any other with the
    process's index."""
    index, count = _process()
    if count == 1 or index == 0:
        print(f"error: {message}", file=sys.stderr)
    elif not shared:
        print(f"error: process {index} of {count}: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # the config file raised
        return f"{lines[0]} {lines[-1]}"
    return "; ".join(lines)


def _config_file_argument(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_field_message(e: BaseException, argv: list[str]) -> str:
    """'--config.train.epoch=3: config.train has no field 'epoch'; did you mean "epochs"?'"""
    inner: Any = e
    while isinstance(inner, BaseException) and inner.args:
        inner = inner.args[0]
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    field = lines[0].strip("'\"") if lines else ""
    hint = f"; {lines[1][0].lower()}{lines[1][1:]}" if len(lines) > 1 else ""
    for arg in argv[1:]:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and field in name[2:].split("."):
            section = name[2:].rsplit(".", 1)[0] if name.endswith("." + field) else "config"
            return f"{arg}: {section} has no field {field!r}{hint}"
    return f"unknown configuration field {field!r}{hint}"


def _related(path: str, workdir: str) -> bool:
    """`path` is the workdir, inside it, or one of the directories above it."""
    path, workdir = os.path.abspath(path), os.path.abspath(workdir)
    return path == workdir or path.startswith(workdir + os.sep) or workdir.startswith(path + os.sep)


def _file_above(workdir: str) -> str | None:
    """The nearest existing path at or above `workdir`, if it is not a directory."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if os.path.exists(path) and not os.path.isdir(path) else None
