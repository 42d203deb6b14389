"""The detection pipeline end to end at toy scale (STRIP on a tiny trained run): outputs,
the source left untouched, a threshold independent of the judged test inputs, a finished
detection never overwritten, an interrupted one redone, bad input refused before writing,
and a detector registered from outside."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from conftest import set_fields, tiny_config

from jaxbd import defenses, runs
from jaxbd.configs import detect_config
from jaxbd.data import DataSplits
from jaxbd.defenses import strip
from jaxbd.pipeline import detect, experiment
from jaxbd.pipeline import detect_figures as detectors
from jaxbd.pipeline.stages import setup
from jaxbd.settings import ConfigError, require


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    summary = experiment.run(tiny_config(), workdir)
    return workdir, summary


def detection_config(source_dir, **overrides):
    c = detect_config()
    c.source = source_dir
    c.defender.fraction = 0.25  # 64 of the 256 training images: 54 tuning, 10 held out
    c.detector.strip.overlays = 8
    c.detector.strip.batch_size = 32  # blocks of 4 inputs × 8 overlays
    c.detector.strip.frr = 0.1
    c.runtime.num_devices = 1
    c.runtime.eval_batch_size = 64
    return set_fields(c, overrides)


def tree_hash(path, skip="detections"):
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
def detected(source):
    source_dir, _ = source
    before = tree_hash(source_dir)
    summary = detect.run(detection_config(source_dir))
    assert tree_hash(source_dir) == before  # the source run is only read
    return summary, os.path.join(source_dir, "detections", "strip")


def test_outputs_and_summary(source, detected):
    source_dir, source_summary = source
    summary, workdir = detected
    for name in ("config.json", "metrics.jsonl", "summary.json", "scores.npz", "entropy.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["roc_auc"] == pytest.approx(summary["roc_auc"])
    assert summary["detector"] == "strip" and summary["source"] == source_dir
    assert summary["source_model"] == "dense" and summary["attack"] == "badnets"
    assert summary["overlays"] == 8 and summary["blend"] == "sum"
    assert summary["hparams"] == {"overlays": 8, "blend": "sum", "frr": 0.1, "batch_size": 32}
    assert summary["defender_tune"] == 54 and summary["defender_val"] == 10
    # The examined model's test metrics, recomputed: those its training run reported.
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert summary["model_test"][key] == pytest.approx(source_summary[key]), key
    scores = np.load(os.path.join(workdir, "scores.npz"))
    assert scores["val"].shape == (10,) and scores["clean"].shape == (64,)
    assert summary["num_clean"] == 64 and summary["num_triggered"] == len(scores["triggered"])
    assert 0 < summary["num_triggered"] < 64  # the target class's images are not judged
    # The threshold is the held-out scores' quantile; FRR/FAR/AUC are recomputed from scores.
    t = summary["threshold"]
    assert t == strip.frr_threshold(scores["val"], 0.1)
    assert summary["val_frr"] == np.mean(scores["val"] < t) <= 0.1
    assert summary["frr"] == pytest.approx(np.mean(scores["clean"] < t))
    assert summary["far"] == pytest.approx(np.mean(scores["triggered"] >= t))
    clean, trig = scores["clean"], scores["triggered"]
    wins = (trig[:, None] < clean[None]).mean() + 0.5 * (trig[:, None] == clean[None]).mean()
    assert summary["roc_auc"] == pytest.approx(wins, abs=1e-5)
    for key in ("frr", "far", "roc_auc"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert np.all((scores["clean"] >= 0) & (scores["clean"] <= np.log2(10) + 1e-5))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["detector"]["name"] == "strip"
    assert len(set(scores["overlay_indices"].tolist())) == 8  # distinct images


def test_a_finished_detection_is_never_overwritten(source, detected):
    source_dir, _ = source
    _, workdir = detected
    before = tree_hash(workdir)
    with pytest.raises(runs.RunDirError, match="finished run"):
        detect.run(detection_config(source_dir))
    assert tree_hash(workdir) == before


def test_the_threshold_never_sees_the_judged_inputs(source, detected, tmp_path, monkeypatch):
    source_dir, _ = source
    reference, workdir = detected
    real_load = setup.load_data

    def garbage_test_set(settings):
        splits = real_load(settings)
        noise = np.random.default_rng(0).integers(0, 256, splits.test.images.shape, np.uint8)
        labels = np.random.default_rng(1).integers(0, 10, len(splits.test.labels))
        test = dataclasses.replace(splits.test, images=noise, labels=labels.astype(np.int32))
        return DataSplits(train=splits.train, test=test, source=splits.source)

    drawn = []

    def spy(*args, **kwargs):
        drawn.append(real_defender_data(*args, **kwargs))
        return drawn[-1]

    real_defender_data = defenses.defender_data
    monkeypatch.setattr(setup, "load_data", garbage_test_set)
    monkeypatch.setattr(defenses, "defender_data", spy)
    summary = detect.run(detection_config(source_dir), str(tmp_path / "garbage"))
    ref_scores = np.load(os.path.join(workdir, "scores.npz"))
    scores = np.load(str(tmp_path / "garbage" / "scores.npz"))
    assert summary["threshold"] == reference["threshold"]
    np.testing.assert_array_equal(scores["val"], ref_scores["val"])
    np.testing.assert_array_equal(scores["overlay_indices"], ref_scores["overlay_indices"])
    assert not np.array_equal(scores["clean"], ref_scores["clean"])  # the garbage was judged
    # Overlays are defender tuning images; the threshold's images are the held-out ones.
    (defender,) = drawn
    assert set(scores["overlay_indices"].tolist()) <= set(defender.tune_indices.tolist())
    assert len(scores["val"]) == len(defender.val_indices)


def test_an_interrupted_detection_is_redone(source, detected, tmp_path, monkeypatch):
    source_dir, _ = source
    reference, _ = detected
    original = runs.RunDir.write_summary

    def interrupt(self, summary):
        raise KeyboardInterrupt

    workdir = str(tmp_path / "interrupted")
    monkeypatch.setattr(runs.RunDir, "write_summary", interrupt)
    with pytest.raises(KeyboardInterrupt):
        detect.run(detection_config(source_dir), workdir)
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    monkeypatch.setattr(runs.RunDir, "write_summary", original)
    summary = detect.run(detection_config(source_dir), workdir)
    assert summary["resumed"]
    for key in ("threshold", "frr", "far", "roc_auc"):
        assert summary[key] == reference[key], key


def test_no_matplotlib_no_figure(source, tmp_path, monkeypatch):
    source_dir, _ = source

    def no_matplotlib(*args):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(detectors, "plot_entropy", no_matplotlib)
    summary = detect.run(detection_config(source_dir), str(tmp_path / "w"))
    assert os.path.exists(tmp_path / "w" / "summary.json") and "roc_auc" in summary
    assert not os.path.exists(tmp_path / "w" / "entropy.png")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"detector.name": "oracle"}, "config.detector.name: must be one of"),
        ({"detector.strip.overlays": 0}, "config.detector.strip.overlays: must be >= 1"),
        ({"detector.strip.frr": 0.0}, r"config.detector.strip.frr: must be in \(0, 1\)"),
        ({"detector.strip.frr": 1.0}, "config.detector.strip.frr"),
        ({"detector.strip.blend": "max"}, "config.detector.strip.blend"),
        ({"detector.strip.overlays": 55}, "exceeds the defender's 54 tuning images"),
        ({"defender.fraction": 1.5}, "config.defender.fraction"),
        ({"defender.per_class": 500}, "config.defender: the defender needs 500"),
        ({"source_arm": "pruned"}, "has no 'pruned' checkpoint"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(source, tmp_path, overrides, message):
    source_dir, _ = source
    with pytest.raises(ConfigError, match=message):
        detect.run(detection_config(source_dir, **overrides), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_the_source_must_be_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.source: a finished run directory is required"):
        detect.run(detection_config(None), str(tmp_path / "w"))
    os.makedirs(tmp_path / "unfinished")
    (tmp_path / "unfinished" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not finished"):
        detect.run(detection_config(str(tmp_path / "unfinished")), str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="is not a jaxbd run directory"):
        detect.run(detection_config(str(tmp_path / "nothing")), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanLogitSettings:
    scale: float = 1.0

    def __post_init__(self):
        require(self.scale > 0, "scale", "must be > 0", self.scale)


def mean_logit(ctx, settings):
    """A model-level 'detector': one score per model, from the defender's held-out images."""
    logits = np.asarray(ctx.logits_fn(ctx.defender.val.images))
    return detect.Detection(summary={"score": settings.scale * float(logits.max(-1).mean())})


def test_a_registered_detector_runs_through_the_pipeline(source, tmp_path, monkeypatch):
    source_dir, _ = source
    monkeypatch.setitem(
        detect.DETECTORS, "mean_logit", detect.Detector(MeanLogitSettings, mean_logit)
    )
    c = detection_config(source_dir, **{"detector.name": "mean_logit"})
    # Its section, as detect_config builds it from the settings' defaults.
    c.detector.mean_logit = detect.settings_config(MeanLogitSettings)
    c.detector.mean_logit.scale = -1.0
    with pytest.raises(ConfigError, match=r"config\.detector\.mean_logit\.scale: must be > 0"):
        detect.run(c, str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused")
    c.detector.mean_logit.scale = 2.0
    summary = detect.run(c, str(tmp_path / "w"))
    assert summary["detector"] == "mean_logit" and summary["hparams"] == {"scale": 2.0}
    assert np.isfinite(summary["score"])
    assert detect.default_workdir(c).endswith(os.path.join("detections", "mean_logit"))

    def clashing(ctx, settings):
        return detect.Detection(summary={"source": "mine"})

    monkeypatch.setitem(detect.DETECTORS, "clash", detect.Detector(MeanLogitSettings, clashing))
    with pytest.raises(ValueError, match="reuses the pipeline's summary keys"):
        detect.run(detection_config(source_dir, **{"detector.name": "clash"}), str(tmp_path / "c"))
