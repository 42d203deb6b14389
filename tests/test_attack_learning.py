"""Slow: a small model trained on poisoned synthetic data learns every attack's backdoor.

One run per attack at smoke scale (`configs/smoke.py`: 2,048 synthetic 32×32 images, ResNet-18
width 8, 4 epochs). The backdoor counts as learned when the ASR is well above chance (the
fraction of eligible triggered images a clean model would send to the target, about 1/C) and
clean accuracy stays high. Run with `pytest -m slow tests/test_attack_learning.py`.
"""

import importlib.util
import os

import pytest

from jaxbd import experiment

SMOKE = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")


def smoke_config():
    spec = importlib.util.spec_from_file_location("smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# Clean-label attacks poison only target-class images (≈ 10% of the set): 5% of the set is
# half of the target class. Their triggers need more epochs to be learned than a patch.
CASES = {
    "badnets": {},
    "blended": {},
    "adaptive_blend": {"attack.fraction": 0.1},
    "adaptive_patch": {"attack.fraction": 0.1},
    "wanet": {"attack.fraction": 0.1, "train.epochs": 8},
    "sig": {"train.epochs": 8},
    "low_frequency": {},
    "refool": {"attack.fraction": 0.1},
    "cl_badnets": {"train.epochs": 8},
    "adv_clean_label": {"train.epochs": 8},
    "tsb": {"attack.fraction": 0.1},
    "all_to_all": {"attack.fraction": 0.1, "train.epochs": 8},
    "pcb": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_backdoor_is_learned(name, tmp_path):
    config = smoke_config()
    config.attack.name = name
    config.runtime.progress = False
    config.prune.rounds = 0  # the dense arm is what this test checks
    for key, value in CASES[name].items():
        section, field = key.split(".")
        config[section][field] = value
    summary = experiment.run(config, str(tmp_path / name))
    assert summary["clean_accuracy"] > 0.8, summary
    assert summary["attack_success_rate"] > 0.5, summary
