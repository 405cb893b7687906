"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3 x 3).

Each m x m block of outputs comes from a (m + 2) x (m + 2) tile of the input: the tiles are
transformed (B^T d B), the kernel is transformed (G g G^T), the two are multiplied channel-wise
as one batched matrix product per tile position, and the products are transformed back
(A^T M A). F(2, 3) needs 16 products where the direct convolution needs 36 per 2 x 2 block
(2.25x fewer multiplications), F(4, 3) 36 where it needs 144 (4x). Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016; the matrices are theirs.

`winograd_conv2d` has its own backward pass: the output gradient goes through the transpose of
the output transform once, and from there the input gradient is the product with the
transformed kernel's transpose followed by the transpose of the input transform (an overlap-add
of the tiles), and the filter gradient is the product with the transformed input, followed by
the transpose of the kernel transform. The transformed input is recomputed in the backward pass
instead of being kept.

The output leaves the forward pass through `optimization_barrier`. Without it XLA fuses the
output transform (a transpose from tile order into NHWC) into the consumers, and BatchNorm's
batch statistics then read it in tile order: YOLOv4's training-mode forward pass at 416,
batch 2, took 844 ms with Winograd's layers against 749 ms without them, and 668 ms with the
barrier.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax.ops import backend
from yolov4_jax.ops.conv_gradients import after

TILES = (2, 4)

_MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3) as float64 arrays."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile must be one of {TILES}, got {m}")
    return tuple(np.asarray(a, np.float64) for a in _MATRICES[m])


def tile(
    x_shape, dtype, auto: bool = True, kernel_ready: bool = False, large_tiles: bool = False
) -> int:
    """The output tile side m of F(m x m, 3 x 3) for a 3x3 stride-1 convolution of an
    [N, H, W, C] input (2, or 4 with ``large_tiles``), or 0 for the direct convolution.

    With ``auto`` (`conv2d`'s "auto"): 2 only on the CPU backend, in float32, for layers with
    at least 128 input channels and, unless the kernel's transform is ready
    (``kernel_ready``: computed beforehand for inference, `prediction.prepare_variables`), at
    least 144 tiles of 2 x 2 per image (maps of 24 x 24 and up); else 0. On XLA:CPU the
    batched products run at 100-190 GFLOP/s against the direct convolution's 160-210, so the
    2.25x fewer multiplications pay where the products are large; on the 13 x 13 maps of
    YOLOv4 at 416 the kernel's transform costs about what the products save. YOLOv4 at 416
    with the 26 x 26 and 52 x 52 layers in Winograd's form: inference 9-12% and the training
    step 11% faster, while adding the 64-channel layers, or F(4, 3) on the 52 x 52 ones,
    gained nothing or lost (docs/benchmarks.md, "Winograd convolutions").

    ``large_tiles`` (`conv2d`'s "auto_f4", with ``auto``): 4 instead of 2 where the kernel is
    transformed here (not ``kernel_ready``: prepared transforms are F(2, 3)'s, computed once
    for any input size) and the map has at least 144 tiles of 4 x 4 (48 x 48 and up). Later
    measurements, with the step's other costs smaller, found YOLOv4's training step at 416
    with its 52 x 52 layers in F(4, 3) 0.94-0.97x the time of F(2, 3)'s in three comparisons
    and 0.99-1.04x in two (the machine's noise), while the step compiled in 31-33 s instead of
    24-26 (F(4, 3)'s transforms are larger programs) and peaked at 2.51-2.52 GB instead of
    2.37-2.40, past the performance issue's goals, so "auto" keeps F(2, 3). F(4, 3) also
    rounds more: a 52 x 52 x 256 -> 128 layer's float32 output within 1.2e-5 of its largest
    value, against 6.9e-7 for F(2, 3) and 4.0e-7 direct."""
    height, width, channels = x_shape[1], x_shape[2], x_shape[3]
    small = _tiles(height, 2) * _tiles(width, 2) < 144 and not kernel_ready
    if auto and (
        backend.current() != "cpu" or jnp.dtype(dtype) != jnp.float32 or channels < 128 or small
    ):
        return 0
    if auto and large_tiles and not kernel_ready and _tiles(height, 4) * _tiles(width, 4) >= 144:
        return 4
    return 2


def layer_tile(
    x_shape, dtype, kernel_hw, stride, padding, groups, algorithm, kernel_ready=False
) -> int:
    """`tile` for a convolution layer under `conv.conv2d`'s ``algorithm``: 0 (direct) unless
    the layer is 3x3, stride 1, padding 1, ungrouped and the algorithm is "auto", "auto_f4" or
    "winograd"."""
    same_3x3 = tuple(kernel_hw) == (3, 3) and stride == padding == groups == 1
    if algorithm in ("direct", "mkl") or not same_3x3:
        return 0
    auto = algorithm in ("auto", "auto_f4")
    large = algorithm == "auto_f4"
    return tile(x_shape, dtype, auto=auto, kernel_ready=kernel_ready, large_tiles=large)


def _combine(terms, coefficients):
    """sum_i coefficients[i] * terms[i], skipping zeros and multiplying by +-1 as signs."""
    total = None
    for c, term in zip(coefficients, terms, strict=True):
        if c == 0:
            continue
        term = term if c == 1 else -term if c == -1 else term * float(c)
        total = term if total is None else total + term
    return total


def _tiles(size: int, m: int) -> int:
    return -(-size // m)


def input_transform(x: jax.Array, m: int) -> jax.Array:
    """[N, H, W, C] -> V [(m + 2)^2, N * rows * cols, C]: B^T d B of every input tile, the
    input zero-padded by one (the convolution's padding) and up to whole tiles."""
    bt = matrices(m)[0]
    t = m + 2
    n, h, w, c = x.shape
    rows, cols = _tiles(h, m), _tiles(w, m)
    x = jnp.pad(x, ((0, 0), (1, rows * m + 1 - h), (1, cols * m + 1 - w), (0, 0)))
    by_row = [x[:, a : a + m * rows : m] for a in range(t)]  # [N, rows, W', C]
    by_row = [_combine(by_row, bt[u]) for u in range(t)]
    out = []
    for part in by_row:
        by_col = [part[:, :, b : b + m * cols : m] for b in range(t)]  # [N, rows, cols, C]
        out += [_combine(by_col, bt[v]) for v in range(t)]
    return jnp.stack(out).reshape(t * t, n * rows * cols, c)


def input_transform_transpose(dv: jax.Array, m: int, shape) -> jax.Array:
    """The transpose of `input_transform`: V's gradient -> x's, the tiles' B dV B^T added where
    they overlap (each tile shares two rows and two columns with its neighbours)."""
    bt = matrices(m)[0]
    t = m + 2
    n, h, w, c = shape
    rows, cols = _tiles(h, m), _tiles(w, m)
    dv = dv.reshape(t, t, n, rows, cols, c)

    def overlap_add(parts, axis):
        # parts[b] [..., tiles, ...]: the contribution to padded position m * tile + b along
        # `axis`. Positions 0..m-1 of each tile interleave; the last two (m, m + 1) are the
        # next tile's 0 and 1, so they are padded with m - 2 zeros and shifted by one tile.
        body = jnp.stack(parts[:m], axis + 1)
        tail = jnp.stack(parts[m:], axis + 1)
        widen = [(0, 0)] * tail.ndim
        widen[axis + 1] = (0, m - 2)
        tail = jnp.pad(tail, widen)
        shape_ = (*body.shape[:axis], body.shape[axis] * m, *body.shape[axis + 2 :])
        body_pad, tail_pad = [(0, 0)] * len(shape_), [(0, 0)] * len(shape_)
        body_pad[axis], tail_pad[axis] = (0, m), (m, 0)
        body = jnp.pad(body.reshape(shape_), body_pad)
        return body + jnp.pad(tail.reshape(shape_), tail_pad)

    by_col = []
    for u in range(t):
        per_b = [_combine([dv[u, v] for v in range(t)], bt[:, b]) for b in range(t)]
        by_col.append(overlap_add(per_b, 2))  # [N, rows, cols * m + 2, C]
    per_a = [_combine(by_col, bt[:, a]) for a in range(t)]
    padded = overlap_add(per_a, 1)  # [N, rows * m + 2, cols * m + 2, C]
    return padded[:, 1 : h + 1, 1 : w + 1]


def filter_transform(kernel: jax.Array, m: int) -> jax.Array:
    """[3, 3, C, K] -> U [(m + 2)^2, C, K]: G g G^T, as one product with kron(G, G)."""
    g = matrices(m)[1]
    both = jnp.asarray(np.kron(g, g), kernel.dtype)  # [(m + 2)^2, 9]
    return (both @ kernel.reshape(9, -1)).reshape(-1, *kernel.shape[2:])


def filter_transform_transpose(du: jax.Array, m: int) -> jax.Array:
    g = matrices(m)[1]
    both = jnp.asarray(np.kron(g, g).T, du.dtype)  # [9, (m + 2)^2]
    return (both @ du.reshape(du.shape[0], -1)).reshape(3, 3, *du.shape[1:])


def output_transform(product: jax.Array, m: int, shape) -> jax.Array:
    """M [(m + 2)^2, N * rows * cols, K] -> y [N, H, W, K]: A^T M A per tile, cropped."""
    at = matrices(m)[2]
    t = m + 2
    n, h, w = shape[:3]
    rows, cols = _tiles(h, m), _tiles(w, m)
    product = product.reshape(t, t, n, rows, cols, -1)
    by_row = [_combine([product[a] for a in range(t)], at[i]) for i in range(m)]
    blocks = [[_combine([part[b] for b in range(t)], at[j]) for j in range(m)] for part in by_row]
    y = jnp.stack([jnp.stack(row, 0) for row in blocks], 0)  # [m, m, N, rows, cols, K]
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows * m, cols * m, -1)
    return y[:, :h, :w]


def output_transform_transpose(grad: jax.Array, m: int) -> jax.Array:
    """The transpose of `output_transform`: y's gradient -> M's, A g A^T per output block."""
    at = matrices(m)[2]
    t = m + 2
    n, h, w, k = grad.shape
    rows, cols = _tiles(h, m), _tiles(w, m)
    grad = jnp.pad(grad, ((0, 0), (0, rows * m - h), (0, cols * m - w), (0, 0)))
    blocks = grad.reshape(n, rows, m, cols, m, k).transpose(2, 4, 0, 1, 3, 5)  # [m, m, ...]
    by_row = [_combine([blocks[i] for i in range(m)], at[:, a]) for a in range(t)]
    out = [_combine([part[j] for j in range(m)], at[:, b]) for part in by_row for b in range(t)]
    return jnp.stack(out).reshape(t * t, n * rows * cols, k)


def _product(v, u):
    return jnp.einsum("tpc,tck->tpk", v, u)


def conv2d_transformed(x: jax.Array, transformed: jax.Array, m: int = 2) -> jax.Array:
    """`winograd_conv2d` with the kernel's transform U (`filter_transform`) given: for
    inference, where it is computed once (`prediction.prepare_variables`). No gradient is
    defined for U's kernel: the kernel is not an input here."""
    if transformed.shape[0] != (m + 2) ** 2 or transformed.shape[1] != x.shape[3]:
        raise ValueError(
            f"a transformed 3x3 kernel for F({m}, 3) and {x.shape[3]} input channels is "
            f"[{(m + 2) ** 2}, {x.shape[3]}, filters], got {transformed.shape}"
        )
    product = _product(input_transform(x, m), transformed)
    # In NHWC order before anything reads it (see the module docstring).
    return jax.lax.optimization_barrier(output_transform(product, m, x.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv2d(x: jax.Array, kernel: jax.Array, m: int = 2) -> jax.Array:
    """NHWC x HWIO 3x3 convolution, stride 1, zero padding 1, by F(m x m, 3 x 3)."""
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"winograd_conv2d takes 3x3 kernels, got {kernel.shape}")
    return conv2d_transformed(x, filter_transform(kernel, m), m)


def _fwd(x, kernel, m):
    return winograd_conv2d(x, kernel, m), (x, kernel)


def _bwd(m, residuals, grad):
    # Tied to the gradient, so that XLA does not transform them during the forward pass and
    # keep the (larger) results until here (see `conv.after`).
    x, kernel = (after(r, grad) for r in residuals)
    d_product = output_transform_transpose(grad, m)
    u = filter_transform(kernel, m)
    dv = jnp.einsum("tpk,tck->tpc", d_product, u)
    du = jnp.einsum("tpc,tpk->tck", input_transform(x, m), d_product)
    dx = input_transform_transpose(dv, m, x.shape)
    return dx, filter_transform_transpose(du, m)


winograd_conv2d.defvjp(_fwd, _bwd)
