"""Backbone transfer: a pretrained classifier's backbone into a detector (paper section 4.1).

The paper pretrains CSPDarknet53 as an ImageNet classifier and starts the detector from it
(darknet ships the result as ``yolov4.conv.137``, read with ``config.model.weights`` and
``weights_num_layers=137``). `transfer_backbone` does the same from one of our classifier
runs (``config.model.backbone_checkpoint``): the classifier's convolutions before its global
average pool are matched, in order, with the detector's first convolutions; each pair must
have the same spec (filters, size, stride, activation...), and its kernel, BN scale and bias
and BN running statistics are copied exactly. Nothing else of the detector changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from yolov4_jax.models import specs
from yolov4_jax.models.network import layer_name


def classifier_backbone(layers: Sequence[specs.Spec]) -> list[int]:
    """Indices of a classifier's convolutions before its first global average pool."""
    for end, spec in enumerate(layers):
        if isinstance(spec, specs.AvgPool):
            return [i for i in range(end) if isinstance(layers[i], specs.Conv)]
    raise ValueError("not a classifier: the network has no [avgpool] layer")


def transfer_backbone(
    detector_layers: Sequence[specs.Spec],
    detector_variables: Mapping[str, Any],
    classifier_layers: Sequence[specs.Spec],
    classifier_variables: Mapping[str, Any],
    *,
    source: str = "classifier",
) -> tuple[dict[str, Any], list[str]]:
    """The detector's variables with the classifier's backbone copied in.

    Returns ``(variables, names)``: new ``params`` and ``batch_stats`` dicts (the inputs
    are not modified) and the detector layer names that were overwritten, in order.
    """
    src = classifier_backbone(classifier_layers)
    dst = [i for i, s in enumerate(detector_layers) if isinstance(s, specs.Conv)][: len(src)]
    if len(dst) < len(src):
        raise ValueError(
            f"{source}: the backbone has {len(src)} convolutions, the detector only {len(dst)}"
        )
    out = {k: dict(v) for k, v in detector_variables.items() if k in ("params", "batch_stats")}
    names = []
    for k, (i, j) in enumerate(zip(src, dst, strict=True)):
        if classifier_layers[i] != detector_layers[j]:
            raise ValueError(
                f"{source}: backbone convolution {k} (classifier layer {i}: "
                f"{classifier_layers[i]}) differs from detector layer {j}: "
                f"{detector_layers[j]}. Pretrain with the detector's config.model.activation, "
                "width and depth."
            )
        for collection in ("params", "batch_stats"):
            theirs = classifier_variables.get(collection, {}).get(layer_name(i))
            ours = out.get(collection, {}).get(layer_name(j))
            if theirs is None and ours is None:
                continue
            if theirs is None or ours is None:
                raise ValueError(
                    f"{source}: {collection}/{layer_name(i)} is missing on one side "
                    f"(detector layer {j})"
                )
            _check_shapes(theirs, ours, f"{source}: {collection}/{layer_name(i)}")
            out[collection][layer_name(j)] = theirs
        names.append(layer_name(j))
    return out, names


def _check_shapes(theirs: Any, ours: Any, where: str) -> None:
    import jax

    a, b = jax.tree.map(np.shape, theirs), jax.tree.map(np.shape, ours)
    if a != b:
        raise ValueError(f"{where} has shapes {a}, the detector expects {b}")
