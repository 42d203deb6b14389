"""Shared experiment defaults; `configs/*.py` start from `base_config()` and change fields.

They live in the package (not in `configs/`) because `scripts/`, not the repository root,
is on the import path when a config file is loaded. Every field is documented here once.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbd import attacks
from jaxbd.attacks import AttackSettings
from jaxbd.data import DataSettings
from jaxbd.models.settings import ModelSettings
from jaxbd.prune import IMPSettings
from jaxbd.select import SelectSettings
from jaxbd.settings import config_section
from jaxbd.train.settings import RuntimeSettings, TrainSettings


def base_config() -> ml_collections.ConfigDict:
    """The reference study's settings: CIFAR-10, 2% BadNets, ResNet-18, 50 epochs.

    Each section holds the defaults of the settings dataclass it becomes
    (`jaxbd.pipeline.config.ExperimentSettings`), where every field is documented; the
    methods are defined in docs/methods.md.
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


def defend_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/defend.py`: which run to defend, the defender's data, the repair.

    Every field is documented here once; `configs/defend.py` starts from it.
    """
    from jaxbd import defenses
    from jaxbd.defenses.registry import hparams_config

    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished scripts/train.py run directory
    c.source_arm = "dense"  # "dense" | "pruned": which of its trained models to defend
    c.seed = 0  # the defender's own streams (its data draw, its repair's randomness)

    # The defender's clean data, drawn from the source run's unpoisoned training images.
    c.defender = ml_collections.ConfigDict()
    c.defender.fraction = 0.01  # r: images as a fraction of the training set
    c.defender.per_class = config_dict.placeholder(int)  # images per class (overrides r)
    c.defender.val_fraction = 0.1  # held out per class for every decision (>= 1 image)
    # Whether the defender knows the trigger (triggered copies of its own images, true
    # labels): only repairs that assume it (grad_prune) use it, and only when this is True.
    c.defender.trigger_knowledge = False

    c.defense = ml_collections.ConfigDict()
    c.defense.name = "pivotal_tuning"  # a key of jaxbd.defenses.REPAIRS
    c.defense.steps = config_dict.placeholder(int)  # the step budget; None: the repair's own
    c.defense.eval_every = 50  # a trade-off-curve row every this many steps (and at step 0)
    c.defense.delta = 0.02  # budget: stop when validation accuracy drops more than this
    # ... for this many curve rows in a row (the last model within the budget is returned)
    c.defense.patience = 3
    # One sub-dict per repair with its class's defaults (Pick your Poison, r = 1%).
    for name, repair_class in defenses.REPAIRS.items():
        c.defense[name] = hparams_config(repair_class)

    # How the run executes, not what it computes: may change when resuming.
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = True
    return c


def sweep_section(**fields) -> ml_collections.ConfigDict:
    """The `sweep` section of a grid config (`scripts/sweep.py`, `jaxbd.pipeline.sweep`):
    the grid's axes, how its defenses run, and which share of it this job runs.

    A grid config is an experiment config (`base_config`) with this section. Every cell —
    one attack × selection method × seed — trains one attacked model; every defense ×
    defender budget then repairs that model through `scripts/defend.py`'s pipeline.

    Args:
        **fields: values that replace the defaults (e.g. `methods=("full", "random")`).
    """
    d = defend_config()
    s = ml_collections.ConfigDict()
    # The axes. attacks: names of jaxbd.attacks.ATTACKS; () runs config.attack.name alone, in
    # the selection grid's layout (cells/<method>/seed<k>; with attacks:
    # cells/<attack>/<method>/seed<k>).
    s.attacks = ()
    s.methods = ("full",)  # "full" (no selection) or names of jaxbd.select.SELECTORS
    s.seeds = (0,)
    # Post-training defenses of every cell's model: names of jaxbd.defenses.REPAIRS, or a
    # variant "name@field=value,field=value" (e.g. "finetune@lr=0.01") with its own
    # hyper-parameters on top of defense.<name>.
    s.defenses = ()
    # The defender's data, one column per budget: a float is r, a fraction of the training
    # set (0.01 = 1%); an int is images per class. A data-free repair (clp) runs once.
    s.defender_budgets = (0.01,)
    s.source_arm = "dense"  # the model defended: "dense" | "pruned" (needs prune.rounds > 0)
    s.defender = ml_collections.ConfigDict()
    s.defender.val_fraction = d.defender.val_fraction  # held out per class, for decisions
    s.defender.trigger_knowledge = False  # True grants it to repairs that assume it
    # What configs/defend.py's `defense` section holds, for every defense of the grid:
    # steps (None: each repair's own budget; data-free repairs keep theirs), eval_every,
    # delta, patience, and defense.<name>.* per repair.
    s.defense = d.defense
    del s.defense["name"]
    # Detectors run on every cell's model at every budget (jaxbd.pipeline.detect.DETECTORS:
    # strip, neural_cleanse, cti), with configs/detect.py's detector.<name>.* settings.
    s.detectors = ()
    s.detector = detect_config().detector
    del s.detector["name"]
    # Execution (may change between invocations of one grid): seeds of a method trained
    # together as one vmap-batched model (1: one at a time, faster on the CPU), and the
    # share of the grid this job runs: whole (attack, seed) groups g with g % num_shards ==
    # shard, so n jobs (a SLURM array, n VMs) fill one directory together.
    s.seeds_together = 1
    s.shard = 0
    s.num_shards = 1
    for key, value in fields.items():
        s[key] = value
    return s


def evaluate_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/evaluate.py`: which model, which trigger."""
    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished training run or defense directory
    c.source_arm = "dense"  # a training run's "dense" or "pruned" model
    c.output = config_dict.placeholder(str)  # optional JSON file for the metrics
    # The trigger: None keeps the source run's attack; a name evaluates another attack's
    # trigger, with hyper-parameters from attack.<name> (factory defaults otherwise).
    c.attack = ml_collections.ConfigDict()
    c.attack.name = config_dict.placeholder(str)
    c.attack.target = config_dict.placeholder(int)  # None: the source run's target
    for name in attacks.ATTACKS:
        c.attack[name] = attacks.hparams_config(name)
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = False
    return c


def detect_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/detect.py`: which model to examine, the defender's data, the
    detector (`jaxbd.pipeline.detect.DETECTORS`).

    Every field is documented here once; `configs/detect.py` starts from it. A detector's
    section, `detector.<name>`, holds its settings dataclass's defaults (STRIP:
    `jaxbd.defenses.strip.StripSettings`), so a newly registered detector needs no edit here.
    """
    from jaxbd.pipeline import detect

    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished training run or defense directory
    c.source_arm = "dense"  # a training run's "dense" | "pruned" model (a defense: its own)
    c.seed = 0  # the defender's own streams (its data draw, the detector's randomness)

    # The defender's clean data, drawn from the source run's unpoisoned training images
    # exactly as scripts/defend.py draws it (same seed, same images).
    c.defender = ml_collections.ConfigDict()
    c.defender.fraction = 0.01  # r: images as a fraction of the training set
    c.defender.per_class = config_dict.placeholder(int)  # images per class (overrides r)
    c.defender.val_fraction = 0.1  # held out per class: every threshold is set on these

    c.detector = ml_collections.ConfigDict()
    c.detector.name = "strip"  # a key of jaxbd.pipeline.detect.DETECTORS
    # STRIP: overlays (N, drawn from the defender's tuning images), blend ("sum": clip(x +
    # x_o), the paper's; "half": the 0.5/0.5 blend), frr (the target false-rejection rate on
    # held-out clean images, which sets the threshold), batch_size (superimposed images per
    # forward pass).
    for name, detector in detect.DETECTORS.items():
        c.detector[name] = detect.settings_config(detector.settings)

    # How the run executes, not what it computes: may change when resuming.
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = False
    return c


def zoo_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/zoo.py` (`jaxbd.pipeline.zoo`): a smoke-scale recipe, the zoo's
    models, the defender's data and the model-level detectors.

    Every model is this experiment config with `seed` = its index, `attack.name` = its
    attack (backdoored) or `attack.fraction` = 0 (clean). `zoo.detector.<name>` holds each
    detector's settings (`jaxbd.pipeline.detect.DETECTORS`), with budgets cut to the
    smoke-scale models.
    """
    from jaxbd.pipeline import detect

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
    c.zoo.defender = ml_collections.ConfigDict()
    c.zoo.defender.fraction = 0.1
    c.zoo.defender.per_class = config_dict.placeholder(int)
    c.zoo.defender.val_fraction = 0.2
    c.zoo.detector = ml_collections.ConfigDict()
    for name, detector in detect.DETECTORS.items():
        c.zoo.detector[name] = detect.settings_config(detector.settings)
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
