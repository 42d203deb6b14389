"""The attack registry: names to factories, what each needs to be built, and building one
from settings.

`ATTACKS` maps each registry name to its factory. `RECIPES` declares, for the attacks that
need more than their hyper-parameters, what the pipeline must supply (a surrogate model, the
victim's parameters) and whether the attack trains the victim itself; `recipe(name)` answers
for any attack. `make_attack` builds one from `AttackSettings` (or the `config.attack`
section), so no caller needs to know attacks by name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from jaxbd.attacks.adaptive_blend import adaptive_blend
from jaxbd.attacks.adaptive_patch import adaptive_patch
from jaxbd.attacks.adv_clean_label import adv_clean_label
from jaxbd.attacks.all_to_all import all_to_all
from jaxbd.attacks.badnets import badnets
from jaxbd.attacks.base import Attack
from jaxbd.attacks.blended import blended
from jaxbd.attacks.cl_badnets import cl_badnets
from jaxbd.attacks.low_frequency import low_frequency
from jaxbd.attacks.pcb import pcb
from jaxbd.attacks.refool import refool
from jaxbd.attacks.sig import sig
from jaxbd.attacks.tsb import tsb
from jaxbd.attacks.wanet import wanet
from jaxbd.settings import config_section, tuplify

ATTACKS: dict[str, Callable[..., Any]] = {
    "badnets": badnets,
    "blended": blended,
    "adaptive_blend": adaptive_blend,
    "adaptive_patch": adaptive_patch,
    "wanet": wanet,
    "sig": sig,
    "low_frequency": low_frequency,
    "refool": refool,
    "cl_badnets": cl_badnets,
    "adv_clean_label": adv_clean_label,
    "tsb": tsb,
    "all_to_all": all_to_all,
    "pcb": pcb,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """What an attack needs from whoever builds it, and how it trains.

    Attributes:
        surrogate: its factory takes `logits_fn`, a model trained on the clean training set
            (the pipeline trains one before building it).
        victim: its factory takes `params`, the victim model's parameter shapes, and `key`,
            a PRNG stream of its own.
        trigger: the name of another attack whose configured hyper-parameters build this
            one's `trigger` argument (None: it takes none).
        trains: a training-time attack: the training set stays clean, and the built attack's
            `make_epoch_fn(trainer, train_set, *, key, fraction, exclude_target)` supplies the
            epoch function the victim trains with.
        clean_label: it poisons target-class images only and keeps their labels (the built
            attack's `clean_label`), so `fraction` of the training set comes out of that one
            class: known before the attack is built, e.g. to size a defender's clean draw.
    """

    surrogate: bool = False
    victim: bool = False
    trigger: str | None = None
    trains: bool = False
    clean_label: bool = False

    @property
    def groupable(self) -> bool:
        """Whether replicate seeds may train as one batched model: not when the attack runs
        its own epoch function, which trains one model."""
        return not self.trains


RECIPES: dict[str, Recipe] = {
    "adv_clean_label": Recipe(surrogate=True, clean_label=True),
    "cl_badnets": Recipe(clean_label=True),
    "sig": Recipe(clean_label=True),
    "pcb": Recipe(victim=True, trigger="badnets", trains=True),
}
"""The attacks that need more than their hyper-parameters or poison with clean labels; every
other attack's recipe is `Recipe()` (a dirty-label data-poisoning transform built from its
hyper-parameters alone)."""


def recipe(name: str) -> Recipe:
    """The recipe of attack `name` (`Recipe()` for plain data-poisoning attacks)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; registered attacks: {sorted(ATTACKS)}")
    return RECIPES.get(name, Recipe())


# Factory arguments that do not come from `config.attack.<name>`: the target is
# `config.attack.target`, the class count comes from the dataset, the rest from the recipe.
_NOT_CONFIGURABLE = ("target", "num_classes", "logits_fn", "params", "key", "trigger")


def hparams_config(name: str) -> ml_collections.ConfigDict:
    """A ConfigDict of an attack's configurable keyword arguments with their defaults
    (`jaxbd.settings.config_section` of its factory: None defaults become typed placeholders,
    so `--config.attack.<name>.x=1` works; tuples stay tuples)."""
    return config_section(ATTACKS[name], exclude=_NOT_CONFIGURABLE, localns={"Attack": Attack})


def make_attack(
    settings,
    *,
    num_classes: int | None = None,
    logits_fn: Callable | None = None,
    params: Any = None,
    key: jax.Array | None = None,
):
    """Builds the attack that settings name, with what its recipe needs.

    Args:
        settings: `AttackSettings`, or a ConfigDict with `name` (a key of `ATTACKS`),
            `target` and, optionally, a sub-dict named after the attack holding the
            factory's other keyword arguments (e.g. `attack_config.badnets.size`); a
            missing sub-dict or field takes the factory's default. Lists (as a command-line
            override produces) are converted to tuples.
        num_classes: the dataset's class count, for attacks that take it (all_to_all).
        logits_fn: the trained surrogate, for attacks whose recipe has `surrogate`
            (see `surrogate_logits_fn`).
        params: the victim's parameters (arrays or shape structs), for `victim` recipes.
        key: the attack's own PRNG stream, for `victim` recipes.

    Returns:
        The attack: an `Attack`, or for a training-time attack an object with the same
        interface plus `make_epoch_fn`.

    Raises:
        ValueError: for an unknown attack name, a missing input its recipe needs, or
            hyper-parameters the factory rejects.
    """
    name = settings.name
    needs = recipe(name)
    kwargs = make_attack_kwargs(settings, name)
    kwargs["target"] = settings.target
    if "num_classes" in inspect.signature(ATTACKS[name]).parameters and num_classes is not None:
        kwargs["num_classes"] = num_classes
    if needs.trigger is not None:
        trigger_settings = _with_name(settings, needs.trigger)
        kwargs["trigger"] = make_attack(trigger_settings, num_classes=num_classes)
    if needs.surrogate:
        if logits_fn is None:
            raise ValueError(f"{name} needs logits_fn, a trained surrogate model")
        return ATTACKS[name](logits_fn, **kwargs)
    if needs.victim:
        if params is None or key is None:
            raise ValueError(f"{name} needs the victim model's params and a PRNG key")
        return ATTACKS[name](params, key=key, **kwargs)
    return ATTACKS[name](**kwargs)


def make_attack_kwargs(settings, name: str) -> dict:
    """The factory keyword arguments configured for attack `name` (tuples for lists, unset
    placeholders left out so the factory's default applies)."""
    source = settings.hparams if hasattr(settings, "hparams") else settings  # AttackSettings
    hparams = source.get(name)
    return {} if hparams is None else _to_kwargs(hparams)


def _with_name(settings, name: str):
    if dataclasses.is_dataclass(settings):
        return dataclasses.replace(settings, name=name)
    copy = ml_collections.ConfigDict(settings.to_dict())
    copy.name = name
    return copy


def _to_kwargs(hparams) -> dict:
    items = hparams.to_dict() if hasattr(hparams, "to_dict") else dict(hparams)
    return {k: tuplify(v) for k, v in items.items() if v is not None}
