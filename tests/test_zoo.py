"""The model zoo end to end at toy scale: 2 backdoored + 2 clean tiny models (1 epoch), Neural
Cleanse and CTI with tiny budgets; the files, the AUC and its interval, a clean model really
unpoisoned, resuming without retraining or redetecting, a different zoo refused, and the
bootstrap against a direct NumPy resampling."""

import csv
import glob
import json
import os

import numpy as np
import pytest
from conftest import set_fields, tiny_config

from jaxbd import metrics, runs
from jaxbd.configs import zoo_config
from jaxbd.pipeline import detect, experiment, zoo
from jaxbd.settings import ConfigError


def tiny_zoo(**overrides):
    c = tiny_config(**{"train.epochs": 1})
    z = zoo_config().zoo
    z.attacks = ("badnets", "blended")
    z.backdoored = 2
    z.clean = 2
    z.bootstrap = 200
    z.min_asr = 0.0  # 1-epoch models: examine every one (the bar has its own test)
    z.defender.fraction = 0.25  # 64 of the 256 training images
    z.defender.val_fraction = 0.2
    z.detector.neural_cleanse.update(epochs=2, batch_size=16, early_stop_patience=1)
    z.detector.cti.update(
        steps=3, batch_size=16, repair_steps=2, repair_eval_every=2, repair_batch_size=16
    )
    with c.unlocked():
        c.zoo = z
    return set_fields(c, overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("zoo") / "zoo")
    return workdir, zoo.run(tiny_zoo(), workdir)


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_outputs(built):
    workdir, result = built
    for name in ("zoo.json", "models.csv", "models.md", "auc.json", "roc.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = result["models"]
    assert [r["model"] for r in rows] == [
        "badnets/seed0",
        "blended/seed1",
        "clean/seed0",
        "clean/seed1",
    ]
    with open(os.path.join(workdir, "models.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert set(table[0]) >= {"attack", "seed", "clean_accuracy", "attack_success_rate"}
    assert {"neural_cleanse_score", "cti_score"} <= set(table[0])
    for name in ("neural_cleanse", "cti"):
        a = result["auc"][name]
        assert 0.0 <= a["auc"] <= 1.0
        assert a["low"] is not None and 0.0 <= a["low"] <= a["auc"] <= a["high"] <= 1.0
        assert a["positives"] == 2 and a["negatives"] == 2 and 0 < a["valid_draws"] <= 200
        scores = np.array([r[f"{name}_score"] for r in rows])
        truth = np.array([r["backdoored"] for r in rows])
        assert a["auc"] == pytest.approx(float(metrics.roc_auc(scores, truth)))
        summary_path = zoo.detection_dir(workdir, name, "clean", 1)
        with open(os.path.join(summary_path, "summary.json")) as f:
            assert json.load(f)["detector"] == name
    with open(os.path.join(workdir, "auc.json")) as f:
        report = json.load(f)
    assert report["auc"]["cti"]["auc"] == result["auc"]["cti"]["auc"]
    # The zoo's cost: the wall time every model's training and detection runs recorded.
    recorded = []
    for pattern in ("models/*/*/summary.json", "detections/*/*/*/summary.json"):
        for path in glob.glob(os.path.join(workdir, pattern)):
            with open(path) as f:
                recorded.append(json.load(f)["wall_seconds"])
    assert len(recorded) == 4 + 2 * 4
    assert report["model_seconds"] == pytest.approx(sum(recorded)) and report["seconds"] > 0
    with open(os.path.join(workdir, "models.md")) as f:
        text = f.read()
    assert "| neural_cleanse |" in text and "clean/seed1" in text


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_clean_models_have_no_poison(built):
    workdir, _ = built
    with open(os.path.join(zoo.model_dir(workdir, "clean", 0), "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_poison"] == 0 and summary["poison_total"] == 0
    with open(os.path.join(zoo.model_dir(workdir, "blended", 1), "summary.json")) as f:
        summary = json.load(f)
    assert summary["attack"] == "blended" and summary["num_poison"] > 0


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_resume_reruns_nothing(built, monkeypatch):
    workdir, result = built
    calls = []
    monkeypatch.setattr(experiment, "run", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(detect, "run", lambda *a, **k: calls.append("detect"))
    again = zoo.run(tiny_zoo(**{"zoo.bootstrap_seed": 1}), workdir)
    assert calls == []
    assert again["models"] == result["models"]
    assert again["auc"]["cti"]["auc"] == result["auc"]["cti"]["auc"]


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_resume_trains_only_a_missing_model(built, monkeypatch, tmp_path):
    workdir, _ = built
    real = experiment.run
    trained = []

    def counting(config, path):
        trained.append(path)
        return real(config, path)

    monkeypatch.setattr(experiment, "run", counting)
    zoo.run(tiny_zoo(**{"zoo.clean": 3, "zoo.detectors": ("neural_cleanse",)}), workdir)
    assert trained == [zoo.model_dir(workdir, "clean", 2)]


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_a_model_that_did_not_learn_its_backdoor_is_left_out(built, monkeypatch):
    workdir, result = built
    backdoored = [r for r in result["models"] if r["backdoored"]]
    bar = max(r["attack_success_rate"] for r in backdoored)  # the weaker model falls below
    calls = []
    monkeypatch.setattr(detect, "run", lambda *a, **k: calls.append("detect"))
    again = zoo.run(tiny_zoo(**{"zoo.min_asr": bar}), workdir)  # the bar may change
    assert calls == []  # nothing newly admitted: every examined model was examined before
    below = {r["model"] for r in backdoored if r["attack_success_rate"] < bar}
    assert below  # the two backdoored models' ASRs differ at this seed
    for row in again["models"]:
        assert row["learned"] == (None if not row["backdoored"] else row["model"] not in below)
        if row["model"] in below:
            assert row["neural_cleanse_score"] is None and row["cti_score"] is None
    kept = [r for r in again["models"] if r["model"] not in below]
    for name in ("neural_cleanse", "cti"):
        a = again["auc"][name]
        assert set(a["excluded"]) == below and a["positives"] == len(backdoored) - len(below)
        scores = np.array([r[f"{name}_score"] for r in kept])
        truth = np.array([r["backdoored"] for r in kept])
        assert a["auc"] == pytest.approx(float(metrics.roc_auc(scores, truth)))
    with open(os.path.join(workdir, "models.md")) as f:
        assert sorted(below)[0] in f.read().split("\n")[4]  # named in the AUC table


@pytest.mark.slow  # the zoo built once for these; .ci/run runs them
def test_a_different_zoo_is_refused(built):
    workdir, _ = built
    with pytest.raises(runs.RunDirError, match="different configuration"):
        zoo.run(tiny_zoo(**{"train.lr": 0.01}), workdir)


def test_bad_settings_are_refused(tmp_path):
    for field, value in (
        ("zoo.attacks", ("nope",)),
        ("zoo.detectors", ("strip_x",)),
        ("zoo.clean", 0),
        ("zoo.min_asr", 1.5),
        ("zoo.detector.cti.steps", 0),
    ):
        with pytest.raises(ConfigError, match=field):
            zoo.run(tiny_zoo(**{field: value}), str(tmp_path / "z"))
    assert not os.path.exists(tmp_path / "z")


def test_bootstrap_matches_numpy_resampling():
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.5, 0.55])
    truth = np.array([True, False, True, False, True, False])
    out = zoo.auc_with_interval(scores, truth, draws=300, seed=3)
    picks = np.random.default_rng(3).integers(0, 6, size=(300, 6))
    aucs = []
    for p in picks:
        s, t = scores[p], truth[p]
        if t.all() or not t.any():
            continue
        wins = (s[t][:, None] > s[~t][None]).mean() + 0.5 * (s[t][:, None] == s[~t][None]).mean()
        aucs.append(wins)
    assert out["valid_draws"] == len(aucs)
    assert out["low"] == pytest.approx(np.percentile(aucs, 2.5), abs=1e-5)
    assert out["high"] == pytest.approx(np.percentile(aucs, 97.5), abs=1e-5)
    assert out["auc"] == pytest.approx(8 / 9, abs=1e-6)
    fpr, tpr = zoo.roc_curve(scores, truth)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(8 / 9)
