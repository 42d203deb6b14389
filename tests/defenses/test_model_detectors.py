"""The model-level detectors through the detection pipeline on a tiny trained run: Neural
Cleanse's summary (per-label norms, anomaly indices, flagged labels, the score) and CTI's
(per-class scores from the held-out images, the repair), the model score's definition on
hand-made norms, and a CTI repair batch larger than the defender's tuning set refused."""

import os

import numpy as np
import pytest
from conftest import tiny_config

from jaxbd.configs import detect_config
from jaxbd.defenses import cti
from jaxbd.defenses.neural_cleanse import anomaly_index
from jaxbd.pipeline import detect, experiment
from jaxbd.settings import ConfigError


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    experiment.run(tiny_config(**{"train.epochs": 1}), workdir)
    return workdir


def detection_config(source_dir, name):
    c = detect_config()
    c.source = source_dir
    c.defender.fraction = 0.25  # 64 of the 256 training images: 54 tuning, 10 held out
    c.detector.name = name
    c.detector.neural_cleanse.update(epochs=3, batch_size=16)
    c.detector.cti.update(
        steps=4, batch_size=16, repair_steps=4, repair_eval_every=2, repair_batch_size=16
    )
    c.runtime.num_devices = 1
    c.runtime.eval_batch_size = 64
    return c


def test_neural_cleanse_score_on_hand_made_norms():
    norms = np.array([10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 2.0, 9.8, 10.1, 10.4])
    index = np.asarray(anomaly_index(norms))
    assert cti.neural_cleanse_score(norms) == pytest.approx(index[6])
    # A large outlier above the median does not count: only small triggers betray a backdoor.
    high = norms.copy()
    high[6] = 30.0
    below = high < np.median(high)
    assert cti.neural_cleanse_score(high) == pytest.approx(
        np.asarray(anomaly_index(high))[below].max()
    )
    assert cti.neural_cleanse_score(high) < np.asarray(anomaly_index(high))[6]
    assert cti.neural_cleanse_score(np.full(10, 5.0)) == 0.0  # nothing below the median


@pytest.mark.slow  # a detector through the pipeline; .ci/run runs it
def test_neural_cleanse_detector_summary(source, tmp_path):
    workdir = str(tmp_path / "nc")
    summary = detect.run(detection_config(source, "neural_cleanse"), workdir)
    norms = np.array(summary["norms"])
    assert norms.shape == (10,) and np.all(norms >= 0)
    np.testing.assert_allclose(summary["anomaly_index"], anomaly_index(norms), rtol=1e-5)
    assert summary["score"] == pytest.approx(cti.neural_cleanse_score(norms))
    index = np.array(summary["anomaly_index"])
    flagged = np.flatnonzero((index > 2.0) & (norms < np.median(norms))).tolist()
    assert summary["flagged_labels"] == flagged and summary["flagged"] == bool(flagged)
    assert len(summary["attack_success"]) == 10 and len(summary["reached_threshold"]) == 10
    assert summary["hparams"]["epochs"] == 3
    scores = np.load(os.path.join(workdir, "scores.npz"))
    assert scores["masks"].shape == (10, 16, 16) and scores["patterns"].shape == (10, 16, 16, 3)


@pytest.mark.slow  # a detector through the pipeline; .ci/run runs it
def test_cti_detector_summary(source, tmp_path):
    workdir = str(tmp_path / "cti")
    summary = detect.run(detection_config(source, "cti"), workdir)
    class_scores = np.array(summary["class_scores"])
    assert class_scores.shape == (10,)
    assert summary["score"] == pytest.approx(class_scores.max())
    assert summary["suspected_target"] == int(class_scores.argmax())
    np.testing.assert_allclose(
        class_scores,
        np.array(summary["poisoned_success"]) - np.array(summary["repaired_success"]),
        atol=1e-6,
    )
    # Judged: the 10 held-out images (one per class) not of each class.
    assert summary["num_judged"] == [9] * 10
    assert summary["repair_steps_run"] <= 4 and summary["repair_returned_step"] in (0, 2, 4)
    scores = np.load(os.path.join(workdir, "scores.npz"))
    assert scores["deltas"].shape == (10, 16, 16, 3) and scores["losses"].shape == (10, 4)


def test_cti_repair_batch_larger_than_the_tuning_set_is_refused(source, tmp_path):
    c = detection_config(source, "cti")
    c.detector.cti.repair_batch_size = 128
    with pytest.raises(ConfigError, match="repair_batch_size"):
        detect.run(c, str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused" / "summary.json")
