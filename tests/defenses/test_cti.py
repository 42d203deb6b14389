"""Calibrated Trigger Inversion (Lukas & Kerschbaum 2023): a planted patch backdoor scores
higher than the same recipe trained clean; a reference that lacks exactly the backdoor (a
hand-made linear model and its backdoored copy) singles out the target, and a model that is
its own reference scores 0; every class inverts in one compiled program; class c's own
images are weighted out; the scores are the success difference on held-out images; the
settings validate.

The models: the position-aware toy of tests/defenses/patch_toy.py (two strided 3×3 convs, a
dense head on the flattened map) on 768 synthetic 16×16 images, with a 3×3 yellow BadNets
patch on 20% of them (target 3) or none; the defender has 40 clean images per class (30 to
tune on, 10 held out). CTI runs a 150-step Pivotal Tuning repair (batch 64) and the
paper's 50 inversion steps.

MEASURED (seed 0 unless said, 2-core CPU): on this toy CTI does *not* separate the two
models, so the comparison is `slow` and `xfail`; the fast tests check the method's mechanics
on hand-made models instead. Both models reach clean accuracy 1.0 (ASR 1.0 and 0.0). Three
kinds of repair, none of which singles out the target:

- Tight pull. Pivotal Tuning's λ_P = 20000 weighs a *mean* over parameters, so on a
  10k-parameter net it pins the copy to the pivot: the repaired copy keeps the backdoor (ASR
  1.0) and every class scores about 0 (backdoored 0.033, clean 0.044).
- Loose pull (λ_P ≤ 2000). SLOL does remove the patch: at 5% poisons, λ_P = 0, λ_S =
  0.01-0.03, repair lr 0.05 and 100-300 steps the copy's ASR falls from 0.95 to 0.01 at clean
  accuracy ≥ 0.99. But the same repair makes the copy resist universal perturbations of
  *every* class: after 25 repair steps, the backdoor still intact, the clean model already
  scores 0.4-0.9, and a plain universal perturbation of the examined model (repaired weight
  0) fools the repaired copy on only 40-60% of the held-out images it moves, for the
  backdoored and the clean model alike. Every class of both models then scores 0.5-1.0
  (backdoored 1.000 vs clean 0.989 at λ_P = 1000), the target rarely on top.
- Plain fine-tuning, no SLOL and no pull (λ_S = λ_P = 0, repair weight decay 0.05, lr
  0.05): after 100 steps the copy's ASR is 0.00 at clean accuracy 0.996, and every class of
  the backdoored model scores 0.93-1.00, of the clean model 0.89-0.98 (each δ fools the
  examined model on ≥ 93% of the held-out images it moves, the copy on ≤ 6%). The same with
  a blank 4×4 corner in every clean image and training weight decay 5e-3 for 16 epochs (so
  that the patch's pathway is one clean data never uses). And at the paper's *per-coordinate*
  pull (λ_P = 20-200 on the toy's 10k parameters; 20000 on ResNet-18's 11M is λ_P ≈ 18 here)
  with the paper's λ_S = 0.05, lr 0.01 and 500-2000 steps, the copy keeps 39-90% ASR while
  every class of both models already scores ≥ 0.92. So the differential perturbations are
  not SLOL's doing: on these models any change that removes the patch is enough for a 50-step
  full-image δ to tell the two models apart.

None of these changed it: 5-50 inversion steps at lr 0.003-0.01, an ℓ₂ penalty on δ (0.1-1.0),
a repaired weight of 0-0.5, 5-20% poisons, narrower or globally pooled nets, noisier images
(noise 0.3-1.0), a 3×3 input blur (one seed in three separated at noise 0.5 with the blur,
only because the clean model's repair stopped earlier on the Δ budget). Larger models do not
either: the smoke recipe (ResNet-18 at width 8, 2,048 synthetic 32×32 images, 4 epochs; a
200-step repair) scores 0.889 for a model with a learned 10% BadNets backdoor (argmax the
true target) and 0.917 for the same recipe trained clean, and at the CPU's CIFAR-10 scale (a
width-8 ResNet-18) Pivotal Tuning leaves 96.5% ASR at r = 1%. CTI's calibration presumes a
repair that removes the backdoor while the repaired copy stays as easy to perturb as the
examined model everywhere else; the comparison needs the paper's scale (ResNet-18 at width
64 on CIFAR-10), i.e. an accelerator.
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

SETTINGS = cti.CTISettings(repair_steps=150, repair_batch_size=64, batch_size=128)


def trained(poisoned: bool, seed: int = 0):
    """The toy trained poisoned or clean, its repair context with Pivotal Tuning's optimizer
    (no weight decay), the defender's 30 tuning + 10 held-out images per class."""
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


# -- the planted patch (slow; see the module docstring for why it is expected to fail) -----


@pytest.mark.slow
@pytest.mark.xfail(
    reason="on this toy Pivotal Tuning either keeps the patch (tight pull: every class "
    "scores ~0) or removes it while hardening the copy against every class's universal "
    "perturbation (loose pull: every class scores high); see the module docstring",
    strict=False,
)
def test_planted_patch_scores_higher_than_clean():
    ctx, variables, accuracy, asr = trained(poisoned=True)
    assert accuracy > 0.9 and asr > 0.95, (accuracy, asr)
    backdoored = cti.calibrated_trigger_inversion(ctx, variables, SETTINGS)
    ctx, variables, accuracy, asr = trained(poisoned=False)
    assert accuracy > 0.9 and asr < 0.1, (accuracy, asr)
    clean = cti.calibrated_trigger_inversion(ctx, variables, SETTINGS)
    assert backdoored.target == TARGET
    assert backdoored.score > clean.score + 0.1, (backdoored.score, clean.score)
