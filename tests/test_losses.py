"""The YOLOv4 loss on hand cases: perfect predictions, the ignore rule, smoothing, MSE weight."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax import ConfigError
from yolov4_jax.detection import losses
from yolov4_jax.detection import targets as targets_lib
from yolov4_jax.models import specs

CANVAS = (32, 32)
GRIDS = ((4, 4), (2, 2))  # strides 8 and 16
# Anchors 0 and 1 overlap by shape IoU .875, which the ignore-rule test relies on.
ANCHORS = ((8.0, 8.0), (8.0, 7.0), (16.0, 16.0), (24.0, 24.0))
NUM_CLASSES = 2
MAX_BOXES = 3
BIG = 12.0  # a logit whose BCE against the matching 0/1 target is ~6e-6


def make_heads(
    new_coords: bool = False, box_losses=("ciou", "ciou"), **overrides
) -> tuple[specs.Yolo, ...]:
    """Two heads; ``overrides`` apply to both, ``box_losses`` is each head's iou_loss."""
    common = dict(
        anchors=ANCHORS,
        classes=NUM_CLASSES,
        new_coords=new_coords,
        ignore_thresh=0.7,
        iou_thresh=0.213,
        iou_normalizer=0.07,
        max_delta=5.0,
    )
    scales = (2.0, 2.0) if new_coords else (1.2, 1.1)
    if "scale_x_y" in overrides:
        scales = (overrides.pop("scale_x_y"),) * 2
    common.update(overrides)
    return tuple(
        specs.Yolo(mask=m, scale_x_y=s, iou_loss=b, **common)
        for m, s, b in zip(((0, 1), (2, 3)), scales, box_losses, strict=True)
    )


HEADS = make_heads()
_loss_jit = jax.jit(losses.yolo_loss, static_argnames=("heads", "options", "image_hw"))
_assign_jit = jax.jit(targets_lib.assign_targets, static_argnums=(3, 4, 5))


DEFAULT_OPTIONS = losses.LossOptions()


def base_config():
    """configs/base.py's get_config() (configs/ is not a package)."""
    path = pathlib.Path(__file__).parents[1] / "configs" / "base.py"
    spec = importlib.util.spec_from_file_location("base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def loss_fn(outputs, batch, heads=HEADS, options=DEFAULT_OPTIONS):
    return _loss_jit(outputs, batch, heads=heads, options=options, image_hw=CANVAS)


def make_batch(rows, labels) -> dict[str, jax.Array]:
    """One image with a few boxes (xyxy in [0, 1]), padded to MAX_BOXES rows."""
    pad = MAX_BOXES - len(rows)
    return {
        "boxes": jnp.asarray([list(rows) + [[0.0] * 4] * pad], jnp.float32),
        "labels": jnp.asarray([list(labels) + [0] * pad], jnp.int32),
        "mask": jnp.asarray([[True] * len(rows) + [False] * pad]),
    }


def zeros_outputs(batch_size: int = 1) -> tuple[jax.Array, ...]:
    return tuple(jnp.zeros((batch_size, h, w, 2 * (5 + NUM_CLASSES))) for h, w in GRIDS)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def perfect_outputs(batch, heads) -> tuple[jax.Array, ...]:
    """Raw outputs that decode exactly onto the targets, confident objectness and classes."""
    assigned = _assign_jit(batch["boxes"], batch["labels"], batch["mask"], heads, GRIDS, CANVAS)
    outputs = []
    for head, (gh, gw), t in zip(heads, GRIDS, assigned, strict=True):
        out = np.zeros((1, gh, gw, 2, 5 + NUM_CLASSES), np.float64)
        if head.new_coords:
            out[..., 4:] = 1e-6  # probabilities: objectness and classes "off"
        else:
            out[..., 4:] = -BIG
        for b, r, c, a in np.argwhere(np.asarray(t.object_mask)):
            x1, y1, x2, y2 = np.asarray(t.box[b, r, c, a], np.float64)
            s = head.scale_x_y
            # Offset in the cell, then undo scale_x_y: x' = s * sig - (s - 1) / 2.
            sig = (np.asarray([(x1 + x2) / 2 * gw - c, (y1 + y2) / 2 * gh - r]) + (s - 1) / 2) / s
            ratio = np.asarray([(x2 - x1) * CANVAS[1], (y2 - y1) * CANVAS[0]]) / np.asarray(
                head.head_anchors[a]
            )
            if head.new_coords:
                out[b, r, c, a, :2], out[b, r, c, a, 2:4] = sig, np.sqrt(ratio / 4)
                out[b, r, c, a, 4] = 1 - 1e-6
                out[b, r, c, a, 5:] = np.where(
                    np.asarray(t.classes[b, r, c, a]) > 0, 1 - 1e-6, 1e-6
                )
            else:
                out[b, r, c, a, :2], out[b, r, c, a, 2:4] = _logit(sig), np.log(ratio)
                out[b, r, c, a, 4] = BIG
                on = np.asarray(t.classes[b, r, c, a]) > 0
                out[b, r, c, a, 5:] = np.where(on, BIG, -BIG)
        outputs.append(jnp.asarray(out.reshape(1, gh, gw, -1), jnp.float32))
    return tuple(outputs)


# Two boxes on head 0 (7x8 and 10x6 px) and one on head 1 (14x18 px).
ROWS = [[0.30, 0.55, 0.52, 0.80], [0.05, 0.10, 0.35, 0.30], [0.50, 0.05, 0.95, 0.60]]
LABELS = [1, 0, 1]


@pytest.mark.parametrize(
    ("new_coords", "box_losses"),
    [(False, ("ciou", "giou")), (False, ("diou", "iou")), (True, ("ciou", "mse"))],
)
def test_perfect_prediction_gives_near_zero_loss(new_coords, box_losses):
    heads = make_heads(new_coords=new_coords, box_losses=box_losses)
    batch = make_batch(ROWS, LABELS)
    outputs = perfect_outputs(batch, heads)
    loss, m = loss_fn(outputs, batch, heads)
    positives = _assign_jit(batch["boxes"], batch["labels"], batch["mask"], heads, GRIDS, CANVAS)
    assert all(bool(t.object_mask.any()) for t in positives)  # both heads' box losses count
    assert float(m["box"]) < 1e-4
    assert float(m["mean_iou"]) > 0.999
    assert float(loss) < 2e-3
    np.testing.assert_allclose(float(loss), float(m["box"] + m["obj"] + m["cls"]), rtol=1e-6)
    # And a wrong box costs something.
    shifted = dict(batch, boxes=batch["boxes"] + jnp.asarray([0.02, 0.0, 0.02, 0.0]))
    _, m_bad = loss_fn(outputs, shifted, heads)
    assert float(m_bad["box"]) > 1e-3


# Heads for the hand-computed cases: s = 1 on head 0, iou_thresh off, MSE on head 1.
SIMPLE = make_heads(box_losses=("ciou", "mse"), scale_x_y=1.0, iou_thresh=1.0, iou_normalizer=0.75)
SIMPLE_OPTIONS = losses.LossOptions(label_smoothing=0.1, cls_normalizer=0.5)
NUM_SLOTS = sum(h * w * 2 for h, w in GRIDS)  # 40 predictions


def test_ignore_rule_drops_objectness_above_ignore_thresh():
    # A truth exactly where head 0 cell (row 1, col 1) anchor 0 decodes with all-zero outputs:
    # centre (12, 12) px, 8x8. Anchor 1 of the same cell (8x7) sees it at IoU .875 > .7 and
    # is not positive with iou_thresh off; everything else overlaps it by less than .7.
    batch = make_batch([[8 / 32, 8 / 32, 16 / 32, 16 / 32]], [0])
    outputs = zeros_outputs()
    _, m = loss_fn(outputs, batch, SIMPLE, SIMPLE_OPTIONS)
    assert float(m["num_positives"]) == 1.0
    assert float(m["num_ignored"]) == 1.0
    # Every prediction has logit 0, so BCE = log 2 whatever the target: one is dropped.
    np.testing.assert_allclose(float(m["obj"]), (NUM_SLOTS - 1) * math.log(2.0), rtol=1e-5)
    # darknet's compare_yolo_class: no class prob above .25 means no ignoring.
    quiet = (outputs[0].at[0, 1, 1, 7 + 5 :].set(-5.0), outputs[1])  # anchor 1's classes
    _, m = loss_fn(quiet, batch, SIMPLE, SIMPLE_OPTIONS)
    assert float(m["num_ignored"]) == 0.0
    np.testing.assert_allclose(float(m["obj"]), NUM_SLOTS * math.log(2.0), rtol=1e-5)
    # objectness_smooth: the IoU becomes the target instead of ignoring.
    smooth = dataclasses.replace(SIMPLE_OPTIONS, objectness_smooth=True)
    _, m = loss_fn(outputs, batch, SIMPLE, smooth)
    assert float(m["num_ignored"]) == 0.0
    np.testing.assert_allclose(float(m["obj"]), NUM_SLOTS * math.log(2.0), rtol=1e-5)
    obj = outputs[0].at[0, 1, 1, 7 + 4].set(1.0)  # anchor 1's objectness logit
    _, m = loss_fn((obj, outputs[1]), batch, SIMPLE, smooth)
    bce = math.log1p(math.exp(1.0)) - 1.0 * (56 / 64)  # target: IoU .875
    np.testing.assert_allclose(float(m["obj"]), (NUM_SLOTS - 1) * math.log(2.0) + bce, rtol=1e-5)


def test_label_smoothing_values():
    batch = make_batch([[8 / 32, 8 / 32, 16 / 32, 16 / 32]], [1])
    logits = jnp.asarray([2.0, -1.0])
    outputs = zeros_outputs()
    outputs = (outputs[0].at[0, 1, 1, 5:7].set(logits), outputs[1])  # the positive: anchor 0
    _, m = loss_fn(outputs, batch, SIMPLE, SIMPLE_OPTIONS)
    # darknet: y = y * (1 - eps) + eps / 2 -> (.05, .95) for class 1; delta_yolo_class
    # leaves cls_normalizer (.5 here) unused without counters_per_class.
    y = np.asarray([0.05, 0.95])
    z = np.asarray(logits, np.float64)
    bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 / (1 + np.exp(z))))
    np.testing.assert_allclose(float(m["cls"]), bce.sum(), rtol=1e-5)
    # obj_cls_gradient="bce" weights the class term by cls_normalizer.
    options = dataclasses.replace(SIMPLE_OPTIONS, obj_cls_gradient="bce")
    _, m = loss_fn(outputs, batch, SIMPLE, options)
    np.testing.assert_allclose(float(m["cls"]), 0.5 * bce.sum(), rtol=1e-5)


def test_mse_box_loss_matches_darknet_formula():
    # A 16x16 px truth centred at (20, 13) px: anchor 2 on head 1 (stride 16), cell (0, 1).
    batch = make_batch([[12 / 32, 5 / 32, 28 / 32, 21 / 32]], [0])
    _, m = loss_fn(zeros_outputs(), batch, SIMPLE, SIMPLE_OPTIONS)
    s = SIMPLE[1].scale_x_y
    pred = s * 0.5 - (s - 1) / 2  # x' with tx = 0
    tx, ty = 20 / 16 - 1, 13 / 16 - 0  # truth.x * lw - i
    tw = th = math.log(16 / 16)
    wh = (16 / 32) * (16 / 32)
    expected = 0.5 * 0.75 * (2 - wh) * ((pred - tx) ** 2 + (pred - ty) ** 2 + tw**2 + th**2)
    np.testing.assert_allclose(float(m["box"]), expected, rtol=1e-5)


def _finite_tree(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


_grad_jit = jax.jit(
    jax.grad(losses.yolo_loss, has_aux=True), static_argnames=("heads", "options", "image_hw")
)
# CIoU with a tiny max_delta on head 0, MSE (never clipped, as darknet) on head 1.
CLIPPED = make_heads(box_losses=("ciou", "mse"), max_delta=1e-3)


def clipped_grads(outputs, batch):
    return _grad_jit(outputs, batch, heads=CLIPPED, options=DEFAULT_OPTIONS, image_hw=CANVAS)


@pytest.mark.parametrize(
    ("rows", "mask"),
    [
        ([[0.0] * 4] * 3, [False] * 3),  # empty image
        ([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.9], [0, 0, 1, 1]], [True] * 3),  # degenerate
        ([[0.3, 0.3, 0.6, 0.6]] * 3, [True] * 3),  # duplicates
    ],
)
def test_loss_and_grads_finite_on_empty_and_degenerate_batches(rows, mask):
    batch = {
        "boxes": jnp.asarray([rows], jnp.float32),
        "labels": jnp.zeros((1, 3), jnp.int32),
        "mask": jnp.asarray([mask]),
    }
    rng = np.random.default_rng(0)
    outputs = tuple(
        jnp.asarray(30.0 * rng.standard_normal(x.shape), jnp.float32) for x in zeros_outputs()
    )
    grads, metrics = clipped_grads(outputs, batch)
    assert _finite_tree((metrics, grads))


def test_max_delta_clips_iou_box_gradients():
    batch = make_batch(ROWS, LABELS)
    grads, _ = clipped_grads(tuple(3.0 * jnp.ones_like(x) for x in zeros_outputs()), batch)
    box_grads = [g.reshape(*g.shape[:3], 2, 7)[..., :4] for g in grads]
    assert 0 < float(jnp.abs(box_grads[0]).max()) <= 1e-3 * (1 + 1e-6)
    assert float(jnp.abs(box_grads[1]).max()) > 1e-2  # the MSE head is not clipped


def test_empty_mask_is_pure_no_object_loss_and_differentiable_wrt_input():
    # What Self-Adversarial Training relies on: no truths -> only BCE(obj, 0) remains.
    batch = make_batch([[0.3, 0.3, 0.6, 0.6]], [1])
    batch["mask"] = jnp.zeros_like(batch["mask"])
    rng = np.random.default_rng(1)
    weights = [jnp.asarray(4.0 * rng.standard_normal((3, 14)), jnp.float32) for _ in GRIDS]

    def suppress(image):
        # A toy "network": average-pool to each grid, then a 1x1 projection.
        outs = []
        for (gh, gw), w in zip(GRIDS, weights, strict=True):
            pooled = image.reshape(1, gh, 32 // gh, gw, 32 // gw, 3).mean(axis=(2, 4))
            outs.append(jnp.einsum("bhwc,cd->bhwd", pooled, w))
        loss, metrics = losses.yolo_loss(outs, batch, HEADS, DEFAULT_OPTIONS, image_hw=CANVAS)
        return loss, (metrics, outs)

    image = jnp.asarray(rng.uniform(size=(1, 32, 32, 3)), jnp.float32)
    value_and_grad = jax.jit(jax.value_and_grad(suppress, has_aux=True))
    (loss, (m, raw)), grad = value_and_grad(image)
    obj_logits = [np.asarray(r, np.float64).reshape(*r.shape[:3], 2, 7)[..., 4] for r in raw]
    expected = sum(np.logaddexp(0.0, x).sum() for x in obj_logits)  # sum of BCE(obj, 0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(m["box"]) == 0.0 and float(m["cls"]) == 0.0 and float(m["num_positives"]) == 0
    assert _finite_tree(grad) and np.abs(np.asarray(grad)).max() > 0
    # A step against the gradient lowers the detector's objectness.
    (loss2, _), _ = value_and_grad(image - 0.5 * grad)
    assert float(loss2) < float(loss)


def test_loss_traced_once_per_shape():
    @jax.jit
    @chex.assert_max_traces(n=2)
    def step(outputs, batch):  # one head keeps the compilations cheap
        return losses.yolo_loss(outputs, batch, HEADS[:1], DEFAULT_OPTIONS, image_hw=CANVAS)

    batch = make_batch(ROWS, LABELS)
    step(zeros_outputs()[:1], batch)
    step((zeros_outputs()[0] + 1.0,), make_batch(ROWS[:1], [0]))
    two = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)
    step(zeros_outputs(2)[:1], two)  # a new batch size: the second and last trace
    step((zeros_outputs(2)[0] - 1.0,), two)


def test_loss_decreases_with_sgd_on_raw_outputs():
    batch = make_batch(ROWS, LABELS)

    @jax.jit
    def train(outputs):
        grad_fn = jax.value_and_grad(
            lambda o: losses.yolo_loss(o, batch, HEADS, DEFAULT_OPTIONS, image_hw=CANVAS),
            has_aux=True,
        )

        def body(o, _):
            (loss, m), g = grad_fn(o)
            return jax.tree.map(lambda p, d: p - 1.0 * d, o, g), (loss, m["box"])

        return jax.lax.scan(body, outputs, None, length=150)

    _, (loss, box) = train(zeros_outputs())
    assert float(loss[-1]) < 0.2 * float(loss[0])
    assert float(box[-1]) < 0.5 * float(box[0])


def test_loss_options_from_config():
    config = base_config()
    options = losses.loss_options(config.loss)
    assert options == losses.LossOptions()  # None everywhere: the heads' cfg values
    resolved = options.resolve(HEADS)
    assert resolved == HEADS
    config.loss.box_loss = "giou"
    config.loss.iou_normalizer = 0.5
    resolved = losses.loss_options(config.loss).resolve(HEADS)
    assert [h.iou_loss for h in resolved] == ["giou", "giou"]
    assert [h.iou_normalizer for h in resolved] == [0.5, 0.5]
    assert resolved[0] == dataclasses.replace(HEADS[0], iou_loss="giou", iou_normalizer=0.5)
    with pytest.raises(ValueError, match="box_loss"):
        losses.LossOptions(box_loss="l1")
    # A bad choice from the command line is the project's one-line error naming the field.
    config.loss.sat_gradient = "autodiff"
    with pytest.raises(ConfigError) as error:
        losses.loss_options(config.loss)
    assert str(error.value) == (
        "config.loss.sat_gradient='autodiff': expected one of ('darknet', 'loss')"
    )


def test_autodiff_box_gradient_is_the_chain_rule_of_the_written_loss():
    # One box in head 0 (grid 4x4, stride 8); its best anchor is (8, 8), cell (1, 2).
    box = [0.25, 0.40, 0.55, 0.70]
    batch = make_batch([box], [1])
    heads = make_heads(iou_thresh=1.0)  # a single positive
    outputs = zeros_outputs()

    def grads(kind):
        options = dataclasses.replace(DEFAULT_OPTIONS, box_gradient=kind)
        return jax.grad(lambda o: loss_fn(o, batch, heads, options)[0])(outputs)

    darknet, autodiff = grads("darknet")[0], grads("autodiff")[0]
    assert float(jnp.abs(darknet[..., :4]).max()) > 0
    cell = np.argwhere(np.abs(np.asarray(autodiff[0, ..., :4])).sum(-1) > 0)
    assert cell.tolist() == [[2, 1]]
    g_ad = np.asarray(autodiff[0, 2, 1, :4])

    # d(iou_normalizer * (1 - CIoU)) / d(x, y, w, h) of the decoded box; tx = 0 decodes to
    # the cell centre, tw = 0 to the anchor.
    def box_loss(xywh):
        pred = box_ops_xywh_to_xyxy(xywh)
        return 0.07 * (1.0 - losses.box_ops.ciou(pred, jnp.asarray(box)))

    xywh = jnp.asarray([1.5 / 4, 2.5 / 4, 8 / 32, 8 / 32])
    # The chain factors: scale_x_y * sigmoid'(0) / grid for x, y; anchor / net * exp(0) for
    # w, h.
    factors = np.asarray([1.2 * 0.25 / 4, 1.2 * 0.25 / 4, 8 / 32, 8 / 32])
    np.testing.assert_allclose(g_ad, jax.grad(box_loss)(xywh) * factors, rtol=1e-4, atol=1e-8)
    # The forward value does not depend on the choice.
    values = [
        float(
            loss_fn(outputs, batch, heads, dataclasses.replace(DEFAULT_OPTIONS, box_gradient=k))[0]
        )
        for k in ("darknet", "autodiff")
    ]
    assert values[0] == values[1]


def box_ops_xywh_to_xyxy(xywh):
    return jnp.concatenate([xywh[:2] - xywh[2:] / 2, xywh[:2] + xywh[2:] / 2])
