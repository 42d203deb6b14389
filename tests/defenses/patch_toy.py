"""The planted-patch toy that the Neural Cleanse and Calibrated Trigger Inversion tests train.

16×16 synthetic images (data seed 0, noise 0.1, 10 classes, 768 training and 256 test
images), a 3×3 yellow BadNets patch in the bottom-right corner on 20% of the training images
(target 3) or none, no crop or flip so that the patch stays where it was planted, 8 epochs of
SGD (lr 0.05, cosine, batch 64, weight decay 5e-4).

The network is defined here rather than `jaxbd.models.tiny_cnn`: the tiny CNN pools
globally, so it learns "a yellow patch anywhere" and a reversed trigger lands anywhere; this
one flattens its last feature map, so the trigger it learns has a place.
"""

import flax.linen as nn
import jax
import numpy as np

from jaxbd.attacks import badnets
from jaxbd.attacks.poison import poison_dataset
from jaxbd.data import make_synthetic
from jaxbd.defenses.base import RepairContext, Variables
from jaxbd.defenses.defender_data import DefenderDataSettings, defender_data
from jaxbd.train import CosineSchedule, Trainer, dense_mask, make_mesh

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIZE, CLASSES, TARGET, PATCH = 16, 10, 3, 3
TRAIN_WEIGHT_DECAY = 5e-4
ATTACK = badnets(target=TARGET, size=PATCH, color=(255, 255, 0), location="bottom_right")


class PatchNet(nn.Module):
    """Two strided 3×3 convs and a dense head on the flattened map (position-aware)."""

    num_classes: int = CLASSES

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        features = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(features), features


def make_trainer(weight_decay: float = TRAIN_WEIGHT_DECAY) -> Trainer:
    """A one-device trainer of PatchNet (batch 64, no crop or flip)."""
    return Trainer(
        PatchNet(),
        make_mesh(1),
        batch_size=64,
        eval_batch_size=256,
        weight_decay=weight_decay,
        mean=MEAN,
        std=STD,
        crop_padding=0,
        flip=False,
        steps_per_call=4,
        progress=False,
    )


def trained(
    poisoned: bool,
    seed: int = 0,
    *,
    defender: DefenderDataSettings,
    repair_weight_decay: float = TRAIN_WEIGHT_DECAY,
):
    """A model trained on the synthetic set (poisoned or not) and its repair context.

    Every random choice is offset by `seed` (to check that a margin is not one seed's luck).

    Args:
        poisoned: plant the patch on 20% of the training images.
        seed: the offset of every key.
        defender: how many clean training images the defender gets (`defender_data`).
        repair_weight_decay: the weight decay of the context's trainer (the repair's
            optimizer); the training trainer itself when it equals the training's.

    Returns:
        (RepairContext validating on the defender's held-out images, the model's Variables,
        clean test accuracy, ASR on the triggered non-target test images).
    """
    splits = make_synthetic(
        num_train=768, num_test=256, num_classes=CLASSES, image_size=SIZE, seed=0, noise=0.1
    )
    clean = splits.train
    train, is_poison = clean, np.zeros(len(clean), bool)
    if poisoned:
        poisoned_set = poison_dataset(jax.random.key(seed + 1), clean, ATTACK, fraction=0.2)
        train, is_poison = poisoned_set.dataset, poisoned_set.is_poison
    trainer = make_trainer()
    data = trainer.put(train.images, train.labels)
    epochs = 8
    state = trainer.init_state(
        jax.random.key(seed),
        (SIZE, SIZE, 3),
        CosineSchedule.create(0.05, epochs * trainer.steps_per_epoch(len(train))),
        rng=jax.random.key(seed + 2),
    )
    for epoch in range(epochs):
        state, _, _ = trainer.train_epoch(state, data, jax.random.key(seed + 10 + epoch))
    test = splits.test
    accuracy = float(np.mean(trainer.predict_labels(state, test.images) == test.labels))
    triggered, _ = ATTACK.apply_test(jax.random.key(0), test.images, test.labels)
    others = test.labels != TARGET
    asr = float(np.mean(trainer.predict_labels(state, np.asarray(triggered))[others] == TARGET))
    held = defender_data(jax.random.key(seed + 3), clean, is_poison, defender)
    repair_trainer = (
        trainer if repair_weight_decay == TRAIN_WEIGHT_DECAY else make_trainer(repair_weight_decay)
    )

    def validate(params, batch_stats):
        logits, _ = repair_trainer.predict_variables(params, batch_stats, held.val.images)
        return float(np.mean(np.argmax(np.asarray(logits), -1) == held.val.labels))

    ctx = RepairContext(
        trainer=repair_trainer,
        defender=held,
        tune_data=repair_trainer.put(held.tune.images, held.tune.labels),
        key=jax.random.key(seed + 4),
        validate=validate,
        num_classes=CLASSES,
    )
    variables = Variables(state.params, state.batch_stats, dense_mask(state.params))
    return ctx, variables, accuracy, asr
