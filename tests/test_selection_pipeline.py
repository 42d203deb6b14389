"""Every selection method end to end at toy scale: report fields, weights, resume."""

import json
import os

import numpy as np
import pytest
from conftest import read_rows, tiny_config

from jaxbd.pipeline import experiment
from jaxbd.pipeline.stages import arms
from jaxbd.pipeline.stages import selection as pipeline


def select_config(method, **overrides):
    return tiny_config(
        **{
            "select.name": method,
            "select.pretrain_epochs": 2,
            "select.score.ensemble_size": 2,
            "select.score.score_epochs": (1, 2),
            "train.epochs": 1,
            **overrides,
        }
    )


@pytest.mark.parametrize(
    "method",
    [
        "random",
        "el2n",
        "grand",
        "forgetting",
        "craig",
        "grad_align",
        "spectral",
        "activation_clustering",
    ],
)
def test_method_runs_and_reports(method, tmp_path):
    workdir = str(tmp_path / "w")
    summary = experiment.run(select_config(method), workdir)
    assert summary["selection"] == method
    selected = summary["num_selected"]
    if method == "spectral":
        # Each of the 10 classes loses ⌈1.5 · 0.05 · n_c⌉, not half of the set:
        # select.fraction does not apply to the detectors.
        assert 0.075 * 256 <= 256 - selected < 0.075 * 256 + 10
    elif method == "activation_clustering":
        # Each class loses at most its smaller cluster, under 35% of it.
        assert 0.65 * 256 < selected <= 256
    else:
        assert selected == 128  # half of 256
    assert sum(summary["selected_per_class"]) == selected
    poisons = summary["poison_total"]
    assert poisons == summary["num_poison"] == round(0.1 * 256)
    assert summary["poison_kept"] + summary["poison_removed"] == poisons
    assert summary["poison_retention"] == pytest.approx(summary["poison_kept"] / poisons)
    assert summary["clean_removed"] == 256 - selected - summary["poison_removed"]
    if 256 - selected:
        assert 0 <= summary["removed_precision"] <= 1
    assert summary["selection_seconds"] > 0
    selection = np.load(os.path.join(workdir, pipeline.SELECTION_FILE))
    indices, weights = selection["indices"], selection["weights"]
    assert np.all(np.diff(indices) > 0) and indices.size == selected
    if method == "spectral":
        assert selection["scores"].shape == (256,)
    if method == "craig":
        # Cluster sizes: every example is represented once, so they sum to N.
        assert weights.sum() == pytest.approx(256)
    else:
        assert np.all(weights == 1)
    rows = read_rows(workdir)
    phases = {row.get("phase") for row in rows if row["event"] == "epoch"}
    expected = {"dense"}
    if method != "random":
        expected.add("pretrain")
    if method in ("el2n", "grand"):
        expected.add("pretrain_1")
    assert phases == expected


def test_vmapped_ensemble_matches_sequential_members(tmp_path):
    """EL2N members trained together with vmap give (nearly) the sequential scores."""
    sequential = experiment.run(
        select_config("el2n", **{"select.score.parallel": "sequential"}), str(tmp_path / "s")
    )
    together = experiment.run(
        select_config("el2n", **{"select.score.parallel": "vmap"}), str(tmp_path / "v")
    )
    scores = [np.load(tmp_path / w / pipeline.SELECTION_FILE)["scores"] for w in ("s", "v")]
    np.testing.assert_allclose(scores[0], scores[1], rtol=2e-3, atol=2e-3)
    rows = read_rows(str(tmp_path / "v"))
    assert {r.get("phase") for r in rows if r["event"] == "epoch"} == {
        "pretrain_ensemble",
        "dense",
    }
    assert sequential["num_selected"] == together["num_selected"]


def test_methods_of_one_seed_share_the_pretraining_run(tmp_path):
    shared = {"select.pretrain_dir": str(tmp_path / "pretrain")}
    experiment.run(select_config("forgetting", **shared), str(tmp_path / "f"))
    experiment.run(select_config("craig", **shared), str(tmp_path / "c"))
    # The second method found the finished run: it resumed it without training an epoch.
    rows = read_rows(str(tmp_path / "c"))
    assert not [r for r in rows if r.get("phase") == "pretrain" and r["event"] == "epoch"]
    assert [r for r in rows if r["event"] == "resume" and r["phase"] == "pretrain"]
    assert len(os.listdir(tmp_path / "pretrain")) == 1
    # A shared run selects exactly what a private one does.
    private = experiment.run(select_config("forgetting"), str(tmp_path / "p"))
    np.testing.assert_array_equal(
        np.load(tmp_path / "f" / pipeline.SELECTION_FILE)["indices"],
        np.load(tmp_path / "p" / pipeline.SELECTION_FILE)["indices"],
    )
    assert private["poison_kept"] == read_summary(tmp_path / "f")["poison_kept"]


def test_the_detectors_share_the_pretraining_run(tmp_path):
    shared = {"select.pretrain_dir": str(tmp_path / "pretrain")}
    experiment.run(select_config("spectral", **shared), str(tmp_path / "s"))
    experiment.run(select_config("activation_clustering", **shared), str(tmp_path / "a"))
    rows = read_rows(str(tmp_path / "a"))
    assert not [r for r in rows if r.get("phase") == "pretrain" and r["event"] == "epoch"]
    assert [r for r in rows if r["event"] == "resume" and r["phase"] == "pretrain"]
    assert len(os.listdir(tmp_path / "pretrain")) == 1


def read_summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def test_selection_survives_an_interruption(tmp_path, monkeypatch):
    """An interrupted run reuses the saved selection and the pretraining checkpoints."""
    workdir = str(tmp_path / "w")
    config = select_config("forgetting")
    calls = []
    original = pipeline._pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_pretrain", counting)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    real_phase = arms.train_phase_group

    def interrupt_dense(name, *args, **kwargs):
        if name == "dense":
            fail()
        return real_phase(name, *args, **kwargs)

    monkeypatch.setattr(arms, "train_phase_group", interrupt_dense)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(config, workdir)
    assert os.path.exists(os.path.join(workdir, pipeline.SELECTION_FILE))
    first = np.load(os.path.join(workdir, pipeline.SELECTION_FILE))["indices"]
    monkeypatch.setattr(arms, "train_phase_group", real_phase)
    summary = experiment.run(config, workdir)
    assert len(calls) == 1  # the second invocation loaded the selection
    np.testing.assert_array_equal(
        np.load(os.path.join(workdir, pipeline.SELECTION_FILE))["indices"], first
    )
    fresh = experiment.run(config, str(tmp_path / "fresh"))
    for key in ("poison_kept", "clean_accuracy", "attack_success_rate"):
        assert summary[key] == fresh[key]


@pytest.mark.parametrize(
    "method, field, value, message",
    [
        ("random", "select.name", "herding", "config.select.name: must be None"),
        ("random", "select.fraction", 0.0, "config.select.fraction"),
        # Checked for the methods that read them (random reads neither).
        ("el2n", "select.variant", "paper", "config.select.variant"),
        ("el2n", "select.score.score_epochs", (3,), "config.select.score.score_epochs"),
        ("random", "select.craig.greedy", "fast", "config.select.craig.greedy"),
        ("random", "select.fraction", 0.1, "fewer than one batch"),
    ],
)
def test_bad_select_config(method, field, value, message, tmp_path):
    config = select_config(method, **{field: value})
    with pytest.raises(experiment.ConfigError, match=message):
        experiment.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_fields_a_method_does_not_read_are_not_checked(tmp_path):
    # CRAIG never reads score.*: a pretraining shorter than EL2N's scoring epoch is fine.
    settings = experiment.validate_config(
        select_config("craig", **{"select.pretrain_epochs": 1, "select.score.score_epochs": (2,)})
    )
    assert settings.select.pretrain_epochs == 1


@pytest.mark.parametrize("attack", ["pcb", "adv_clean_label", "sig"])
def test_model_and_clean_label_attacks_run_in_the_pipeline(attack, tmp_path):
    config = select_config(
        "random",
        **{"attack.name": attack, "attack.surrogate_epochs": 1, "attack.badnets.size": 3},
    )
    if attack == "adv_clean_label":
        config.attack.adv_clean_label.size = 3
    workdir = str(tmp_path / "w")
    summary = experiment.run(config, workdir)
    assert summary["attack"] == attack
    rows = read_rows(workdir)
    dense = [r for r in rows if r.get("phase") == "dense"]
    if attack == "pcb":
        # A training-time attack: nothing in the training set is poisoned, the dense phase
        # alternates clean and poisoned steps.
        assert summary["num_poison"] == 0 and summary["poison_retention"] is None
        assert dense[-1]["poison_steps"] > 0
    else:
        assert summary["num_poison"] == round(0.1 * 256)
    if attack == "adv_clean_label":
        assert any(r.get("phase") == "surrogate" for r in rows)
