"""The defense pipeline end to end at toy scale: outputs, the source run left untouched,
decisions independent of the test set, resuming, refusing bad input before writing."""

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from jaxbd import defenses, runs
from jaxbd.configs import defend_config, evaluate_config
from jaxbd.data import DataSplits
from jaxbd.pipeline import defend, experiment
from jaxbd.pipeline import evaluate as evaluation
from jaxbd.pipeline.stages import setup
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.settings import ConfigError


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    summary = experiment.run(tiny_config(**{"train.epochs": 3}), workdir)
    return workdir, summary


def defense_config(source_dir, **overrides):
    c = defend_config()
    c.source = source_dir
    c.defense.name = "finetune"
    c.defense.steps = 12
    c.defense.eval_every = 4
    c.defense.finetune.batch_size = 16
    c.defender.fraction = 0.25
    c.runtime.progress = False
    c.runtime.num_devices = 1
    c.runtime.eval_batch_size = 64
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def tree_hash(path, skip="defenses"):
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(path):  # top-down: pruning `dirs` skips them
        dirs[:] = sorted(d for d in dirs if d != skip)
        for name in sorted(files):
            full = os.path.join(folder, name)
            digest.update(full.encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def finetuned(source):
    source_dir, _ = source
    before = tree_hash(source_dir)
    summary = defend.run(defense_config(source_dir))
    assert tree_hash(source_dir) == before  # the source run is only read
    return summary, os.path.join(source_dir, "defenses", "finetune")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_outputs_and_the_undefended_row(source, finetuned):
    _, trained = source
    summary, workdir = finetuned
    for name in ("config.json", "metrics.jsonl", "curve.jsonl", "curve.png", "summary.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = read_jsonl(os.path.join(workdir, "curve.jsonl"))
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    # Step 0 is the undefended model, exactly as the training run evaluated it.
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "asr_all_images"):
        assert rows[0][f"test_{key}"] == summary["before"][key] == trained[key]
    assert summary["defender_examples"] == summary["defender_tune"] + summary["defender_val"]
    assert summary["defender_examples"] == 64  # 0.25 of 256
    assert summary["steps"] == 12 and 0 <= summary["returned_step"] <= 12
    for key in ("der", "rir", "oracle_asr_at_delta"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["oracle_asr_at_delta"] <= rows[0]["test_attack_success_rate"]


def test_a_finished_defense_is_never_overwritten(source, finetuned):
    source_dir, _ = source
    with pytest.raises(runs.RunDirError, match="finished run"):
        defend.run(defense_config(source_dir))


def test_decisions_do_not_read_the_test_set(source, finetuned, tmp_path, monkeypatch):
    source_dir, _ = source
    reference, _ = finetuned
    real_load = setup.load_data

    def garbage_test_set(settings):
        splits = real_load(settings)
        noise = np.random.default_rng(0).integers(0, 256, splits.test.images.shape, np.uint8)
        labels = np.random.default_rng(1).integers(0, 10, len(splits.test.labels))
        test = type(splits.test)(
            images=noise, labels=labels.astype(np.int32), num_classes=10, source="garbage"
        )
        return DataSplits(train=splits.train, test=test, source=splits.source)

    monkeypatch.setattr(setup, "load_data", garbage_test_set)
    summary = defend.run(defense_config(source_dir), str(tmp_path / "garbage"))
    rows = read_jsonl(str(tmp_path / "garbage" / "curve.jsonl"))
    assert summary["returned_step"] == reference["returned_step"]
    assert summary["stopped_early"] == reference["stopped_early"]
    assert summary["details"] == reference["details"]
    ref_rows = read_jsonl(os.path.join(source_dir, "defenses", "finetune", "curve.jsonl"))
    assert [r["val_accuracy"] for r in rows] == [r["val_accuracy"] for r in ref_rows]
    assert [r["loss"] for r in rows[1:]] == [r["loss"] for r in ref_rows[1:]]


def test_an_interrupted_defense_resumes_to_the_same_result(
    source, finetuned, tmp_path, monkeypatch
):
    source_dir, _ = source
    reference, _ = finetuned
    original = Checkpointer.save
    calls = {"n": 0}

    def interrupt_third_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    workdir = str(tmp_path / "resumed")
    monkeypatch.setattr(Checkpointer, "save", interrupt_third_save)
    with pytest.raises(KeyboardInterrupt):
        defend.run(defense_config(source_dir), workdir)
    monkeypatch.setattr(Checkpointer, "save", original)
    summary = defend.run(defense_config(source_dir), workdir)
    assert summary["resumed"]
    for key in ("before", "after", "returned_step", "steps", "der", "oracle_asr_at_delta"):
        assert summary[key] == reference[key], key
    assert [r["step"] for r in read_jsonl(os.path.join(workdir, "curve.jsonl"))] == [0, 4, 8, 12]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"defense.name": "prayer"}, "config.defense.name: must be one of"),
        ({"defender.fraction": 1.5}, "config.defender.fraction"),
        ({"defender.per_class": 500}, "config.defender: the defender needs 500"),
        ({"source_arm": "pruned"}, "has no 'pruned' checkpoint"),
        ({"defense.eval_every": 0}, "config.defense.eval_every"),
        ({"defense.finetune.lr": -1.0}, "config.defense.finetune: lr"),
        ({"defense.finetune.batch_size": 64}, "exceeds the defender's 54 tuning images"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(source, tmp_path, overrides, message):
    source_dir, _ = source
    with pytest.raises(ConfigError, match=message):
        defend.run(defense_config(source_dir, **overrides), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_the_source_must_be_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.source: a finished run directory is required"):
        defend.run(defense_config(None), str(tmp_path / "w"))
    os.makedirs(tmp_path / "unfinished")
    with open(tmp_path / "unfinished" / "config.json", "w") as f:
        f.write("{}")
    with pytest.raises(ConfigError, match="is not finished"):
        defend.run(defense_config(str(tmp_path / "unfinished")), str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="is not a jaxbd run directory"):
        defend.run(defense_config(str(tmp_path / "nothing")), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("name", sorted(defenses.REPAIRS))
def test_every_repair_starts_its_curve_at_the_undefended_model(source, tmp_path, name):
    source_dir, trained = source
    data_free = getattr(defenses.REPAIRS[name](), "data_free", False)
    c = defense_config(source_dir, **{"defense.name": name, "defense.steps": 0 if data_free else 4})
    c.defense[name].batch_size = 16
    c.defender.trigger_knowledge = bool(getattr(defenses.REPAIRS[name](), "needs_trigger", False))
    for field, value in SMALL.get(name, {}).items():
        c.defense[name][field] = value
    summary = defend.run(c, str(tmp_path / name))
    rows = read_jsonl(str(tmp_path / name / "curve.jsonl"))
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert rows[0][f"test_{key}"] == trained[key] == summary["before"][key]
    assert summary["defense"] == name and rows[-1]["step"] == summary["steps"]
    candidates_file = tmp_path / name / "candidates.jsonl"
    if name not in ("anp", "clp"):  # no discrete alternatives to report
        assert "candidates" not in summary and not candidates_file.exists()
        return
    # Every alternative the method chose among, on the test set; the oracle is the lowest
    # test ASR within Δ of the undefended test accuracy; the method's own choice (its model
    # was not tuned: steps = 0) is the candidate at its threshold or u, same test metrics.
    candidates = read_jsonl(str(candidates_file))
    grid = c.defense[name].grid if name == "anp" else c.defense[name].curve_us
    assert summary["candidates"] == len(candidates) == len(grid)
    base = summary["before"]["clean_accuracy"]
    eligible = [r for r in candidates if r["test_clean_accuracy"] >= base - c.defense.delta - 1e-12]
    expected = min(eligible, key=lambda r: r["test_attack_success_rate"]) if eligible else None
    assert summary["oracle_candidate_at_delta"] == expected
    # η_Δ covers every model the method could return: the curve's rows and the candidates.
    curve_eta = defenses.oracle_asr_at_delta(rows, c.defense.delta)
    etas = [
        v for v in (curve_eta, expected and expected["test_attack_success_rate"]) if v is not None
    ]
    assert summary["oracle_asr_at_delta"] == (min(etas) if etas else None)
    key = "threshold" if name == "anp" else "u"
    chosen = [r for r in candidates if r[key] == summary["details"][key]]
    if summary["details"][key] is not None and summary["steps"] == 0:
        (row,) = chosen
        for metric in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
            assert row[f"test_{metric}"] == summary["after"][metric], metric


# Each repair's own work at toy size (teacher fine-tuning, trigger reverse-engineering).
SMALL = {
    "nad": {"teacher_steps": 4},
    "neural_cleanse": {"epochs": 2, "reverse_batch_size": 16},
    "anp": {"iterations": 8},
    "grad_prune": {"max_rounds": 2},
}


def test_a_data_free_repair_runs_without_defender_images(source, tmp_path):
    source_dir, trained = source
    c = defense_config(source_dir, **{"defense.name": "clp", "defense.steps": None})
    c.defender.fraction = 0.0
    summary = defend.run(c, str(tmp_path / "clp"))
    assert summary["defender_examples"] == 0 and summary["steps"] == 0
    assert summary["before"]["clean_accuracy"] == trained["clean_accuracy"]
    assert summary["details"]["num_channels"] > 0
    c = defense_config(source_dir, **{"defense.name": "finetune"})
    c.defender.fraction = 0.0
    with pytest.raises(ConfigError, match="needs the defender's images"):
        defend.run(c, str(tmp_path / "finetune"))
    assert not os.path.exists(tmp_path / "finetune")


def test_evaluate_a_trained_and_a_defended_model(source, finetuned, tmp_path):
    source_dir, trained = source
    summary, defended_dir = finetuned
    c = evaluate_config()
    c.source = source_dir
    c.runtime.num_devices = 1
    result = evaluation.run(c)
    for key in ("clean_accuracy", "attack_success_rate", "asr_all_images", "robust_accuracy"):
        assert result[key] == trained[key]
    c.source = defended_dir
    c.output = str(tmp_path / "defended.json")
    result = evaluation.run(c)
    assert result["model"] == "defended"
    assert result["attack_success_rate"] == summary["after"]["attack_success_rate"]
    assert json.loads((tmp_path / "defended.json").read_text())["source"] == defended_dir
    c.attack.name = "blended"  # the same model against another trigger
    assert evaluation.run(c)["attack"] == "blended"
    c.source = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="is not a jaxbd run directory"):
        evaluation.run(c)
