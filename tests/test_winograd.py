"""Winograd's 3x3 convolutions (ops/winograd.py): values and both gradients equal the direct
convolution's (float64), inside scan too; `conv2d` picks them as `algorithm` says; a network
with them equals one without."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_models import _config
from yolov4_jax.models import factory
from yolov4_jax.ops import conv, winograd
from yolov4_jax.ops.conv_gradients import NHWC as _NHWC


def _direct(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC
    )


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 8, 3),  # whole tiles
        (2, 13, 11, 3),  # odd sides: the last tiles are cropped
        (1, 7, 10, 2),
        (1, 1, 2, 1),  # smaller than one tile
        (3, 5, 5, 4),
    ],
)
def test_values_and_gradients_equal_the_direct_convolution(m, shape):
    k1, k2, k3 = jax.random.split(jax.random.key(shape[1] * 10 + m), 3)
    x = np.asarray(jax.random.normal(k1, shape), np.float64)
    kernel = np.asarray(jax.random.normal(k2, (3, 3, shape[3], 5)), np.float64)
    weights = np.asarray(jax.random.normal(k3, (*shape[:3], 5)), np.float64)

    def loss(x, kernel, fn):
        return jnp.sum(jnp.sin(fn(x, kernel)) * weights)

    with jax.enable_x64():
        got = winograd.winograd_conv2d(x, kernel, m)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, _direct(x, kernel), rtol=1e-11, atol=1e-11)
        grads = jax.grad(loss, (0, 1))(x, kernel, lambda x, k: winograd.winograd_conv2d(x, k, m))
        want = jax.grad(loss, (0, 1))(x, kernel, _direct)
        for value, reference in zip(grads, want, strict=True):
            assert value.shape == reference.shape
            np.testing.assert_allclose(value, reference, rtol=1e-10, atol=1e-10)


def test_transforms_reject_other_kernels_and_tiles():
    with pytest.raises(ValueError, match="3x3 kernels"):
        winograd.winograd_conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((5, 5, 1, 1)), 2)
    with pytest.raises(ValueError, match="tile must be one of"):
        winograd.winograd_conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), 3)


def test_gradients_inside_scan_equal_the_direct_convolutions():
    # Micro-batches (lax.scan) and SAT (lax.cond) trace the step inside control flow.
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
    images = jax.random.normal(jax.random.key(1), (3, 2, 9, 9, 4))

    def accumulate(algorithm):
        def body(total, x):
            y = lambda k: jnp.sum(conv.conv2d(x, k, 1, 1, algorithm=algorithm) ** 2)
            return total + jax.grad(y)(kernel), None

        return jax.jit(lambda k: jax.lax.scan(body, jnp.zeros_like(k), images)[0])(kernel)

    np.testing.assert_allclose(accumulate("winograd"), accumulate("direct"), rtol=2e-5, atol=1e-4)


def _has_convolution(algorithm, shape, dtype=jnp.float32, size=3, stride=1):
    x = jnp.zeros(shape, dtype)
    kernel = jnp.zeros((size, size, shape[3], 8), dtype)
    fn = lambda x, k: conv.conv2d(x, k, stride, size // 2, algorithm=algorithm)
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(x, kernel))


def test_conv2d_takes_winograd_where_the_algorithm_says():
    assert not _has_convolution("winograd", (1, 6, 6, 3))
    assert _has_convolution("direct", (1, 32, 32, 128))
    # Only 3x3, stride 1 (padding 1) layers have a Winograd form.
    assert _has_convolution("winograd", (1, 32, 32, 128), stride=2)
    assert _has_convolution("winograd", (1, 32, 32, 128), size=1)
    assert _has_convolution("winograd", (1, 32, 32, 128), size=5)
    if jax.default_backend() == "cpu":
        # "auto": float32 layers of >= 128 channels and >= 144 tiles of 2 x 2 (24 x 24 maps).
        assert not _has_convolution("auto", (1, 24, 24, 128))
        assert _has_convolution("auto", (1, 22, 22, 128))  # 121 tiles
        assert _has_convolution("auto", (1, 32, 32, 64))
        assert _has_convolution("auto", (1, 32, 32, 128), jnp.bfloat16)
        # With the kernel's transform computed beforehand (inference), small maps pay too.
        assert winograd.tile((1, 13, 13, 512), jnp.float32) == 0
        assert winograd.tile((1, 13, 13, 512), jnp.float32, kernel_ready=True) == 2
        assert winograd.tile((1, 13, 13, 64), jnp.float32, kernel_ready=True) == 0
        # "auto_f4": F(4, 3) from 144 tiles of 4 x 4 (48 x 48 maps) where the kernel is
        # transformed in the step; prepared transforms (any input size) stay F(2, 3).
        geometry = ((3, 3), 1, 1, 1, "auto_f4")
        assert winograd.layer_tile((2, 48, 48, 128), jnp.float32, *geometry) == 4
        assert winograd.layer_tile((2, 44, 48, 128), jnp.float32, *geometry) == 2  # 132
        assert winograd.layer_tile((2, 52, 52, 128), jnp.float32, *geometry, True) == 2
        assert winograd.layer_tile((2, 52, 52, 64), jnp.float32, *geometry) == 0
        assert winograd.layer_tile((2, 52, 52, 128), jnp.float32, (3, 3), 1, 1, 1, "auto") == 2
    else:
        assert _has_convolution("auto", (1, 32, 32, 128))


def test_algorithm_setting_is_checked():
    with pytest.raises(ValueError, match="conv algorithm must be one of"):
        conv.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), 1, 1, algorithm="fft")
    with pytest.raises(ValueError, match="config.model.conv_algorithm"):
        factory.create_model(_config(conv_algorithm="fft"))


@pytest.mark.slow
def test_a_network_with_winograd_layers_equals_the_direct_one():
    # The tiny test widths are below "auto"'s threshold, so "winograd" forces every 3x3
    # stride-1 layer into Winograd's form: outputs and gradients agree to float32 rounding.
    # With BN's running statistics: BN's batch statistics over 2 images of 2 x 2 maps in the
    # deep layers amplify any rounding difference (scaling the direct network's parameters by
    # 1 + 1e-7 noise moved its gradients by up to 0.6% of their largest element).
    images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
    models = {a: factory.create_model(_config(conv_algorithm=a)) for a in ("direct", "winograd")}
    variables = models["direct"].init(jax.random.key(1), images)

    def loss(params, model):
        outputs = model.apply({**variables, "params": params}, images)
        return sum(jnp.mean(jnp.tanh(o)) for o in outputs), outputs

    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (grads_w, out_w), (grads_d, out_d) = (
        grad_fn(variables["params"], models[a]) for a in ("winograd", "direct")
    )
    pairs = zip(jax.tree.leaves((out_w, grads_w)), jax.tree.leaves((out_d, grads_d)), strict=True)
    for got, want in pairs:
        scale = float(jnp.abs(want).max()) + 1e-12
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-4)


@pytest.mark.slow
def test_prepared_kernel_transforms_give_the_same_detections():
    # prediction.prepare_variables stores U = G g G^T of the layers that take Winograd's form;
    # the network then reads them instead of transforming its kernels on every call.
    from yolov4_jax.evaluation import prediction
    from yolov4_jax.models import specs

    images = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3))
    model = factory.create_model(_config(conv_algorithm="winograd"))
    variables = model.init(jax.random.key(1), images)
    assert "winograd" not in variables  # init makes every collection mutable
    prepared = prediction.prepare_variables(model, variables)
    transforms = prepared["winograd"]
    same_3x3 = [
        i
        for i, s in enumerate(model.layers)
        if isinstance(s, specs.Conv) and (s.size, s.stride, s.groups) == (3, 1, 1)
    ]
    assert sorted(transforms) == sorted(f"layer{i:03d}" for i in same_3x3)
    for name, stored in transforms.items():
        kernel = variables["params"][name]["kernel"]
        np.testing.assert_allclose(stored["kernel"], winograd.filter_transform(kernel, 2))

    apply = jax.jit(lambda m, v: m.apply(v, images), static_argnums=0)
    for got, want in zip(apply(model, prepared), apply(model, variables), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A direct model ignores them (exactly its own outputs), and so does one whose layers
    # are all too thin for "auto", for which there is nothing to prepare.
    direct = model.clone(conv_algorithm="direct")
    for got, want in zip(apply(direct, prepared), apply(direct, variables), strict=True):
        np.testing.assert_array_equal(got, want)
    auto = model.clone(conv_algorithm="auto")
    assert prediction.prepare_variables(auto, variables) is variables
    with pytest.raises(ValueError, match="transformed 3x3 kernel"):
        winograd.conv2d_transformed(jnp.ones((1, 4, 4, 3)), jnp.ones((16, 2, 5)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason='"auto_f4" is direct off the CPU')
def test_auto_f4_layer_equals_the_direct_convolution_in_float32():
    # A 48 x 48 map with 128 channels takes F(4x4, 3x3) under "auto_f4": its output and both
    # gradients agree with the direct convolution's to float32 rounding (F(4, 3) rounds more
    # than F(2, 3): its transforms have larger coefficients).
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(k1, (1, 48, 48, 128))
    kernel = jax.random.normal(k2, (3, 3, 128, 16)) * (2 / (9 * 128)) ** 0.5
    weights = jax.random.normal(k3, (1, 48, 48, 16))

    def loss(x, kernel, algorithm):
        return jnp.sum(conv.conv2d(x, kernel, 1, 1, algorithm=algorithm) * weights)

    jaxpr = str(jax.make_jaxpr(functools.partial(loss, algorithm="auto_f4"))(x, kernel))
    assert "f32[36," in jaxpr and "conv_general_dilated" not in jaxpr  # 6 x 6 input tiles

    for got, want in zip(
        jax.grad(loss, (0, 1))(x, kernel, "auto_f4"),
        jax.grad(loss, (0, 1))(x, kernel, "direct"),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(want))))
    y, direct = (conv.conv2d(x, kernel, 1, 1, algorithm=a) for a in ("auto_f4", "direct"))
    np.testing.assert_allclose(y, direct, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(direct))))
