"""Flax building blocks with darknet's numerics: conv + BatchNorm + activation, pooling,
attention, weighted fusion and DropBlock."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from yolov4_jax.models import specs
from yolov4_jax.ops import winograd
from yolov4_jax.ops.conv import (  # noqa: F401 (re-exported)
    CONV_ALGORITHMS,
    CONV_GRADIENTS,
    after,
    conv2d,
)

# darknet normalize_cpu: (x - mean) / sqrt(var + .00001f)
BN_EPSILON = 1e-5
# darknet's softplus inside mish switches to x above 20 (activations.c::softplus_activate).
MISH_THRESHOLD = 20.0
# darknet's leaky ReLU slope for negative inputs (activations.h::leaky_activate).
LEAKY_SLOPE = 0.1


def mish(x: jax.Array) -> jax.Array:
    """Mish (Misra 2019), x * tanh(softplus(x)), with darknet's softplus threshold.

    With e = exp(x), tanh(log(1 + e)) = n / (n + 2) for n = e * (e + 2): one exponential
    instead of exp, log1p and tanh (about 2x faster on CPU, and fewer transcendental ops on
    any accelerator); equal to the textbook form within 3e-6 over [-30, 30]. Above darknet's
    threshold (20) softplus is x itself, where tanh rounds to 1 in float32: mish(x) = x.
    """
    e = jnp.exp(jnp.minimum(x, MISH_THRESHOLD))
    n = e * (e + 2.0)
    return jnp.where(x > MISH_THRESHOLD, x, x * n / (n + 2.0))


def mish_derivative(x: jax.Array) -> jax.Array:
    """d mish / dx, written out: with e = exp(x), n = e * (e + 2) and r = 1 / (n + 2),
    tanh(softplus(x)) = n * r and its derivative is 4 * e * (e + 1) * r^2, so
    mish'(x) = n * r + x * 4 * e * (e + 1) * r^2 (1 above the threshold). One division where
    autodiff of `mish` takes three: on XLA:CPU a [2, 208, 208, 64] map's gradient took 6.2
    against 19.7 ms."""
    e = jnp.exp(jnp.minimum(x, MISH_THRESHOLD))
    n = e * (e + 2.0)
    r = 1.0 / (n + 2.0)
    return jnp.where(x > MISH_THRESHOLD, 1.0, n * r + (4.0 * x * e * (e + 1.0) * r) * r)


def activation_vjp(x: jax.Array, grad: jax.Array, name: str) -> jax.Array:
    """The gradient at the activation's input x, given the gradient at its output: mish's
    and leaky's written out, the others by autodiff."""
    if name == "mish":
        return grad * mish_derivative(x)
    if name == "leaky":
        return jnp.where(x > 0, grad, LEAKY_SLOPE * grad)
    return jax.vjp(lambda y: activation(y, name), x)[1](grad)[0]


def activation(x: jax.Array, name: str) -> jax.Array:
    """darknet's activation by cfg name."""
    if name == "linear":
        return x
    if name == "leaky":
        return jnp.where(x > 0, x, LEAKY_SLOPE * x)
    if name == "mish":
        return mish(x)
    if name == "swish":
        return x * jax.nn.sigmoid(x)
    if name == "relu":
        return jax.nn.relu(x)
    if name == "logistic":
        return jax.nn.sigmoid(x)
    raise ValueError(f"unknown activation {name!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_activate(x: jax.Array, scale: jax.Array, bias: jax.Array, name: str):
    """Training-mode BatchNorm with the batch's own statistics, then activation ``name``.

    Returns ``(activation(bn(x)), mean, var)``; ``mean`` and ``var`` (float32, per channel)
    are for the running averages and carry no gradient. The backward pass is written out
    (the textbook BN gradient, the one cuDNN uses) and recomputes the normalised input and the
    activation from ``x``, so a layer keeps one tensor, its input, for the backward pass
    instead of the several that autodiff of BN + Mish keeps: less memory on every platform,
    and on XLA:CPU the step's BN work takes about half the time.
    """
    return _normalize_activate_fwd(x, scale, bias, name)[0]


def _normalize_activate_fwd(x, scale, bias, name):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    flat = x32.reshape(-1, x.shape[-1])
    mean = jnp.mean(flat, axis=0)
    var = jnp.mean(jnp.square(flat - mean), axis=0)
    inv = jax.lax.rsqrt(var + BN_EPSILON)
    y = activation((x32 - mean) * (inv * scale) + bias, name).astype(x.dtype)
    return (y, mean, var), (x, mean, inv, scale, bias)


def _affine_activation_grads(name, x, mean, inv, scale, bias, grad_out):
    """Recomputes ``n = (x - mean) * inv`` and returns, flattened to [M, C], the gradient g at
    the activation's input, n, and the gradients of bias (sum g) and scale (sum g * n)."""
    x32 = after(x.astype(jnp.promote_types(x.dtype, jnp.float32)), grad_out)
    normalized = (x32 - mean) * inv
    grad_y = activation_vjp(normalized * scale + bias, grad_out.astype(x32.dtype), name)
    g = grad_y.reshape(-1, x.shape[-1])
    n = normalized.reshape(g.shape)
    return g, n, jnp.sum(g, axis=0), jnp.sum(g * n, axis=0)


def _normalize_activate_bwd(name, residuals, cotangents):
    x, mean, inv, scale, bias = residuals
    # cotangents[1:] (mean, var) are statistics: dropped.
    g, n, grad_bias, grad_scale = _affine_activation_grads(name, *residuals, cotangents[0])
    size = g.shape[0]
    grad_x = (scale * inv) * (g - grad_bias / size - n * (grad_scale / size))
    return grad_x.reshape(x.shape).astype(x.dtype), grad_scale, grad_bias


normalize_activate.defvjp(_normalize_activate_fwd, _normalize_activate_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def normalize_activate_cmbn(x, scale, bias, acc_mean, acc_sq, count, name: str):
    """`normalize_activate` with CmBN's statistics (paper section 3.3; darknet's
    fast_v_cbn_kernel): micro-batch k = count + 1 normalises with mean and E[x^2] averaged over
    itself and the update's earlier micro-batches, ``(count * acc + own) / k``, and
    var = E[x^2] - mean^2 (at least 0), as darknet. The earlier micro-batches' ``acc_mean``,
    ``acc_sq`` and ``count`` enter as constants (no gradient: theirs was taken in their own
    pass). Returns ``(activation(y), mean, mean_sq, var)``; the statistics carry no gradient.
    """
    return _cmbn_fwd(x, scale, bias, acc_mean, acc_sq, count, name)[0]


def _cmbn_fwd(x, scale, bias, acc_mean, acc_sq, count, name):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    flat = x32.reshape(-1, x.shape[-1])
    k = count + 1.0
    mean = (acc_mean * count + jnp.mean(flat, axis=0)) / k
    mean_sq = (acc_sq * count + jnp.mean(jnp.square(flat), axis=0)) / k
    var_raw = mean_sq - jnp.square(mean)
    var = jnp.maximum(var_raw, 0.0)
    inv = jax.lax.rsqrt(var + BN_EPSILON)
    y = activation((x32 - mean) * (inv * scale) + bias, name).astype(x.dtype)
    residuals = (x, mean, inv, scale, bias, k, var_raw > 0, acc_mean, acc_sq, count)
    return (y, mean, mean_sq, var), residuals


def _cmbn_bwd(name, residuals, cotangents):
    x, mean, inv, scale, bias, k, positive, acc_mean, acc_sq, count = residuals
    g, _, grad_bias, grad_scale = _affine_activation_grads(
        name, x, mean, inv, scale, bias, cotangents[0]
    )
    x32 = x.astype(g.dtype).reshape(g.shape)
    # Through the statistics: var = mean_sq - mean^2 (clamped), both averages over k parts,
    # of which this micro-batch's own mean(x) and mean(x^2) depend on x.
    grad_var = jnp.where(positive, -0.5 * scale * grad_scale * jnp.square(inv), 0.0)
    grad_mean = -scale * inv * grad_bias - 2.0 * mean * grad_var
    size = g.shape[0]
    grad_x = (scale * inv) * g + (grad_mean + 2.0 * grad_var * x32) / (k * size)
    zeros = (jnp.zeros_like(acc_mean), jnp.zeros_like(acc_sq), jnp.zeros_like(count))
    return (grad_x.reshape(x.shape).astype(x.dtype), grad_scale, grad_bias, *zeros)


normalize_activate_cmbn.defvjp(_cmbn_fwd, _cmbn_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over [N, H, W] with darknet's epsilon placement.

    `momentum` is the weight of the old running value (Flax's convention): darknet's
    rolling update `.99 * old + .01 * batch` is momentum 0.99 here. Under `jax.jit` with a
    batch sharded over a `data` mesh axis the batch statistics are global, i.e. synchronised
    BatchNorm across devices comes for free. When the `cmbn` collection is passed and
    mutable, training-mode statistics are CmBN's (see `normalize_activate_cmbn`). `activation`
    (a darknet name) is applied to the output; with the batch's own statistics the two run as
    one `normalize_activate`.
    """

    momentum: float = 0.99
    activation: str = "linear"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool,
        stats: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """``stats`` (mean, var) replaces the batch statistics in training (CBN)."""
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        # At least float32 (bfloat16 inputs), float64 when the model runs in float64.
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        elif stats is not None:
            mean, var = stats
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        elif self.is_mutable_collection("cmbn") and not self.is_initializing():
            # The `cmbn` collection: per layer, the averages of mean and E[x^2] over the
            # update's micro-batches so far and their count; the train step zeroes it at the
            # start of every update.
            acc_mean = self.variable("cmbn", "mean", jnp.zeros, (features,), jnp.float32)
            acc_sq = self.variable("cmbn", "mean_sq", jnp.zeros, (features,), jnp.float32)
            count = self.variable("cmbn", "count", jnp.zeros, (), jnp.float32)
            y, mean, mean_sq, var = normalize_activate_cmbn(
                x, scale, bias, acc_mean.value, acc_sq.value, count.value, self.activation
            )
            mean, mean_sq, var = (jax.lax.stop_gradient(v) for v in (mean, mean_sq, var))
            acc_mean.value, acc_sq.value, count.value = mean, mean_sq, count.value + 1.0
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
            return y
        else:
            y, mean, var = normalize_activate(x, scale, bias, self.activation)
            if not self.is_initializing():
                mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
            return y
        y = (x32 - mean) * jax.lax.rsqrt(var + BN_EPSILON) * scale + bias
        return activation(y, self.activation).astype(x.dtype)


class ConvBN(nn.Module):
    """darknet [convolutional]: symmetric explicit padding (not XLA's SAME), then BN or bias."""

    spec: specs.Conv
    bn_momentum: float = 0.99
    dtype: Any = jnp.float32
    conv_gradients: str = "auto"  # see `conv2d`
    conv_algorithm: str = "auto"  # see `conv2d`

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        s = self.spec
        in_features = x.shape[-1]
        if in_features % s.groups:
            raise ValueError(f"conv groups={s.groups} does not divide {in_features} channels")
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
            (s.size, s.size, in_features // s.groups, s.filters),
            jnp.float32,
        )
        # darknet pads size//2 on every side, also at stride 2, where SAME would pad (0, 1).
        p = s.padding

        def conv(inputs, weights):
            return conv2d(
                inputs.astype(self.dtype),
                weights.astype(self.dtype),
                s.stride,
                p,
                s.groups,
                self.conv_gradients,
                self.conv_algorithm,
            )

        y = self._winograd_prepared(x, kernel)
        if y is None:
            y = conv(x, kernel)
        if s.batch_normalize:
            stats = None
            if (
                not use_running_average
                and not self.is_initializing()
                and self.has_variable("cbn", "mean")
            ):
                stats = self._cbn_statistics(conv, x, kernel, y)
            bn = BatchNorm(self.bn_momentum, s.activation, name="bn")
            return bn(y, use_running_average, stats)
        bias = self.param("bias", nn.initializers.zeros, (s.filters,), jnp.float32)
        # Bias and activation in at least float32 (as BN's), stored in the compute dtype.
        y32 = y.astype(jnp.promote_types(y.dtype, jnp.float32))
        return activation(y32 + bias, s.activation).astype(y.dtype)

    def _winograd_prepared(self, x, kernel) -> jax.Array | None:
        """The convolution through the kernel's Winograd transform, when the variables carry
        it (collection "winograd", `prediction.prepare_variables`) and the layer takes
        Winograd's algorithm (`winograd.tile`); with that collection mutable, the transform is
        stored for such layers. Inference only: no gradient reaches the kernel through a
        stored transform."""
        s = self.spec
        geometry = ((s.size, s.size), s.stride, s.padding, s.groups, self.conv_algorithm)
        if not winograd.layer_tile(x.shape, self.dtype, *geometry, kernel_ready=True):
            return None
        if self.has_variable("winograd", "kernel"):
            transformed = self.get_variable("winograd", "kernel").astype(self.dtype)
            return winograd.conv2d_transformed(x.astype(self.dtype), transformed)
        if self.is_mutable_collection("winograd") and not self.is_initializing():
            self.put_variable("winograd", "kernel", winograd.filter_transform(kernel, 2))
        return None

    def _cbn_statistics(self, conv, x, kernel, y) -> tuple[jax.Array, jax.Array]:
        """Cross-Iteration BN statistics (Yao et al. 2021; YOLOv4 paper Fig. 4).

        The ``cbn`` collection keeps, newest first, the mean and E[y^2] of this layer's
        output from the last ``n`` iterations (``count`` of them filled) and, when it also
        holds ``kernel``/``grad_mean``/``grad_sq``, the kernel and the gradients of those
        statistics with respect to it, for the paper's first-order compensation of the weight
        change: mu_old(W) ~ mu_old + <d mu_old / dW, W - W_old>. The statistics used are
        the average over the current batch and the stored iterations (E[y^2] at least
        mean^2 per iteration, as the paper); gradients flow through the current batch only.
        """
        y32 = y.astype(jnp.float32)
        size = y.shape[0] * y.shape[1] * y.shape[2]
        mean = jnp.mean(y32, axis=(0, 1, 2))
        mean_sq = jnp.mean(jnp.square(y32), axis=(0, 1, 2))
        old_mean = self.get_variable("cbn", "mean")  # [n, C]
        old_sq = self.get_variable("cbn", "mean_sq")
        count = self.get_variable("cbn", "count")
        n = old_mean.shape[0]
        compensate = self.has_variable("cbn", "kernel")
        comp_mean, comp_sq = old_mean, old_sq
        if compensate:
            old_kernel = self.get_variable("cbn", "kernel")  # [n, *W]
            change = jax.lax.stop_gradient(kernel)[None] - old_kernel
            axes = tuple(range(1, kernel.ndim))  # sum over kh, kw, cin per output channel
            comp_mean = old_mean + jnp.sum(self.get_variable("cbn", "grad_mean") * change, axes)
            comp_sq = old_sq + jnp.sum(self.get_variable("cbn", "grad_sq") * change, axes)
            comp_sq = jnp.maximum(comp_sq, jnp.square(comp_mean))
        valid = (jnp.arange(n) < count).astype(jnp.float32)[:, None]
        total = 1.0 + count.astype(jnp.float32)
        avg_mean = (mean + jnp.sum(valid * comp_mean, 0)) / total
        avg_sq = (mean_sq + jnp.sum(valid * comp_sq, 0)) / total
        var = jnp.maximum(avg_sq - jnp.square(avg_mean), 0.0)

        if not self.is_mutable_collection("cbn") or n == 0:
            return avg_mean, var

        def push(buffer, value):
            return jnp.concatenate([jax.lax.stop_gradient(value)[None], buffer[:-1]], axis=0)

        self.put_variable("cbn", "mean", push(old_mean, mean))
        self.put_variable("cbn", "mean_sq", push(old_sq, mean_sq))
        self.put_variable("cbn", "count", jnp.minimum(count + 1, n))
        if compensate:
            w = jax.lax.stop_gradient(kernel)
            _, vjp = jax.vjp(lambda k: conv(jax.lax.stop_gradient(x), k), w)
            (grad_mean,) = vjp(jnp.full(y.shape, 1.0 / size, y.dtype))
            (grad_sq,) = vjp((2.0 / size) * jax.lax.stop_gradient(y))
            self.put_variable("cbn", "kernel", push(old_kernel, w))
            self.put_variable(
                "cbn", "grad_mean", push(self.get_variable("cbn", "grad_mean"), grad_mean)
            )
            self.put_variable("cbn", "grad_sq", push(self.get_variable("cbn", "grad_sq"), grad_sq))
        return avg_mean, var


def max_pool(x: jax.Array, spec: specs.MaxPool) -> jax.Array:
    """darknet [maxpool]: padding//2 before, the rest after; padded cells never win.

    Computed as two one-dimensional windows, which equals the square window exactly and
    does k + k comparisons per output instead of k * k: SPP's 13x13 pool runs ~20x faster
    forward and ~6x faster with its gradient on XLA:CPU. Columns are reduced first, so among
    equal values the gradient goes to the first in row-major order, as darknet's argmax.
    """
    before = spec.padding // 2
    after = spec.padding - before
    for axis in (2, 1):
        x = _max_pool_1d(x, axis, spec.size, spec.stride, before, after)
    return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _max_pool_1d(x, axis, size, stride, before, after):
    """A max over windows of ``size`` along ``axis`` (-inf padding), with its own backward
    pass: each output's gradient goes to the first cell of its window that equals the
    maximum, found by ``size`` shifted comparisons and placed by strided padding. Autodiff of
    `jax.lax.reduce_window` finds the argmax with a reduction that carries an index array
    per dimension of the input (each as large as the input, built every step) and scatters
    the gradient: the demo's 2x2 pools took 110 ms of CPU per step that way."""
    window, strides, pads = [1] * x.ndim, [1] * x.ndim, [(0, 0)] * x.ndim
    window[axis], strides[axis], pads[axis] = size, stride, (before, after)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)


def _max_pool_1d_fwd(x, axis, size, stride, before, after):
    y = _max_pool_1d(x, axis, size, stride, before, after)
    return y, (x, y)


def _max_pool_1d_bwd(axis, size, stride, before, after, residuals, grad):
    x, y = residuals
    out, length = y.shape[axis], x.shape[axis] + before + after
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    padded = jnp.pad(x, widths, constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    total = None
    for j in range(size):
        # Window cell j of every output: padded positions j, j + stride, ...
        cells = jax.lax.slice_in_dim(padded, j, j + stride * (out - 1) + 1, stride, axis)
        first = (cells == y) & ~taken
        taken = taken | first
        part = jnp.where(first, grad, jnp.zeros((), grad.dtype))
        spread = [(0, 0, 0)] * x.ndim
        spread[axis] = (j, length - j - stride * (out - 1) - 1, stride - 1)
        part = jax.lax.pad(part, jnp.zeros((), grad.dtype), spread)
        total = part if total is None else total + part
    return (jax.lax.slice_in_dim(total, before, before + x.shape[axis], axis=axis),)


_max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)


def upsample(x: jax.Array, stride: int) -> jax.Array:
    """Nearest-neighbour upsampling by an integer factor."""
    return jnp.repeat(jnp.repeat(x, stride, axis=1), stride, axis=2)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention (Woo et al. 2018): the paper's baseline for its modified SAM."""

    size: int = 7
    dtype: Any = jnp.float32
    conv_gradients: str = "auto"
    conv_algorithm: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.concatenate(
            [jnp.mean(x, axis=-1, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], axis=-1
        )
        spec = specs.Conv(1, self.size, 1, self.size // 2, activation="logistic")
        attention = ConvBN(
            spec,
            dtype=self.dtype,
            conv_gradients=self.conv_gradients,
            conv_algorithm=self.conv_algorithm,
            name="conv",
        )(pooled, True)
        return x * attention


class ChannelAttention(nn.Module):
    """CBAM's channel attention (Woo et al. 2018, eq. 2): the first half of CBAM."""

    reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        hidden = max(1, channels // self.reduction)
        x32 = x.astype(jnp.float32)
        pooled = jnp.stack([jnp.mean(x32, axis=(1, 2)), jnp.max(x32, axis=(1, 2))])  # [2, N, C]
        mlp_in = nn.Dense(hidden, name="fc1")
        mlp_out = nn.Dense(channels, name="fc2")
        scores = mlp_out(jax.nn.relu(mlp_in(pooled)))  # the shared MLP on both pooled vectors
        attention = jax.nn.sigmoid(scores[0] + scores[1])[:, None, None, :]  # [N, 1, 1, C]
        return (x32 * attention).astype(x.dtype)


class WeightedFusion(nn.Module):
    """darknet [shortcut] with weights: sum_i w_i * x_i (MiWRC / BiFPN fast fusion).

    With `normalization="relu"`, w_i = relu(v_i) / (sum_j relu(v_j) + 1e-4), as in
    blas.c::shortcut_multilayer_cpu; with "softmax", a softmax over the inputs.
    """

    weights_type: str = "per_feature"
    normalization: str = "relu"

    @nn.compact
    def __call__(self, inputs: list[jax.Array]) -> jax.Array:
        n = len(inputs)
        shape = (n,) if self.weights_type == "per_feature" else (n, inputs[0].shape[-1])
        w = self.param("weights", nn.initializers.ones, shape, jnp.float32)
        if self.normalization == "relu":
            w = jax.nn.relu(w)
            w = w / (jnp.sum(w, axis=0, keepdims=True) + 1e-4)
        elif self.normalization == "softmax":
            w = jax.nn.softmax(w, axis=0)
        elif self.normalization != "none":
            raise ValueError(f"unknown weights_normalization {self.normalization!r}")
        return sum(w[i].astype(x.dtype) * x for i, x in enumerate(inputs))


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zero square blocks, rescale by the kept fraction.

    `probability` is the fraction of features to drop and `block_size` the block side at the
    end of the ramp; `rate_scale` (a traced scalar in [0, 1]) ramps both up as darknet does
    (dropout_layer: probability and block size grow linearly over the first 85% of training):
    the current side is ``max(1, round(block_size * rate_scale))``. Shapes stay static: the
    block is grown from its seed by static shifts up to the full size, each switched on or off
    by the traced side, so the ramp never recompiles.
    """

    probability: float = 0.1
    block_size: int = 7

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, rate_scale: jax.Array | float = 1.0):
        if not train or self.probability <= 0:
            return x
        n, h, w, c = x.shape
        full = min(self.block_size, h, w)
        scale = jnp.clip(jnp.asarray(rate_scale, jnp.float32), 0.0, 1.0)
        block = jnp.clip(jnp.round(full * scale), 1, full).astype(jnp.int32)
        blk = block.astype(jnp.float32)
        drop = self.probability * scale
        # Seed rate so that the expected dropped fraction equals `drop` (Ghiasi et al. eq. 1).
        gamma = drop / (blk * blk) * (h * w) / ((h - blk + 1) * (w - blk + 1))
        before = block // 2  # a seed at s covers s - before .. s + after
        after = block - 1 - before
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        valid = (rows >= before) & (rows < h - after) & (cols >= before) & (cols < w - after)
        rng = self.make_rng("dropblock")
        seeds = jax.random.bernoulli(rng, jnp.clip(gamma, 0.0, 1.0), (n, h, w, c))
        seeds = jnp.logical_and(seeds, valid[None, :, :, None])
        mask = _grow(_grow(seeds, 1, before, after, full), 2, before, after, full)
        keep = 1.0 - mask.astype(x.dtype)
        kept = jnp.maximum(jnp.sum(keep), 1.0)
        return x * keep * (keep.size / kept).astype(x.dtype)


def _grow(seeds: jax.Array, axis: int, before, after, full: int) -> jax.Array:
    """OR of ``seeds`` shifted by d along ``axis`` for every d in [-before, after]
    (traced bounds, static shifts |d| < full, zero fill)."""
    out = seeds
    size = seeds.shape[axis]
    for d in range(-(full - 1), full):
        if d == 0 or abs(d) >= size:
            continue
        on = jnp.logical_and(d >= -before, d <= after)
        pad = [(0, 0)] * seeds.ndim
        if d > 0:  # out[i] |= seeds[i - d]
            pad[axis] = (d, 0)
            shifted = jnp.pad(jax.lax.slice_in_dim(seeds, 0, size - d, axis=axis), pad)
        else:
            pad[axis] = (0, -d)
            shifted = jnp.pad(jax.lax.slice_in_dim(seeds, -d, size, axis=axis), pad)
        out = jnp.logical_or(out, jnp.logical_and(on, shifted))
    return out
