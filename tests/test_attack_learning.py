"""Slow: small models trained on poisoned data learn each attack family's backdoor.

Poison-label attacks and PCB train at smoke scale (`configs/smoke.py`: 2,048 synthetic 32×32
images, ResNet-18 width 8). The backdoor counts as learned when the ASR is well above chance
(a model without a backdoor sends about 1/C = 10% of triggered images to the target) — here
above 50% — with clean accuracy above 80%.

The subtler triggers are learned at this scale only without the random crop and flip (which
shift, mirror and so disguise a full-image pattern; with them, blended reached 1.5% ASR after
8 epochs) and with 20% poisons (TSB, whose test images carry all its small triggers: 30%);
the settings per attack are in `CASES`. WaNet is checked at
warp strength 1 without its noise mode (at the default strength 0.5 and noise mode the ASR
stayed at 0 after 8 epochs).

Clean-label attacks are not learned on the synthetic images at all (cl_badnets 9%, SIG 0%
ASR with every target-class image poisoned): the class patterns there are so easy that the
trigger never becomes the shortcut. They are checked on real CIFAR-10 instead (5,000 images
of the shared copy, 14 epochs, as in the README's attack table), where the patch-based ones
are learned as they are; SIG needs 90% of the target class poisoned and no augmentation
(measured: 90.2% ASR at 44.9% clean accuracy; with augmentation and half the class, 5.5%).
Set JAXBD_CIFAR10 to the CIFAR-10 copy (default ../shared/data/cifar10).

Run with `pytest -m slow tests/test_attack_learning.py` (about 30 minutes on 2 CPU cores).
"""

import importlib.util
import os

import pytest

from jaxbd.pipeline import experiment

ROOT = os.path.join(os.path.dirname(__file__), "..")
CIFAR10 = os.environ.get("JAXBD_CIFAR10", os.path.join(ROOT, "..", "shared", "data", "cifar10"))

NO_AUGMENTATION = {"train.crop_padding": 0, "train.flip": False}
SUBTLE = {**NO_AUGMENTATION, "attack.fraction": 0.2, "train.epochs": 8}

# Synthetic data (smoke config), per attack: overrides of the smoke config.
CASES = {
    "badnets": {},
    "blended": SUBTLE,
    "adaptive_blend": SUBTLE,
    "adaptive_patch": {**SUBTLE, "train.epochs": 12},
    "wanet": {**SUBTLE, "attack.wanet.strength": 1.0, "attack.wanet.noise_fraction": 0.0},
    "low_frequency": SUBTLE,
    "refool": SUBTLE,
    "tsb": {**SUBTLE, "attack.fraction": 0.3, "train.epochs": 12},  # 20%, 8 epochs: 39%
    "all_to_all": SUBTLE,
    "pcb": {"train.epochs": 10},  # 4 epochs: 17% (a tenth of the parameters learn it)
}

# Clean-label attacks on CIFAR-10: overrides of configs/full.py (half the target class
# poisoned, width 8, 14 epochs: the README's attack table).
CIFAR_CASES = {
    "cl_badnets": {},
    "adv_clean_label": {"attack.surrogate_epochs": 4},
    "sig": {**NO_AUGMENTATION, "attack.fraction": 0.09},
}
CIFAR_SCALE = {
    "data.train_limit": 5000,
    "attack.fraction": 0.05,
    "model.width": 8,
    "model.dtype": "float32",
    "train.epochs": 14,
    "train.eval_every_epochs": 0,
}


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply(config, overrides):
    for key, value in overrides.items():
        *sections, field = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[field] = value


def train(config, attack, overrides, workdir):
    config.attack.name = attack
    config.runtime.progress = False
    config.prune.rounds = 0  # the dense arm is what these tests check
    apply(config, overrides)
    return experiment.run(config, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_backdoor_is_learned_on_synthetic_data(name, tmp_path):
    summary = train(load_config("smoke"), name, CASES[name], str(tmp_path / name))
    assert summary["clean_accuracy"] > 0.8, summary
    assert summary["attack_success_rate"] > 0.5, summary


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CIFAR_CASES))
def test_clean_label_backdoor_is_learned_on_cifar10(name, tmp_path):
    if not os.path.isdir(CIFAR10):
        pytest.skip(f"no CIFAR-10 copy at {CIFAR10} (set JAXBD_CIFAR10)")
    config = load_config("full")
    config.data.path = CIFAR10
    summary = train(config, name, {**CIFAR_SCALE, **CIFAR_CASES[name]}, str(tmp_path / name))
    # Width 8 on 5,000 images reaches 45-52% clean accuracy (README); chance is 10%.
    assert summary["clean_accuracy"] > 0.35, summary
    assert summary["attack_success_rate"] > 0.5, summary
