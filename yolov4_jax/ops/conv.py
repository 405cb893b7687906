"""The convolution dispatch every model layer goes through (`conv2d`): XLA's convolution, or
on the CPU Winograd's (`yolov4_jax.ops.winograd`), the canonical-gradient form
(`yolov4_jax.ops.conv_gradients`) or oneMKL (`yolov4_jax.ops.cpu_gemm`), as the arguments and
the backend traced for (`backend.current`: JAX's default, or the platform an export lowers
for) decide. Off the CPU only XLA's convolution is ever picked."""

from __future__ import annotations

import jax

from yolov4_jax.ops import backend, cpu_gemm, winograd
from yolov4_jax.ops.conv_gradients import NHWC, after, canonical_conv2d, input_gradient

__all__ = ["CONV_ALGORITHMS", "CONV_GRADIENTS", "after", "conv2d", "input_gradient"]

CONV_GRADIENTS = ("auto", "xla", "canonical")
CONV_ALGORITHMS = ("auto", "auto_f4", "direct", "winograd", "mkl")


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    padding: int,
    groups: int = 1,
    gradients: str = "auto",
    algorithm: str = "auto",
) -> jax.Array:
    """NHWC x HWIO convolution with symmetric zero padding.

    ``algorithm`` picks how a 3x3 stride-1 convolution with padding 1 is computed (the values
    are equal up to float rounding): "direct" is XLA's convolution; "winograd" is
    `winograd.winograd_conv2d` with F(2x2, 3x3); "auto" is "winograd" where JAX's default
    backend is the CPU, the compute dtype float32 and the layer one where that measured
    faster (`winograd.tile`), and "direct" everywhere else (cuDNN and TPUs choose their own
    algorithms); "auto_f4" is "auto" with F(4x4, 3x3) on the layers' larger maps (48 x 48 and
    up) where the kernel is transformed in the step: on the CPU YOLOv4's training step at 416
    was 0-6% faster (within the machine's noise), but compiled 7 s longer, peaked 0.1 GB
    higher and rounds more (`winograd.tile`). Other convolutions are always direct, and
    Winograd's layers have their own backward pass whatever ``gradients`` says. "mkl" (CPU
    only, Intel oneMKL needed) runs every ungrouped convolution as image patches times the
    kernel through oneMKL (`yolov4_jax.ops.cpu_gemm`): in bfloat16 on the CPU's bf16 units,
    which XLA:CPU does not use, in both passes.

    ``gradients`` picks how its backward pass is expressed (the values are equal either way):
    "xla" is autodiff of `jax.lax.conv_general_dilated`; "canonical" is `canonical_conv2d`,
    whose input and filter gradients are themselves NHWC x HWIO convolutions; "auto" is
    "canonical" where JAX's default backend is the CPU and "xla" elsewhere. XLA:CPU brings
    autodiff's gradient convolutions into that form (the one its Eigen kernels take) only in
    the program's entry computation (service/cpu/conv_canonicalization.cc): inside a
    `lax.scan` (micro-batches) or a `lax.cond` (SAT) it runs them as naive loops, 12-45x
    slower. Grouped convolutions always use "xla".
    """
    if gradients not in CONV_GRADIENTS:
        raise ValueError(f"conv gradients must be one of {CONV_GRADIENTS}, got {gradients!r}")
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"conv algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")
    if algorithm == "mkl" and groups == 1:
        if backend.current() != "cpu":
            raise ValueError(
                "conv algorithm 'mkl' runs on the CPU only; the backend traced for is "
                f"{backend.current()!r} (use model.conv_algorithm='auto')"
            )
        return cpu_gemm.conv2d(x, kernel, stride, padding)
    tile = winograd.layer_tile(
        x.shape, x.dtype, kernel.shape[:2], stride, padding, groups, algorithm
    )
    if tile:
        return winograd.winograd_conv2d(x, kernel, tile)
    if gradients == "auto":
        gradients = "canonical" if backend.current() == "cpu" else "xla"
    if gradients == "canonical" and groups == 1:
        return canonical_conv2d(x, kernel, stride, padding)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=NHWC,
        feature_group_count=groups,
    )
