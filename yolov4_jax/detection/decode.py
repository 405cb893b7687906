"""Decoding of a darknet ``[yolo]`` head's raw conv output into boxes and probabilities.

Follows yolo_layer.c::forward_yolo_layer (activations and the scale_x_y offset that
"eliminates grid sensitivity") and yolo_layer.c::get_yolo_box (box geometry). The same
transform serves training and inference, as in darknet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yolov4_jax.detection.boxes import xywh_to_xyxy

Array = jax.Array


MAX_LOG_SCALE = 20.0  # cap on tw, th before exp (float32 overflow guard)


def decode_yolo(
    raw: Array,
    anchors: Array,
    *,
    num_classes: int,
    scale_x_y: float = 1.0,
    new_coords: bool = False,
) -> tuple[Array, Array, Array]:
    """Decodes one YOLO head.

    Args:
      raw: ``[N, H, W, A * (5 + C)]`` output of the conv feeding the ``[yolo]`` layer. Channels
        are grouped per anchor: ``(tx, ty, tw, th, obj, C class logits)`` for each of the A
        anchors of the layer's ``mask``, in mask order.
      anchors: ``[A, 2]`` anchor (w, h) of this head's mask, normalised by the network input
        size: ``anchors_px / (net_w, net_h)``. Darknet divides by the network size in
        get_yolo_box; doing it up front keeps this function independent of the input size.
      num_classes: C.
      scale_x_y: darknet's ``scale_x_y`` (s); 1 disables the grid-sensitivity fix.
      new_coords: darknet's ``new_coords=1`` parametrisation (yolov4-csp): the conv already
        applied a logistic, so no sigmoid is applied here and ``bw = 4 * tw^2 * anchor_w``.

    Returns:
      ``boxes [N, H*W*A, 4]`` xyxy in units of the network input (0..1, not clipped),
      ``objectness [N, H*W*A]`` and ``class_probs [N, H*W*A, C]``, both in [0, 1].
      Predictions are ordered by (row, col, anchor).

    ``num_classes`` and ``new_coords`` fix shapes and control flow, so bind them with
    ``functools.partial`` (or ``static_argnames``) before ``jax.jit``.
    """
    raw = jnp.asarray(raw)
    anchors = jnp.asarray(anchors, dtype=raw.dtype)
    n, h, w, channels = raw.shape
    num_anchors = anchors.shape[0]
    if anchors.shape != (num_anchors, 2):
        raise ValueError(f"anchors must be [A, 2], got {anchors.shape}")
    if channels != num_anchors * (5 + num_classes):
        raise ValueError(
            f"raw has {channels} channels, expected A * (5 + C) = "
            f"{num_anchors} * (5 + {num_classes})"
        )

    out = raw.reshape(n, h, w, num_anchors, 5 + num_classes)  # [N, H, W, A, 5+C]
    txy, twh = out[..., 0:2], out[..., 2:4]  # [N, H, W, A, 2]
    obj, cls = out[..., 4], out[..., 5:]  # [N, H, W, A], [N, H, W, A, C]
    if not new_coords:
        # forward_yolo_layer: logistic on x, y, objectness and classes, never on w, h.
        txy, obj, cls = jax.nn.sigmoid(txy), jax.nn.sigmoid(obj), jax.nn.sigmoid(cls)

    # forward_yolo_layer's scal_add: x' = s * x - (s - 1) / 2, so the offset can reach
    # -(s-1)/2 .. (s+1)/2 and a centre on a cell border no longer needs an infinite logit.
    offset = scale_x_y * txy - 0.5 * (scale_x_y - 1.0)  # [N, H, W, A, 2]
    col = jnp.arange(w, dtype=raw.dtype)[None, None, :, None]  # [1, 1, W, 1]
    row = jnp.arange(h, dtype=raw.dtype)[None, :, None, None]  # [1, H, 1, 1]
    grid_size = jnp.asarray([w, h], dtype=raw.dtype)
    centre = jnp.stack([col + offset[..., 0], row + offset[..., 1]], axis=-1) / grid_size

    # get_yolo_box: exp(t) * anchor, or 4 * t^2 * anchor for new_coords (t already in (0, 1),
    # so a box spans 0..4 anchors). darknet does not bound t; here it is capped at MAX_LOG_SCALE
    # (a box e^20 anchors wide) so a wild logit cannot overflow float32 into inf and NaN gradients.
    if new_coords:
        scale = 4.0 * jnp.square(twh)
    else:
        scale = jnp.exp(jnp.minimum(twh, MAX_LOG_SCALE))
    size = scale * anchors  # [N, H, W, A, 2]

    boxes = xywh_to_xyxy(jnp.concatenate([centre, size], axis=-1))  # [N, H, W, A, 4]
    total = h * w * num_anchors
    return (
        boxes.reshape(n, total, 4),
        obj.reshape(n, total),
        cls.reshape(n, total, num_classes),
    )
