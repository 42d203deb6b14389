import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd.train import CosineSchedule, sgd_direction


def test_cosine_matches_optax():
    schedule = CosineSchedule.create(0.1, 1000, end=1e-5, warmup_steps=100)
    reference = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=0.1, warmup_steps=100, decay_steps=1000, end_value=1e-5
    )
    steps = jnp.arange(0, 1200, 7)
    np.testing.assert_allclose(
        jax.vmap(schedule)(steps), jax.vmap(reference)(steps), rtol=1e-5, atol=1e-8
    )


def test_cosine_without_warmup_endpoints():
    schedule = CosineSchedule.create(0.1, 50, end=1e-5)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(25)) == pytest.approx((0.1 + 1e-5) / 2, rel=1e-5)
    assert float(schedule(50)) == pytest.approx(1e-5, rel=1e-4)
    assert float(schedule(500)) == pytest.approx(1e-5, rel=1e-4)  # stays at the floor


@pytest.mark.parametrize(
    "kwargs",
    [dict(total_steps=0), dict(total_steps=10, warmup_steps=10), dict(total_steps=10, end=1.0)],
)
def test_cosine_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CosineSchedule.create(0.1, **kwargs)


def test_sgd_matches_pytorch_update_rule():
    # torch.optim.SGD(momentum=μ, weight_decay=λ): g ← g + λθ; b ← μb + g; θ ← θ − lr·b.
    mu, lam, lrs = 0.9, 5e-4, [0.1, 0.05, 0.02]
    rng = np.random.default_rng(0)
    theta = rng.normal(size=5).astype(np.float32)
    grads = rng.normal(size=(3, 5)).astype(np.float32)
    tx = sgd_direction(mu, lam)
    params = jnp.asarray(theta)
    state = tx.init(params)
    buf = np.zeros(5, np.float32)
    for g, lr in zip(grads, lrs, strict=True):
        d, state = tx.update(jnp.asarray(g), state, params)
        params = params - lr * d
        buf = mu * buf + (g + lam * theta)
        theta = theta - lr * buf
    np.testing.assert_allclose(params, theta, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(momentum=1.0), dict(weight_decay=-1.0)])
def test_sgd_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sgd_direction(**kwargs)
