"""Procedural scenes of the embedded datasets, where only an object's shape names its class.

`render_image` draws one detection scene of `CLASS_NAMES`:

- a cluttered background: smooth blotches of any colour, soft patches with their own texture,
  stripes, grain and thin marks;
- 1 to ``max_objects`` objects of uneven class frequency (`CLASS_FREQUENCIES`), each rotated by up
  to 30 degrees, with an aspect ratio of 0.6-1.7 and a size (square root of its box area)
  log-uniform from 8 px to 90% of the image side;
- colour (any hue, saturation and brightness), texture (solid, gradient, stripes, speckle) and
  shading drawn the same way for every class, so that neither colour nor brightness nor texture
  tells the class; only a minimum contrast with the background under the object is kept;
- distractors of no class (star, crescent, chevron, L, bar) painted the same way, before, between
  and after the objects, so they both sit behind and occlude them;
- occlusion by later objects and distractors, and cuts by the image border, each leaving at least
  half of every object's pixels visible.

Boxes are the extent of each object's visible pixels (COCO's convention), so an occluded or cut
object's box covers what can be seen of it.

`render_classification_image` draws the classification counterpart (`CLS_CLASS_NAMES`: the five
shapes times two colour families, so that neither the shape nor the colour alone gives the class).
"""

from __future__ import annotations

import cv2
import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring")
# Uneven on purpose (as in COCO, where a few classes dominate): the most frequent class has about
# four times the objects of the rarest.
CLASS_FREQUENCIES = (0.14, 0.32, 0.08, 0.24, 0.22)
DISTRACTOR_NAMES = ("star", "crescent", "chevron", "ell", "bar")

COLOUR_FAMILIES = ("warm", "cool")
# OpenCV 8-bit hues of each family: red, orange, amber / green, cyan, blue. The families stay
# apart under the default hue augmentation (+-18) plus the per-instance jitter (+-6).
_FAMILY_HUES = ((0, 10, 20), (68, 95, 115))
# Label 2 * shape + family: "circle_warm", "circle_cool", "square_warm", ...
CLS_CLASS_NAMES = tuple(f"{shape}_{family}" for shape in CLASS_NAMES for family in COLOUR_FAMILIES)

_MIN_VISIBLE = 0.5  # of an object's pixels, after occlusion and border cuts
_MIN_CONTRAST = 60.0  # RGB distance between an object's mean colour and the background under it


def render_image(
    rng: np.random.Generator, min_side: int, max_side: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB image with its pixel xyxy boxes [N, 4] and labels [N] (see the module doc)."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    image = _background(rng, h, w)
    _patches(rng, image, int(rng.integers(1, 5)))
    _clutter(rng, image, int(rng.integers(3, 12)))
    owner = np.full((h, w), -1, np.int32)  # which object each pixel shows (-1: none)
    full_area: list[int] = []
    labels: list[int] = []
    num_objects = int(rng.integers(1, max_objects + 1))
    num_distractors = int(rng.integers(0, 5))
    # Objects (>= 0) and distractors (-1) in a random order of painting.
    order = rng.permutation(np.r_[np.zeros(num_objects), -np.ones(num_distractors)].astype(int))
    for kind in order:
        if kind == 0:
            label = int(rng.choice(len(CLASS_NAMES), p=CLASS_FREQUENCIES))
            if _place(rng, image, owner, full_area, label, len(labels)):
                labels.append(label)
        else:
            _place(rng, image, owner, full_area, -1 - int(rng.integers(len(DISTRACTOR_NAMES))), -1)
    _clutter(rng, image, int(rng.integers(0, 3)))  # thin marks over everything
    boxes = np.zeros((len(labels), 4), np.float32)
    for k in range(len(labels)):
        ys, xs = np.nonzero(owner == k)
        boxes[k] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return image, boxes, np.array(labels, np.int32)


def _place(
    rng: np.random.Generator,
    image: np.ndarray,
    owner: np.ndarray,
    full_area: list[int],
    shape: int,
    index: int,
) -> bool:
    """Paints ``shape`` (a class >= 0, or distractor -1 - d) where every object stays visible.

    ``index`` is the object's id in ``owner`` (-1 for a distractor). Returns whether it was painted.
    """
    h, w = owner.shape
    for _attempt in range(20):
        if shape >= 0:
            size = np.exp(rng.uniform(np.log(8), np.log(0.9 * min(h, w))))
        else:
            size = np.exp(rng.uniform(np.log(8), np.log(0.45 * min(h, w))))
        alpha = _shape_alpha(rng, shape, size)
        ch, cw = alpha.shape
        # The centre anywhere from a quarter of the shape outside the image to the other side.
        cy = int(rng.uniform(-0.25 * ch, h + 0.25 * ch)) - ch // 2
        cx = int(rng.uniform(-0.25 * cw, w + 0.25 * cw)) - cw // 2
        y0, x0, y1, x1 = max(cy, 0), max(cx, 0), min(cy + ch, h), min(cx + cw, w)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        a = alpha[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
        solid = a > 0.5
        if not solid.any():
            continue
        area = int((alpha > 0.5).sum())
        if shape >= 0 and solid.sum() < _MIN_VISIBLE * area:
            continue  # cut too much by the border
        hidden = owner[y0:y1, x0:x1][solid]
        counts = np.bincount(hidden[hidden >= 0], minlength=len(full_area))
        visible = np.bincount(owner[owner >= 0], minlength=len(full_area)) if counts.any() else 0
        if counts.any() and np.any(visible - counts < _MIN_VISIBLE * np.array(full_area)):
            continue  # would hide too much of an earlier object
        region = image[y0:y1, x0:x1].astype(np.float32)
        colour = _texture(rng, region[solid].mean(0), *solid.shape)
        a = a[..., None]
        image[y0:y1, x0:x1] = np.clip(region * (1 - a) + colour * a, 0, 255).astype(np.uint8)
        owner[y0:y1, x0:x1][solid] = index
        if shape >= 0:
            full_area.append(area)
        return True
    return False


def _shape_alpha(rng: np.random.Generator, shape: int, size: float) -> np.ndarray:
    """An anti-aliased [0, 1] mask of ``shape`` (class or distractor) of about ``size`` px."""
    aspect = np.exp(rng.uniform(-0.5, 0.5))
    sw, sh = size * np.sqrt(aspect), size / np.sqrt(aspect)
    side = int(np.ceil(1.5 * max(sw, sh))) + 4
    c = (side - 1) / 2
    angle = rng.uniform(-30, 30)
    theta = np.deg2rad(angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])

    def polygon(points):  # points in units of (sw, sh) about the centre
        pts = np.asarray(points, np.float64) * [sw, sh]
        return ((pts @ rot.T + c) * 16).round().astype(np.int32)  # 4 fractional bits

    mask = np.zeros((side, side), np.uint8)
    fill = {"color": 255, "lineType": cv2.LINE_AA, "shift": 4}
    centre, axes = (round(c * 16), round(c * 16)), (round(sw / 2 * 16), round(sh / 2 * 16))
    if shape in (0, 4):  # circle (an ellipse under aspect), ring
        cv2.ellipse(mask, centre, axes, angle, 0, 360, thickness=-1, **fill)
        if shape == 4:
            r = rng.uniform(0.45, 0.65)
            inner = (round(axes[0] * r), round(axes[1] * r))
            cv2.ellipse(mask, centre, inner, angle, 0, 360, 0, -1, cv2.LINE_AA, 4)
    elif shape == 1:  # square (a rectangle under aspect)
        cv2.fillPoly(mask, [polygon([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])], **fill)
    elif shape == 2:  # triangle, apex up before rotation
        cv2.fillPoly(mask, [polygon([[0, -0.5], [0.5, 0.5], [-0.5, 0.5]])], **fill)
    elif shape == 3:  # cross (plus sign)
        t = rng.uniform(0.14, 0.2)
        bar = np.array([[-t, -0.5], [t, -0.5], [t, 0.5], [-t, 0.5]])
        cv2.fillPoly(mask, [polygon(bar), polygon(bar[:, ::-1])], **fill)
    else:
        _distractor_alpha(mask, -1 - shape, polygon, rng, centre, axes, angle)
    ys, xs = np.nonzero(mask)
    mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return mask.astype(np.float32) / 255.0


def _distractor_alpha(mask, kind, polygon, rng, centre, axes, angle) -> None:
    fill = {"color": 255, "lineType": cv2.LINE_AA, "shift": 4}
    if kind == 0:  # five-pointed star
        r = np.where(np.arange(10) % 2 == 0, 0.5, rng.uniform(0.18, 0.25))
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        cv2.fillPoly(mask, [polygon(np.stack([r * np.cos(t), r * np.sin(t)], 1))], **fill)
    elif kind == 1:  # crescent: a disc less an offset disc
        cv2.ellipse(mask, centre, axes, angle, 0, 360, thickness=-1, **fill)
        shift = (round(centre[0] + 0.45 * axes[0]), centre[1])
        cv2.ellipse(mask, shift, axes, angle, 0, 360, 0, -1, cv2.LINE_AA, 4)
    elif kind == 2:  # chevron
        pts = [[-0.5, -0.5], [0, 0.1], [0.5, -0.5], [0.5, -0.1], [0, 0.5], [-0.5, -0.1]]
        cv2.fillPoly(mask, [polygon(pts)], **fill)
    elif kind == 3:  # L
        pts = [[-0.5, -0.5], [-0.2, -0.5], [-0.2, 0.2], [0.5, 0.2], [0.5, 0.5], [-0.5, 0.5]]
        cv2.fillPoly(mask, [polygon(pts)], **fill)
    else:  # a long bar
        t = rng.uniform(0.06, 0.12)
        cv2.fillPoly(mask, [polygon([[-0.5, -t], [0.5, -t], [0.5, t], [-0.5, t]])], **fill)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, saturation and brightness (OpenCV HSV), as float RGB."""
    hsv = np.array([[[rng.integers(180), rng.integers(256), rng.integers(40, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, under: np.ndarray, h: int, w: int) -> np.ndarray:
    """A [h, w, 3] fill: one colour contrasting with ``under`` (the mean RGB it will cover), then
    solid, a gradient, stripes or speckle, and shading."""
    for _ in range(8):
        colour = _random_colour(rng)
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
    kind = rng.choice(4, p=(0.4, 0.2, 0.2, 0.2))
    fill = np.broadcast_to(colour, (h, w, 3)).copy()
    if kind in (1, 2):
        t = rng.uniform(0, 2 * np.pi)
        ramp = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(t)) + np.arange(
            h, dtype=np.float32
        )[:, None] * np.float32(np.sin(t))
    if kind == 1:  # gradient towards a second colour
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1.0)
        fill += ramp[..., None] * (_random_colour(rng) - colour) * np.float32(rng.uniform(0.3, 0.7))
    elif kind == 2:  # stripes of a second colour
        on = np.sin(ramp * np.float32(2 * np.pi / rng.uniform(3, 10))) > 0
        fill[on] = 0.5 * fill[on] + 0.5 * _random_colour(rng)
    elif kind == 3:  # speckle, cut from the fixed noise tile
        oy, ox = int(rng.integers(0, 513 - min(h, 512))), int(rng.integers(0, 513 - min(w, 512)))
        tile = _grain_tile()[oy : oy + h, ox : ox + w]
        fill[: tile.shape[0], : tile.shape[1]] += tile * np.float32(rng.uniform(2, 6))
    fill *= np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.2), h, dtype=np.float32)[
        :, None, None
    ]
    return np.clip(fill, 0, 255)


def _grain_tile() -> np.ndarray:
    # Fine grain is cut from one fixed noise tile: drawing fresh normals per pixel was most of
    # the generation time.
    global _GRAIN
    if _GRAIN is None:
        _GRAIN = np.random.default_rng(1234).normal(0, 5, size=(512, 512, 1)).astype(np.float32)
    return _GRAIN


_GRAIN: np.ndarray | None = None


def _background(rng: np.random.Generator, h: int, w: int, grey: bool = False) -> np.ndarray:
    """Low-contrast texture of any colour (``grey``: desaturated): smooth blotches, optional
    stripes, fine grain."""
    if grey:
        base = np.float32(rng.uniform(60, 190)) + rng.normal(0, 8, size=3).astype(np.float32)
    else:
        base = rng.uniform(30, 220, size=3).astype(np.float32)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = rng.normal(0, 28, size=(gh, gw, 1)) + rng.normal(0, 8 if grey else 12, size=(gh, gw, 3))
    image = cv2.resize((grid + base).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.4:  # stripes at a random angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        k = 2 * np.pi / period
        xs = np.arange(w, dtype=np.float32) * np.float32(k * np.cos(angle))
        ys = np.arange(h, dtype=np.float32) * np.float32(k * np.sin(angle))
        image += np.float32(rng.uniform(6, 16)) * np.sin(ys[:, None] + xs[None, :])[..., None]
    oy, ox = int(rng.integers(0, 512 - h + 1)), int(rng.integers(0, 512 - w + 1))
    image += _grain_tile()[oy : oy + h, ox : ox + w]
    return np.clip(image, 0, 255).astype(np.uint8)


def _patches(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Large soft-edged patches of another colour and texture: regions, not objects."""
    h, w = image.shape[:2]
    for _ in range(count):
        # The soft edge is blurred at quarter resolution: a full-size blur was most of the time.
        small = np.zeros(((h + 3) // 4, (w + 3) // 4), np.uint8)
        pts = rng.uniform(
            [0, 0], [small.shape[1], small.shape[0]], size=(int(rng.integers(3, 7)), 2)
        )
        cv2.fillPoly(small, [cv2.convexHull(pts.astype(np.int32))], 255)
        small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.75, 3))
        alpha = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] / np.float32(
            255
        )
        alpha *= np.float32(rng.uniform(0.3, 0.8))
        fill = _texture(rng, image[::8, ::8].reshape(-1, 3).mean(0), h, w)
        image[:] = (image * (1 - alpha) + fill * alpha).astype(np.uint8)


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int, grey: bool = False) -> None:
    """Distractor marks: thin lines, dots and blobs of any colour (``grey``: greys) that are not
    objects."""
    h, w = image.shape[:2]
    for _ in range(count):
        if grey:
            level = int(rng.integers(20, 235))
            colour = tuple(int(np.clip(level + rng.normal(0, 15), 0, 255)) for _ in range(3))
        else:
            colour = tuple(int(v) for v in _random_colour(rng))
        kind = rng.integers(3)
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        if kind == 0:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(image, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(image, p0, int(rng.integers(1, 4)), colour, -1, cv2.LINE_AA)
        else:
            pts = np.array(p0) + rng.normal(0, rng.uniform(3, 10), size=(5, 2))
            cv2.fillPoly(image, [pts.astype(np.int32)], colour, cv2.LINE_AA)


def render_classification_image(
    rng: np.random.Generator, label: int, min_side: int, max_side: int
) -> np.ndarray:
    """One RGB image of class ``label`` of `CLS_CLASS_NAMES`: a dominant shape on clutter,
    sometimes over a small shape of another class. Backgrounds and clutter are desaturated
    here: the colour family is half of the class."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    image = _background(rng, h, w, grey=True)
    _clutter(rng, image, int(rng.integers(1, 6)), grey=True)
    n = len(CLS_CLASS_NAMES)
    if rng.random() < 0.5:
        other = (label + int(rng.integers(1, n))) % n
        _paint_whole(rng, image, other, rng.uniform(0.12, 0.25) * min(h, w))
    _paint_whole(rng, image, label, rng.uniform(0.35, 0.8) * min(h, w))
    _clutter(rng, image, int(rng.integers(0, 3)), grey=True)
    return image


def _paint_whole(rng: np.random.Generator, image: np.ndarray, label: int, size: float) -> None:
    """Paints class ``label``'s shape (label // 2) in its colour family, wholly inside."""
    h, w = image.shape[:2]
    alpha = _shape_alpha(rng, label // 2, size)
    scale = min(1.0, h / alpha.shape[0], w / alpha.shape[1])
    if scale < 1.0:
        size = (max(int(alpha.shape[1] * scale), 1), max(int(alpha.shape[0] * scale), 1))
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    ah, aw = alpha.shape
    y0, x0 = int(rng.integers(0, h - ah + 1)), int(rng.integers(0, w - aw + 1))
    hue = (int(rng.choice(_FAMILY_HUES[label % 2])) + rng.integers(-6, 7)) % 180
    hsv = np.array([[[hue, rng.integers(170, 256), rng.integers(170, 256)]]], np.uint8)
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    shade = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.15), ah)[:, None, None]
    region = image[y0 : y0 + ah, x0 : x0 + aw].astype(np.float32)
    a = alpha[..., None]
    fill = np.clip(colour * shade, 0, 255)
    image[y0 : y0 + ah, x0 : x0 + aw] = (region * (1 - a) + fill * a).astype(np.uint8)
