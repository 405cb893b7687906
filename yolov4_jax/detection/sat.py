"""Self-Adversarial Training's first stage: the images moved to hide their objects.

`sat_images` moves the images down the gradient of `adversarial_objective`, whose gradient at
the raw head outputs is, with ``sat_gradient="darknet"`` (the default), minus darknet's
``l.delta`` in adversarial mode (`darknet_adversarial_delta`), and with ``"loss"`` the
gradient of the project's loss against an empty ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax.detection import losses
from yolov4_jax.detection.decode import MAX_LOG_SCALE
from yolov4_jax.models import Network, specs

Array = jax.Array
PyTree = Any

# forward_yolo_layer's threshold on class probability times objectness for "an object here".
_FOUND = 0.25


def darknet_adversarial_delta(raw: Array, head: specs.Yolo, image_hw: tuple[int, int]) -> Array:
    """darknet's ``l.delta`` of one [yolo] head in SAT's first stage (empty truth,
    ``state.net.adversarial``), in the raw output's layout ``[B, H, W, A * (5 + C)]``.

    yolo_layer.c::process_batch, the ``else if (state.net.adversarial)`` branch, which every
    prediction takes (with no truth, no best IoU exceeds ignore_thresh), then
    averages_yolo_deltas:

    * ``s = sqrt(w * h)`` of the predicted box (get_yolo_box, in units of the network input);
    * objectness: ``s * obj_normalizer * (0 - p_obj)``;
    * classes with ``p_cls * p_obj > .25`` (the prediction "found an object"):
      ``s * (0 - p_cls)``; if any, the classes with ``p_cls * p_obj < .25``: ``s * (1 - p_cls)``
      and the box: ``s * (0 - output)`` on x, y after the logistic and ``scale_x_y`` and on the
      raw tw, th (new_coords: on the conv's probabilities);
    * with ``iou_thresh < 1``, each box delta divided by the number of classes whose delta is
      positive (averages_yolo_deltas runs in this stage too).

    backward_yolo_layer hands the deltas to the conv as they are (no logistic derivative), as
    the rest of the loss does. darknet does not bound exp(tw); here tw is capped at
    `MAX_LOG_SCALE` as in decoding, so a wild logit cannot make the scale infinite.
    """
    batch, grid_h, grid_w, _ = raw.shape
    num_anchors, num_classes = len(head.mask), head.classes
    out = raw.astype(jnp.float32).reshape(batch, grid_h, grid_w, num_anchors, 5 + num_classes)
    txy, twh = out[..., 0:2], out[..., 2:4]
    if head.new_coords:
        xy, p_obj, p_cls = txy, out[..., 4], out[..., 5:]
        size = 4.0 * jnp.square(twh)
    else:
        xy, p_obj, p_cls = (
            jax.nn.sigmoid(txy),
            jax.nn.sigmoid(out[..., 4]),
            jax.nn.sigmoid(out[..., 5:]),
        )
        size = jnp.exp(jnp.minimum(twh, MAX_LOG_SCALE))
    xy = xy * head.scale_x_y - 0.5 * (head.scale_x_y - 1.0)
    net_wh = np.asarray([image_hw[1], image_hw[0]], np.float32)
    wh = size * (np.asarray(head.head_anchors, np.float32) / net_wh)  # [B, H, W, A, 2]
    area = wh[..., 0] * wh[..., 1]
    scale = jnp.where(area > 0, jnp.sqrt(jnp.maximum(area, 0.0)), area)

    obj_delta = scale * head.obj_normalizer * (0.0 - p_obj)
    confidence = p_cls * p_obj[..., None]
    high = confidence > _FOUND
    found = jnp.any(high, axis=-1)
    s = scale[..., None]
    cls_delta = jnp.where(
        high,
        s * (0.0 - p_cls),
        jnp.where(found[..., None] & (confidence < _FOUND), s * (1.0 - p_cls), 0.0),
    )
    box_delta = jnp.where(found[..., None], s * (0.0 - jnp.concatenate([xy, twh], -1)), 0.0)
    if head.iou_thresh < 1.0:
        positive = jnp.sum((cls_delta > 0).astype(jnp.float32), axis=-1)
        divide = (obj_delta != 0) & (positive > 0)
        box_delta = box_delta / jnp.where(divide, positive, 1.0)[..., None]
    delta = jnp.concatenate([box_delta, obj_delta[..., None], cls_delta], axis=-1)
    return delta.reshape(raw.shape)


def adversarial_objective(
    outputs: Sequence[Array],
    heads: Sequence[specs.Yolo],
    loss_options: losses.LossOptions,
    image_hw: tuple[int, int],
) -> Array:
    """What SAT's first stage descends, summed over the images (so each image's gradient is
    its own): with ``loss_options.sat_gradient="darknet"`` a function whose gradient at each
    raw head output is minus `darknet_adversarial_delta`; with ``"loss"`` the YOLOv4 loss
    against an empty ground truth, which leaves its objectness "no object" term alone."""
    b = outputs[0].shape[0]
    if loss_options.sat_gradient == "darknet":
        total = jnp.zeros((), jnp.float32)
        for raw, head in zip(outputs, loss_options.resolve(heads), strict=True):
            delta = jax.lax.stop_gradient(darknet_adversarial_delta(raw, head, image_hw))
            total = total - jnp.sum(delta * raw.astype(jnp.float32))
        return total
    empty = {
        "boxes": jnp.zeros((b, 1, 4), jnp.float32),
        "labels": jnp.zeros((b, 1), jnp.int32),
        "mask": jnp.zeros((b, 1), bool),
    }
    loss, _ = losses.yolo_loss(outputs, empty, heads, loss_options, image_hw=image_hw)
    return loss * b


def sat_images(
    model: Network,
    variables: PyTree,
    images: Array,
    heads,
    loss_options: losses.LossOptions,
    step_size: Array,
) -> Array:
    """Self-Adversarial Training's first stage (darknet train_network_datum_gpu).

    The network runs with BN in inference mode (darknet: rolling statistics) and the images
    move by ``step_size`` down the gradient of `adversarial_objective` (darknet adds
    ``adversarial_lr * iter / max_batches`` times the input delta, the negative gradient),
    hiding the objects from the current detector, and are clipped to [0, 1].
    """

    def objective(x):
        outputs = model.apply(variables, x, train=False)
        return adversarial_objective(outputs, heads, loss_options, tuple(x.shape[1:3]))

    grad = jax.grad(objective)(images)
    return jnp.clip(images - step_size * grad, 0.0, 1.0)
