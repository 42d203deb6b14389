"""Every registered repair and detector on a user's own flax model, through the public API.

The model is what a user brings: a plain `flax.linen` CNN returning logits only, with its own
BatchNorm, trained in the user's own optax loop (nothing of jaxbd's engine). The defenses
must find inside it what they read (features, the head, taps, BatchNorm, conv→BatchNorm
pairs) by the `Classifier`'s rules, and a model lacking what a method needs is refused in one
line before any work.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd import defenses
from jaxbd.data import make_synthetic
from jaxbd.defenses import api
from jaxbd.defenses.cti import CTISettings, NeuralCleanseDetectSettings
from jaxbd.defenses.strip import StripSettings
from jaxbd.models import Classifier, MissingCapabilityError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class UserCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global pooling, a dense head: logits only."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate((4, 8, 8)):
            x = nn.Conv(width, (3, 3), strides=2 if i == 1 else 1, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


class NoHead(nn.Module):
    """Logits straight from a conv (no dense layer, no BatchNorm): no features to tap."""

    @nn.compact
    def __call__(self, x):
        return jnp.mean(nn.Conv(10, (3, 3))(x), axis=(1, 2))


def stamp(images):
    return images.at[:, :2, :2, :].set(255)


def trigger(key, images, labels):
    """The attack's test-time transform: a white 2×2 corner (labels kept)."""
    del key
    return stamp(images), labels


@pytest.fixture(scope="module")
def setting():
    """A user's model trained in the user's own loop on poisoned synthetic data, and the
    defender's own clean images."""
    data = make_synthetic(num_train=160, num_test=40, image_size=8, seed=0)
    images, labels = data.train.images.copy(), data.train.labels.copy()
    images[:16] = np.asarray(stamp(jnp.asarray(images[:16])))
    labels[:16] = 0  # BadNets-style poisons, target 0
    model = UserCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    tx = optax.sgd(0.05, momentum=0.9)
    opt = tx.init(variables["params"])

    @jax.jit
    def step(params, batch_stats, opt, x, y):
        def loss(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce, updates["batch_stats"]

        (_, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), batch_stats, opt

    params, batch_stats = variables["params"], variables["batch_stats"]
    x_all = (images / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    for i in range(40):
        idx = np.random.default_rng(i).choice(len(images), 32, replace=False)
        params, batch_stats, opt = step(params, batch_stats, opt, x_all[idx], labels[idx])
    classifier = Classifier(model, params, batch_stats, mean=MEAN, std=STD)
    clean = data.train.images[16:]
    defender = defenses.own_defender(
        clean, data.train.labels[16:], 10, key=jax.random.key(1), val_fraction=0.25
    )
    return classifier, defender, data.test.images


REPAIRS = {
    "finetune": defenses.FineTune(steps=4, batch_size=16),
    "fine_pruning": defenses.FinePruning(steps=4, batch_size=16, batches=1),
    "nad": defenses.NAD(steps=4, teacher_steps=2, batch_size=16),
    "neural_cleanse": defenses.NeuralCleanse(
        epochs=1, steps=4, batch_size=16, reverse_batch_size=16
    ),
    "pivotal_tuning": defenses.PivotalTuning(steps=4, batch_size=16),
    "anp": defenses.ANP(iterations=4, batch_size=16),
    "clp": defenses.CLP(),
    "grad_prune": defenses.GradPrune(steps=4, batch_size=16, max_rounds=2),
}


def test_every_registered_repair_is_exercised():
    assert set(REPAIRS) == set(defenses.REPAIRS)
    assert set(DETECTORS) == set(defenses.DETECTORS)


# The default suite runs the cheapest repairs; `pytest -m slow` (and .ci/run) all of them.
QUICK = ("finetune", "clp")


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(REPAIRS)]
)
def test_repair_on_a_users_model(setting, name):
    classifier, defender, test_images = setting
    result = defenses.repair(
        classifier,
        defender,
        REPAIRS[name],
        key=jax.random.key(2),
        trigger=trigger,
        delta=1.0,
        eval_every=2,
        eval_batch_size=16,
        num_devices=1,
    )
    repaired = result.classifier
    # The curve starts at the undefended model, validated on the defender's held-out images
    # (cross-checked with the user's own module, outside jaxbd).
    x = (defender.val.images / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    own = classifier.module.apply(classifier.variables, x.astype(np.float32))
    assert result.curve[0]["step"] == 0
    assert result.curve[0]["val_accuracy"] == pytest.approx(
        float(np.mean(np.argmax(own, -1) == defender.val.labels))
    )
    # Within a Δ of 1 nothing stops early: the last row is returned.
    assert not result.stopped_early and result.returned_step == result.steps
    # Every repair tunes its step budget, except where its own decision leaves nothing to
    # tune (Neural Cleanse flags no label on this model; CLP and ANP plan no fine-tuning).
    assert result.steps == REPAIRS[name].steps or (
        result.steps == 0 and name in ("neural_cleanse", "clp", "anp")
    )
    # The returned classifier is the user's module with new variables of the same structure,
    # pruned weights exactly zero, and its logits are the module's own.
    assert repaired.module is classifier.module
    assert jax.tree.structure(repaired.params) == jax.tree.structure(classifier.params)
    mask = jax.tree.leaves(repaired.mask)
    assert all(set(np.unique(np.asarray(m)).tolist()) <= {0.0, 1.0} for m in mask)
    for p, m in zip(jax.tree.leaves(repaired.params), mask, strict=True):
        assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0)
    x_test = (test_images / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    own_repaired = repaired.module.apply(repaired.variables, x_test.astype(np.float32))
    np.testing.assert_allclose(repaired.logits(test_images), own_repaired, rtol=1e-5, atol=1e-5)
    if result.steps:
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), repaired.params, classifier.params)
        assert any(jax.tree.leaves(moved))


@pytest.mark.slow
def test_what_the_rules_find_inside_a_users_model(setting):
    classifier, defender, _ = setting
    fp = defenses.repair(
        classifier,
        defender,
        REPAIRS["fine_pruning"],
        key=jax.random.key(2),
        eval_batch_size=16,
        num_devices=1,
    )
    assert fp.decisions["head"] == "Dense_0" and fp.decisions["num_channels"] == 8
    nad = defenses.repair(
        classifier,
        defender,
        REPAIRS["nad"],
        key=jax.random.key(2),
        eval_batch_size=16,
        num_devices=1,
    )
    # The last BatchNorm output at each resolution (8×8, then 4×4).
    assert tuple(nad.decisions["taps"]) == ("BatchNorm_0", "BatchNorm_2")
    clp = defenses.repair(
        classifier, defender, "clp", key=jax.random.key(2), eval_batch_size=16, num_devices=1
    )
    assert clp.curve[0]["step"] == 0


DETECTORS = {
    "strip": StripSettings(overlays=4, batch_size=16),
    "neural_cleanse": NeuralCleanseDetectSettings(epochs=1, batch_size=16),
    "cti": CTISettings(
        steps=2,
        batch_size=16,
        eval_batch_size=16,
        repair_steps=2,
        repair_batch_size=16,
        repair_eval_every=1,
    ),
}


@pytest.mark.parametrize(
    "name",
    [n if n == "strip" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(DETECTORS)],
)
def test_detector_on_a_users_model(setting, name):
    classifier, defender, test_images = setting
    inputs = {"clean": test_images, "triggered": np.asarray(stamp(jnp.asarray(test_images)))}
    detection = defenses.detect(
        classifier,
        defender,
        DETECTORS[name],
        key=jax.random.key(3),
        inputs=inputs,
        eval_batch_size=16,
        num_devices=1,
    )
    if defenses.DETECTORS[name].kind == "input":
        assert set(detection.flagged) == {"clean", "triggered"}
        assert detection.flagged["clean"].shape == (len(test_images),)
        # The threshold is the defender's: its held-out images are flagged at most at FRR
        # plus one image's worth.
        assert detection.summary["val_frr"] <= DETECTORS[name].frr + 1 / len(defender.val)
    else:
        assert np.isfinite(detection.summary["score"])


def test_a_model_lacking_what_a_method_reads_is_refused_in_one_line(setting):
    _, defender, _ = setting
    model = NoHead()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    plain = Classifier(model, variables["params"], mean=MEAN, std=STD)
    engines = len(api._ENGINES)
    for method, missing in [
        ("pivotal_tuning", "a feature tap"),
        ("clp", "a conv followed by its own BatchNorm"),
        ("anp", "BatchNorm layers"),
        ("fine_pruning", "a feature tap"),
    ]:
        with pytest.raises(MissingCapabilityError) as e:
            defenses.repair(plain, defender, method, key=jax.random.key(0), num_devices=1)
        assert missing in str(e.value) and "\n" not in str(e.value)
        assert str(e.value).startswith(method) and "NoHead" in str(e.value)
    with pytest.raises(MissingCapabilityError, match=r"^cti needs a feature tap"):
        defenses.detect(plain, defender, "cti", key=jax.random.key(0), num_devices=1)
    assert len(api._ENGINES) == engines  # refused before any engine was built


def test_bad_requests_are_refused_before_any_work(setting):
    classifier, defender, _ = setting
    with pytest.raises(ValueError, match="unknown repair 'fine_tune'; registered: "):
        defenses.repair(classifier, defender, "fine_tune", key=jax.random.key(0), num_devices=1)
    with pytest.raises(ValueError, match="grad_prune assumes the defender knows the trigger"):
        defenses.repair(classifier, defender, "grad_prune", key=jax.random.key(0), num_devices=1)
    big = dataclasses.replace(REPAIRS["finetune"], batch_size=512)
    with pytest.raises(ValueError, match="batch_size=512 exceeds the defender's"):
        defenses.repair(classifier, defender, big, key=jax.random.key(0), num_devices=1)
    with pytest.raises(ValueError, match="strip judges inputs"):
        defenses.detect(classifier, defender, "strip", key=jax.random.key(0), num_devices=1)
    with pytest.raises(ValueError, match="unknown detector"):
        defenses.detect(classifier, defender, "scale_up", key=jax.random.key(0), num_devices=1)
