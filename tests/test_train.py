"""The train step and loop: CmBN, SAT, overfitting, tracing, non-finite guard, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test_tiny
from yolov4_jax import losses, optim, train
from yolov4_jax.models import factory, layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cmbn_first_micro_batch_equals_batchnorm():
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 3)) * 2 + 1
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(1), x, False)
    plain, _ = bn.apply(variables, x, False, mutable=["batch_stats"])
    cmbn = train.zero_cmbn(variables["batch_stats"])
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
    cmbn = train.zero_cmbn(variables["batch_stats"])
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
    state = train.create_train_state(model, config, tx, jax.random.PRNGKey(0))
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


def test_cmbn_train_step_with_one_subdivision_equals_batchnorm():
    batch = _batch()
    results = []
    for bn in ("bn", "cmbn"):
        config, model, tx, schedule, state = _setup(**{"train.bn": bn, "optim.subdivisions": 1})
        step = train.make_train_step(model, config, tx, schedule)
        new_state, metrics = step(state, batch)
        results.append((new_state.params, float(metrics["total"])))
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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
        step = train.make_train_step(model, config, tx, schedule)
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
        step = train.make_train_step(model, config, tx, schedule)
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
    step = train.make_train_step(model, config, tx, schedule)
    before = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, _batch())
    after = jax.tree.map(np.asarray, state.params)
    ema = jax.tree.map(np.asarray, state.ema_params)
    for p0, p1, e in zip(*(jax.tree.leaves(t) for t in (before, after, ema)), strict=True):
        np.testing.assert_allclose(e, 0.5 * p0 + 0.5 * p1, rtol=1e-5, atol=1e-7)
    assert train.eval_variables(state)["params"] is state.ema_params


def test_mixed_precision_step_keeps_float32_weights_and_statistics():
    """model.dtype=bfloat16: bf16 convolutions, fp32 master weights, BN statistics and loss."""
    batch = _batch()
    out = {}
    for dtype in ("float32", "bfloat16"):
        config, model, tx, schedule, state = _setup(
            **{"model.dtype": dtype, "optim.subdivisions": 1}
        )
        step = train.make_train_step(model, config, tx, schedule)
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
            "optim.schedule": "constant",
            "model.bn_momentum": 0.9,  # running statistics settled within the 150 steps
        }
    )
    step = train.make_train_step(model, config, tx, schedule, max_traces=1)
    batch = _batch(batch=4)
    totals = []
    for _ in range(150):
        state, metrics = step(state, batch)
        totals.append(float(metrics["total"]))
    assert totals[-1] < 0.05 * totals[0], totals[::10]
    # The loss never reaches zero (objectness over every cell), so check what it learned: on
    # its training images the best detection is the square, of its class, tightly.
    from yolov4_jax import boxes, inference

    predict = inference.make_predict_fn(model, inference.NmsOptions(score_threshold=0.05))
    detections = predict(train.eval_variables(state), batch["image"])
    top_box = np.asarray(detections.boxes[:, 0])
    assert np.asarray(detections.valid[:, 0]).all()
    np.testing.assert_array_equal(detections.classes[:, 0], batch["labels"][:, 0])
    iou = np.asarray(boxes.iou(jnp.asarray(top_box), batch["boxes"][:, 0]))
    assert (iou > 0.7).all(), (iou, top_box)
    assert (np.asarray(detections.scores[:, 0]) > 0.5).all(), detections.scores[:, 0]


def test_step_is_traced_once_per_input_shape():
    config, model, tx, schedule, state = _setup()
    step = train.make_train_step(model, config, tx, schedule, max_traces=2)
    for size in (64, 64, 96, 64, 96):
        state, _ = step(state, _batch(size=size))
    assert step._cache_size() == 2
    with pytest.raises(AssertionError, match="traced > 2 times"):
        step(state, _batch(size=32))  # a third shape is a third trace


def test_sat_keeps_images_in_range_and_lowers_confidence():
    config, model, tx, schedule, state = _setup()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = _batch()["image"].astype(jnp.float32) / 255.0
    options = losses.loss_options(config.loss)
    adversarial = train.sat_images(model, variables, images, model.heads, options, 0.05)

    def max_objectness(x):
        outputs = model.apply(variables, x, train=False)
        return max(
            float(jax.nn.sigmoid(o.reshape(*o.shape[:3], 3, -1)[..., 4]).mean()) for o in outputs
        )

    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    assert not np.allclose(adversarial, images)
    assert max_objectness(adversarial) < max_objectness(images)


def test_sat_runs_inside_the_step_after_burn_in():
    config, model, tx, schedule, state = _setup(
        **{"train.sat": True, "train.sat_prob": 1.0, "optim.burn_in": 0}
    )
    step = train.make_train_step(model, config, tx, schedule)
    state, metrics = step(state, _batch())
    assert float(metrics["sat"]) == 1.0
    assert bool(metrics["finite"])


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
        step = train.make_train_step(model, config, tx, schedule)
        new_state, metrics = step(state, _batch())
        losses_by[name] = (float(metrics["total"]), jax.tree.leaves(new_state.params)[0])
    assert losses_by["zero_step"][0] == pytest.approx(losses_by["off"][0], rel=1e-6)
    np.testing.assert_allclose(losses_by["zero_step"][1], losses_by["off"][1], rtol=1e-6)
    assert losses_by["on"][0] != pytest.approx(losses_by["off"][0], rel=1e-4)


def test_non_finite_update_is_skipped():
    config, model, tx, schedule, state = _setup(**{"optim.learning_rate": 1e30, "optim.burn_in": 0})
    step = train.make_train_step(model, config, tx, schedule)
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


def _run(workdir, tmp_data, stop_at_step=None, **overrides):
    config = test_tiny.get_config()
    config.data.data_dir = str(tmp_data)
    config.train.log_every = 1
    config.train.detections_image = False
    config.train.eval_max_batches = 1
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    return train.train_and_evaluate(config, str(workdir), stop_at_step=stop_at_step)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/total"] for r in rows if "train/total" in r}


def test_resumed_run_follows_the_uninterrupted_trajectory(tmp_path, tiny_data_dir):
    _run(tmp_path / "straight", tiny_data_dir)
    _run(tmp_path / "resumed", tiny_data_dir, stop_at_step=2)
    assert sorted(_losses(tmp_path / "resumed")) == [1, 2]
    metrics = _run(tmp_path / "resumed", tiny_data_dir)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4]
    for k in straight:
        assert resumed[k] == pytest.approx(straight[k], rel=1e-5), (k, straight, resumed)
    assert "eval/AP50" in metrics
    assert os.path.isdir(tmp_path / "resumed" / "best")

    # detect and evaluate read the run's checkpoint and class names.
    import cv2

    from yolov4_jax import detect, evaluate

    image = tmp_path / "shapes.png"
    cv2.imwrite(str(image), np.full((50, 70, 3), 128, np.uint8))
    args = ["--workdir", str(tmp_path / "resumed"), "--out", str(tmp_path / "det"), str(image)]
    assert detect.main(args + ["--thresh", "0.0", "--max-detections", "3"]) == 0
    with open(tmp_path / "det" / "shapes.json") as f:
        found = json.load(f)
    assert len(found) == 3
    assert {d["name"] for d in found} <= {"circle", "square", "triangle", "cross", "ring"}
    assert all(0 <= d["box"][0] <= d["box"][2] <= 70 for d in found)
    config = test_tiny.get_config()
    config.data.data_dir = str(tiny_data_dir)
    again = evaluate.run(
        config, workdir=str(tmp_path / "resumed"), max_batches=1, thresh=0.005, nms_thresh=0.45
    )
    assert again["AP50"] == pytest.approx(metrics["eval/AP50"], abs=1e-6)


def test_non_finite_loss_stops_the_run_with_the_step(tmp_path, tiny_data_dir):
    """Checked every step (not only at logging steps), and never checkpointed."""
    overrides = {"optim.learning_rate": 1e30, "optim.burn_in": 0, "optim.max_batches": 8}
    overrides.update({"train.log_every": 100, "train.checkpoint_every": 1})
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+") as e:
        _run(tmp_path / "nan", tiny_data_dir, **overrides)
    bad = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    saved = sorted(int(p) for p in os.listdir(tmp_path / "nan" / "checkpoints") if p.isdigit())
    assert bad < 8 and saved == list(range(1, bad)), (bad, saved)
    assert f"last good checkpoint is step {bad - 1}" in str(e.value)


def test_one_device_and_eight_devices_give_the_same_update():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        import test_train as t
        from yolov4_jax import train
        assert jax.device_count() == 8, jax.devices()
        updates = []
        for mesh in (None, train.make_mesh()):
            config, model, tx, schedule, state = t._setup(**{"optim.subdivisions": 2})
            step = train.make_train_step(model, config, tx, schedule, mesh)
            batch = t._batch(batch=16)
            if mesh is not None:
                batch = train.global_batch(jax.device_get(batch), mesh)
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
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
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
    cbn = train.zero_cbn(variables["params"], history, compensate)
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
    # Without compensation the stale statistics give a visibly different result.
    stale_mean = (pre_bn(x_old, kernel).mean((0, 1, 2)) + new.mean((0, 1, 2))) / 2
    assert np.abs(stale_mean - mean).max() > 1e-4


def test_cbn_train_step_runs_and_carries_its_history():
    config, model, tx, schedule, state = _setup(
        **{"train.bn": "cbn", "train.cbn_window": 3, "optim.subdivisions": 2}
    )
    step = train.make_train_step(model, config, tx, schedule)
    for _ in range(2):
        state, metrics = step(state, _batch())
        assert bool(metrics["finite"])
    counts = {int(v) for v in jax.tree.leaves(jax.tree.map(lambda a: a, state.cbn)) if v.ndim == 0}
    assert counts == {2}  # four micro-batches seen, window of 2 past iterations


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_data_dir):
    import signal
    import time

    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [
        sys.executable,
        "-m",
        "yolov4_jax.main",
        "--config=configs/test_tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.optim.max_batches=100000",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=100000",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM" in stderr
    # The progress bar (tqdm, on stderr) shows the loss terms, the learning rate and images/s.
    bar = [line for line in re.split(r"[\r\n]", stderr) if "step/s" in line or "s/step" in line]
    assert bar and re.search(r"loss=[\d.e+-]+, box=.*obj=.*cls=.*lr=.*img/s=[\d.]+", bar[-1])
    last = max(_losses(workdir))
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [last]


def _sigterm_at_batch(monkeypatch, k):
    """A real SIGTERM to this process while the loop fetches its k-th batch of this run."""
    import signal

    calls = {"n": 0}
    real = train.global_batch

    def global_batch(local, mesh):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(local, mesh)

    monkeypatch.setattr(train, "global_batch", global_batch)
    return lambda: monkeypatch.setattr(train, "global_batch", real)


def _saved_state(workdir):
    """The raw latest checkpoint's state tree (numpy) and its step."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, jax.tree.map(np.asarray, state["state"])


def test_sigterm_resume_follows_the_trajectory_with_ema_cbn_and_sat(
    tmp_path, tiny_data_dir, monkeypatch
):
    """Interrupted by SIGTERM at step 3 and resumed: the same losses at every step and the
    same final state (weights, EMA, CBN history, BN statistics, optimizer, RNG) as a run that
    was never interrupted, with EMA, CBN and SAT (after burn-in, every micro-batch) on."""
    recipe = {
        "optim.max_batches": 6,
        "optim.burn_in": 1,
        "optim.ema": True,
        "optim.ema_warmup_steps": 0.0,
        "optim.ema_decay": 0.5,
        "train.bn": "cbn",
        "train.cbn_window": 3,
        "train.sat": True,
        "train.sat_prob": 1.0,
        "train.checkpoint_every": 100,
    }
    straight = _run(tmp_path / "straight", tiny_data_dir, **recipe)
    restore = _sigterm_at_batch(monkeypatch, 3)
    assert _run(tmp_path / "resumed", tiny_data_dir, **recipe) == {}  # stopped, no eval
    restore()
    assert sorted(_losses(tmp_path / "resumed")) == [1, 2, 3]
    assert _saved_state(tmp_path / "resumed")[0] == 3  # saved on SIGTERM, not by schedule
    resumed = _run(tmp_path / "resumed", tiny_data_dir, **recipe)

    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 7))
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a, b)
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert all(r["train/sat"] == 1.0 for r in rows if r["step"] > 1 and "train/sat" in r)
    assert resumed["eval/AP50"] == pytest.approx(straight["eval/AP50"], abs=1e-6)
    (sa, tree_a), (sb, tree_b) = (
        _saved_state(tmp_path / "straight"),
        _saved_state(tmp_path / "resumed"),
    )
    assert sa == sb == 6
    assert set(tree_a) == set(tree_b) >= {"params", "ema_params", "cbn", "batch_stats", "opt_state"}
    assert jax.tree.leaves(tree_a["ema_params"]) and jax.tree.leaves(tree_a["cbn"])
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), tree_a, tree_b
    )


def _tensorboard_scalars(logdir):
    """{tag: {step: value}} and the purge steps from tensorboardX event files."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars, purges = {}, []
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                purges.append(event.step)
                # TensorBoard drops the earlier events at or after a START's step.
                for values in scalars.values():
                    for s in [s for s in values if s >= event.step]:
                        del values[s]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, purges


def test_metrics_are_written_once_per_step_after_a_crash(tmp_path, tiny_data_dir):
    """A run killed after logging steps past its last checkpoint: the resumed run drops those
    rows and rewrites them, in metrics.jsonl and (by a purge) in TensorBoard."""
    workdir = tmp_path / "run"
    _run(workdir, tiny_data_dir, stop_at_step=2)
    # What a SIGKILL at step 4 leaves: rows for steps 3 and 4 beyond checkpoint 2, the last
    # one cut short.
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "train/total": 123.0}) + "\n")
        f.write('{"step": 4, "train/tot')
    _run(workdir, tiny_data_dir)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_steps = [r["step"] for r in rows if "train/total" in r]
    assert train_steps == [1, 2, 3, 4]
    assert 123.0 not in {r["train/total"] for r in rows if "train/total" in r}
    assert [r["step"] for r in rows if "eval/AP50" in r] == [4]

    scalars, purges = _tensorboard_scalars(workdir / "tensorboard")
    assert purges[-1] == 3
    jsonl = {r["step"]: r["train/total"] for r in rows if "train/total" in r}
    assert sorted(scalars["train/total"]) == [1, 2, 3, 4]
    for step, value in jsonl.items():
        assert scalars["train/total"][step] == pytest.approx(value, rel=1e-6)
    assert {"train/box", "train/obj", "train/cls", "train/lr", "eval/AP50"} <= set(scalars)
