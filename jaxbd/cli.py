"""What the command-line entry points (`scripts/train.py`, `scripts/sweep.py`) share: the
default run directory, and turning a user's mistake or an interruption into a message and an
exit status instead of a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from jaxbd.data import DataError
from jaxbd.runs import RunDirError, TrainingDivergedError
from jaxbd.settings import ConfigError

USER_ERRORS = (RunDirError, ConfigError, DataError, TrainingDivergedError)
"""Errors that mean "fix the command, the settings or the data", reported without a
traceback."""


def default_workdir(config_path: str) -> str:
    """`runs/<config file name without extension>`."""
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def run_or_exit(fn: Callable[[], Any], *, on_interrupt: str) -> Any:
    """Calls `fn`; exits with status 2 and the message for a user error, 130 on Ctrl-C.

    Args:
        fn: the work (e.g. `lambda: experiment.run(config, workdir)`).
        on_interrupt: what to tell the user after Ctrl-C (how to resume).
    """
    try:
        return fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {on_interrupt}", file=sys.stderr)
        sys.exit(130)
