"""The layers' numerics: Mish, the fused BatchNorm + activation (plain and CmBN) with their
written-out backward passes, the separable max-pool, and the canonical convolution gradients
(ops/conv.py), each against its textbook form or autodiff (float64 where rounding matters)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax.models import layers, specs
from yolov4_jax.ops import conv


def test_mish_matches_the_textbook_form_and_darknets_threshold():

    x = jnp.linspace(-40.0, 40.0, 200001)
    softplus = jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))
    np.testing.assert_allclose(layers.mish(x), x * jnp.tanh(softplus), rtol=1e-6, atol=5e-6)
    grad = jax.vmap(jax.grad(layers.mish))(x)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(grad[x > 21.0], 1.0)  # the identity above the threshold


@pytest.mark.parametrize("name", ["mish", "leaky", "linear", "logistic", "swish", "relu"])
def test_activation_vjp_equals_autodiff(name):
    # Mish's and leaky's derivatives are written out; float64 autodiff is the reference,
    # over both sides of zero and of darknet's softplus threshold (20).
    with jax.enable_x64():
        x = jnp.concatenate([jnp.linspace(-40.0, 40.0, 80001), jnp.asarray([0.0, 20.0])])
        grad = jnp.cos(x) + 2.0
        want = jax.vjp(lambda y: layers.activation(y, name), x)[1](grad)[0]
        np.testing.assert_allclose(
            layers.activation_vjp(x, grad, name), want, rtol=1e-12, atol=1e-12
        )
    x32 = x.astype(jnp.float32)
    got = layers.activation_vjp(x32, grad.astype(jnp.float32), name)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", ["mish", "leaky", "linear", "logistic", "swish", "relu"])
def test_normalize_activate_matches_autodiff_of_the_textbook_form(name):
    # The fused BN + activation has a hand-written backward; autodiff of the plain formula
    # in float64 is the reference for the output, the statistics and all three gradients.

    def textbook(x, scale, bias):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        y = (x - mean) / jnp.sqrt(var + layers.BN_EPSILON) * scale + bias
        return layers.activation(y, name), mean, var

    k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(k1, (2, 5, 4, 6)) * 3 + 1
    scale = jax.random.uniform(k2, (6,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(k3, (6,))
    weights = jax.random.normal(k4, (2, 5, 4, 6))
    with jax.enable_x64():
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias)]
        expected = [np.asarray(v) for v in textbook(*args64)]
        grads64 = jax.grad(lambda *a: jnp.sum(textbook(*a)[0] * weights), (0, 1, 2))(*args64)
        grads64 = [np.asarray(g) for g in grads64]
    got = layers.normalize_activate(x, scale, bias, name)
    for value, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=2e-5, atol=2e-5)
    grads = jax.grad(
        lambda *a: jnp.sum(layers.normalize_activate(*a, name)[0] * weights), (0, 1, 2)
    )(x, scale, bias)
    for value, reference in zip(grads, grads64, strict=True):
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4)
    # bfloat16 inputs: statistics and arithmetic in float32, output and input gradient bf16.
    out16 = layers.normalize_activate(x.astype(jnp.bfloat16), scale, bias, name)[0]
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.astype(jnp.float32), expected[0], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name,count", [("mish", 2.0), ("leaky", 0.0)])
def test_normalize_activate_cmbn_matches_autodiff_of_the_textbook_form(name, count):
    # CmBN: micro-batch count + 1 averages its statistics with the update's earlier ones
    # (constants). Reference: autodiff of the formula in float64.

    def textbook(x, scale, bias, acc_mean, acc_sq):
        k = count + 1.0
        mean = (acc_mean * count + jnp.mean(x, axis=(0, 1, 2))) / k
        mean_sq = (acc_sq * count + jnp.mean(jnp.square(x), axis=(0, 1, 2))) / k
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        y = (x - mean) / jnp.sqrt(var + layers.BN_EPSILON) * scale + bias
        return layers.activation(y, name), mean, mean_sq, var

    keys = jax.random.split(jax.random.key(5), 5)
    x = jax.random.normal(keys[0], (2, 4, 3, 5)) * 2 + 0.5
    scale = jax.random.uniform(keys[1], (5,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(keys[2], (5,))
    acc_mean = jax.random.normal(keys[3], (5,))
    acc_sq = jnp.square(acc_mean) + jax.random.uniform(keys[4], (5,), minval=0.5, maxval=3.0)
    weights = jax.random.normal(jax.random.key(9), x.shape)
    with jax.enable_x64():
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias, acc_mean, acc_sq)]
        expected = [np.asarray(v) for v in textbook(*args64)]
        grads64 = jax.grad(lambda *a: jnp.sum(textbook(*a)[0] * weights), (0, 1, 2))(*args64)
    fused = functools.partial(layers.normalize_activate_cmbn, name=name)
    got = fused(x, scale, bias, acc_mean, acc_sq, jnp.float32(count))
    for value, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=2e-5, atol=2e-5)
    grads = jax.grad(
        lambda *a: jnp.sum(fused(*a, acc_mean, acc_sq, jnp.float32(count))[0] * weights),
        (0, 1, 2),
    )(x, scale, bias)
    for value, reference in zip(grads, grads64, strict=True):
        np.testing.assert_allclose(value, np.asarray(reference), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size,stride,padding",
    [(5, 1, 4), (9, 1, 8), (13, 1, 12), (2, 2, 0), (2, 1, 1), (3, 2, 1), (2, 2, 1)],
)
def test_separable_max_pool_equals_the_square_window(size, stride, padding):
    # max_pool runs rows then columns; the square window is the definition (darknet's loop).

    spec = specs.MaxPool(size, stride, padding)
    before = padding // 2
    pads = ((0, 0), (before, padding - before), (before, padding - before), (0, 0))

    def square(x):
        window, strides = (1, size, size, 1), (1, stride, stride, 1)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)

    x = jax.random.normal(jax.random.key(size * 10 + stride), (2, 13, 11, 5))
    np.testing.assert_array_equal(layers.max_pool(x, spec), square(x))
    # No ties in random data: the gradient reaches the same argmax cells.
    weights = jax.random.normal(jax.random.key(1), square(x).shape)
    grad = jax.grad(lambda x, pool: jnp.sum(pool(x) * weights), argnums=0)
    np.testing.assert_allclose(
        # Overlapping windows sum several weights into one cell, in an order that depends on
        # how XLA compiles each form: equal to float32 rounding of those sums.
        grad(x, lambda x: layers.max_pool(x, spec)),
        grad(x, square),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("size,stride,padding", [(2, 2, 0), (2, 1, 1), (3, 2, 1), (5, 1, 4)])
def test_max_pool_gradient_goes_to_darknets_argmax_among_ties(size, stride, padding):
    # Few distinct values: most windows hold ties. darknet's maxpool keeps the first cell
    # (rows, then columns) that is strictly greater than all before it.
    x = np.asarray(jax.random.randint(jax.random.key(size + stride), (2, 7, 6, 3), 0, 3))
    x = x.astype(np.float32)
    spec = specs.MaxPool(size, stride, padding)
    y = np.asarray(layers.max_pool(jnp.asarray(x), spec))
    weights = np.asarray(jax.random.normal(jax.random.key(5), y.shape))
    got = jax.grad(lambda x: jnp.sum(layers.max_pool(x, spec) * weights))(jnp.asarray(x))
    want = np.zeros_like(x)
    before = padding // 2
    for n, i, j, c in np.ndindex(*y.shape):
        best, where = -np.inf, None
        for u in range(size):
            for v in range(size):
                r, q = i * stride + u - before, j * stride + v - before
                if 0 <= r < x.shape[1] and 0 <= q < x.shape[2] and x[n, r, q, c] > best:
                    best, where = x[n, r, q, c], (n, r, q, c)
        assert best == y[n, i, j, c]
        want[where] += weights[n, i, j, c]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "height,width,size,stride,padding,batch",
    [
        (8, 9, 3, 1, 1, 2),
        (8, 9, 3, 2, 1, 2),
        (9, 8, 3, 2, 1, 2),
        (8, 8, 1, 1, 0, 2),
        (128, 64, 1, 1, 0, 2),  # 16384 positions: the 1x1 filter gradient in two chunks
        (7, 8, 1, 2, 0, 2),
        (13, 12, 5, 1, 2, 2),
        (11, 10, 3, 2, 0, 2),
        (6, 6, 7, 1, 3, 2),
        (13, 13, 3, 2, 1, 2),  # odd sizes: the input-gradient phases differ in length
        (10, 11, 5, 2, 2, 2),
        (12, 10, 3, 3, 1, 2),
        (9, 9, 1, 3, 0, 2),  # phases no tap reaches get zero gradient
        # Maps smaller than the kernel: the input gradient flips the maps, not the kernel.
        (2, 2, 3, 1, 1, 2),
        (3, 3, 3, 2, 1, 2),
        # From a batch of 8 the filter gradient is one dilated convolution.
        (8, 9, 3, 1, 1, 8),
        (13, 13, 3, 2, 1, 8),
        (12, 10, 3, 3, 1, 8),
        (7, 8, 1, 2, 0, 8),
    ],
)
def test_canonical_conv_gradients_equal_autodiff(height, width, size, stride, padding, batch):
    # Both forms in float64: the same sums in another arrangement, equal to rounding.

    k1, k2, k3 = jax.random.split(jax.random.key(size * 10 + stride), 3)
    x = np.asarray(jax.random.normal(k1, (batch, height, width, 3)), np.float64)
    kernel = np.asarray(jax.random.normal(k2, (size, size, 3, 4)), np.float64)
    out = conv.conv2d(jnp.asarray(x), jnp.asarray(kernel), stride, padding, gradients="xla")
    weights = np.asarray(jax.random.normal(k3, out.shape), np.float64)

    def loss(x, kernel, gradients):
        y = conv.conv2d(x, kernel, stride, padding, gradients=gradients)
        return jnp.sum(jnp.sin(y) * weights)

    with jax.enable_x64():
        got = jax.grad(loss, (0, 1))(x, kernel, "canonical")
        want = jax.grad(loss, (0, 1))(x, kernel, "xla")
        assert got[0].dtype == got[1].dtype == jnp.float64
        for value, reference in zip(got, want, strict=True):
            np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "size,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (3, 3, 1), (7, 1, 3), (3, 2, 0)]
)
def test_input_gradient_flipping_the_maps_equals_flipping_the_kernel(size, stride, padding):
    k1, k2 = jax.random.split(jax.random.key(size + 10 * stride + 100 * padding))
    height, width = 11, 10
    out = [(s + 2 * padding - size) // stride + 1 for s in (height, width)]
    with jax.enable_x64():
        grad = jax.random.normal(k1, (2, *out, 4), jnp.float64)
        kernel = jax.random.normal(k2, (size, size, 3, 4), jnp.float64)
        by_kernel, by_maps = (
            conv.input_gradient(grad, kernel, stride, padding, (height, width), flip_maps=f)
            for f in (False, True)
        )
        np.testing.assert_allclose(by_maps, by_kernel, rtol=1e-12, atol=1e-12)


def test_canonical_conv_gradients_inside_scan_equal_autodiffs():
    # The two forms of model.conv_gradients inside a scan body (where XLA:CPU keeps autodiff's
    # form; `experiments/benchmark_conv_gradients.py --xla_checks` prints its dimension labels).
    def step(kernel, images, gradients):
        def body(total, x):
            loss = lambda k: jnp.sum(conv.conv2d(x, k, 2, 1, gradients=gradients) ** 2)
            return total + jax.grad(loss)(kernel), None

        return jax.lax.scan(body, jnp.zeros_like(kernel), images)[0]

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    images = jax.random.normal(jax.random.key(1), (2, 1, 8, 8, 4))
    np.testing.assert_allclose(
        jax.jit(step, static_argnums=2)(kernel, images, "canonical"),
        jax.jit(step, static_argnums=2)(kernel, images, "xla"),
        rtol=1e-5,
        atol=1e-4,
    )


def test_after_keeps_the_value_and_its_gradient():
    # `after` is the identity on values (NaN only from a non-finite gradient element) and on
    # gradients; what it saves in XLA temp memory is benchmark output
    # (`experiments/benchmark_conv_gradients.py --xla_checks`), not a test.
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(conv.after(x, jnp.ones(4)), x)
    assert bool(jnp.all(jnp.isnan(conv.after(x, jnp.array([jnp.nan, 1.0])))))
    grad = jax.grad(lambda v: jnp.sum(conv.after(v, jnp.ones(3)) ** 2))(x)
    np.testing.assert_array_equal(grad, 2 * x)
