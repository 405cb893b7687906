"""Backbone pretraining: the classifier, its loss, the train step, and transfer to the detector."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from yolov4_jax import training
from yolov4_jax.detection import losses
from yolov4_jax.models import factory, specs, transfer
from yolov4_jax.models.network import layer_name
from yolov4_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def classifier_config(**model):
    config = base.get_config()
    config.task = "classification"
    config.model.name = "cspdarknet53"
    config.model.width = 0.125
    config.model.depth = 0.33
    config.loss.label_smoothing = 0.0
    config.data.image_size = 32
    config.data.batch_size = 8
    config.optim.subdivisions = 1
    for key, value in model.items():
        config.model[key] = value
    return config


def test_label_smoothing_classifier_form():
    onehot = jnp.asarray([[0.0, 1.0, 0.0, 0.0]])
    out = np.asarray(losses.smooth_class_targets(onehot, 0.1))
    np.testing.assert_allclose(out, [[0.1 / 3, 0.9, 0.1 / 3, 0.1 / 3]], rtol=1e-6)
    # A CutMix target keeps its mixture and still sums to one.
    mixed = jnp.asarray([[0.7, 0.3, 0.0, 0.0]])
    out = np.asarray(losses.smooth_class_targets(mixed, 0.1))
    expected = [0.7 * 0.9 + 0.3 * 0.1 / 3, 0.3 * 0.9 + 0.7 * 0.1 / 3, 0.1 / 3, 0.1 / 3]
    np.testing.assert_allclose(out, [expected], rtol=1e-6)
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(losses.smooth_class_targets(mixed, 0.0), mixed)


def test_classification_loss_is_soft_cross_entropy():
    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = jnp.asarray([[1.0, 0.0, 0.0], [0.25, 0.0, 0.75]])
    label = jnp.asarray([0, 1])
    loss, metrics = losses.classification_loss(logits, target, label, 0.0)
    logp = np.asarray(jax.nn.log_softmax(logits))
    expected = -(logp[0, 0] + 0.25 * logp[1, 0] + 0.75 * logp[1, 2]) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(metrics["top1"]) == 0.5  # row 0 right, row 1 predicts class 2, label 1
    smoothed, _ = losses.classification_loss(logits, target, label, 0.2)
    t = np.asarray(losses.smooth_class_targets(target, 0.2))
    np.testing.assert_allclose(smoothed, -(t * logp).sum(-1).mean(), rtol=1e-6)


def test_classifier_shares_the_detectors_backbone_layers():
    classifier = factory.model_layers(classifier_config().model, num_classes=7)
    detector_config = base.get_config()
    detector_config.model.width, detector_config.model.depth = 0.125, 0.33
    detector = factory.model_layers(detector_config.model, num_classes=3)
    end = next(i for i, s in enumerate(classifier) if isinstance(s, specs.AvgPool))
    assert classifier[:end] == detector[:end]
    assert classifier[-1] == specs.Conv(7, 1, 1, 0, 1, False, "linear")
    model = factory.create_model(classifier_config().model, num_classes=7)
    out = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x)[0], jnp.zeros((2, 32, 32, 3))
    )
    assert out.shape == (2, 1, 1, 7)


def test_classifier_rejects_detector_switches():
    for key, value in [("neck", "fpn"), ("spp", False), ("attention", "sam")]:
        with pytest.raises(ValueError, match=f"config.model.{key}.*classifier"):
            factory.model_layers(classifier_config(**{key: value}).model, num_classes=5)
    factory.model_layers(classifier_config(activation="leaky", dropblock=0.1).model, 5)


def _init(config, classes, seed):
    model = factory.create_model(config.model, num_classes=classes)
    return model, jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))


@pytest.fixture(scope="module")
def detector():
    config = base.get_config()
    config.model.width, config.model.depth = 0.125, 0.33
    return _init(config, 3, seed=0)


@pytest.mark.slow
def test_backbone_transfer_is_exact(detector):
    classifier, cvars = _init(classifier_config(), 10, seed=1)
    detector, dvars = detector
    merged, names = transfer.transfer_backbone(detector.layers, dvars, classifier.layers, cvars)
    backbone = transfer.classifier_backbone(classifier.layers)
    assert names == [layer_name(i) for i in backbone]  # same indices: same layer list prefix
    for name in names:
        for collection in ("params", "batch_stats"):
            jax.tree.map(
                np.testing.assert_array_equal, merged[collection][name], cvars[collection][name]
            )
    untouched = [k for k in dvars["params"] if k not in names]
    assert untouched  # the neck and heads keep their own initialisation
    for name in untouched:
        jax.tree.map(np.testing.assert_array_equal, merged["params"][name], dvars["params"][name])


def test_backbone_transfer_rejects_a_different_backbone(detector):
    classifier, cvars = _init(classifier_config(activation="leaky"), 10, seed=1)
    detector, dvars = detector
    with pytest.raises(ValueError, match="convolution 0 .*activation='leaky'.*activation"):
        transfer.transfer_backbone(detector.layers, dvars, classifier.layers, cvars)
    with pytest.raises(ValueError, match="no \\[avgpool\\]"):
        transfer.transfer_backbone(detector.layers, dvars, detector.layers, dvars)


@pytest.mark.slow
def test_tiny_classifier_overfits_a_tiny_set():
    config = classifier_config()
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 0.003
    config.optim.reference_batch_size = 8
    config.optim.burn_in = 0
    config.optim.schedule = "constant"
    config.optim.max_batches = 60
    model = factory.create_model(config.model, num_classes=4)
    tx, schedule = optim.make_optimizer(config.optim, global_batch_size=8, total_steps=60)
    state = training.create_train_state(model, config, tx, jax.random.key(0))
    step = training.make_train_step(model, config, tx, schedule)
    rng = np.random.default_rng(0)
    label = np.arange(8) % 4
    batch = {
        "image": rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8),
        "label": label.astype(np.int32),
        "target": np.eye(4, dtype=np.float32)[label],
    }
    first = None
    for _ in range(60):
        state, metrics = step(state, batch)
        first = float(metrics["total"]) if first is None else first
    assert first > 1.0
    assert float(metrics["total"]) < 0.05
    assert float(metrics["top1"]) == 1.0


@pytest.mark.slow
def test_classifier_run_then_detector_starts_from_its_backbone(tmp_path, tiny_cls_data_dir):
    from configs import test_tiny_classifier
    from yolov4_jax.training import checkpoints

    config = test_tiny_classifier.get_config()
    config.data.data_dir = tiny_cls_data_dir
    config.train.eval_every = 4
    workdir = str(tmp_path / "cls")
    metrics = training.train_and_evaluate(config, workdir)
    assert set(metrics) >= {"eval/top1", "eval/top5", "eval/loss"}
    assert metrics["eval/images"] == 20  # the tiny validation split, padding not counted
    assert 0.0 <= metrics["eval/top1"] <= metrics["eval/top5"] <= 1.0
    lines = (tmp_path / "cls" / "metrics.jsonl").read_text().splitlines()
    assert any("train/top1" in line for line in lines)
    assert (tmp_path / "cls" / "best").is_dir()  # best by eval/top1

    detector = base.get_config()
    detector.model.width, detector.model.depth = 0.125, 0.33
    detector.model.backbone_checkpoint = workdir
    model = factory.create_model(detector.model, num_classes=5)
    tx, _ = optim.make_optimizer(detector.optim, global_batch_size=8, total_steps=10)
    state = training.create_train_state(model, detector, tx, jax.random.key(0))
    _, classifier, trained, _ = checkpoints.load_for_inference(workdir, "best")
    names = [layer_name(i) for i in transfer.classifier_backbone(classifier.layers)]
    assert len(names) > 10
    for name in names:
        for collection, ours in (("params", state.params), ("batch_stats", state.batch_stats)):
            jax.tree.map(np.testing.assert_array_equal, ours[name], trained[collection][name])

    # A detector whose backbone differs is refused with the reason.
    detector.model.activation = "leaky"
    model = factory.create_model(detector.model, num_classes=5)
    with pytest.raises(ValueError, match="backbone_checkpoint.*differs"):
        training.create_train_state(model, detector, tx, jax.random.key(0))


def test_task_and_dataset_must_agree(tmp_path, tiny_cls_data_dir):
    from configs import test_tiny_classifier

    config = test_tiny_classifier.get_config()
    config.data.data_dir = tiny_cls_data_dir
    config.task = "detection"
    with pytest.raises(ValueError, match="classification dataset, but config.task"):
        training.train_and_evaluate(config, str(tmp_path / "a"))
    config.task = "classification"
    config.model.name = "yolov4_tiny"
    with pytest.raises(ValueError, match="does not fit config.task"):
        training.train_and_evaluate(config, str(tmp_path / "b"))


@pytest.mark.slow
def test_detector_starts_from_a_darknet_partial_file(tmp_path, detector):
    """darknet's yolov4.conv.137 route: model.weights with weights_num_layers."""
    from yolov4_jax.darknet import weights as dw

    model, source = detector
    n = 40  # a prefix of the layer list, as `darknet partial` writes
    path = str(tmp_path / "partial.conv.40")
    dw.write_weights(path, model.layers[:n], source, dw.Header())
    config = base.get_config()
    config.model.width, config.model.depth = 0.125, 0.33
    config.model.weights, config.model.weights_num_layers = path, n
    variables = training.init_variables(model, config, jax.random.key(7), 32)
    for i in range(len(model.layers)):
        name = layer_name(i)
        if name not in source["params"]:
            continue
        equal = jax.tree.map(
            lambda a, b: bool(np.array_equal(a, b)),
            variables["params"][name],
            source["params"][name],
        )
        assert all(jax.tree.leaves(equal)) == (i < n), name


@pytest.mark.slow
def test_demo_classifier_learns(tmp_path):
    """configs/classifier_demo.py shortened to fit the suite (width 1/8, 48 px, 250 updates,
    the BoF off, which learns fastest in short runs): well above the 10% of chance on the
    embedded validation split. The full demo's numbers are in the README. It runs the
    training program in a process of its own with XLA's full optimisation: its 250 updates
    take twice as long at the suite's level 0 (conftest.py)."""
    workdir = tmp_path / "run"
    overrides = {
        "model.width": 0.125,
        "model.activation": "leaky",
        "model.dropblock": 0.0,
        "data.image_size": 48,
        "data.eval_image_size": 48,
        "data.mosaic": False,
        "data.cutmix": False,
        "data.workers": 0,
        "loss.label_smoothing": 0.0,
        "optim.max_batches": 250,
        "optim.burn_in": 20,
        "train.eval_every": 0,
    }
    command = [sys.executable, "-m", "yolov4_jax.main", "--config=configs/classifier_demo.py"]
    command += [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    flags = re.sub(r"--xla_backend_optimization_level=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"{flags} --xla_backend_optimization_level=2")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    metrics = [r for r in records if "eval/top1" in r][-1]
    assert metrics["eval/images"] == 1000
    assert metrics["eval/top1"] > 0.2, metrics
    assert metrics["eval/top5"] > 0.8, metrics


@pytest.mark.slow
def test_cspresnext50_classifier_runs(tmp_path, tiny_cls_data_dir):
    """A couple of steps of the train loop with model.name=cspresnext50 (csresnext50.cfg's
    leaky, width 1/8), then evaluation and the checkpoint reloads as the same network."""
    from configs import test_tiny_classifier
    from yolov4_jax.training import checkpoints

    config = test_tiny_classifier.get_config()
    config.data.data_dir = tiny_cls_data_dir
    config.model.name = "cspresnext50"
    config.model.activation = "leaky"
    config.optim.subdivisions = 1
    config.optim.max_batches = 2
    config.optim.burn_in = 1
    config.train.log_every = 1
    workdir = str(tmp_path / "cls")
    metrics = training.train_and_evaluate(config, workdir)
    assert metrics["eval/images"] == 20
    assert 0.0 <= metrics["eval/top1"] <= metrics["eval/top5"] <= 1.0
    assert np.isfinite(metrics["eval/loss"])
    _, model, variables, classes = checkpoints.load_for_inference(workdir, "latest")
    assert model.layers == factory.model_layers(config.model, num_classes=len(classes))
    # grouped 3x3s: blocks (1, 1, 2, 1) at depth 0.33, and the downsampling of stages 2-4
    assert sum(isinstance(s, specs.Conv) and s.groups > 1 for s in model.layers) == 5 + 3
    logits = model.apply(variables, jnp.zeros((1, 32, 32, 3)))
    assert logits.shape == (1, 1, 1, len(classes))
