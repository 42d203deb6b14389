"""One process at a time in a run directory: a second process is refused naming the holder's
pid, a dead holder's lock file does not block a resume, and racing claims of a fresh
directory have exactly one winner."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxbd.runs import LOCK_FILE, RunDir, RunDirError, lock_directory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A process that opens a run directory, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from jaxbd.runs.rundir import RunDir
rundir = RunDir(sys.argv[1])
print("resumed" if rundir.open({"name": "test"}) else "new", flush=True)
sys.stdin.read()
"""

# Claims each of N fresh directories at the same instant as another racer: prints
# `{"ready": true}`, reads a start time, then claims directory i at start + i * 0.05 s with
# its own configuration and prints one JSON line of outcomes.
RACER = """
import json, sys, time
from jaxbd.runs.rundir import RunDir, RunDirError
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(json.dumps({"ready": True}), flush=True)
start = float(sys.stdin.readline())
outcomes, held = [], []
for i in range(n):
    time.sleep(max(0.0, start + 0.05 * i - time.time()))
    rundir = RunDir(f"{root}/d{i}")
    try:
        outcomes.append("new" if not rundir.open({"name": name}) else "resumed")
        held.append(rundir)
    except RunDirError as e:
        outcomes.append("refused: " + str(e))
print(json.dumps(outcomes), flush=True)
"""


def _python(code, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_a_second_process_is_refused_naming_the_holder_and_resumes_after_it_ends(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _python(HOLDER, workdir)
    try:
        assert holder.stdout.readline().strip() == "new"
        with pytest.raises(RunDirError, match=rf"in use by pid {holder.pid} .*rerun this command"):
            RunDir(workdir).open({"name": "test"})
        # Refused: nothing of the holder's changed, and the check stays side-effect free.
        RunDir(workdir).check_not_finished()
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            assert f.read().strip() == str(holder.pid)
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    # The holder ended: its lock file remains, and the run resumes.
    with RunDir(workdir) as rundir:
        assert rundir.open({"name": "test"}) is True and rundir.locked
    assert not rundir.locked


def test_a_killed_holders_lock_file_does_not_block_a_resume(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _python(HOLDER, workdir)
    assert holder.stdout.readline().strip() == "new"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with open(os.path.join(workdir, LOCK_FILE)) as f:
        assert f.read().strip() == str(holder.pid)  # the stale file, with the dead pid
    rundir = RunDir(workdir)
    assert rundir.open({"name": "test"}) is True
    with open(os.path.join(workdir, LOCK_FILE)) as f:
        assert f.read().strip() == str(os.getpid())
    rundir.close()


def test_racing_processes_claim_each_fresh_directory_exactly_once(tmp_path):
    n = 20
    racers = [_python(RACER, tmp_path, name, n) for name in ("a", "b")]
    for racer in racers:
        assert json.loads(racer.stdout.readline()) == {"ready": True}
    start = time.time() + 0.2
    outcomes = [json.loads(racer.communicate(f"{start}\n")[0]) for racer in racers]
    for i, pair in enumerate(zip(*outcomes, strict=True)):
        assert sorted(o.split(":")[0] for o in pair) == ["new", "refused"], (i, pair)
        winner = "ab"[pair.index("new")]
        with open(tmp_path / f"d{i}" / "config.json") as f:
            assert json.load(f) == {"name": winner}


def test_racing_threads_claim_each_fresh_directory_exactly_once(tmp_path):
    """The claim itself (`config.json` linked into place) has one winner, even without the
    lock; through `open`, the lock refuses the other threads too."""
    for i in range(40):
        workdirs = [tmp_path / f"claim{i}", tmp_path / f"open{i}"]
        os.makedirs(workdirs[0])
        barrier, results = threading.Barrier(4), {}

        def claim(t, workdir=workdirs[0], barrier=barrier, results=results):
            rundir = RunDir(workdir)
            barrier.wait()
            try:
                results["claim", t] = "resumed" if rundir._claim({"name": t}) else "new"
            except RunDirError:
                results["claim", t] = "refused"

        def opened(t, workdir=workdirs[1], barrier=barrier, results=results):
            rundir = RunDir(workdir)
            barrier.wait()
            try:
                results["open", t] = "resumed" if rundir.open({"name": t}) else "new"
                results["held", t] = rundir  # held until all threads are done
            except RunDirError:
                results["open", t] = "refused"

        threads = [threading.Thread(target=f, args=(t,)) for f in (claim, opened) for t in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for what, workdir in zip(("claim", "open"), workdirs, strict=True):
            got = [results[what, t] for t in "ab"]
            assert sorted(got) == ["new", "refused"], (i, what, got)
            with open(workdir / "config.json") as f:
                assert json.load(f) == {"name": "ab"[got.index("new")]}
        for held in [v for k, v in results.items() if k[0] == "held"]:
            held.close()


def test_the_holding_thread_may_reopen_and_other_threads_are_refused(tmp_path):
    workdir = str(tmp_path / "run")
    first = RunDir(workdir)
    assert first.open({"name": "test"}) is False
    # An in-process retry (the first run ended by an exception that still references it).
    second = RunDir(workdir)
    assert second.open({"name": "test"}) is True
    errors = []

    def other():
        try:
            RunDir(workdir).open({"name": "test"})
        except RunDirError as e:
            errors.append(str(e))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and f"another thread of this process (pid {os.getpid()})" in errors[0]
    first.close()
    second.close()
    # All handles released: a fresh lock from another thread works.
    thread = threading.Thread(target=lambda: lock_directory(workdir).release())
    thread.start()
    thread.join()


def test_lock_directory_locks_any_directory_until_released(tmp_path):
    sweep = str(tmp_path / "sweep")
    lock = lock_directory(sweep, what="sweep workdir")
    errors = []
    thread = threading.Thread(target=lambda: _try_lock(sweep, errors))
    thread.start()
    thread.join()
    assert errors and errors[0].startswith(f"sweep workdir {sweep} is in use")
    lock.release()
    lock.release()  # idempotent
    assert not lock.held
    with lock_directory(sweep) as again:
        assert again.held
    assert not again.held


def _try_lock(path, errors):
    try:
        lock_directory(path, what="sweep workdir").release()
    except RunDirError as e:
        errors.append(str(e))


def test_refusals_write_nothing(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a jaxbd run directory"):
        RunDir(str(foreign)).open({"name": "test"})
    assert os.listdir(foreign) == ["notes.txt"]  # not even a lock file
    finished = tmp_path / "finished"
    rundir = RunDir(str(finished))
    rundir.open({"name": "test"})
    rundir.write_summary({})
    rundir.close()
    with pytest.raises(RunDirError, match="finished run"):
        RunDir(str(finished)).open({"name": "test"})
    # A directory holding only the lock file of a claim killed before config.json is new.
    only_lock = tmp_path / "only_lock"
    only_lock.mkdir()
    (only_lock / LOCK_FILE).write_text("999999\n")
    with RunDir(str(only_lock)) as rundir:
        assert rundir.open({"name": "test"}) is False


def test_an_unusable_path_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match=r"cannot create workdir .*file/run .*choose another"):
        RunDir(str(tmp_path / "file" / "run")).open({"name": "test"})
    with pytest.raises(RunDirError, match="exists and is not a directory"):
        RunDir(str(tmp_path / "file")).open({"name": "test"})
