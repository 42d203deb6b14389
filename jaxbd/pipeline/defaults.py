"""The default configurations of the runs the pipelines compose: a defense run
(`scripts/defend.py`), a detection run (`scripts/detect.py`), an evaluation
(`scripts/evaluate.py`) and a grid's `sweep` section.

Each section that has a settings dataclass is derived from it (`jaxbd.settings.config_section`:
the defender's data, each repair's and detector's hyper-parameters, the runtime), so a
default is written once. The entry points (`jaxbd.configs`, `configs/*.py`) start from these,
and the grid and the zoo compose their runs' configurations from them, so that nothing in
`jaxbd.pipeline` reads the entry-point layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

from jaxbd import attacks, defenses
from jaxbd.defenses.registry import hparams_config
from jaxbd.pipeline.detect import DETECTORS
from jaxbd.settings import config_section
from jaxbd.train.settings import RuntimeSettings

RUN_RUNTIME = ("num_devices", "steps_per_call", "eval_batch_size", "progress")
"""The runtime fields of a defense, detection or evaluation run (one process)."""


def runtime_section(*, progress: bool) -> ml_collections.ConfigDict:
    """`runtime` of a defense, detection or evaluation run: how it executes, not what it
    computes (may change when resuming); `RuntimeSettings`' defaults."""
    return config_section(RuntimeSettings, fields=RUN_RUNTIME, progress=progress)


def defender_section(**values) -> ml_collections.ConfigDict:
    """`defender`: the defender's clean data, drawn from the source run's unpoisoned training
    images (`jaxbd.defenses.DefenderDataSettings`: fraction r of the training set, or
    per_class images per class; val_fraction held out per class for every decision)."""
    return config_section(defenses.DefenderDataSettings, **values)


def detector_sections() -> ml_collections.ConfigDict:
    """One sub-section per detector (`DETECTORS`, in registry order) with its settings
    dataclass's defaults (STRIP: `jaxbd.defenses.strip.StripSettings`), so a newly
    registered detector needs no edit here."""
    section = ml_collections.ConfigDict()
    _add_detectors(section, DETECTORS)
    return section


def _add_detectors(section: ml_collections.ConfigDict, names: Sequence[str]) -> None:
    for name in names:
        section[name] = config_section(DETECTORS[name].settings)


def defend_config(repairs: Sequence[str] | None = None) -> ml_collections.ConfigDict:
    """Defaults of `scripts/defend.py`: which run to defend, the defender's data, the repair.

    Args:
        repairs: the repairs that get a `defense.<name>` section (None: every one).
    """
    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished scripts/train.py run directory
    c.source_arm = "dense"  # "dense" | "pruned": which of its trained models to defend
    c.seed = 0  # the defender's own streams (its data draw, its repair's randomness)
    c.defender = defender_section()
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
    for name in defenses.REPAIRS if repairs is None else repairs:
        c.defense[name] = hparams_config(defenses.REPAIRS[name])
    c.runtime = runtime_section(progress=True)
    return c


def detect_config(detectors: Sequence[str] | None = None) -> ml_collections.ConfigDict:
    """Defaults of `scripts/detect.py`: which model to examine, the defender's data (drawn
    exactly as `scripts/defend.py` draws it: same seed, same images), the detector.

    Args:
        detectors: the detectors that get a `detector.<name>` section (None: every one).
    """
    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished training run or defense directory
    c.source_arm = "dense"  # a training run's "dense" | "pruned" model (a defense: its own)
    c.seed = 0  # the defender's own streams (its data draw, the detector's randomness)
    c.defender = defender_section()  # every threshold is set on the held-out part
    c.detector = ml_collections.ConfigDict()
    c.detector.name = "strip"  # a key of jaxbd.pipeline.detect.DETECTORS
    _add_detectors(c.detector, DETECTORS if detectors is None else detectors)
    c.runtime = runtime_section(progress=False)
    return c


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
    c.runtime = runtime_section(progress=False)
    return c


def sweep_section(**fields) -> ml_collections.ConfigDict:
    """The `sweep` section of a grid config (`scripts/sweep.py`, `jaxbd.pipeline.grid.sweep`):
    the grid's axes, how its defenses run, and which share of it this job runs.

    A grid config is an experiment config (`jaxbd.configs.base_config`) with this section.
    Every cell — one attack × selection method × seed — trains one attacked model; every
    defense × defender budget then repairs that model through `scripts/defend.py`'s pipeline.

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
