"""Hand-written convolution gradients that XLA:CPU runs fast (`canonical_conv2d`,
`input_gradient`), and `after`, which keeps backward-only work out of the forward pass."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NHWC = ("NHWC", "HWIO", "NHWC")


def after(value: jax.Array, grad: jax.Array) -> jax.Array:
    """``value`` made to depend on ``grad`` (plus 0 * its first element), for backward passes.

    XLA's default CPU scheduler runs an instruction as soon as its operands exist, so what a
    backward pass derives from forward values alone (the recomputed BN + activation
    derivative, flipped kernels) is computed during the forward pass and held until the
    backward pass reaches it: on YOLOv4 at 416, batch 2, 0.9 GB of the step's 1.85 GB of XLA
    temp memory. Tied to the incoming gradient it is computed when needed. (XLA:CPU drops
    `optimization_barrier` before scheduling, so a barrier does not do this.) A non-finite
    first element of ``grad`` makes the result NaN, as the gradients it feeds would be anyway.
    """
    return value + 0 * grad.reshape(-1)[0].astype(value.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def canonical_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """`conv2d` whose backward pass is written as NHWC x HWIO convolutions.

    Input gradient: the output gradient convolved with the kernel flipped in space and with
    its in/out channels swapped, phase by phase for strides above 1 (`input_gradient`); a
    1x1 stride-1 layer's is one matrix product with the kernel as it is.
    Filter gradient: the input with its channels as the batch and its batch as the channels,
    convolved with the output gradient as the kernel, phase by phase for strides above 1
    (`_filter_gradient`); a 1x1 stride-1 layer's is one matrix product.
    """
    pad = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=NHWC)


def _canonical_conv2d_fwd(x, kernel, stride, padding):
    return canonical_conv2d(x, kernel, stride, padding), (x, kernel)


def _canonical_conv2d_bwd(stride, padding, residuals, grad):
    x, kernel = residuals
    k = kernel.shape[0]
    if k == 1 and stride == 1 and padding == 0:
        # A product whose right operand is the kernel as it is (contracted over its filters,
        # its minor dimension): XLA:CPU runs it without transposing the kernel first.
        grad_x = jnp.einsum("nhwk,ck->nhwc", grad, kernel[0, 0])
    else:
        kernel = after(kernel, grad)  # flipped or transposed when needed
        grad_x = input_gradient(grad, kernel, stride, padding, x.shape[1:3])
    return grad_x, _filter_gradient(x, grad, k, stride, padding)


def _filter_gradient(x, grad, k, stride, padding):
    """The filter gradient as NHWC x HWIO convolutions (or a product), in the form that
    Eigen runs fastest for the layer (experiments/benchmark_conv_gradients.py): a 1x1 layer's
    is a matrix product; otherwise the input, its channels as the batch and its batch as the
    channels, is correlated with the output gradient as the kernel, by phases when the batch
    is under 8 and in one convolution with the gradient dilated by the stride from 8 up."""
    if k == 1 and stride == 1 and padding == 0:
        return _filter_gradient_1x1(x, grad)
    if x.shape[0] < 8:
        return _filter_gradient_by_phases(x, grad, k, stride, padding)
    # Rows (columns) of x, counted from the top padding, that some window covers.
    extent = [(o - 1) * stride + k - padding for o in grad.shape[1:3]]
    used = x[:, : min(x.shape[1], extent[0]), : min(x.shape[2], extent[1])]
    pads = [(padding, max(0, e - s)) for e, s in zip(extent, used.shape[1:3], strict=True)]
    kernel_grad = jax.lax.conv_general_dilated(
        used.transpose(3, 1, 2, 0),
        grad.transpose(1, 2, 0, 3),
        (1, 1),
        pads,
        rhs_dilation=(stride, stride),
        dimension_numbers=NHWC,
    )
    return kernel_grad.transpose(1, 2, 0, 3)


def _filter_gradient_1x1(x, grad):
    """A matrix product over batch and space, in chunks of >= 8192 (image, row) positions,
    summed: Eigen runs one product with a contraction this long and only 32-128 rows and
    columns 1.5-3x slower (YOLOv4's 208x208 layers at 416)."""
    n, height, width, filters = grad.shape
    rows = n * height
    chunks = max(d for d in range(1, max(1, rows * width // 8192) + 1) if rows % d == 0)
    parts = jnp.einsum(
        "bkc,bko->bco", x.reshape(chunks, -1, x.shape[3]), grad.reshape(chunks, -1, filters)
    )
    return parts.sum(0)[None, None]


def _filter_gradient_by_phases(x, grad, k, stride, padding):
    """For small batches, whose batch is the convolutions' innermost (channel) dimension:
    the taps u = phase (mod stride) only meet input rows r = stride * a + phase - padding, so
    each of the stride^2 phases is a stride-1 correlation of that subsampled input with the
    output gradient, and the phases' taps interleave into the kernel (stride 1: one phase,
    every tap). The input is zero-padded and cropped here, behind `optimization_barrier`:
    XLA would fold a visible pad into the convolution's padding, with which Eigen's
    convolution, whose kernel here is as large as the image, runs about half as fast with a
    batch of 2. YOLOv4 at 416, batch 2: the 3x3 stride-1 layers' filter gradients 1.6-2x
    faster, the stride-2 ones 1-1.6x; from a batch of 8 up the one dilated convolution is
    as fast or faster."""
    n, out_h, out_w, filters = grad.shape
    s, p = stride, padding
    taps = [len(range(phase, k, s)) for phase in range(s)]
    # Padded rows (columns) reach index phase + s * (out + taps - 2) in phase `phase`.
    extent = [max(a + s * (o + t - 2) + 1 for a, t in enumerate(taps) if t) for o in (out_h, out_w)]
    hi = [max(0, e - p - size) for e, size in zip(extent, x.shape[1:3], strict=True)]
    padded = jnp.pad(x, ((0, 0), (p, hi[0]), (p, hi[1]), (0, 0)))
    kernel_grad = jnp.zeros((k, k, x.shape[3], filters), grad.dtype)
    as_kernel = grad.transpose(1, 2, 0, 3)
    for a, rows in enumerate(taps):
        for b, cols in enumerate(taps):
            if not rows or not cols:  # no tap meets this phase
                continue
            phase = padded[:, a::s, b::s][:, : out_h + rows - 1, : out_w + cols - 1]
            phase = jax.lax.optimization_barrier(phase.transpose(3, 1, 2, 0))
            part = jax.lax.conv_general_dilated(
                phase, as_kernel, (1, 1), "VALID", dimension_numbers=NHWC
            )
            kernel_grad = kernel_grad.at[a::s, b::s].set(part.transpose(1, 2, 0, 3))
    return kernel_grad


canonical_conv2d.defvjp(_canonical_conv2d_fwd, _canonical_conv2d_bwd)


def _phase_taps(size: int, out_size: int, k: int, stride: int, padding: int):
    """Per input phase r % stride of a strided convolution's input gradient along one axis:
    the kernel taps that reach it (a slice; the correlation uses them reversed) and the
    padding of the output gradient that aligns them. Returns (phase length,
    [(taps, number of taps, pad_lo, pad_hi)] per phase)."""
    length = -(-size // stride)
    phases = []
    for phase in range(stride):
        first, shift = (phase + padding) % stride, (phase + padding) // stride
        count = len(range(first, k, stride))
        lo = count - 1 - shift
        phases.append((slice(first, k, stride), count, lo, length - out_size - lo + count - 1))
    return length, phases


def input_gradient(grad, kernel, stride, padding, sizes, flip_maps=None, correlate=None):
    """Input gradient by phases (sub-pixel): input row r = stride * a + phase receives only the
    taps u = phase + padding (mod stride), so each of the stride^2 phases is a stride-1
    convolution of the output gradient with those taps, and the phases interleave into the
    input (at stride 1: one phase, the whole flipped kernel). The same products as convolving
    the stride-dilated gradient, without the (stride^2 - 1) / stride^2 of multiplications by
    its inserted zeros. On XLA:CPU the backward pass of YOLOv4's 416->208 layer (batch 2) went
    from 208 to 135 ms, of its 208->104 layer from 104 to 81 ms
    (experiments/benchmark_conv_gradients.py).

    Where the kernel has more elements than the two maps (``flip_maps`` None: decided by
    size; YOLOv4's 13 x 13 layers), the maps are flipped instead of the kernel: a correlation
    with the flipped taps is the flipped correlation of the flipped gradient with the taps,
    its padding mirrored. In YOLOv4's step XLA:CPU fused the flip of a 3x3 512 -> 1024
    kernel into its channel transpose and took 14 ms for the two, against 10 ms for the
    transpose alone, while the flips of the 13 x 13 maps fuse into their neighbours.

    ``correlate(grad, taps, pads)``, where given, computes each phase's stride-1 correlation
    (per-side ``pads``) instead of XLA (`yolov4_jax.ops.cpu_gemm`)."""
    if correlate is None:

        def correlate(g, taps, pads):
            return jax.lax.conv_general_dilated(g, taps, (1, 1), pads, dimension_numbers=NHWC)

    k, n, channels = kernel.shape[0], grad.shape[0], kernel.shape[2]
    rows, row_phases = _phase_taps(sizes[0], grad.shape[1], k, stride, padding)
    cols, col_phases = _phase_taps(sizes[1], grad.shape[2], k, stride, padding)
    swapped = kernel.swapaxes(2, 3)
    if flip_maps is None:
        flip_maps = kernel.size > grad.size + n * sizes[0] * sizes[1] * channels
    if flip_maps:
        grad = jnp.flip(grad, (1, 2))
    phases = []
    for row_taps, row_count, row_lo, row_hi in row_phases:
        for col_taps, col_count, col_lo, col_hi in col_phases:
            if not row_count or not col_count:  # no tap reaches these rows or columns
                phases.append(jnp.zeros((n, rows, cols, channels), grad.dtype))
                continue
            # (Negative padding, which crops, occurs only at strides above 2.)
            taps, pads = swapped[row_taps, col_taps], [(row_lo, row_hi), (col_lo, col_hi)]
            if flip_maps:
                pads = [pad[::-1] for pad in pads]
            else:
                taps = jnp.flip(taps, (0, 1))
            part = correlate(grad, taps, pads)
            phases.append(jnp.flip(part, (1, 2)) if flip_maps else part)
    # [phase_r * stride + phase_c] -> [N, rows, phase_r, cols, phase_c, C] -> [N, H, W, C]
    grid = jnp.stack(phases, 0).reshape(stride, stride, n, rows, cols, channels)
    grid = grid.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows * stride, cols * stride, channels)
    return grid[:, : sizes[0], : sizes[1]]
