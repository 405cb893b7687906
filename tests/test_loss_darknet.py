"""``jax.grad`` of `losses.yolo_loss` at the heads against darknet's own deltas.

The reference is `darknet_yolo_reference`, a NumPy port of darknet's forward_yolo_layer
that shares no code with the project. darknet's ``l.delta`` is minus the gradient of the
summed loss; the project averages over the batch, so ``-grad * B`` must equal it, entry
group by entry group (x, y, w, h, objectness, classes), for yolov4, yolov4-tiny and
yolov4-csp heads and every box loss, with the ignore rule, iou_thresh anchors, collisions,
label smoothing, objectness_smooth and max_delta in play.
"""

from __future__ import annotations

import dataclasses

import darknet_yolo_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax.detection import losses, sat
from yolov4_jax.models import specs

CANVAS = 64
CLASSES = 3
BATCH, MAX_BOXES = 2, 7
_V4_ANCHORS = (12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401)
_TINY_ANCHORS = (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)

# Per family: strides, masks, anchors (scaled from 608 to the canvas), options for all
# heads, and per-head options; the values are those of the shipped cfgs.
FAMILIES = {
    "yolov4": dict(
        strides=(8, 16, 32),
        masks=((0, 1, 2), (3, 4, 5), (6, 7, 8)),
        anchors=_V4_ANCHORS,
        common=dict(ignore_thresh=0.7, iou_thresh=0.213, iou_normalizer=0.07, max_delta=5.0),
        per_head=(dict(scale_x_y=1.2), dict(scale_x_y=1.1), dict(scale_x_y=1.05)),
    ),
    "tiny": dict(
        strides=(32, 16),
        masks=((3, 4, 5), (1, 2, 3)),
        anchors=_TINY_ANCHORS,
        common=dict(ignore_thresh=0.7, iou_normalizer=0.07, scale_x_y=1.05),
        per_head=({}, {}),
    ),
    "csp": dict(
        strides=(8, 16, 32),
        masks=((0, 1, 2), (3, 4, 5), (6, 7, 8)),
        anchors=_V4_ANCHORS,
        common=dict(
            new_coords=True,
            scale_x_y=2.0,
            ignore_thresh=0.7,
            iou_thresh=0.2,
            iou_normalizer=0.05,
            cls_normalizer=0.5,
        ),
        per_head=(
            dict(obj_normalizer=4.0, objectness_smooth=False, max_delta=5.0),
            dict(obj_normalizer=1.0, objectness_smooth=True, max_delta=5.0),
            dict(obj_normalizer=0.4, objectness_smooth=True, max_delta=2.0),
        ),
    ),
}


def _anchors(family):
    flat = np.asarray(FAMILIES[family]["anchors"], np.float64) * CANVAS / 608
    return tuple(float(round(v, 3)) for v in flat)


def heads_of(family: str, box_loss: str, **extra):
    """(project `specs.Yolo` heads, reference `YoloLayer`s) with the same values."""
    fam = FAMILIES[family]
    flat = _anchors(family)
    pairs = tuple(zip(flat[0::2], flat[1::2], strict=True))
    ours, theirs = [], []
    for mask, per_head in zip(fam["masks"], fam["per_head"], strict=True):
        values = {**fam["common"], **per_head, **extra, "iou_loss": box_loss}
        ours.append(specs.Yolo(mask=mask, anchors=pairs, classes=CLASSES, **values))
        theirs.append(
            ref.YoloLayer(
                mask=mask,
                biases=flat,
                classes=CLASSES,
                scale_x_y=values.get("scale_x_y", 1.0),
                new_coords=int(values.get("new_coords", False)),
                ignore_thresh=values["ignore_thresh"],
                iou_thresh=values.get("iou_thresh", 1.0),
                iou_thresh_kind=values.get("iou_thresh_kind", "iou"),
                iou_normalizer=values["iou_normalizer"],
                obj_normalizer=values.get("obj_normalizer", 1.0),
                cls_normalizer=values.get("cls_normalizer", 1.0),
                max_delta=values.get("max_delta", ref.FLT_MAX),
                objectness_smooth=int(values.get("objectness_smooth", False)),
                label_smooth_eps=values.get("label_smooth_eps", 0.0),
                iou_loss=box_loss,
            )
        )
    return tuple(ours), theirs


def make_truths(seed: int):
    """``[B, M, 5]`` (x, y, w, h, class) rows; image 0 has two collisions, image 1 padding."""
    rng = np.random.default_rng(seed)
    truths = np.zeros((BATCH, MAX_BOXES, 5))
    counts = (MAX_BOXES, 4)
    for b, count in enumerate(counts):
        for t in range(count):
            w, h = np.exp(rng.uniform(np.log(0.02), np.log(0.7), size=2))
            x, y = rng.uniform(0.05, 0.95, size=2)
            truths[b, t] = (x, y, w, h, rng.integers(CLASSES))
    # Collisions on image 0: row 1 shares row 0's cell and anchor with another class,
    # row 2 with the same class.
    truths[0, 1, :4] = truths[0, 0, :4] * (1.0, 1.0, 1.03, 0.98)
    truths[0, 1, 4] = (truths[0, 0, 4] + 1) % CLASSES
    truths[0, 2, :4] = truths[0, 0, :4] * (1.0, 1.0, 0.98, 1.02)
    truths[0, 2, 4] = truths[0, 0, 4]
    return truths


def make_outputs(seed: int, ours, truths):
    """Random raw head outputs, with predictions planted near truths (the ignore rule fires)."""
    rng = np.random.default_rng(seed + 100)
    outputs = []
    for head, stride in zip(ours, _strides(ours), strict=True):
        grid = CANVAS // stride
        entries = 5 + CLASSES
        raw = rng.normal(0.0, 1.0, size=(BATCH, grid, grid, len(head.mask), entries))
        if head.new_coords:
            raw = 1.0 / (1.0 + np.exp(-raw))  # the conv applied the logistic
        s = head.scale_x_y
        for b in range(BATCH):
            for x, y, w, h, _ in truths[b]:
                if not x:
                    break
                col, row = int(x * grid), int(y * grid)
                for a, (aw, ah) in enumerate(head.head_anchors):
                    if rng.random() < 0.4:
                        continue
                    off = (np.asarray([x * grid - col, y * grid - row]) + 0.5 * (s - 1)) / s
                    off = np.clip(off + rng.normal(0, 0.03, 2), 0.02, 0.98)
                    ratio = np.asarray([w, h]) * CANVAS / np.asarray([aw, ah])
                    ratio = ratio * np.exp(rng.normal(0, 0.1, 2))
                    if head.new_coords:
                        raw[b, row, col, a, :2] = off
                        raw[b, row, col, a, 2:4] = np.clip(np.sqrt(ratio / 4), 0.01, 0.99)
                        raw[b, row, col, a, 5 + rng.integers(CLASSES)] = 0.8
                    else:
                        raw[b, row, col, a, :2] = np.log(off / (1 - off))
                        raw[b, row, col, a, 2:4] = np.log(ratio)
                        raw[b, row, col, a, 5 + rng.integers(CLASSES)] = 2.0
        outputs.append(raw.reshape(BATCH, grid, grid, -1).astype(np.float32))
    return outputs


def _strides(ours):
    for fam in FAMILIES.values():
        if len(fam["strides"]) == len(ours) and bool(fam["common"].get("new_coords")) == bool(
            ours[0].new_coords
        ):
            return fam["strides"]
    raise AssertionError("unknown family")


def project_deltas(outputs, truths, ours, options):
    """``-grad * B`` of the project's loss at each head."""
    centre, size = truths[..., :2], truths[..., 2:4]
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], -1)
    batch = {
        "boxes": jnp.asarray(xyxy, jnp.float32),
        "labels": jnp.asarray(truths[..., 4], jnp.int32),
        "mask": jnp.asarray(truths[..., 0] != 0),
    }

    def loss(outs):
        return losses.yolo_loss(outs, batch, ours, options, image_hw=(CANVAS, CANVAS))[0]

    grads = jax.jit(jax.grad(loss))([jnp.asarray(o) for o in outputs])
    return [-np.asarray(g, np.float64) * BATCH for g in grads]


GROUPS = {"x": slice(0, 1), "y": slice(1, 2), "w": slice(2, 3), "h": slice(3, 4)}
GROUPS.update({"obj": slice(4, 5), "cls": slice(5, None)})


def assert_deltas_match(ours_delta, ref_delta, num_anchors, where):
    ours_delta = ours_delta.reshape(*ours_delta.shape[:3], num_anchors, -1)
    ref_delta = ref_delta.reshape(*ref_delta.shape[:3], num_anchors, -1)
    for name, group in GROUPS.items():
        a, r = ours_delta[..., group], ref_delta[..., group]
        scale = np.abs(r).max()
        err = np.abs(a - r).max() / max(scale, 1e-30)
        assert err <= 1e-4 or np.abs(a - r).max() < 1e-7, (
            f"{where} {name}: relative error {err:.2e} (reference max {scale:.3g})"
        )


DARKNET_OPTIONS = losses.LossOptions()


def run_case(family, box_loss, seed=0, options=DARKNET_OPTIONS, **extra):
    ours, theirs = heads_of(family, box_loss, **extra)
    truths = make_truths(seed)
    outputs = make_outputs(seed, ours, truths)
    got = project_deltas(outputs, truths, ours, options)
    for k, (layer, raw) in enumerate(zip(theirs, outputs, strict=True)):
        want = ref.yolo_deltas(layer, raw, truths, CANVAS, CANVAS)
        assert_deltas_match(got[k], want, len(layer.mask), f"{family}/{box_loss} head {k}")
        box = want.reshape(*want.shape[:3], len(layer.mask), -1)[..., :4]
        assert np.count_nonzero(np.abs(box).sum(-1)) > 0, f"head {k} has no positive"


@pytest.mark.parametrize("box_loss", ["mse", "iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("family", ["yolov4", "tiny", "csp"])
def test_gradient_is_darknets_delta(family, box_loss):
    run_case(family, box_loss)


def test_label_smoothing_and_objectness_smooth_as_darknet():
    run_case("yolov4", "ciou", seed=1, label_smooth_eps=0.1, objectness_smooth=True)


def test_max_delta_clips_each_truth_before_collisions_add_up():
    run_case("yolov4", "giou", seed=2, max_delta=0.004)


def test_iou_thresh_kind_and_other_seeds():
    run_case("csp", "diou", seed=3, iou_thresh_kind="ciou", label_smooth_eps=0.05)
    run_case("yolov4", "ciou", seed=4)


def test_ignore_rule_fires_in_the_cases():
    """The planted predictions make the ignore rule and objectness_smooth matter."""
    ours, theirs = heads_of("yolov4", "ciou")
    truths = make_truths(0)
    outputs = make_outputs(0, ours, truths)
    ignored = 0
    for layer, raw in zip(theirs, outputs, strict=True):
        delta = ref.yolo_deltas(layer, raw, truths, CANVAS, CANVAS)
        obj = delta.reshape(*delta.shape[:3], len(layer.mask), -1)[..., 4]
        ignored += int(np.count_nonzero(obj == 0))
    assert ignored >= 3


def test_autodiff_and_bce_differ_from_darknet_where_darknet_has_quirks():
    """The alternatives are live: autodiff box gradients and BCE on probabilities."""
    ours, theirs = heads_of("csp", "ciou")
    truths = make_truths(0)
    outputs = make_outputs(0, ours, truths)
    want = [
        ref.yolo_deltas(layer, raw, truths, CANVAS, CANVAS).reshape(*raw.shape[:3], 3, -1)
        for layer, raw in zip(theirs, outputs, strict=True)
    ]
    exact = dataclasses.replace(losses.LossOptions(), box_gradient="autodiff")
    got = project_deltas(outputs, truths, ours, exact)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.reshape(w.shape)
        assert np.abs(w[..., :4]).max() > 0, f"head {k} has no positive"
        assert np.abs(g[..., :4] - w[..., :4]).max() > 0.1 * np.abs(w[..., :4]).max()
        np.testing.assert_allclose(g[..., 4:], w[..., 4:], rtol=1e-4, atol=1e-6)
    bce = dataclasses.replace(losses.LossOptions(), obj_cls_gradient="bce")
    got = project_deltas(outputs, truths, ours, bce)[0].reshape(want[0].shape)
    p = outputs[0].reshape(want[0].shape)[..., 4].astype(np.float64)
    # Head 0 (no objectness_smooth): BCE on the probability is darknet's delta / p (1 - p).
    np.testing.assert_allclose(got[..., 4], want[0][..., 4] / (p * (1 - p)), rtol=2e-3, atol=1e-5)


def _sat_deltas(outputs, ours, options):
    """Minus the gradient of SAT's first-stage objective at each head."""

    def objective(outs):
        return sat.adversarial_objective(outs, ours, options, (CANVAS, CANVAS))

    grads = jax.jit(jax.grad(objective))([jnp.asarray(o) for o in outputs])
    return [-np.asarray(g, np.float64) for g in grads]


@pytest.mark.parametrize("family", ["yolov4", "tiny", "csp"])
def test_sat_gradient_is_darknets_adversarial_delta(family):
    """SAT's first stage (no truths, state.net.adversarial): objectness down by the box's
    sqrt(area), confident classes to 0 and the others to 1, their boxes to 0, averaged over
    the positive classes where iou_thresh < 1 (yolov4's heads)."""
    ours, theirs = heads_of(family, "ciou")
    truths = make_truths(0)
    outputs = make_outputs(0, ours, truths)
    got = _sat_deltas(outputs, ours, DARKNET_OPTIONS)
    no_truths = np.zeros_like(truths)
    found = predictions = 0
    for k, (layer, raw) in enumerate(zip(theirs, outputs, strict=True)):
        want = ref.yolo_deltas(layer, raw, no_truths, CANVAS, CANVAS, adversarial=True)
        assert_deltas_match(got[k], want, len(layer.mask), f"{family} SAT head {k}")
        box = want.reshape(*want.shape[:3], len(layer.mask), -1)[..., :4]
        found += int(np.count_nonzero(np.abs(box).sum(-1)))
        predictions += box[..., 0].size
    assert 0 < found < predictions  # both branches (an object found or not) are exercised


def test_sat_gradient_loss_is_darknets_plain_delta_without_truths():
    """sat_gradient="loss": the loss against an empty ground truth, whose gradient is darknet's
    ordinary delta with no truths (objectness alone, no sqrt(area), no class or box push)."""
    ours, theirs = heads_of("yolov4", "ciou")
    truths = np.zeros((BATCH, MAX_BOXES, 5))
    outputs = make_outputs(0, ours, make_truths(0))
    options = dataclasses.replace(DARKNET_OPTIONS, sat_gradient="loss")
    got = _sat_deltas(outputs, ours, options)
    for k, (layer, raw) in enumerate(zip(theirs, outputs, strict=True)):
        want = ref.yolo_deltas(layer, raw, truths, CANVAS, CANVAS)
        assert_deltas_match(got[k], want, len(layer.mask), f"loss SAT head {k}")
        adversarial = ref.yolo_deltas(layer, raw, truths, CANVAS, CANVAS, adversarial=True)
        assert np.abs(adversarial - want).max() > 0.1 * np.abs(want).max()
