"""Darknet's target assignment (yolo_layer.c::forward_yolo_layer) on hand-made cases."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax.detection import targets as targets_lib
from yolov4_jax.models import specs

CANVAS = (64, 64)  # (H, W) pixels
GRIDS = ((8, 8), (4, 4), (2, 2))  # strides 8, 16, 32
# Anchor sizes picked so that the shape IoUs below are easy to compute by hand.
ANCHORS = (
    (8.0, 8.0), (16.0, 4.0), (4.0, 16.0),
    (16.0, 16.0), (32.0, 8.0), (8.0, 32.0),
    (32.0, 32.0), (64.0, 16.0), (16.0, 64.0),
)  # fmt: skip
NUM_CLASSES = 3


def make_heads(iou_thresh: float = 1.0, masks=((0, 1, 2), (3, 4, 5), (6, 7, 8))):
    return tuple(
        specs.Yolo(mask=m, anchors=ANCHORS, classes=NUM_CLASSES, iou_thresh=iou_thresh)
        for m in masks
    )


def box_px(cx: float, cy: float, w: float, h: float) -> list[float]:
    """xyxy normalised to the canvas from a centre in [0, 1] and a size in pixels."""
    w, h = w / CANVAS[1], h / CANVAS[0]
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


# One compilation per head configuration: every case is padded to MAX_BOXES rows.
MAX_BOXES = 6
_assign_jit = jax.jit(targets_lib.assign_targets, static_argnums=(3, 4, 5))


def assign(rows, labels, mask=None, heads=None, grids=GRIDS):
    """Targets of one image from a few rows, padded to MAX_BOXES (padding masked out)."""
    pad = MAX_BOXES - len(rows)
    mask = [True] * len(rows) if mask is None else list(mask)
    boxes = jnp.asarray([list(rows) + [[0.0] * 4] * pad], jnp.float32)
    labels = jnp.asarray([list(labels) + [0] * pad], jnp.int32)
    mask = jnp.asarray([mask + [False] * pad])
    return _assign_jit(boxes, labels, mask, heads or make_heads(), grids, CANVAS)


def positives(targets) -> set[tuple[int, int, int, int]]:
    """{(head, row, col, anchor)} of image 0."""
    out = set()
    for k, t in enumerate(targets):
        for r, c, a in np.argwhere(np.asarray(t.object_mask[0])):
            out.add((k, int(r), int(c), int(a)))
    return out


def test_shape_iou_matches_hand_values():
    wh = jnp.asarray([12.0, 12.0])
    got = targets_lib.shape_iou(wh, jnp.asarray(ANCHORS))
    expected = [64 / 144, 48 / 160, 48 / 160, 144 / 256, 96 / 304, 96 / 304, 144 / 1024]
    np.testing.assert_allclose(got[:7], expected, rtol=1e-6)


def test_best_anchor_alone_without_iou_thresh():
    # 16x16 px matches anchor 3 exactly: head 1, mask slot 0; cell (floor(.6*4), floor(.3*4)).
    t = assign([box_px(0.3, 0.6, 16, 16)], [2])
    assert positives(t) == {(1, 2, 1, 0)}
    np.testing.assert_allclose(t[1].box[0, 2, 1, 0], box_px(0.3, 0.6, 16, 16), rtol=1e-6)
    np.testing.assert_array_equal(t[1].classes[0, 2, 1, 0], [0, 0, 1])
    assert int(t[1].gt_index[0, 2, 1, 0]) == 0
    assert int(t[1].num_assigned.sum()) == 1
    # Everything else is empty.
    assert float(t[1].classes.sum()) == 1.0 and float(t[0].box.sum()) == 0.0


def test_several_anchors_of_one_head_above_iou_thresh():
    # 16x16 px: IoU 1 with anchor 3, 1/3 with anchors 4 and 5, 1/4 with 0, 1, 2, 6, 7, 8.
    t = assign([box_px(0.3, 0.6, 16, 16)], [0], heads=make_heads(iou_thresh=0.3))
    assert positives(t) == {(1, 2, 1, 0), (1, 2, 1, 1), (1, 2, 1, 2)}
    # darknet's 0.213 also takes every anchor at IoU 1/4, on all three heads.
    t = assign([box_px(0.3, 0.6, 16, 16)], [0], heads=make_heads(iou_thresh=0.213))
    assert len(positives(t)) == 9
    assert {(k, a) for k, _, _, a in positives(t)} == {(k, a) for k in range(3) for a in range(3)}


def test_extra_anchor_on_another_head_uses_that_heads_cell():
    # 12x12 px: best is anchor 3 (IoU .5625, head 1); anchor 0 (IoU .444, head 0) passes .4;
    # anchors 1, 2 (.3) and 4, 5 (.316) do not.
    t = assign([box_px(0.3, 0.6, 12, 12)], [1], heads=make_heads(iou_thresh=0.4))
    assert positives(t) == {(0, 4, 2, 0), (1, 2, 1, 0)}
    np.testing.assert_allclose(t[0].box[0, 4, 2, 0], t[1].box[0, 2, 1, 0])


def test_best_anchor_on_each_of_several_heads():
    rows = [
        box_px(0.1, 0.1, 8, 8),  # anchor 0 -> head 0 slot 0, cell (0, 0) of 8x8
        box_px(0.5, 0.3, 32, 8),  # anchor 4 -> head 1 slot 1, cell (row 1, col 2) of 4x4
        box_px(0.8, 0.7, 16, 64),  # anchor 8 -> head 2 slot 2, cell (1, 1) of 2x2
    ]
    t = assign(rows, [0, 1, 2])
    assert positives(t) == {(0, 0, 0, 0), (1, 1, 2, 1), (2, 1, 1, 2)}
    assert [int(t[k].gt_index.max()) for k in range(3)] == [0, 1, 2]


def test_collision_later_truth_wins_box_and_classes_are_united():
    first = box_px(0.30, 0.60, 16, 16)
    second = box_px(0.32, 0.62, 17, 15)  # same cell, same best anchor
    t = assign([first, second], [0, 2])
    assert positives(t) == {(1, 2, 1, 0)}
    np.testing.assert_allclose(t[1].box[0, 2, 1, 0], second, rtol=1e-6)
    assert int(t[1].gt_index[0, 2, 1, 0]) == 1
    assert int(t[1].num_assigned[0, 2, 1, 0]) == 2
    np.testing.assert_array_equal(t[1].classes[0, 2, 1, 0], [1, 0, 1])
    # Order decides the box, not the classes: swapping the rows swaps the winner only.
    t2 = assign([second, first], [2, 0])
    np.testing.assert_allclose(t2[1].box[0, 2, 1, 0], first, rtol=1e-6)
    np.testing.assert_array_equal(t2[1].classes[0, 2, 1, 0], [1, 0, 1])


def test_same_cell_different_anchors_do_not_collide():
    t = assign([box_px(0.3, 0.6, 16, 16), box_px(0.3, 0.6, 32, 8)], [0, 1])
    assert positives(t) == {(1, 2, 1, 0), (1, 2, 1, 1)}
    assert int(t[1].num_assigned.max()) == 1


@pytest.mark.parametrize(
    ("cx", "cy", "cell"),
    [
        (0.25, 0.5, (4, 2)),  # exactly on a border: the cell to the right/below (floor)
        (0.125, 0.875, (7, 1)),
        (0.0, 0.0, (0, 0)),  # top-left corner
        (1.0, 1.0, (7, 7)),  # bottom-right corner is clipped into the last cell
        (0.2499, 0.5001, (4, 1)),
    ],
)
def test_centres_on_cell_borders(cx, cy, cell):
    t = assign([box_px(cx, cy, 8, 8)], [0])
    assert positives(t) == {(0, *cell, 0)}


def test_invalid_and_padded_boxes_are_ignored():
    good = box_px(0.3, 0.6, 16, 16)
    rows = [
        good,
        box_px(0.7, 0.2, 8, 8),  # padding row (mask False)
        [0.5, 0.5, 0.5, 0.6],  # zero width
        box_px(0.1, 0.1, 8, 8),  # unknown class
        [0.0, 0.0, 0.0, 0.0],  # all-zero padding
    ]
    t = assign(rows, [1, 0, 0, NUM_CLASSES, 0], mask=[True, False, True, True, True])
    assert positives(t) == {(1, 2, 1, 0)}
    empty = assign(rows, [1, 0, 0, 0, 0], mask=[False] * 5)
    assert positives(empty) == set()
    assert all(float(x.box.sum()) == 0.0 and int(x.gt_index.max()) == -1 for x in empty)


def test_best_anchor_outside_every_mask_is_not_assigned():
    # yolov4-tiny never predicts anchor 0: a box whose best anchor is 0 gets no positive.
    heads = make_heads(masks=((1, 2), (3, 4, 5), (6, 7, 8)))
    t = assign([box_px(0.1, 0.1, 8, 8)], [0], heads=heads)
    assert positives(t) == set()


def test_batch_rows_are_independent():
    heads = make_heads(iou_thresh=0.3)
    rows = [[box_px(0.3, 0.6, 16, 16), box_px(0.8, 0.1, 8, 8)], [box_px(0.1, 0.9, 64, 16)]]
    labels = [[0, 1], [2]]
    pad = [[0.0] * 4] * MAX_BOXES
    boxes = jnp.asarray([(r + pad)[:MAX_BOXES] for r in rows], jnp.float32)
    label_arr = jnp.asarray([(x + [0] * MAX_BOXES)[:MAX_BOXES] for x in labels], jnp.int32)
    mask = jnp.arange(MAX_BOXES)[None, :] < jnp.asarray([[2], [1]])
    both = _assign_jit(boxes, label_arr, mask, heads, GRIDS, CANVAS)
    for b in range(2):
        alone = assign(rows[b], labels[b], heads=heads)
        for x, y in zip(both, alone, strict=True):
            for u, v in zip(x, y, strict=True):
                np.testing.assert_array_equal(u[b], v[0])
    # Image 1's box (anchor 7, head 2) appears only in image 1.
    assert not bool(both[2].object_mask[0].any())
    assert bool(both[2].object_mask[1, 1, 0, 1])


def test_anchor_units_follow_the_canvas():
    # The same normalised box on a 128 px canvas is twice as many pixels: best anchor changes.
    rows = [box_px(0.5, 0.5, 8, 8)]  # 8/64 of the canvas
    small = assign(rows, [0])
    pad = [[0.0] * 4] * (MAX_BOXES - 1)
    big = _assign_jit(
        jnp.asarray([rows + pad], jnp.float32),
        jnp.zeros((1, MAX_BOXES), jnp.int32),
        jnp.arange(MAX_BOXES)[None] < 1,
        make_heads(),
        tuple((h * 2, w * 2) for h, w in GRIDS),
        (128, 128),
    )
    assert positives(small) == {(0, 4, 4, 0)}
    assert positives(big) == {(1, 4, 4, 0)}  # 16x16 px -> anchor 3


def test_heads_must_share_anchors():
    heads = make_heads()
    other = dataclasses.replace(heads[1], anchors=ANCHORS[::-1])
    with pytest.raises(ValueError, match="share"):
        assign([box_px(0.5, 0.5, 8, 8)], [0], heads=(heads[0], other, heads[2]))
