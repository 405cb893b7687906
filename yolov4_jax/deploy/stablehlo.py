"""The detector as a serialized `jax.export` module: StableHLO for the CPU, CUDA GPUs and TPUs,
the weights inside, the batch dimension symbolic.

    exported = jax.export.deserialize(open("yolov4.stablehlo", "rb").read())
    heads = exported.call(images)   # images float32 [N, H, W, 3], RGB in [0, 1]

The function is traced with the choices of an accelerator host (`ops.backend.lowering_for`):
XLA's convolution everywhere, never the CPU's Winograd form or oneMKL custom call, so the one
module is the same program on every platform it names. `lower_for` is the same lowering for any
function, used by the accelerator guard (tests/test_accelerator_lowering.py) on the train step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from yolov4_jax.deploy.portability import non_portable_targets
from yolov4_jax.deploy.signature import ExportError, inference_fn
from yolov4_jax.models import Network
from yolov4_jax.ops import backend

PLATFORMS = ("cpu", "cuda", "tpu")


def lower_for(
    fn: Callable[..., Any],
    args: Sequence[Any],
    platforms: Sequence[str] = PLATFORMS,
    *,
    host: str = "cuda",
) -> jax.export.Exported:
    """``jax.export`` of ``fn`` (jitted here, or already jitted) for ``platforms``, traced with
    the choices a ``host`` machine makes, checked for custom calls that are not portable.

    ``fn`` must not have been traced for these argument shapes outside (a jitted function's
    cache would return that trace); build it fresh. Raises `ExportError` naming the targets.
    """
    with backend.lowering_for(host):
        jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
        exported = jax.export.export(jitted, platforms=tuple(platforms))(*args)
    bad = non_portable_targets(exported.mlir_module())
    if bad:
        raise ExportError(
            f"the module lowered for {', '.join(platforms)} calls {', '.join(bad)}: "
            "a CPU-only construct reached the trace"
        )
    return exported


def export_stablehlo(
    model: Network,
    variables: Any,
    size: tuple[int, int],
    *,
    decode: bool = False,
    platforms: Sequence[str] = PLATFORMS,
) -> jax.export.Exported:
    """The exported `deploy.inference_fn` for images ``[N, height, width, 3]``, N symbolic."""
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    (batch,) = jax.export.symbolic_shape("N")
    images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32)
    return lower_for(inference_fn(model, variables, decode), [images], platforms)
