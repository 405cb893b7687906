"""Self-Adversarial Training's first stage: the images moved to hide their objects."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from yolov4_jax.detection import losses
from yolov4_jax.models import Network

Array = jax.Array
PyTree = Any


def sat_images(
    model: Network,
    variables: PyTree,
    images: Array,
    heads,
    loss_options: losses.LossOptions,
    step_size: Array,
) -> Array:
    """Self-Adversarial Training's first stage (darknet train_network_datum_gpu).

    The network runs with BN in inference mode against an empty ground truth, so the loss only
    asks every prediction to report "no object"; the images move by ``step_size`` down that
    loss's gradient (darknet adds ``adversarial_lr * iter / max_batches`` times the input
    delta, which is the negative gradient), hiding the objects from the current detector, and
    are clipped to [0, 1]. The gradient is per image (the loss summed over the batch). darknet's
    yolo layer additionally pushes confident classes and boxes away in this stage; that part
    is not reproduced (docs: the loss's empty-truth form is used as it is).
    """
    b, m = images.shape[0], 1
    empty = {
        "boxes": jnp.zeros((b, m, 4), jnp.float32),
        "labels": jnp.zeros((b, m), jnp.int32),
        "mask": jnp.zeros((b, m), bool),
    }

    def suppress_loss(x):
        outputs = model.apply(variables, x, train=False)
        loss, _ = losses.yolo_loss(outputs, empty, heads, loss_options, image_hw=x.shape[1:3])
        return loss * b

    grad = jax.grad(suppress_loss)(images)
    return jnp.clip(images - step_size * grad, 0.0, 1.0)
