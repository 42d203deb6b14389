"""Shared experiment defaults; `configs/*.py` start from `base_config()` and change fields.

They live in the package (not in `configs/`) because `scripts/`, not the repository root,
is on the import path when a config file is loaded. Each section is derived from the
settings dataclass it becomes (`jaxbd.settings.config_section`), where its fields are
documented; the defaults of the defense, detection and evaluation runs and of a grid's
`sweep` section are `jaxbd.pipeline.defaults`' (re-exported here), which the grid and the
zoo compose their runs from.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbd import attacks
from jaxbd.attacks import AttackSettings
from jaxbd.data import DataSettings
from jaxbd.models.settings import ModelSettings
from jaxbd.pipeline.defaults import (
    defend_config,
    defender_section,
    detect_config,
    detector_sections,
    evaluate_config,
    sweep_section,
)
from jaxbd.prune import IMPSettings
from jaxbd.select import SelectSettings
from jaxbd.settings import config_section
from jaxbd.train.settings import RuntimeSettings, TrainSettings

__all__ = [
    "attack_section",
    "base_config",
    "defend_config",
    "detect_config",
    "evaluate_config",
    "sweep_section",
    "zoo_config",
]


def base_config() -> ml_collections.ConfigDict:
    """The reference study's settings: CIFAR-10, 2% BadNets, ResNet-18, 50 epochs.

    Each section holds the defaults of the settings dataclass it becomes
    (`jaxbd.pipeline.stages.experiment_settings.ExperimentSettings`), where every field is
    documented; the methods are defined in docs/methods.md.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # Every random stream (poison, init, shuffle, augment) derives from it.
    c.data = config_section(DataSettings)  # cifar10 | synthetic (synthetic.* fields)
    # attack.<name>: each factory's keyword defaults (jaxbd/attacks/<name>.py), e.g.
    # attack.badnets.size = 7 (7×7 covers rows/cols 25–31 of a 32×32 image).
    c.attack = attack_section()
    # Coreset selection before training (docs/methods.md); name None trains on the full set.
    c.select = config_section(SelectSettings)
    # The pruned arm (docs/methods.md): IMP with rewinding on the same data (the selection),
    # from the dense arm's initialization, then the final sparse network trained with its
    # mask. rounds = 0 turns the arm off; final_epochs None: train.epochs.
    c.prune = config_section(IMPSettings, final_epochs=config_dict.placeholder(int))
    c.model = config_section(ModelSettings)
    c.train = config_section(TrainSettings)
    # How the run executes, not what it computes: may change when resuming.
    c.runtime = config_section(RuntimeSettings)
    return c


def attack_section() -> ml_collections.ConfigDict:
    """`config.attack`: `AttackSettings`' defaults, and one sub-section per attack holding
    its factory's keyword defaults (`jaxbd.attacks.hparams_config`)."""
    section = config_section(AttackSettings, exclude=("hparams",))
    for name in attacks.ATTACKS:
        section[name] = attacks.hparams_config(name)
    return section


def zoo_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/zoo.py` (`jaxbd.pipeline.zoo`): a smoke-scale recipe, the zoo's
    models, the defender's data and the model-level detectors.

    Every model is this experiment config with `seed` = its index, `attack.name` = its
    attack (backdoored) or `attack.fraction` = 0 (clean). `zoo.detector.<name>` holds each
    detector's settings (`jaxbd.pipeline.detect.DETECTORS`), with budgets cut to the
    smoke-scale models.
    """
    c = base_config()
    # The recipe: configs/smoke.py without its pruned arm, at the settings where every one of
    # the zoo's attacks is learned on the synthetic images (tests/test_attack_learning.py):
    # 20% poisons, 8 epochs, no random crop or flip (they disguise a full-image trigger),
    # WaNet at warp strength 1 without its noise mode. With 10% poisons, 4 epochs and the
    # augmentation, 3 of 4 backdoored models ended at ASR 0-10% (a model without a backdoor
    # sends ~10% of triggered images to the target): `zoo.min_asr` guards against that.
    c.data.name = "synthetic"
    c.data.num_train = 2048
    c.data.num_test = 512
    c.attack.fraction = 0.2
    c.attack.wanet.strength = 1.0
    c.attack.wanet.noise_fraction = 0.0
    c.model.width = 8
    c.model.dtype = "float32"
    c.train.epochs = 8
    c.train.crop_padding = 0
    c.train.flip = False
    c.train.batch_size = 64
    c.train.lr = 0.05
    c.train.eval_every_epochs = 0
    c.prune.rounds = 0
    c.runtime.eval_batch_size = 256
    c.runtime.progress = False

    c.zoo = ml_collections.ConfigDict()
    c.zoo.attacks = ("badnets", "blended", "wanet")  # backdoored model k: attacks[k % len]
    c.zoo.backdoored = 8  # backdoored models, seeds 0..backdoored-1
    c.zoo.clean = 8  # clean models (attack.fraction = 0), seeds 0..clean-1
    c.zoo.detectors = ("neural_cleanse", "cti")  # keys of jaxbd.pipeline.detect.DETECTORS
    # A backdoored model counts (is examined, and a positive of the AUC) when its ASR is at
    # least this: well above the ~1/C of a model without the backdoor.
    c.zoo.min_asr = 0.5
    c.zoo.bootstrap = 1000  # resamples of the models for the AUC's interval
    c.zoo.bootstrap_seed = 0
    c.zoo.detect_seed = 0  # the defender's streams (its data draw, the detectors' keys)
    # The defender's clean images per model: 10% of the 2,048 (≈ 164 tuning, 41 held out).
    c.zoo.defender = defender_section(fraction=0.1, val_fraction=0.2)
    c.zoo.detector = detector_sections()
    c.zoo.detector.neural_cleanse.epochs = 20
    c.zoo.detector.neural_cleanse.batch_size = 64
    c.zoo.detector.cti.repair_steps = 200
    c.zoo.detector.cti.repair_batch_size = 64
    # The reference repair's Δ: 40 held-out images per model, so the default 2% would
    # tolerate no error at all (one is 2.5%) and a single one would stop the repair at step
    # 0, leaving the examined model as its own reference; 5% tolerates two.
    c.zoo.detector.cti.repair_delta = 0.05
    # The inversion's cost is steps × classes × batch × 2 models: at 64 of the ≈ 164 tuning
    # images it halves (one CTI examination took 8-13 minutes at 128 on two busy cores).
    c.zoo.detector.cti.batch_size = 64
    return c
