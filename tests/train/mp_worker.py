"""One process of a multi-process test run: `scripts/train.py` itself, watched.

    python tests/train/mp_worker.py REPORT [train.py flags...]

runs `scripts/train.py` with the flags, exactly as the command line would, with two
additions for the tests (`test_multiprocess.py`, `test_preemption.py`):

- every file this process opens for writing, renames, links or removes outside the run's
  `checkpoints/` folder is recorded, and the list written to the JSON file REPORT when the
  process exits (how the tests see that only process 0 writes the run's files; orbax writes
  the checkpoints of all processes, in C++, unseen by this hook);
- with `JAXBD_TEST_SIGTERM_AFTER=n` the process sends itself a real SIGTERM right after its
  n-th jitted train call (a preemption at a known step, mid-epoch when n is not a multiple
  of the steps per epoch);
- with `JAXBD_TEST_SLOW_AFTER=n` every train call from the n-th on takes 0.5 s longer: the
  processes agree on where to stop through JAX's coordination service, which takes a moment,
  and the tiny test network's steps (a millisecond) would otherwise run to the end of the
  run meanwhile (a real step takes longer than the agreement).

Not a test module (no `test_` prefix): pytest does not collect it.
"""

import atexit
import itertools
import json
import os
import runpy
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")


def _workdir(argv):
    for i, arg in enumerate(argv):
        if arg.startswith("--workdir="):
            return os.path.abspath(arg.split("=", 1)[1])
        if arg == "--workdir":
            return os.path.abspath(argv[i + 1])
    raise SystemExit("mp_worker: pass --workdir")


def _record_writes(workdir, report):
    written = []
    checkpoints = os.path.join(workdir, "checkpoints") + os.sep

    def inside(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return None
        if path.startswith(workdir + os.sep) or path == workdir:
            return None if path.startswith(checkpoints) else path
        return None

    def hook(event, args):
        if event == "open" and args[0] is not None:
            mode, flags = args[1] or "", args[2] or 0
            writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            if writes and (path := inside(args[0])):
                written.append(["open", path])
        elif event in ("os.rename", "os.link", "os.remove", "os.mkdir", "shutil.rmtree"):
            for path in (args[0], args[1]) if event in ("os.rename", "os.link") else args[:1]:
                if (path := inside(path)) is not None:
                    written.append([event, path])

    sys.addaudithook(hook)

    def dump():
        with open(report, "w") as f:
            json.dump(written, f)

    atexit.register(dump)


def _watch_calls(sigterm_after, slow_after):
    from jaxbd.train import trainer as trainer_lib

    original = trainer_lib.Trainer.compiled_steps
    count = itertools.count(1)

    def compiled_steps(self, *args, **kwargs):
        fn = original(self, *args, **kwargs)

        def counted(*a, **k):
            out = fn(*a, **k)
            call = next(count)
            if call == sigterm_after:
                os.kill(os.getpid(), signal.SIGTERM)
            if slow_after is not None and call >= slow_after:
                time.sleep(0.5)
            return out

        return counted

    trainer_lib.Trainer.compiled_steps = compiled_steps


def main():
    report, flags = sys.argv[1], sys.argv[2:]
    _record_writes(_workdir(flags), report)
    sigterm_after = os.environ.get("JAXBD_TEST_SIGTERM_AFTER")
    slow_after = os.environ.get("JAXBD_TEST_SLOW_AFTER")
    if sigterm_after or slow_after:
        _watch_calls(sigterm_after and int(sigterm_after), slow_after and int(slow_after))
    sys.argv = [TRAIN, *flags]
    sys.path.insert(0, os.path.dirname(TRAIN))
    runpy.run_path(TRAIN, run_name="__main__")


if __name__ == "__main__":
    main()
