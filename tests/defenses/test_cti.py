"""Calibrated Trigger Inversion (Lukas & Kerschbaum 2023): a planted patch backdoor scores
higher than the same recipe trained clean; a reference that lacks exactly the backdoor (a
hand-made linear model and its backdoored copy) singles out the target, and a model that is
its own reference scores 0; every class inverts in one compiled program; class c's own
images are weighted out; the scores are the success difference on held-out images; the
settings validate.

The models: the position-aware toy of tests/defenses/patch_toy.py (two strided 3×3 convs, a
dense head on the flattened map) on 768 synthetic 16×16 images, with a 3×3 yellow BadNets
patch on 20% of them (target 3) or none; the defender has 40 clean images per class (30 to
tune on, 10 held out). Both models reach clean accuracy ≥ 0.996 (ASR 1.0 and 0.0).

The reference repair of the planted-patch tests is Pivotal Tuning reduced to its fine-tuning
part: λ_S = λ_P = 0, weight decay 0.5 at lr 0.005 (momentum 0.9, batch 64) for 75 steps,
validated every 25 within Δ = 5%; the inversion takes 64 tuning images per step. With 0.0025
of every weight decayed per step and a small step, the copy shrinks gently, the clean
images' gradient restoring what they use and not the patch's pathway, so it loses the patch
while its other decisions stay the examined model's. The paper's SLOL repair does not do
that at this scale (below), so the toy's reference is this one; the inversion and the
scoring are the paper's.

MEASURED (2-core CPU), backdoored vs clean score with this repair (inversion batch 64; at
128 every figure is within 0.07); `pytest -s -m "slow or not slow" tests/defenses/test_cti.py
-k planted` prints the 75-step column:

| seed | 60 steps | 75 steps | backdoored argmax (75) | copy's ASR (75) |
|------|---------------|---------------|------------------|-----------------|
| 0 | 0.589 / 0.422 | 0.900 / 0.578 | 3 (the target; next 0.567) | 0.03 |
| 1 | 0.433 / 0.244 | 0.767 / 0.367 | 3 | 0.02 |
| 2 | 0.467 / 0.311 | 0.267 / 0.189 | 3 | 0.57 (Δ stopped it at 50) |
| 3 | 0.511 / 0.433 | 0.722 / 0.556 | 9 (the target 0.600) | 0.15 |

The backdoored model scores higher in every cell (by 0.08-0.40). The setting was chosen
among six (weight decay, lr) pairs and four step counts on seeds 0-2; seed 3 was run after
the choice. At 100 steps and more the clean model's copy drifts too (seed 0: clean 0.756 at
100 steps, 1.000 at 200); at 25 steps the patch is intact and both score ≈ 0.1. The same
decay rate at weight decay 1.0 and lr 0.0025 separates seed 0 (0.589 vs 0.189) but not seeds
1-2 (0.311 vs 0.300, 0.100 vs 0.078); at weight decay 2.0 and lr 0.00125 the Δ budget or the
patch wins on every seed.

What does not separate on this toy (seed 0):

- Pivotal Tuning at the paper's pull. λ_P = 20000 weighs a *mean* over parameters, so on a
  10k-parameter net it pins the copy to the pivot: the copy keeps the backdoor (ASR 1.0) and
  every class scores about 0 (backdoored 0.033, clean 0.044). At the paper's
  *per-coordinate* pull (λ_P = 20-200 here; 20000 on ResNet-18's 11M parameters is λ_P ≈ 18
  on 10k), λ_S = 0.05, lr 0.01 and 500-2000 steps the copy keeps 39-90% ASR while every
  class of both models already scores ≥ 0.92.
- A looser pull (λ_P ≤ 2000, λ_S = 0.01-0.03, lr 0.05, 100-300 steps, 5% poisons): SLOL
  removes the patch (ASR 0.95 → 0.01) but every class of both models scores 0.5-1.0
  (backdoored 1.000 vs clean 0.989 at λ_P = 1000), the target rarely on top; a plain
  universal perturbation of the examined model (repaired weight 0) fools that copy on only
  40-60% of the held-out images it moves, backdoored or clean.
- Fine-tuning at a large step (λ_S = λ_P = 0, weight decay 0.05, lr 0.05): 100 steps remove
  the patch (ASR 0.00) and every class of both models scores 0.89-1.00; also with a blank
  corner in every clean image and training weight decay 5e-3.
- Nor, with the SLOL repairs: 5-50 inversion steps at lr 0.003-0.01, an ℓ₂ penalty on δ
  (0.1-1.0), a repaired weight of 0-0.5, 5-20% poisons, narrower or globally pooled nets,
  noisier images (noise 0.3-1.0), a 3×3 input blur. Nor larger models with Pivotal Tuning:
  the smoke recipe (ResNet-18 at width 8, 2,048 synthetic 32×32 images) scores 0.889
  backdoored vs 0.917 clean, and the CPU's CIFAR-10 zoo (results/detection/zoo) has CTI AUC
  0.43.

CTI's calibration presumes a repair that removes the backdoor while the copy stays as easy
to perturb as the examined model everywhere else; a gentle shrink does that here, and on
small models anything that moves the copy further lets a 50-step full-image δ tell the two
models apart for every class.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from patch_toy import CLASSES, TARGET
from patch_toy import trained as toy_trained

from jaxbd.defenses import cti
from jaxbd.defenses.defender_data import DefenderDataSettings
from jaxbd.settings import InvalidSettingError

SETTINGS = cti.CTISettings(
    repair_steps=75,
    repair_lr=0.005,
    repair_weight_decay=0.5,
    slol_weight=0.0,
    param_weight=0.0,
    repair_batch_size=64,
    repair_eval_every=25,
    repair_delta=0.05,
    batch_size=64,
)
"""The planted-patch tests' settings: the inversion and scoring are the paper's; the
reference repair is the gentle weight-decay fine-tuning of the module docstring."""


def trained(poisoned: bool, seed: int = 0):
    """The toy trained poisoned or clean, its repair context with the reference repair's
    optimizer (`SETTINGS.repair_weight_decay`), the defender's 30 tuning + 10 held-out images
    per class."""
    return toy_trained(
        poisoned,
        seed,
        defender=DefenderDataSettings(per_class=40, val_fraction=0.25),
        repair_weight_decay=SETTINGS.repair_weight_decay,
    )


# -- the mechanics, on a hand-made linear model (no training) ------------------------------

H = 4


def _apply(w, images01):
    return images01.reshape(images01.shape[0], -1) @ w


def _linear_fn(seed):
    """A linear classifier of [0, 1] images as a `Partial` (its weights traced; one function
    object for every seed, so the programs compile once)."""
    w = jax.random.normal(jax.random.key(seed), (H * H * 3, CLASSES))
    return jax.tree_util.Partial(_apply, w)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, H, 3), dtype=np.uint8)
    return images, np.arange(n) % CLASSES


def test_all_classes_invert_in_one_compiled_program():
    images, labels = _data()
    program = cti._invert_program
    before = program._cache_size()
    deltas, losses = cti.invert_triggers(
        _linear_fn(0), _linear_fn(1), images, labels, CLASSES, key=jax.random.key(0), steps=5
    )
    assert deltas.shape == (CLASSES, H, H, 3) and losses.shape == (CLASSES, 5)
    assert program._cache_size() == before + 1
    # Other models of the same structure, another key: the same program.
    cti.invert_triggers(
        _linear_fn(2), _linear_fn(3), images, labels, CLASSES, key=jax.random.key(1), steps=5
    )
    assert program._cache_size() == before + 1
    scores = cti.cti_scores(_linear_fn(0), _linear_fn(1), deltas, images, labels)
    assert scores.scores.shape == (CLASSES,)


def test_init_and_first_step():
    images, labels = _data()
    deltas, losses = cti.invert_triggers(
        _linear_fn(0), _linear_fn(1), images, labels, CLASSES, key=jax.random.key(0), steps=1
    )
    # After one Adam step every coordinate moved by about lr from U(0, 1)·0.01.
    d = np.asarray(deltas)
    assert np.all(d > -0.011) and np.all(d < 0.021)
    assert np.all(np.isfinite(np.asarray(losses)))


def test_a_class_own_images_are_weighted_out():
    images, labels = _data()
    garbage = images.copy()
    garbage[labels == 2] = 255 - garbage[labels == 2]
    run = lambda imgs: np.asarray(  # noqa: E731
        cti.invert_triggers(
            _linear_fn(0),
            _linear_fn(1),
            imgs,
            labels,
            CLASSES,
            key=jax.random.key(0),
            steps=4,
            batch_size=len(imgs),  # every image in every step: only the weights differ
        )[0]
    )
    a, b = run(images), run(garbage)
    np.testing.assert_array_equal(a[2], b[2])  # class 2 never sees its own images
    assert not np.allclose(a[3], b[3])  # class 3 does


def test_scores_are_the_success_difference_on_the_judged_images():
    images, labels = _data(n=37, seed=1)
    deltas = jax.random.uniform(jax.random.key(2), (CLASSES, H, H, 3), minval=-0.3, maxval=0.3)
    p, r = _linear_fn(4), _linear_fn(5)
    out = jax.device_get(cti.cti_scores(p, r, deltas, images, labels, batch_size=8))
    x = images.astype(np.float32) / 255.0
    for c in range(CLASSES):
        xd = jnp.clip(x + deltas[c], 0, 1)
        judged = labels != c
        hit_p = np.asarray(jnp.argmax(p(xd), -1)) == c
        hit_r = np.asarray(jnp.argmax(r(xd), -1)) == c
        assert out.judged[c] == judged.sum()
        assert out.poisoned_success[c] == pytest.approx(hit_p[judged].mean())
        assert out.repaired_success[c] == pytest.approx(hit_r[judged].mean())
        assert out.scores[c] == pytest.approx(hit_p[judged].mean() - hit_r[judged].mean())


def _backdoored_apply(w, images01):
    """`_apply` plus a hand-made backdoor: a smooth bump on the target's logit when the
    bottom-right pixel turns yellow (R + G − B above 1.5; uniform pixels average 0.5)."""
    pixel = images01[:, -1, -1, :]
    bump = 8.0 * jax.nn.softplus(4.0 * (pixel[:, 0] + pixel[:, 1] - pixel[:, 2] - 1.5))
    return _apply(w, images01) + bump[:, None] * jax.nn.one_hot(TARGET, CLASSES)


def test_a_reference_without_exactly_the_backdoor_singles_out_the_target():
    # CTI's premise made exact: the repaired reference is the examined model minus its
    # backdoor. Then only the target's perturbation works on one model and not the other,
    # and a model that is its own reference (a clean model perfectly repaired) scores 0.
    w = jax.random.normal(jax.random.key(0), (H * H * 3, CLASSES))
    backdoored = jax.tree_util.Partial(_backdoored_apply, w)
    reference = jax.tree_util.Partial(_apply, w)
    images = np.random.default_rng(0).integers(0, 256, (200, H, H, 3), dtype=np.uint8)
    labels = np.asarray(jnp.argmax(reference(images / 255.0), -1))  # what the reference says
    tune, held = slice(0, 150), slice(150, None)
    for examined, expect_target in ((backdoored, True), (reference, False)):
        deltas, _ = cti.invert_triggers(
            examined, reference, images[tune], labels[tune], CLASSES, key=jax.random.key(1)
        )
        out = jax.device_get(
            cti.cti_scores(examined, reference, deltas, images[held], labels[held])
        )
        scores = np.asarray(out.scores)
        if expect_target:
            assert np.argmax(scores) == TARGET and scores[TARGET] > 0.5, scores
            assert np.all(np.abs(np.delete(scores, TARGET)) < 0.1), scores
            # The target's perturbation turned the pixel yellow.
            r, g, b = np.asarray(deltas[TARGET])[-1, -1]
            assert r > 0.2 and g > 0.2 and b < -0.2, (r, g, b)
        else:
            np.testing.assert_array_equal(scores, 0.0)
            assert np.all(np.asarray(out.poisoned_success) > 0.5)  # δ still fools it


def test_settings_validate():
    assert cti.CTISettings().steps == 50 and cti.CTISettings().repaired_weight == 0.5
    for field, value in (("steps", 0), ("lr", 0.0), ("b1", 1.0), ("repair_steps", -1)):
        with pytest.raises(InvalidSettingError, match=field):
            cti.CTISettings(**{field: value})
    with pytest.raises(ValueError, match="steps"):
        images, labels = _data()
        cti.invert_triggers(
            _linear_fn(0), _linear_fn(1), images, labels, CLASSES, key=jax.random.key(0), steps=0
        )


# -- the planted patch -------------------------------------------------------------------


def _scores(seed):
    """(backdoored result, clean result) of CTI on the toy trained poisoned and clean."""
    ctx, variables, accuracy, asr = trained(poisoned=True, seed=seed)
    assert accuracy > 0.9 and asr > 0.95, (accuracy, asr)
    backdoored = cti.calibrated_trigger_inversion(ctx, variables, SETTINGS)
    ctx, variables, accuracy, asr = trained(poisoned=False, seed=seed)
    assert accuracy > 0.9 and asr < 0.1, (accuracy, asr)
    clean = cti.calibrated_trigger_inversion(ctx, variables, SETTINGS)
    # The figures of the module docstring's 75-step column (`pytest -s` shows them).
    per_class = " ".join(f"{x:.3f}" for x in np.asarray(backdoored.scores.scores))
    print(
        f"\nseed {seed}: backdoored {backdoored.score:.3f} (argmax {backdoored.target}; "
        f"per class {per_class}), clean {clean.score:.3f}"
    )
    return backdoored, clean


@pytest.mark.slow  # two toy trainings and two inversions; .ci/run runs it
def test_planted_patch_scores_higher_than_clean():
    backdoored, clean = _scores(seed=0)
    # Measured: 0.900 (the target on top, the next class 0.567; the copy's ASR 0.03) vs 0.578.
    assert backdoored.target == TARGET, np.asarray(backdoored.scores.scores)
    assert backdoored.score > clean.score + 0.2, (backdoored.score, clean.score)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_patch_scores_higher_than_clean_on_other_seeds(seed):
    # Measured: 0.767 vs 0.367, 0.267 vs 0.189, 0.722 vs 0.556 (the module docstring).
    backdoored, clean = _scores(seed)
    assert backdoored.score > clean.score + 0.05, (seed, backdoored.score, clean.score)
