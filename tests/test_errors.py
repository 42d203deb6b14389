"""A user's mistake is one line on stderr and exit status 2, never a traceback, and a
configuration error leaves no run directory behind.

Most bad inputs run in-process through `jaxbd.cli.run_or_exit` (what `scripts/train.py`
calls) and `jaxbd.cli.parse_flags` (how it parses its flags); a few subprocesses check that
the scripts are wired to them (`docs/reliability.md` lists every input tried).
"""

import errno
import os
import subprocess
import sys

import pytest
from absl import flags
from conftest import tiny_config
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import experiment
from jaxbd.settings import ConfigError, require
from jaxbd.train.settings import TrainSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overrides_id(value):
    """A test id naming the overrides (`train.lr=inf`), for docs/reliability.md to cite."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "message"


def run_cli(config, workdir, capsys):
    """Runs the experiment as `scripts/train.py` does; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as info:
        cli.run_or_exit(
            lambda: experiment.run(config, str(workdir)), on_interrupt="", workdir=str(workdir)
        )
    return info.value.code, capsys.readouterr().err


def assert_one_line(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (
            {"runtime.num_devices": 4, "train.batch_size": 30},
            ["config.train.batch_size: must be a multiple of the number of devices (4)", "got 30"],
        ),
        (
            {"runtime.num_devices": 4, "runtime.eval_batch_size": 30},
            ["config.runtime.eval_batch_size: must be a multiple", "--config.runtime.num_devices"],
        ),
        ({"runtime.eval_batch_size": 0}, ["config.runtime.eval_batch_size: must be >= 1"]),
        ({"runtime.eval_batch_size": -64}, ["config.runtime.eval_batch_size: must be >= 1"]),
        (
            {"runtime.num_devices": 64},
            ["config.runtime.num_devices: 64 requested but only 4 cpu device(s) are available"],
        ),
        ({"train.lr": float("inf")}, ["config.train.lr: must be a finite number, got inf"]),
        ({"train.lr": float("nan")}, ["config.train.lr: must be a finite number, got nan"]),
        ({"train.weight_decay": float("inf")}, ["config.train.weight_decay: must be a finite"]),
        ({"train.momentum": float("nan")}, ["config.train.momentum: must be a finite number"]),
        ({"train.end_lr": float("-inf")}, ["config.train.end_lr: must be a finite number"]),
        ({"data.noise": float("inf")}, ["config.data.noise"]),
        ({"prune.rounds": 2, "prune.rate": float("nan")}, ["config.prune.rate", "finite"]),
        (
            {"attack.badnets.size": 100},
            ["config.attack.badnets: badnets: the 100×100 patch does not fit in 16×16 images"],
        ),
        (
            {"attack.name": "sig", "attack.fraction": 0.5},
            ["config.attack.fraction: sig is a clean-label attack", "at most fraction="],
        ),
        (
            {"select.name": "craig", "select.fraction": 0.01},
            ["config.select.fraction: selects 3 of 256 examples, fewer than one batch"],
        ),
        (
            {"attack.name": "cl_badnets", "attack.exclude_target": True},
            ["config.attack.exclude_target: must be False for cl_badnets"],
        ),
    ],
    ids=overrides_id,
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, capsys, overrides, fragments):
    workdir = tmp_path / "run"
    code, err = run_cli(tiny_config(**overrides), workdir, capsys)
    assert code == 2
    assert_one_line(err, *fragments)
    assert not workdir.exists()  # the corrected command is not refused as "different"


def test_workdir_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a directory")
    workdir = tmp_path / "file.txt" / "run"
    code, err = run_cli(tiny_config(), workdir, capsys)
    assert code == 2
    assert_one_line(err, str(workdir), "Not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_workdir(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = run_cli(tiny_config(), parent / "run", capsys)
    finally:
        parent.chmod(0o755)
    assert code == 2
    assert_one_line(err, str(parent / "run"), "Permission denied")


def test_full_disk(tmp_path, capsys, monkeypatch):
    """A disk that fills up mid-run (here: every atomic rename fails) is one line too."""

    def no_space(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    monkeypatch.setattr(os, "replace", no_space)
    workdir = tmp_path / "run"
    code, err = run_cli(tiny_config(**{"train.epochs": 1}), workdir, capsys)
    assert code == 2
    assert_one_line(err, "No space left on device writing", str(workdir), "re-run the same command")


@pytest.mark.parametrize(
    "error, message",
    [
        (
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            "Disk quota exceeded writing /w/run; free some space",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/w/run/config.json"), "/w/run"),
        (PermissionError(errno.EROFS, "Read-only file system", "/w"), "Read-only file system: /w"),
    ],
)
def test_os_errors_about_the_workdir(error, message):
    assert message in cli.os_error_message(error, "/w/run")


def test_other_os_errors_keep_their_traceback():
    assert cli.os_error_message(FileNotFoundError(2, "No such file", "/data/x"), "/w/run") is None
    assert cli.os_error_message(PermissionError(13, "Permission denied", "/w/run"), None) is None
    with pytest.raises(FileNotFoundError):
        cli.run_or_exit(lambda: os.stat("/nonexistent/x"), on_interrupt="", workdir="/w/run")


def test_require_rejects_non_finite_numbers():
    with pytest.raises(ValueError, match=r"x: must be >= 0 and finite, got inf"):
        require(True, "x", "must be >= 0", float("inf"))
    require(True, "x", "must be >= 0", 3)  # finite numbers and other values pass
    require(True, "x", "must be one of", "inf")
    for value in (1e-3, 1):
        assert TrainSettings(lr=value, end_lr=0).lr == value


# --------------------------------------------------------------------------------------------
# Flag parsing: what ml_collections and absl reject before `main` runs.
# --------------------------------------------------------------------------------------------


def parse(capsys, monkeypatch, *args):
    """Parses a `scripts/train.py` command line into fresh flags; (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])  # where ml_collections looks
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "workdir", flag_values=flag_values)
    flags.mark_flags_as_required(["config"], flag_values=flag_values)
    with pytest.raises(SystemExit) as info:
        cli.parse_flags(["train.py", *args], flag_values)
    return info.value.code, capsys.readouterr().err


SMOKE = os.path.join(REPO, "configs", "smoke.py")


@pytest.mark.parametrize(
    "args, fragments",
    [
        pytest.param(
            ["--config", SMOKE, "--config.train.epoch=3"],
            ["--config.train.epoch=3: config.train has no field 'epoch'", 'did you mean "epochs"'],
            id="train.epoch",
        ),
        pytest.param(
            ["--config", SMOKE, "--config.trian.epochs=3"],
            ["config has no field 'trian'"],
            id="trian.epochs",
        ),
        pytest.param(
            ["--config", SMOKE, "--config.train.epochs=abc"],
            ["--config.train.epochs=abc"],
            id="epochs=abc",
        ),
        pytest.param(
            ["--config", SMOKE, "--config.train.epochs=2.5"],
            ["--config.train.epochs=2.5"],
            id="epochs=2.5",
        ),
        pytest.param(
            ["--config", SMOKE, "--workdirr=x"],
            ["Unknown command line flag 'workdirr'"],
            id="unknown-flag",
        ),
        pytest.param(
            ["--config", SMOKE, "--config.attack.badnets.sizee=3"],
            ["config.attack.badnets has no field 'sizee'", 'did you mean "size"'],
            id="badnets.sizee",
        ),
        pytest.param(
            ["--workdir=x"],
            ["Flag --config must have a value other than None"],
            id="no-config-flag",
        ),
        pytest.param(
            ["--config", "configs/nope.py"],
            ["--config: config file configs/nope.py does not exist"],
            id="missing-config-file",
        ),
        pytest.param(
            ["--config=configs/nope.py"],
            ["config file configs/nope.py does not exist"],
            id="missing-config-file-equals",
        ),
    ],
)
def test_flag_errors_are_one_line(capsys, monkeypatch, args, fragments):
    code, err = parse(capsys, monkeypatch, *args)
    assert code == 2
    assert_one_line(err, *fragments)


def test_flags_parse(monkeypatch):
    argv = ["train.py", "--config", SMOKE, "--config.train.epochs=3"]
    monkeypatch.setattr(sys, "argv", argv)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values)
    assert cli.parse_flags(argv, flag_values) == ["train.py"]
    assert flag_values.config.train.epochs == 3


# --------------------------------------------------------------------------------------------
# The scripts themselves (a subprocess each: ~10 s of imports).
# --------------------------------------------------------------------------------------------


def script(name, *args):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    command = [sys.executable, os.path.join(REPO, "scripts", name), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)


def test_train_script_reports_a_batch_not_divisible_by_its_devices(tmp_path):
    workdir = tmp_path / "run"
    result = script(
        "train.py",
        *("--config", SMOKE, "--workdir", str(workdir)),
        *("--config.runtime.num_devices=4", "--config.train.batch_size=30"),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_line(result.stderr, "config.train.batch_size", "(4)")
    assert not workdir.exists()


@pytest.mark.parametrize("name", ["train.py", "sweep.py"])
def test_scripts_report_a_typo_in_a_field(tmp_path, name):
    config = SMOKE if name == "train.py" else os.path.join(REPO, "configs", "paper.py")
    result = script(
        name, "--config", config, "--workdir", str(tmp_path / "w"), "--config.train.epoch=3"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_line(result.stderr, "config.train has no field 'epoch'")
    assert not (tmp_path / "w").exists()


def test_config_error_type_is_a_value_error():
    assert issubclass(ConfigError, ValueError)  # library callers catching ValueError still do
