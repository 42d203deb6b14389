"""The whole pipeline at toy scale: outputs, resuming, refusing to overwrite, bad config."""

import json
import os
import re

import jax
import numpy as np
import pytest
from conftest import read_rows, tiny_config

from jaxbd.pipeline import experiment
from jaxbd.runs import RunDirError
from jaxbd.train import Trainer


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    summary = experiment.run(tiny_config(), workdir)
    return workdir, summary


def test_outputs(finished_run):
    workdir, summary = finished_run
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert os.path.exists(os.path.join(workdir, name))
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    for key in (
        "clean_accuracy",
        "attack_success_rate",
        "asr_all_images",
        "robust_accuracy",
        "poison_retention",
        "num_train",
        "num_poison",
        "data_source",
        "devices",
        "wall_seconds",
    ):
        assert key in summary, key
    assert summary["num_train"] == 256 and summary["num_poison"] == 26  # round(0.1 · 256)
    assert summary["poison_retention"] == 1.0  # the full set keeps every poison
    assert summary["data_source"].startswith("synthetic")
    assert summary["devices"] == 1
    assert 0 <= summary["attack_success_rate"] + summary["robust_accuracy"] <= 1
    epochs = [r for r in read_rows(workdir) if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert {"loss", "accuracy", "lr", "seconds", "test_clean_accuracy"} <= set(r)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["epochs"] == 2


def test_finished_run_is_never_overwritten(finished_run):
    workdir, _ = finished_run
    before = os.path.getmtime(os.path.join(workdir, "summary.json"))
    with pytest.raises(RunDirError, match="finished run"):
        experiment.run(tiny_config(), workdir)
    assert os.path.getmtime(os.path.join(workdir, "summary.json")) == before


def test_interrupted_run_resumes_to_the_same_result(finished_run, tmp_path, monkeypatch):
    _, uninterrupted = finished_run
    workdir = str(tmp_path / "w")
    original = Trainer.train_epoch
    calls = []

    def interrupt_in_second_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(tiny_config(), workdir)
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    monkeypatch.setattr(Trainer, "train_epoch", original)

    # A different configuration may not take over the unfinished run.
    with pytest.raises(RunDirError, match=r"train\.lr"):
        experiment.run(tiny_config(**{"train.lr": 0.01}), workdir)

    # Runtime settings may change; the result is that of the uninterrupted run.
    resumed = experiment.run(tiny_config(**{"runtime.steps_per_call": 1}), workdir)
    assert resumed["resumed"] is True
    events = [r.get("event") for r in read_rows(workdir)]
    assert events.count("resume") == 1
    for key in ("clean_accuracy", "attack_success_rate", "final_train_loss"):
        np.testing.assert_allclose(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-4)


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a jaxbd run directory"):
        experiment.run(tiny_config(), str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.name", "mnist", "data.name"),
        ("attack.name", "nope", "attack.name"),
        ("attack.fraction", 1.5, "attack.fraction"),
        ("attack.target", 10, "attack.target"),
        ("model.name", "vgg", "model.name"),
        ("model.dtype", "float16", "model.dtype"),
        ("train.epochs", 0, "train.epochs"),
        ("train.lr", -0.1, "train.lr"),
        ("train.end_lr", 1.0, "train.end_lr"),
        ("train.warmup_epochs", 2, "train.warmup_epochs"),
        ("train.batch_size", 1024, "batch_size"),
        ("prune.rounds", -1, "prune.rounds"),
        ("prune.rate", 1.0, "config.prune.rate: must be in (0, 1)"),
        ("prune.scope", "channel", "config.prune.scope: must be one of"),
        ("prune.control", "shuffle", "config.prune.control: must be one of"),
        ("prune.rewind_epoch", 10, "config.prune.round_epochs: must exceed rewind_epoch=10"),
        ("attack.badnets.location", "middle", "config.attack.badnets:"),
    ],
)
def test_bad_config_values_are_clear_errors(tmp_path, field, value, message):
    overrides = {field: value}
    if field.startswith("prune.") and field != "prune.rounds":
        overrides["prune.rounds"] = 2
    with pytest.raises(experiment.ConfigError, match=re.escape(message)):
        experiment.run(tiny_config(**overrides), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_bad_pcb_setting_is_a_config_error(tmp_path):
    config = tiny_config(**{"attack.name": "pcb", "attack.pcb.trigger_stage": "during"})
    with pytest.raises(
        experiment.ConfigError, match=re.escape("config.attack.pcb: pcb: trigger_stage")
    ):
        experiment.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_batch_not_divisible_by_devices(tmp_path):
    config = tiny_config(**{"runtime.num_devices": 4, "train.batch_size": 30})
    with pytest.raises(experiment.ConfigError, match=r"config\.train\.batch_size"):
        experiment.run(config, str(tmp_path / "w"))
    assert len(jax.devices()) >= 4


def test_pruned_arm(tmp_path):
    """Dense metrics at the top level, the pruned arm's under `pruned` with its sparsity."""
    config = tiny_config(
        **{
            "prune.rounds": 2,
            "prune.round_epochs": 2,
            "prune.rewind_epoch": 1,
            "prune.final_epochs": 1,
        }
    )
    workdir = str(tmp_path / "w")
    summary = experiment.run(config, workdir)
    pruned = summary["pruned"]
    for key in ("clean_accuracy", "attack_success_rate", "asr_all_images", "robust_accuracy"):
        assert key in summary and 0.0 <= pruned[key] <= 1.0
    # Two 30% rounds: about 51% of the kernels pruned, exactly as the rounding defines.
    assert pruned["sparsity"]["per_round"][0] == pytest.approx(0.3, abs=0.01)
    assert pruned["sparsity"]["total"] == pruned["sparsity"]["per_round"][1]
    assert pruned["sparsity"]["total"] == pytest.approx(0.51, abs=0.01)
    kept = pruned["num_prunable"] * (1 - pruned["sparsity"]["total"])
    assert pruned["num_weights_kept"] == round(kept)
    assert pruned["imp_control"] == "none" and pruned["imp_final_epochs"] == 1
    phases = [r["phase"] for r in read_rows(workdir) if r.get("event") == "epoch"]
    assert phases == ["dense", "dense", "imp_rewind", "imp_round1", "imp_round2", "pruned"]
    assert read_rows(workdir)[-1]["pruned_clean_accuracy"] == pruned["clean_accuracy"]


@pytest.mark.parametrize(
    "second, workdirs, message",
    [
        (
            {"seed": 1, "train.lr": 0.01},
            ("a", "b"),
            r"(?s)only in config\.seed.*train\.lr: 0\.05 -> 0\.01",
        ),
        (
            {"seed": 1, "runtime.steps_per_call": 1},
            ("a", "b"),
            r"(?s)only in config\.seed.*runtime\.steps_per_call: 2 -> 1",
        ),
        ({"seed": 1}, ("a", "a"), "distinct workdirs"),
        ({"seed": 1, "attack.name": "pcb"}, ("a", "b"), "pcb trains one model at a time"),
    ],
)
def test_runs_trained_together_must_differ_only_in_the_seed(tmp_path, second, workdirs, message):
    first = tiny_config(**{k: v for k, v in second.items() if k == "attack.name"})
    paths = [str(tmp_path / w) for w in workdirs]
    with pytest.raises(experiment.ConfigError, match=message):
        experiment.run_group([first, tiny_config(**second)], paths)
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_a_group_with_a_finished_run_is_refused_before_anything_is_written(finished_run, tmp_path):
    workdir, _ = finished_run
    with pytest.raises(RunDirError, match="finished"):
        experiment.run_group([tiny_config(seed=1), tiny_config()], [str(tmp_path / "b"), workdir])
    assert not os.listdir(tmp_path)
