"""The attack registry: names users rely on, no-argument factories, config round trip,
and every attack through poison_dataset / triggered_test_set with the right rules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd import attacks
from jaxbd.configs import base_config
from jaxbd.data import make_synthetic
from jaxbd.settings import ConfigError

NAMES = [
    "badnets",
    "blended",
    "adaptive_blend",
    "adaptive_patch",
    "wanet",
    "sig",
    "low_frequency",
    "refool",
    "cl_badnets",
    "adv_clean_label",
    "tsb",
    "all_to_all",
    "pcb",
]
DATA = make_synthetic(200, 40, num_classes=4, image_size=16, seed=0)


def linear_logits(images):
    weights = jax.random.normal(jax.random.key(0), (16 * 16 * 3, 4))
    return images.reshape(images.shape[0], -1) @ weights


NEEDS_MODEL = [n for n in NAMES if attacks.recipe(n).surrogate or attacks.recipe(n).victim]


def test_registry_names_and_recipes():
    assert list(attacks.ATTACKS) == NAMES
    assert set(attacks.RECIPES) <= set(NAMES)
    assert NEEDS_MODEL == ["adv_clean_label", "pcb"]
    assert attacks.recipe("badnets") == attacks.Recipe()
    assert attacks.recipe("pcb").trains and not attacks.recipe("pcb").groupable
    assert all(attacks.recipe(n).groupable for n in NAMES if n != "pcb")
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        attacks.recipe("nope")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NEEDS_MODEL])
def test_factories_need_no_arguments(name):
    attack = attacks.ATTACKS[name]()
    assert isinstance(attack, attacks.Attack) and attack.name == name


@pytest.mark.parametrize("name", [n for n in NAMES if n != "pcb"])
def test_every_attack_poisons_and_triggers_by_its_rules(name):
    config = base_config().attack
    config.name = name
    config.target = 1
    if name == "all_to_all":
        config.target = 0
    if name in ("badnets", "cl_badnets", "adv_clean_label", "all_to_all"):
        config[name].size = 3
    attack = attacks.make_attack(config, num_classes=4, logits_fn=linear_logits)
    assert attacks.recipe(name).clean_label == attack.clean_label  # known before it is built
    fraction = 0.1
    poisoned = attacks.poison_dataset(jax.random.key(1), DATA.train, attack, fraction=fraction)
    labels, original = poisoned.dataset.labels, poisoned.original_labels
    if attack.clean_label:
        assert np.all(original[poisoned.is_poison] == attack.target)
        np.testing.assert_array_equal(labels, original)
        assert poisoned.is_poison.sum() == round(fraction * 200)
    else:
        assert poisoned.is_poison.sum() == round(fraction * 200)
        # Only poisons change, in pixels or labels.
        clean = ~poisoned.is_poison
        np.testing.assert_array_equal(poisoned.dataset.images[clean], DATA.train.images[clean])
        np.testing.assert_array_equal(labels[clean], original[clean])
    triggered = attacks.triggered_test_set(jax.random.key(2), DATA.test, attack)
    if name == "all_to_all":
        np.testing.assert_array_equal(triggered.labels, (DATA.test.labels + 1) % 4)
        assert triggered.eligible.all()
    else:
        assert np.all(triggered.labels == attack.target)
        np.testing.assert_array_equal(triggered.eligible, DATA.test.labels != attack.target)
    assert triggered.images.dtype == np.uint8
    assert np.any(triggered.images != DATA.test.images)


def test_model_attacks_explain_what_they_need():
    config = base_config().attack
    config.name = "adv_clean_label"
    with pytest.raises(ValueError, match="logits_fn"):
        attacks.make_attack(config)
    config.name = "pcb"
    with pytest.raises(ValueError, match="params and a PRNG key"):
        attacks.make_attack(config)


def test_victim_attacks_get_params_and_their_trigger_from_the_settings():
    settings = attacks.AttackSettings.from_config(base_config().attack)
    settings = dataclasses.replace(
        settings, name="pcb", target=2, hparams={"badnets": {"size": 3}, "pcb": {}}
    )
    params = {"dense": {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32)}}
    attack = attacks.make_attack(settings, params=params, key=jax.random.key(0))
    assert attack.target == 2 and attack.trigger.name == "badnets"
    assert dict(attack.trigger.params)["size"] == (3, 3)
    assert float(jnp.sum(attack.update_mask["dense"]["kernel"])) == round(0.1 * 32)


def test_attack_settings_from_config_and_errors():
    config = base_config().attack
    settings = attacks.AttackSettings.from_config(config)
    assert settings == attacks.AttackSettings(hparams=settings.hparams)
    assert set(settings.hparams) == set(NAMES)
    config.fraction = 1.5
    with pytest.raises(ConfigError, match=r"config\.attack\.fraction: must be in \[0, 1\]"):
        attacks.AttackSettings.from_config(config)
    config.fraction = 0.1
    config.name = "nope"
    with pytest.raises(ConfigError, match=r"config\.attack\.name: must be one of"):
        attacks.AttackSettings.from_config(config)


def test_config_overrides_reach_the_factory():
    config = base_config().attack
    config.name = "wanet"
    config.wanet.grid_size = 8
    config.wanet.strength = 0.75
    attack = attacks.make_attack(config)
    assert dict(attack.params)["grid_size"] == 8 and dict(attack.params)["strength"] == 0.75
    config.name = "adaptive_blend"
    config.adaptive_blend.test_alpha = 0.4  # a typed placeholder
    assert dict(attacks.make_attack(config).params)["test_alpha"] == 0.4
    config.adaptive_blend.alpha = 2.0
    with pytest.raises(ValueError, match="adaptive_blend"):
        attacks.make_attack(config)


def test_attacks_compose_with_jit_in_a_user_pipeline():
    # The library use case: an attack inside the user's own jitted function.
    attack = attacks.blended(target=2)

    @jax.jit
    def poison_half(key, images, labels):
        poisoned, new_labels = attack(key, images, labels)
        keep = jnp.arange(images.shape[0]) % 2 == 0
        return (
            jnp.where(keep[:, None, None, None], poisoned, images),
            jnp.where(keep, new_labels, labels),
        )

    images, labels = poison_half(jax.random.key(0), DATA.test.images[:8], DATA.test.labels[:8])
    assert np.all(np.asarray(labels)[::2] == 2)
    np.testing.assert_array_equal(np.asarray(images)[1::2], DATA.test.images[1:8:2])
