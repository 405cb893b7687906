"""What every export reproduces: `inference_fn` (images -> raw heads, and decoded boxes and
scores with ``decode``), its output names, and the checks an export makes of its model first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from yolov4_jax import Error
from yolov4_jax.evaluation.prediction import decode_heads
from yolov4_jax.models import Network, check_input_size


class ExportError(Error, ValueError):
    """A model, option or check the exporter cannot satisfy; the message says which."""


def for_export(model: Network) -> Network:
    """``model`` computing in float32 with the portable defaults (``conv_algorithm`` "auto",
    which off the CPU is XLA's convolution): an exported model runs float32 on any device,
    whatever dtype and CPU algorithm the run trained with."""
    return model.clone(dtype=jnp.float32, conv_algorithm="auto", conv_gradients="auto")


def check_exportable(model: Network, size: tuple[int, int], decode: bool) -> None:
    """Raises `ExportError` where ``size`` (height, width) does not fit the network, its input
    is not RGB, or ``decode`` is asked of a network without ``[yolo]`` heads."""
    check_input_size(model, size, ExportError)
    if decode and not model.heads:
        raise ExportError("--decode needs [yolo] heads; this network is a classifier")


def output_names(model: Network, decode: bool) -> list[str]:
    """``head0``, ``head1``, ... in the model's order (``output`` for a classifier), then
    ``boxes`` and ``scores`` with ``decode``."""
    names = [f"head{i}" for i in range(len(model.heads))] or ["output"]
    return names + (["boxes", "scores"] if decode else [])


def inference_fn(model: Network, variables: Any, decode: bool) -> Callable[[jax.Array], tuple]:
    """``f(images) -> tuple`` of the outputs `output_names` lists, the variables inside.

    boxes: ``[N, M, 4]`` xyxy in units of the input (not clipped); scores: ``[N, M, C]``,
    objectness times class probability; M sums H/s * W/s * A over the heads.
    """

    def f(images: jax.Array) -> tuple[jax.Array, ...]:
        outputs = model.apply(variables, images, train=False)
        outputs = tuple(outputs) if model.heads else (outputs,)
        if not decode:
            return outputs
        boxes, scores = decode_heads(outputs, model.heads, images.shape[1:3])
        return (*outputs, boxes, scores)

    return f
