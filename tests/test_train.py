"""The train step: CmBN, CBN, SAT, EMA, mixed precision, overfitting, tracing, the
non-finite guard, devices. The loop around it (resume, SIGTERM, metrics): test_train_loop.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test_tiny
from yolov4_jax import training
from yolov4_jax.detection import losses, sat
from yolov4_jax.models import factory, layers
from yolov4_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cmbn_first_micro_batch_equals_batchnorm():
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 3)) * 2 + 1
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(1), x, False)
    plain, _ = bn.apply(variables, x, False, mutable=["batch_stats"])
    cmbn = training.zero_cmbn(variables["batch_stats"])
    cross, _ = bn.apply({**variables, "cmbn": cmbn}, x, False, mutable=["batch_stats", "cmbn"])
    np.testing.assert_allclose(cross, plain, rtol=1e-4, atol=1e-4)


def test_cmbn_accumulates_statistics_over_micro_batches():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    xs = [
        jax.random.normal(k1, (2, 4, 4, 3)),
        jax.random.normal(k2, (2, 4, 4, 3)) * 3 + 2,
        jax.random.normal(k3, (2, 4, 4, 3)) - 1,
    ]
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(1), xs[0], False)
    cmbn = training.zero_cmbn(variables["batch_stats"])
    for k, x in enumerate(xs):
        y, new = bn.apply({**variables, "cmbn": cmbn}, x, False, mutable=["batch_stats", "cmbn"])
        cmbn = new["cmbn"]
        # Direct computation: the statistics of all micro-batches so far (equal sizes).
        seen = np.concatenate([np.asarray(v) for v in xs[: k + 1]])
        mean = seen.mean(axis=(0, 1, 2))
        var = (seen**2).mean(axis=(0, 1, 2)) - mean**2
        expected = (np.asarray(x) - mean) / np.sqrt(var + layers.BN_EPSILON)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
        assert float(cmbn["count"]) == k + 1


def _setup(**overrides):
    config = test_tiny.get_config()
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    model = factory.create_model(config.model, num_classes=5)
    tx, schedule = optim.make_optimizer(
        config.optim,
        global_batch_size=config.data.batch_size,
        total_steps=config.optim.max_batches,
    )
    state = training.create_train_state(model, config, tx, jax.random.PRNGKey(0))
    return config, model, tx, schedule, state


def _batch(size=64, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (batch, size, size, 3)).astype(np.uint8)
    boxes = np.zeros((batch, 8, 4), np.float32)
    labels = np.zeros((batch, 8), np.int32)
    mask = np.zeros((batch, 8), bool)
    for i in range(batch):
        # One bright square per image, the same in every image so that overfitting is easy.
        images[i, 16:40, 20:44] = (220, 40, 40)
        boxes[i, 0] = (20 / size, 16 / size, 44 / size, 40 / size)
        labels[i, 0] = 2
        mask[i, 0] = True
    return {
        "image": jnp.asarray(images),
        "boxes": jnp.asarray(boxes),
        "labels": jnp.asarray(labels),
        "mask": jnp.asarray(mask),
    }


@pytest.mark.slow
def test_cmbn_train_step_with_one_subdivision_equals_batchnorm():
    batch = _batch()
    results = []
    for bn in ("bn", "cmbn"):
        config, model, tx, schedule, state = _setup(**{"train.bn": bn, "optim.subdivisions": 1})
        step = training.make_train_step(model, config, tx, schedule)
        new_state, metrics = step(state, batch)
        results.append((new_state.params, float(metrics["total"])))
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("unroll", [False, True])
def test_cmbn_train_step_accumulates_over_two_micro_batches(unroll):
    """subdivisions=2 through the real step (scan or unrolled). Micro-batch 1 normalises with
    its own statistics, micro-batch 2 with those of micro-batches 1 and 2 together; so with two
    identical micro-batches CmBN's forward pass (loss, BN statistics) is plain BN's, and with
    different ones it is not."""
    base = _batch(seed=0)
    same = {k: jnp.repeat(v[::2], 2, axis=0) for k, v in base.items()}  # row 2i == row 2i+1
    losses, stats = {}, {}
    for bn in ("bn", "cmbn"):
        overrides = {"train.bn": bn, "optim.subdivisions": 2, "train.unroll_subdivisions": unroll}
        config, model, tx, schedule, state = _setup(**overrides)
        step = training.make_train_step(model, config, tx, schedule)
        for name, batch in (("same", same), ("different", base)):
            new_state, metrics = step(jax.tree.map(jnp.copy, state), batch)  # step donates
            losses[bn, name] = float(metrics["total"])
            stats[bn, name] = new_state.batch_stats
        _, metrics = step(new_state, base)  # the per-update accumulators start from zero again
        assert np.isfinite(float(metrics["total"]))
    assert losses["cmbn", "same"] == pytest.approx(losses["bn", "same"], rel=1e-5)
    for a, b in zip(
        jax.tree.leaves(stats["cmbn", "same"]), jax.tree.leaves(stats["bn", "same"]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert losses["cmbn", "different"] != pytest.approx(losses["bn", "different"], rel=1e-4)


@pytest.mark.slow
def test_accumulating_two_equal_micro_batches_equals_one_step_on_one():
    """Gradient accumulation: with subdivisions=2 and two identical micro-batches (so BN sees
    the same statistics), the update is the one of a single micro-batch, at the same lr."""
    half = _batch(batch=4)
    doubled = {k: jnp.repeat(v, 2, axis=0) for k, v in half.items()}  # micro-batches == half
    params = {}
    for subdivisions, batch in ((1, half), (2, doubled)):
        config, model, _, _, state = _setup(**{"optim.subdivisions": subdivisions})
        tx, schedule = optim.make_optimizer(
            config.optim, global_batch_size=8, total_steps=config.optim.max_batches
        )
        state = state.replace(opt_state=tx.init(state.params))
        step = training.make_train_step(model, config, tx, schedule)
        for _ in range(2):  # twice, so momentum carries the accumulated gradient too
            state, metrics = step(state, batch)
        params[subdivisions] = state.params
    moved = 0.0
    for a, b, c in zip(
        *(jax.tree.leaves(params[k]) for k in (1, 2)),
        jax.tree.leaves(_setup()[4].params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
        moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(c)).max()))
    assert moved > 1e-4  # the steps did change the weights


def test_ema_follows_the_weights_and_is_what_evaluation_uses():
    config, model, tx, schedule, state = _setup(**{"optim.ema": True, "optim.ema_warmup_steps": 0})
    config.optim.ema_decay = 0.5
    step = training.make_train_step(model, config, tx, schedule)
    before = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, _batch())
    after = jax.tree.map(np.asarray, state.params)
    ema = jax.tree.map(np.asarray, state.ema_params)
    for p0, p1, e in zip(*(jax.tree.leaves(t) for t in (before, after, ema)), strict=True):
        np.testing.assert_allclose(e, 0.5 * p0 + 0.5 * p1, rtol=1e-5, atol=1e-7)
    assert training.eval_variables(state)["params"] is state.ema_params


@pytest.mark.slow
def test_mixed_precision_step_keeps_float32_weights_and_statistics():
    """model.dtype=bfloat16: bf16 convolutions, fp32 master weights, BN statistics and loss."""
    batch = _batch()
    out = {}
    for dtype in ("float32", "bfloat16"):
        config, model, tx, schedule, state = _setup(
            **{"model.dtype": dtype, "optim.subdivisions": 1}
        )
        step = training.make_train_step(model, config, tx, schedule)
        new_state, metrics = step(state, batch)
        out[dtype] = (new_state, float(metrics["total"]))
    state16, loss16 = out["bfloat16"]
    for leaf in jax.tree.leaves((state16.params, state16.batch_stats, state16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert np.isfinite(loss16)
    assert loss16 == pytest.approx(out["float32"][1], rel=0.05)
    assert loss16 != out["float32"][1]  # the convolutions did run in bf16


def test_tiny_batch_overfits():
    config, model, tx, schedule, state = _setup(
        **{
            "optim.max_batches": 150,
            "optim.burn_in": 10,
            "optim.learning_rate": 0.01,
            "optim.subdivisions": 1,
            # Annealed (x0.1 at 100 and 125): at a constant rate the boxes kept moving, and
            # the IoU at step 150 fell anywhere in 0.66-0.95 with float rounding changes.
            "optim.schedule": "steps",
            "optim.steps": (100, 125),
            "optim.scales": (0.1, 0.1),
            "model.bn_momentum": 0.9,  # running statistics settled within the 150 steps
        }
    )
    step = training.make_train_step(model, config, tx, schedule, max_traces=1)
    batch = _batch(batch=4)
    totals = []
    for _ in range(150):
        state, metrics = step(state, batch)
        totals.append(float(metrics["total"]))
    assert totals[-1] < 0.05 * totals[0], totals[::10]
    # The loss never reaches zero (objectness over every cell), so check what it learned: on
    # its training images the best detection is the square, of its class, tightly.
    from yolov4_jax.detection import boxes
    from yolov4_jax.evaluation import prediction

    predict = prediction.make_predict_fn(model, prediction.NmsOptions(score_threshold=0.05))
    detections = predict(training.eval_variables(state), batch["image"])
    top_box = np.asarray(detections.boxes[:, 0])
    assert np.asarray(detections.valid[:, 0]).all()
    np.testing.assert_array_equal(detections.classes[:, 0], batch["labels"][:, 0])
    iou = np.asarray(boxes.iou(jnp.asarray(top_box), batch["boxes"][:, 0]))
    assert (iou > 0.85).all(), (iou, top_box)
    assert (np.asarray(detections.scores[:, 0]) > 0.5).all(), detections.scores[:, 0]


@pytest.mark.slow
def test_step_is_traced_once_per_input_shape():
    config, model, tx, schedule, state = _setup()
    step = training.make_train_step(model, config, tx, schedule, max_traces=2)
    for size in (64, 64, 96, 64, 96):
        state, _ = step(state, _batch(size=size))
    assert step._cache_size() == 2
    with pytest.raises(AssertionError, match="traced > 2 times"):
        step(state, _batch(size=32))  # a third shape is a third trace


@pytest.mark.slow
def test_sat_keeps_images_in_range_and_lowers_confidence():
    config, model, tx, schedule, state = _setup()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = _batch()["image"].astype(jnp.float32) / 255.0
    options = losses.loss_options(config.loss)
    adversarial = jax.jit(lambda v, x: sat.sat_images(model, v, x, model.heads, options, 0.05))(
        variables, images
    )

    @jax.jit
    def objectness(x):
        outputs = model.apply(variables, x, train=False)
        return [jax.nn.sigmoid(o.reshape(*o.shape[:3], 3, -1)[..., 4]).mean() for o in outputs]

    def max_objectness(x):
        return max(float(v) for v in objectness(x))

    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    assert not np.allclose(adversarial, images)
    assert max_objectness(adversarial) < max_objectness(images)


def test_sat_runs_inside_the_step_after_burn_in():
    config, model, tx, schedule, state = _setup(
        **{"train.sat": True, "train.sat_prob": 1.0, "optim.burn_in": 0}
    )
    step = training.make_train_step(model, config, tx, schedule)
    state, metrics = step(state, _batch())
    assert float(metrics["sat"]) == 1.0
    assert bool(metrics["finite"])


@pytest.mark.slow
def test_sat_stage_two_trains_on_the_adversarial_images():
    """The update with SAT is the plain update when the adversarial step is zero, and another
    one when it is not: stage 2 does train on the moved images."""
    losses_by = {}
    for name, overrides in {
        "off": {"train.sat": False},
        "zero_step": {"train.sat": True, "train.sat_lr": 0.0},
        "on": {"train.sat": True, "train.sat_lr": 0.5},
    }.items():
        config, model, tx, schedule, state = _setup(
            **{"train.sat_prob": 1.0, "optim.burn_in": 0, **overrides}
        )
        state = state.replace(step=jnp.asarray(config.optim.max_batches // 2, state.step.dtype))
        step = training.make_train_step(model, config, tx, schedule)
        new_state, metrics = step(state, _batch())
        losses_by[name] = (float(metrics["total"]), jax.tree.leaves(new_state.params)[0])
    assert losses_by["zero_step"][0] == pytest.approx(losses_by["off"][0], rel=1e-6)
    np.testing.assert_allclose(losses_by["zero_step"][1], losses_by["off"][1], rtol=1e-6)
    assert losses_by["on"][0] != pytest.approx(losses_by["off"][0], rel=1e-4)


def test_non_finite_update_is_skipped():
    config, model, tx, schedule, state = _setup(**{"optim.learning_rate": 1e30, "optim.burn_in": 0})
    step = training.make_train_step(model, config, tx, schedule)
    finite = []
    for _ in range(4):
        previous = jax.tree.map(np.asarray, state.params)
        state, metrics = step(state, _batch())
        finite.append(bool(metrics["finite"]))
        if not finite[-1]:
            for a, b in zip(jax.tree.leaves(previous), jax.tree.leaves(state.params), strict=True):
                np.testing.assert_array_equal(a, b)
            break
    assert not all(finite)


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_update():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        import test_train as t
        from yolov4_jax import training
        assert jax.device_count() == 8, jax.devices()
        updates = []
        for mesh in (None, training.make_mesh()):
            config, model, tx, schedule, state = t._setup(**{"optim.subdivisions": 2})
            step = training.make_train_step(model, config, tx, schedule, mesh)
            batch = t._batch(batch=16)
            if mesh is not None:
                batch = training.global_batch(jax.device_get(batch), mesh)
                replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                state = jax.device_put(state, replicated)
            state, metrics = step(state, batch)
            updates.append((jax.device_get(state.params), float(metrics["total"])))
        assert abs(updates[0][1] - updates[1][1]) <= 1e-5 * abs(updates[0][1]), updates
        for a, b in zip(jax.tree.leaves(updates[0][0]), jax.tree.leaves(updates[1][0])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        print("ok")
        """
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def _cbn_layer(compensate, history=2):
    from yolov4_jax.models import specs

    conv = layers.ConvBN(specs.Conv(4, 3, 1, 1, batch_normalize=True, activation="linear"))
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = conv.init(jax.random.key(1), x, False)
    cbn = training.zero_cbn(variables["params"], history, compensate)
    return conv, variables, cbn


def _apply_cbn(conv, variables, cbn, x):
    y, new = conv.apply({**variables, "cbn": cbn}, x, False, mutable=["batch_stats", "cbn"])
    return y, new["cbn"]


def _normalised(y_pre, mean, var):
    return (y_pre - mean) / np.sqrt(var + layers.BN_EPSILON)


def test_cbn_averages_the_statistics_of_previous_iterations():
    conv, variables, cbn = _cbn_layer(compensate=False)
    xs = [jax.random.normal(jax.random.key(i), (2, 6, 6, 3)) * (i + 1) for i in range(4)]

    def pre_bn(x):  # the conv output before BN, with the fixed kernel
        return np.asarray(
            jax.lax.conv_general_dilated(
                x,
                variables["params"]["kernel"],
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        )

    for k, x in enumerate(xs):
        y, cbn = _apply_cbn(conv, variables, cbn, x)
        window = [pre_bn(v) for v in xs[max(0, k - 2) : k + 1]]  # current + 2 previous
        means = np.stack([w.mean(axis=(0, 1, 2)) for w in window])
        sqs = np.stack([(w**2).mean(axis=(0, 1, 2)) for w in window])
        mean, var = means.mean(0), sqs.mean(0) - means.mean(0) ** 2
        np.testing.assert_allclose(y, _normalised(pre_bn(x), mean, var), rtol=2e-4, atol=2e-4)
    assert int(cbn["count"]) == 2


def test_cbn_compensates_the_weight_change():
    conv, variables, cbn = _cbn_layer(compensate=True, history=1)
    x_old, x_new = (jax.random.normal(jax.random.key(i), (2, 6, 6, 3)) for i in (5, 6))
    _, cbn = _apply_cbn(conv, variables, cbn, x_old)
    kernel = variables["params"]["kernel"]
    moved = kernel + 1e-3 * jax.random.normal(jax.random.key(7), kernel.shape)
    new_vars = {**variables, "params": {**variables["params"], "kernel": moved}}
    y, _ = _apply_cbn(conv, new_vars, cbn, x_new)

    def pre_bn(x, w):
        return np.asarray(
            jax.lax.conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )

    # The old batch's statistics as if computed with the new kernel (what compensation
    # approximates: exact for the mean, first order for E[y^2]).
    old, new = pre_bn(x_old, moved), pre_bn(x_new, moved)
    mean = (old.mean((0, 1, 2)) + new.mean((0, 1, 2))) / 2
    sq = ((old**2).mean((0, 1, 2)) + (new**2).mean((0, 1, 2))) / 2
    expected = _normalised(new, mean, sq - mean**2)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3)
    # The same layer without compensation, fed the same history, normalises with the stale
    # statistics and lands far further from the statistics at the new kernel.
    _, cbn_stale = _cbn_layer(compensate=False, history=1)[::2]
    _, cbn_stale = _apply_cbn(conv, variables, cbn_stale, x_old)
    y_stale, _ = _apply_cbn(conv, new_vars, cbn_stale, x_new)
    err, err_stale = np.abs(y - expected).max(), np.abs(y_stale - expected).max()
    assert err_stale > 10 * err, (err, err_stale)


def test_cbn_window_counts_updates_not_micro_batches():
    config, model, tx, schedule, state = _setup(
        **{"train.bn": "cbn", "train.cbn_window": 3, "optim.subdivisions": 2}
    )
    step = training.make_train_step(model, config, tx, schedule)
    assert model.layers[0].stride == 2 and model.layers[0].padding == 1
    newest = []
    for k in range(3):
        batch = _batch(seed=k)
        kernel = np.asarray(state.params["layer000"]["kernel"])  # the step donates the state
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        counts = {int(v) for v in jax.tree.leaves(state.cbn) if v.ndim == 0}
        assert counts == {min(k + 1, 2)}  # one entry per update, two micro-batches each
        layer = state.cbn["layer000"]
        # The update's entry: the mean over its whole batch (both micro-batches) of the first
        # conv's output with the kernel of that update, and that kernel.
        pre = jax.lax.conv_general_dilated(
            batch["image"].astype(jnp.float32) / 255.0,
            kernel,
            (2, 2),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        np.testing.assert_allclose(layer["mean"][0], pre.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer["kernel"][0], kernel, rtol=1e-6)
        if newest:
            np.testing.assert_allclose(layer["mean"][1], newest[-1], rtol=1e-6)  # shifted
        newest.append(np.asarray(layer["mean"][0]))
    assert not np.allclose(newest[0], newest[1])
