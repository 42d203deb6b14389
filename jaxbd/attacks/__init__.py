"""Backdoor attacks: pure, jittable transforms over image batches, and dataset poisoning.

`ATTACKS` maps each registry name to its factory; `RECIPES` / `recipe(name)` declare what an
attack needs beyond its hyper-parameters (a surrogate model, the victim's parameters) and
whether it trains the victim itself, so pipelines ask instead of testing names. Every factory
whose recipe needs nothing can be called with no arguments for its defaults. `make_attack`
builds one from `AttackSettings` (the `config.attack` section, see `jaxbd.configs`), whose
per-attack sub-dicts (`config.attack.wanet.grid_size`, ...) are generated from the factories'
keyword defaults by `hparams_config`, so every hyper-parameter can be overridden from the
command line.

The attacks, their papers and defaults: docs/methods.md ("Attacks"); each attack's
construction and its differences from the reference code: docs/attacks.md.
"""

from jaxbd.attacks.adaptive_blend import adaptive_blend
from jaxbd.attacks.adaptive_patch import adaptive_patch
from jaxbd.attacks.adv_clean_label import adv_clean_label, surrogate_logits_fn
from jaxbd.attacks.all_to_all import all_to_all
from jaxbd.attacks.badnets import badnets
from jaxbd.attacks.base import Attack, AttackFn
from jaxbd.attacks.blended import blended
from jaxbd.attacks.cl_badnets import cl_badnets
from jaxbd.attacks.low_frequency import low_frequency
from jaxbd.attacks.pcb import ParameterControlledBackdoor, pcb
from jaxbd.attacks.poison import (
    PoisonedDataset,
    TriggeredTestSet,
    poison_dataset,
    triggered_test_set,
)
from jaxbd.attacks.refool import refool
from jaxbd.attacks.registry import (
    ATTACKS,
    RECIPES,
    Recipe,
    hparams_config,
    make_attack,
    make_attack_kwargs,
    recipe,
)
from jaxbd.attacks.settings import AttackSettings
from jaxbd.attacks.sig import sig
from jaxbd.attacks.tsb import tsb
from jaxbd.attacks.wanet import wanet

__all__ = [
    "ATTACKS",
    "RECIPES",
    "Attack",
    "AttackFn",
    "AttackSettings",
    "ParameterControlledBackdoor",
    "PoisonedDataset",
    "Recipe",
    "TriggeredTestSet",
    "adaptive_blend",
    "adaptive_patch",
    "adv_clean_label",
    "all_to_all",
    "badnets",
    "blended",
    "cl_badnets",
    "hparams_config",
    "low_frequency",
    "make_attack",
    "make_attack_kwargs",
    "pcb",
    "poison_dataset",
    "recipe",
    "refool",
    "sig",
    "surrogate_logits_fn",
    "triggered_test_set",
    "tsb",
    "wanet",
]
