"""darknet's SGD recipe: schedule values at key steps, the decay mask, the update, EMA."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from yolov4_jax.models import Network, specs
from yolov4_jax.training import optim


def base_config():
    """configs/base.py's optim group (configs/ is not a package)."""
    path = pathlib.Path(__file__).parents[1] / "configs" / "base.py"
    spec = importlib.util.spec_from_file_location("base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().optim


def values(schedule, steps) -> np.ndarray:
    return np.asarray(jax.jit(schedule)(jnp.asarray(steps)))


def test_steps_policy_at_key_steps():
    config = base_config()
    schedule = optim.learning_rate_schedule(config, global_batch_size=64, total_steps=500500)
    lr = 0.0013
    steps = [0, 500, 999, 1000, 1001, 399999, 400000, 449999, 450000, 500499]
    expected = [0.0, lr * 0.5**4, lr * 0.999**4, lr, lr, lr, lr * 0.1, lr * 0.1, lr * 0.01]
    expected.append(lr * 0.01)
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-5)


def test_learning_rate_scales_linearly_with_global_batch():
    config = base_config()
    for batch, factor in [(64, 1.0), (128, 2.0), (16, 0.25)]:
        schedule = optim.learning_rate_schedule(config, global_batch_size=batch, total_steps=10)
        np.testing.assert_allclose(values(schedule, [2000]), [0.0013 * factor], rtol=1e-6)


def test_cosine_policy_after_burn_in():
    config = base_config()
    config.schedule = "cosine"
    lr, lr_min, total = 0.0013, 1e-5, 10000
    schedule = optim.learning_rate_schedule(config, global_batch_size=64, total_steps=total)

    def cosine(t):
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / total))

    steps = [500, 1000, 5000, 9999, 10000, 12000]
    expected = [lr * 0.5**4, cosine(1000), (lr + lr_min) / 2, cosine(9999), lr_min, lr_min]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-5)


def test_poly_policy_uses_darknets_power():
    config = base_config()
    config.schedule, config.burn_in, config.burn_in_power = "poly", 100, 4.0
    schedule = optim.learning_rate_schedule(config, global_batch_size=64, total_steps=1000)
    lr = 0.0013
    steps = [50, 100, 500, 900, 1000, 1200]
    expected = [lr * 0.5**4, lr * 0.9**4, lr * 0.5**4, lr * 0.1**4, 0.0, 0.0]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-5, atol=1e-12)


def test_sgdr_restarts_with_growing_cycles():
    config = base_config()
    config.update(schedule="sgdr", burn_in=0, sgdr_cycle=100, sgdr_mult=2.0)
    lr, lr_min = 0.0013, 1e-5
    schedule = optim.learning_rate_schedule(config, global_batch_size=64, total_steps=1000)

    def cosine(t, size):
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / size))

    # Cycles [0, 100], (100, 300], (300, 700], (700, 1500]: darknet restarts one step after
    # a cycle reaches learning_rate_min.
    steps = [0, 50, 100, 101, 200, 300, 301, 700, 701, 1000]
    expected = [lr, cosine(50, 100), lr_min, cosine(1, 200), cosine(100, 200), lr_min]
    expected += [cosine(1, 400), lr_min, cosine(1, 800), cosine(300, 800)]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-5)


def test_constant_policy_and_bad_policy():
    config = base_config()
    config.schedule = "constant"
    schedule = optim.learning_rate_schedule(config, global_batch_size=64, total_steps=10)
    np.testing.assert_allclose(values(schedule, [250, 1000, 10**6]), [0.0013 / 256] + [0.0013] * 2)
    config.schedule = "exponential"
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(config, global_batch_size=64, total_steps=10)


def tiny_params():
    """Parameter shapes of a network with every kind of parameter darknet has."""
    layers = (
        specs.Conv(4, 3, 1, 1, batch_normalize=True, activation="leaky"),
        specs.Conv(4, 1, 1, 0, activation="linear"),  # conv with a bias
        specs.Shortcut((0,), weights_type="per_feature", weights_normalization="relu"),
    )
    model = Network(layers)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    return variables["params"]


def test_weight_decay_mask_hits_only_conv_kernels():
    params = tiny_params()
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params))
    }
    assert flat == {
        "layer000/kernel": True,
        "layer000/bn/scale": False,
        "layer000/bn/bias": False,
        "layer001/kernel": True,
        "layer001/bias": False,
        "layer002/weights": False,
    }


def test_sgd_update_matches_darknet_rule():
    config = base_config()
    config.update(burn_in=0, schedule="constant")
    tx, _ = optim.make_optimizer(config, global_batch_size=128, total_steps=10)
    lr, m, wd = 0.0026, 0.949, 0.0005
    params = {"conv": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}}
    grads = {"conv": {"kernel": jnp.full((2,), 0.5), "bias": jnp.full((2,), 0.5)}}
    state = tx.init(params)
    u1, state = tx.update(grads, state, params)
    u2, state = tx.update(grads, state, params)
    v1_k, v1_b = 0.5 + wd * 2.0, 0.5  # v = m * v + (g + wd * w), w kernels only
    np.testing.assert_allclose(u1["conv"]["kernel"], -lr * v1_k, rtol=1e-6)
    np.testing.assert_allclose(u1["conv"]["bias"], -lr * v1_b, rtol=1e-6)
    np.testing.assert_allclose(u2["conv"]["kernel"], -lr * (m * v1_k + v1_k), rtol=1e-6)
    np.testing.assert_allclose(u2["conv"]["bias"], -lr * (m * v1_b + v1_b), rtol=1e-6)


def test_grad_clipping_is_optional():
    config = base_config()
    config.update(burn_in=0, schedule="constant", weight_decay=0.0, momentum=0.0)
    params = {"kernel": jnp.zeros((4,))}
    grads = {"kernel": jnp.full((4,), 10.0)}  # global norm 20
    tx, _ = optim.make_optimizer(config, global_batch_size=64, total_steps=1)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(u), 0.0013 * 20.0, rtol=1e-6)
    config.grad_clip_norm = 1.0
    tx, _ = optim.make_optimizer(config, global_batch_size=64, total_steps=1)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(u), 0.0013 * 1.0, rtol=1e-6)


def test_ema_decay_yolov5_and_darknet_styles():
    d = 0.9998
    got = np.asarray(optim.ema_decay(jnp.asarray([0, 2000, 10**6]), d))
    np.testing.assert_allclose(got, [0.0, d * (1 - math.exp(-1)), d], rtol=1e-6)
    # darknet: constant decay from max_batches / 2, the EMA follows the weights before.
    got = optim.ema_decay(jnp.asarray([0, 999, 1000, 5000]), d, warmup_steps=0, start_step=1000)
    np.testing.assert_allclose(np.asarray(got), [0.0, 0.0, d, d], rtol=1e-6)


def test_ema_update_averages_float_leaves_only():
    ema = {"w": jnp.zeros((3,)), "count": jnp.asarray(1, jnp.int32)}
    params = {"w": jnp.ones((3,)), "count": jnp.asarray(7, jnp.int32)}
    new = optim.ema_update(ema, params, 0.9, step=10, warmup_steps=0)
    np.testing.assert_allclose(new["w"], 0.1, rtol=1e-6)
    assert int(new["count"]) == 7
    # Before start_step the EMA is a copy of the weights.
    new = jax.jit(lambda e, p, s: optim.ema_update(e, p, 0.9, s, start_step=100))(ema, params, 5)
    np.testing.assert_allclose(new["w"], 1.0)
