"""Tests for yolov4_jax.detection.boxes: hand-computed values, gradients, degenerate cases, jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from yolov4_jax.detection import boxes as B

FUNCS = {"iou": B.iou, "giou": B.giou, "diou": B.diou, "ciou": B.ciou}
SQ3 = math.sqrt(3.0)

# (a, b, {name: expected}); arithmetic in the comments.
CASES = {
    # Identical: I = U = 4, enclosing box = a, centres coincide, same aspect.
    "identical": ([0, 0, 2, 2], [0, 0, 2, 2], dict(iou=1.0, giou=1.0, diou=1.0, ciou=1.0)),
    # Partial overlap: I = 1*1 = 1, U = 4 + 4 - 1 = 7, iou = 1/7.
    # Enclosing (0,0,3,3): C = 9, giou = 1/7 - (9-7)/9 = -5/63.
    # Centres (1,1), (2,2): rho^2 = 2, c^2 = 3^2 + 3^2 = 18, diou = 1/7 - 1/9 = 2/63.
    # Both square: v = 0, ciou = diou.
    "partial": (
        [0, 0, 2, 2],
        [1, 1, 3, 3],
        dict(iou=1 / 7, giou=-5 / 63, diou=2 / 63, ciou=2 / 63),
    ),
    # Disjoint: I = 0, U = 2. Enclosing (0,0,3,1): C = 3, giou = 0 - (3-2)/3 = -1/3.
    # Centres (0.5,0.5), (2.5,0.5): rho^2 = 4, c^2 = 9 + 1 = 10, diou = -0.4. Same aspect.
    "disjoint": (
        [0, 0, 1, 1],
        [2, 0, 3, 1],
        dict(iou=0.0, giou=-1 / 3, diou=-0.4, ciou=-0.4),
    ),
    # Nested, concentric: I = 4, U = 16, iou = 0.25; enclosing = a so C = U; rho = 0; v = 0.
    "nested": ([0, 0, 4, 4], [1, 1, 3, 3], dict(iou=0.25, giou=0.25, diou=0.25, ciou=0.25)),
    # Nested, different aspect: b = (0,0,sqrt3,1) inside a = (0,0,2,2).
    # I = sqrt3, U = 4, iou = sqrt3/4; enclosing = a so giou = iou.
    # Centres (1,1), (sqrt3/2, 1/2): rho^2 = (1 - sqrt3/2)^2 + 1/4 = 2 - sqrt3; c^2 = 8.
    # atan(1) = pi/4, atan(sqrt3) = pi/3: v = 4/pi^2 * (pi/12)^2 = 1/36,
    # alpha = (1/36) / (1 - sqrt3/4 + 1/36).
    "nested_aspect": (
        [0, 0, 2, 2],
        [0, 0, SQ3, 1],
        dict(
            iou=SQ3 / 4,
            giou=SQ3 / 4,
            diou=SQ3 / 4 - (2 - SQ3) / 8,
            ciou=SQ3 / 4 - (2 - SQ3) / 8 - (1 / 36) ** 2 / (1 - SQ3 / 4 + 1 / 36),
        ),
    ),
    # Point (zero area) at the centre of b: I = 0, U = 4, iou = 0; enclosing = b so
    # C = U, giou = 0; rho = 0, diou = 0. The point's aspect angle is defined as 0 and b's
    # is pi/4: v = 4/pi^2 * (pi/4)^2 = 1/4, alpha = 0.25 / (1 - 0 + 0.25) = 0.2,
    # ciou = 0 - 0.2 * 0.25 = -0.05.
    "point_in_box": ([1, 1, 1, 1], [0, 0, 2, 2], dict(iou=0.0, giou=0.0, diou=0.0, ciou=-0.05)),
    # Two identical points: U = 0 and C = c^2 = 0, every guarded ratio is 0 (box_iou returns
    # 0 for an empty union), both aspect angles are 0.
    "same_point": ([1, 1, 1, 1], [1, 1, 1, 1], dict(iou=0.0, giou=0.0, diou=0.0, ciou=0.0)),
    # Zero-height line (0,0)-(2,0) against the square (0,0,2,2): I = 0, U = 4, enclosing = b,
    # giou = 0. Centres (1,0), (1,1): rho^2 = 1, c^2 = 8, diou = -1/8.
    # atan2(2, 0) = pi/2 vs pi/4: v = 4/pi^2 * (pi/4)^2 = 1/4, alpha = 0.25/1.25 = 0.2.
    "line": (
        [0, 0, 2, 0],
        [0, 0, 2, 2],
        dict(iou=0.0, giou=0.0, diou=-1 / 8, ciou=-1 / 8 - 0.05),
    ),
}

DEGENERATE = ["identical", "disjoint", "nested", "point_in_box", "same_point", "line"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_values(case: str, name: str) -> None:
    a, b, expected = CASES[case]
    got = FUNCS[name](jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert got.shape == ()
    np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_symmetric_and_bounded(name: str) -> None:
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 1, (64, 2))
    a = np.concatenate([lo, lo + rng.uniform(0, 1, (64, 2))], -1).astype(np.float32)
    lo = rng.uniform(0, 1, (64, 2))
    b = np.concatenate([lo, lo + rng.uniform(0, 1, (64, 2))], -1).astype(np.float32)
    ab, ba = FUNCS[name](a, b), FUNCS[name](b, a)
    np.testing.assert_allclose(ab, ba, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(ab) <= 1 + 1e-6) and np.all(np.asarray(ab) >= -2.0)


def test_broadcasting_and_pairwise() -> None:
    a = jnp.asarray([[0, 0, 2, 2], [0, 0, 1, 1]], jnp.float32)  # [2, 4]
    b = jnp.asarray([[0, 0, 2, 2], [1, 1, 3, 3], [2, 0, 3, 1]], jnp.float32)  # [3, 4]
    pair = B.pairwise_iou(a, b)
    assert pair.shape == (2, 3)
    # Row 0: identical 1, partial 1/7, touching at x=2 -> 0.
    # Row 1: (0,0,1,1) in (0,0,2,2): 1/4; touches (1,1,3,3) at a corner -> 0; disjoint -> 0.
    np.testing.assert_allclose(pair, [[1, 1 / 7, 0], [0.25, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(pair, B.iou(a[:, None], b[None]), atol=0)
    pen = B.pairwise_diou_penalty(a, b)
    # (0,0,2,2) vs (1,1,3,3): rho^2 = 2, c^2 = 18 -> 1/9.
    # (0,0,1,1) vs (2,0,3,1): centres (0.5,0.5), (2.5,0.5): rho^2 = 4, enclosing (0,0,3,1):
    # c^2 = 10 -> 0.4.
    np.testing.assert_allclose(pen[0, 1], 1 / 9, rtol=1e-6)
    np.testing.assert_allclose(pen[1, 2], 0.4, rtol=1e-6)
    np.testing.assert_allclose(pen[0, 0], 0.0, atol=0)


def test_conversions_round_trip() -> None:
    xywh = jnp.asarray([[1.0, 2.0, 4.0, 2.0]])
    # cx=1, w=4 -> x in [-1, 3]; cy=2, h=2 -> y in [1, 3].
    np.testing.assert_allclose(B.xywh_to_xyxy(xywh), [[-1, 1, 3, 3]])
    np.testing.assert_allclose(B.xyxy_to_xywh(B.xywh_to_xyxy(xywh)), xywh)
    # Integer input is promoted to float.
    np.testing.assert_allclose(B.xyxy_to_xywh(jnp.asarray([0, 0, 3, 1])), [1.5, 0.5, 3, 1])


@pytest.mark.parametrize("name", ["iou", "giou", "diou"])
def test_check_grads(name: str) -> None:
    # Generic overlap with no ties among coordinates (max/min are smooth here).
    with jax.enable_x64(True):
        a = jnp.asarray([0.1, 0.2, 0.7, 0.9], jnp.float64)
        b = jnp.asarray([0.3, 0.05, 1.1, 0.6], jnp.float64)
        check_grads(FUNCS[name], (a, b), order=1, modes=["rev"])


def test_ciou_grad_treats_alpha_as_constant() -> None:
    # With alpha frozen at its value at (a, b), ciou's autodiff gradient must equal the
    # true gradient of diou - alpha * v, which check_grads verifies numerically.
    def aspect_v(a: jax.Array, b: jax.Array) -> jax.Array:
        wa, ha = a[2] - a[0], a[3] - a[1]
        wb, hb = b[2] - b[0], b[3] - b[1]
        return 4 / math.pi**2 * (jnp.arctan(wb / hb) - jnp.arctan(wa / ha)) ** 2

    with jax.enable_x64(True):
        a = jnp.asarray([0.1, 0.2, 0.7, 0.9], jnp.float64)
        b = jnp.asarray([0.3, 0.05, 1.1, 0.6], jnp.float64)
        v = aspect_v(a, b)
        alpha = v / (1 - B.iou(a, b) + v)
        assert v > 1e-3  # the aspect term is active

        def frozen(a: jax.Array, b: jax.Array) -> jax.Array:
            return B.diou(a, b) - alpha * aspect_v(a, b)

        np.testing.assert_allclose(B.ciou(a, b), frozen(a, b), rtol=1e-12)
        check_grads(frozen, (a, b), order=1, modes=["rev"])
        for arg in (0, 1):
            np.testing.assert_allclose(
                jax.grad(B.ciou, arg)(a, b), jax.grad(frozen, arg)(a, b), rtol=1e-10, atol=1e-12
            )


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_degenerate_values_and_grads_finite(case: str, name: str) -> None:
    a, b, _ = CASES[case]
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    value, grads = jax.value_and_grad(FUNCS[name], argnums=(0, 1))(a, b)
    assert np.isfinite(value)
    for g in grads:
        assert np.all(np.isfinite(g)), (case, name, g)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_jit_matches_eager_and_batched(name: str) -> None:
    names = sorted(CASES)
    a = jnp.asarray([CASES[c][0] for c in names], jnp.float32)  # [8, 4]
    b = jnp.asarray([CASES[c][1] for c in names], jnp.float32)  # [8, 4]
    expected = [CASES[c][2][name] for c in names]
    got = jax.jit(FUNCS[name])(a, b)
    assert got.shape == (len(names),)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # The summed loss over a batch of degenerate boxes still has finite gradients.
    grads = jax.jit(jax.grad(lambda a, b: jnp.sum(FUNCS[name](a, b)), argnums=(0, 1)))(a, b)
    assert all(np.all(np.isfinite(g)) for g in grads)
