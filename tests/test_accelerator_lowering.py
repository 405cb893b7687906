"""The guard for GPU and TPU users: the full-recipe train step and the predict function of
yolov4 and yolov4-tiny lower through ``jax.export`` for "cuda" and "tpu", traced with the
choices a GPU host makes (`ops.backend.lowering_for`), and call no CPU-only custom call.

Lowering needs no accelerator: jaxlib carries the CUDA and TPU lowering rules. A construct that
works only on the CPU (a CPU foreign function, LAPACK, a CPU-only algorithm that ``auto`` picks)
makes the lowering fail or leaves a custom call that `deploy.portability` reports.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from configs import test_tiny
from yolov4_jax import training
from yolov4_jax.deploy import ExportError, portability
from yolov4_jax.deploy.stablehlo import lower_for
from yolov4_jax.evaluation.prediction import make_predict_fn, nms_options_for
from yolov4_jax.models import factory, specs
from yolov4_jax.ops import backend
from yolov4_jax.training import optim
from yolov4_jax.training.step import make_mesh, make_train_step

ACCELERATORS = ("cuda", "tpu")
BATCH, MAX_BOXES = 4, 8


def _full_recipe(name: str, width: float):
    """The paper's training recipe on ``name``: CmBN over 2 micro-batches, SAT, EMA, cosine
    annealing; DropBlock and SAM where the variant takes them (yolov4)."""
    config = test_tiny.get_config()
    config.model.name = name
    config.model.width = width
    config.train.bn = "cmbn"
    config.train.sat = True
    config.optim.subdivisions = 2
    config.optim.ema = True
    config.optim.schedule = "cosine"
    if name == "yolov4":
        config.model.dropblock = 0.1
        config.model.attention = "sam"
    return config


def _lower_train_step(config, size: int):
    model = factory.create_model(config.model, num_classes=80)
    tx, schedule = optim.make_optimizer(
        config.optim, global_batch_size=BATCH, total_steps=config.optim.max_batches
    )
    state = jax.eval_shape(
        lambda: training.create_train_state(model, config, tx, jax.random.PRNGKey(0))
    )
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.uint8),
        "boxes": jax.ShapeDtypeStruct((BATCH, MAX_BOXES, 4), jnp.float32),
        "labels": jax.ShapeDtypeStruct((BATCH, MAX_BOXES), jnp.int32),
        "mask": jax.ShapeDtypeStruct((BATCH, MAX_BOXES), jnp.bool_),
    }
    # The loop's step: sharded over the host's `data` mesh (one device here).
    step = make_train_step(model, config, tx, schedule, make_mesh())
    return lower_for(step, [state, batch], ACCELERATORS)


def _lower_predict(config, size: int, host: str = "cuda", platforms=ACCELERATORS):
    model = factory.create_model(config.model, num_classes=80)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    predict = make_predict_fn(model, nms_options_for(model.heads))  # fresh: never traced
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8)
    return model, lower_for(predict, [variables, images], platforms, host=host)


def _convolutions(exported) -> int:
    """Convolutions in a module lowered for one platform (a multi-platform module holds one
    body per platform)."""
    assert len(exported.platforms) == 1
    return len(re.findall(r"stablehlo\.convolution", exported.mlir_module()))


def _assert_portable(exported):
    assert exported.platforms == ACCELERATORS
    text = exported.mlir_module()
    assert portability.non_portable_targets(text) == []
    assert not re.search(r"lapack_|ducc_|yolov4_conv|yolov4_filter_grad", text)


def test_tiny_train_step_lowers_for_accelerators():
    _assert_portable(_lower_train_step(_full_recipe("yolov4_tiny", 0.25), 64))


def test_tiny_predict_lowers_with_xla_convolutions_only():
    config = _full_recipe("yolov4_tiny", 1.0)
    model, exported = _lower_predict(config, 416)
    _assert_portable(exported)
    # One XLA convolution per layer on a GPU host; the same function traced for a CPU host
    # takes Winograd's form (batched products) on its large 3x3 layers: what the guard's host
    # choice keeps out of the accelerator lowering.
    conv_layers = sum(isinstance(s, specs.Conv) for s in model.layers)
    _, on_gpu = _lower_predict(config, 416, platforms=("cuda",))
    assert _convolutions(on_gpu) == conv_layers
    _, on_cpu = _lower_predict(config, 416, host="cpu", platforms=("cpu",))
    assert _convolutions(on_cpu) < conv_layers


def test_yolov4_train_step_lowers_for_accelerators():
    _assert_portable(_lower_train_step(_full_recipe("yolov4", 1.0), 128))


def test_yolov4_predict_lowers_with_xla_convolutions_only():
    config = _full_recipe("yolov4", 1.0)
    model, exported = _lower_predict(config, 416)
    _assert_portable(exported)
    conv_layers = sum(isinstance(s, specs.Conv) for s in model.layers)
    assert _convolutions(_lower_predict(config, 416, platforms=("tpu",))[1]) == conv_layers


def test_the_guard_catches_cpu_only_constructs():
    # LAPACK's eigensolver is a CPU custom call.
    def eig(x):
        return jnp.linalg.eigh(x)[0]

    with pytest.raises(ExportError, match=r"lapack_\w+ \(CPU only\)"):
        lower_for(eig, [jax.ShapeDtypeStruct((4, 4), jnp.float32)], ("cpu",))
    # oneMKL's convolutions exist only on the CPU: asked for on a GPU host, the trace refuses.
    config = _full_recipe("yolov4_tiny", 0.25)
    config.model.conv_algorithm = "mkl"
    with pytest.raises(ValueError, match="runs on the CPU only"):
        _lower_predict(config, 64)
    assert portability.non_portable_targets(
        "stablehlo.custom_call @yolov4_conv_f32(%0) stablehlo.custom_call @Sharding(%1) "
        "stablehlo.custom_call @cu_threefry2x32(%2)"
    ) == ["cu_threefry2x32", "yolov4_conv_f32 (CPU only)"]


def test_lowering_choices_do_not_leak_into_the_host():
    with backend.lowering_for("tpu"):
        assert backend.current() == "tpu"
    assert backend.current() == jax.default_backend() == "cpu"
