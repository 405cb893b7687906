"""Host-side augmentations of YOLOv4's bag of freebies, as pure numpy/cv2 functions.

Every function takes an image ``uint8 [H, W, 3]`` (RGB), its boxes ``float32 [N, 4]`` as pixel
``(x1, y1, x2, y2)`` with continuous coordinates (a box covering pixel columns 0..9 has x1=0,
x2=10), their labels ``int32 [N]``, and draws its randomness from an ``np.random.Generator``.
Geometry moves pixels and boxes with the same affine map, so boxes always follow the pixels.

Darknet reference: data.c::load_data_detection (jitter crop, flip, Mosaic, MixUp) and
image_opencv.cpp::image_data_augmentation (crop, stretch, HSV). CutMix for detection is this
project's adaptation: darknet uses CutMix only to train classifiers (data.c::load_data_augment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import cv2
import numpy as np

Rect = tuple[float, float, float, float]  # (x0, y0, x1, y1), continuous pixel coordinates

# Darknet letterboxes onto grey 0.5 (image.c::letterbox_image_into).
LETTERBOX_FILL = 127


class EncodedImage(Protocol):
    """An image decoded when it is rendered (sources.EncodedJpeg), at the resolution needed.

    ``shape`` is the full image's; ``decode(f)`` gives uint8 [ceil(H / f), ceil(W / f), 3] RGB
    whose pixel j covers full-resolution pixels [f j, f j + f), for f in 1, 2, 4, 8.
    """

    shape: tuple[int, int, int]

    def decode(self, reduction: int) -> np.ndarray: ...


class Sample(NamedTuple):
    """One image with its boxes: ``image`` uint8 [H, W, 3]; ``boxes`` float32 [N, 4] pixel xyxy.

    Before augmentation ``image`` may also be an `EncodedImage`; the boxes are in its full
    resolution's pixels either way.
    """

    image: np.ndarray | EncodedImage
    boxes: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The augmentation settings of `config.data` (see configs/base.py for each default)."""

    jitter: float = 0.3
    resize: float = 1.0  # darknet's [yolo] resize: crop scale (yolov4-tiny.cfg 1.5)
    flip: bool = True
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    mosaic_prob: float = 0.5
    mosaic_min_cut: float = 0.2
    mosaic_max_cut: float = 0.8
    cutmix_prob: float = 0.0
    cutmix_min_size: float = 0.3
    cutmix_max_size: float = 0.8
    cutmix_min_visible: float = 0.3
    mixup_prob: float = 0.0
    letterbox: bool = False
    min_box_size: float = 1.0
    min_visible: float = 0.0


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    """Zero boxes and labels with the right dtypes and shapes."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)


def rand_scale(rng: np.random.Generator, s: float) -> float:
    """A factor uniform between 1 and ``s``, inverted with p=.5 (darknet utils.c::rand_scale).

    As in darknet, ``s`` may be on either side of 1: ``.75`` and ``1/.75`` both give factors in
    [.75, 4/3], half of them below 1 (only the density inside each half differs: uniform on
    the side of ``s``, 1/uniform on the other). ``s = 1`` gives 1.
    """
    if not s > 0:
        raise ValueError(f"rand_scale needs a positive factor, got {s}")
    scale = rng.uniform(min(1.0, s), max(1.0, s)) if s != 1.0 else 1.0
    return float(scale if rng.random() < 0.5 else 1.0 / scale)


def jitter_crop(
    rng: np.random.Generator, height: int, width: int, jitter: float, resize: float = 1.0
) -> Rect:
    """Darknet's random crop: each side moves by up to ``jitter`` of the size, in or out.

    Offsets are independent per side (data.c::load_data_detection: pleft, pright, ptop, pbot),
    so the crop also changes the aspect ratio and the scale; parts outside the image are padded.
    ``resize`` (the [yolo] key, 1.5 in yolov4-tiny.cfg and yolov4-csp.cfg) adds darknet's
    scale offsets: each side also moves by ``(1 - 1/down) / 2 .. (1 - 1/up) / 2`` of the size
    (down = min(resize, 1/resize), up = its inverse; a value below 1 only shrinks), with one
    random number for left and top and another for right and bottom, as data.c draws
    resize_r1 and resize_r2. An empty crop falls back to the whole image, as darknet's
    "invalid resize" does.
    """
    dw, dh = int(width * jitter), int(height * jitter)
    pleft, pright = (int(v) for v in rng.integers(-dw, dw + 1, size=2)) if dw else (0, 0)
    ptop, pbot = (int(v) for v in rng.integers(-dh, dh + 1, size=2)) if dh else (0, 0)
    if resize != 1.0:
        down, up = min(resize, 1.0 / resize), max(resize, 1.0 / resize)
        min_rdw, min_rdh = int(width * (1 - 1 / down) / 2), int(height * (1 - 1 / down) / 2)
        max_rdw, max_rdh = int(width * (1 - 1 / up) / 2), int(height * (1 - 1 / up) / 2)
        if resize < 1:  # "downsize only"
            max_rdw = max_rdh = 0
        r1, r2 = rng.random(2)
        # C: int += float truncates the sum toward zero (rand_precalc_random is a float).
        pleft = int(pleft + min_rdw + r1 * (max_rdw - min_rdw))
        pright = int(pright + min_rdw + r2 * (max_rdw - min_rdw))
        ptop = int(ptop + min_rdh + r1 * (max_rdh - min_rdh))
        pbot = int(pbot + min_rdh + r2 * (max_rdh - min_rdh))
    if (
        width - pleft - pright <= 0
        or height - ptop - pbot <= 0
        or width - pleft <= 0
        or (height - ptop <= 0)
    ):
        return 0.0, 0.0, float(width), float(height)
    return float(pleft), float(ptop), float(width - pright), float(height - pbot)


def canvas_rect(crop: Rect, canvas_hw: tuple[int, int], letterbox: bool) -> Rect:
    """The source rectangle that maps onto the whole canvas.

    Stretch (darknet's default) maps the crop itself. Letterbox grows the crop around its centre
    to the canvas aspect ratio, so the content keeps its aspect and the rest is padding.
    """
    if not letterbox:
        return crop
    x0, y0, x1, y1 = crop
    ch, cw = canvas_hw
    scale = min(cw / (x1 - x0), ch / (y1 - y0))
    half_w, half_h = 0.5 * cw / scale, 0.5 * ch / scale
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def reduction_for(rect: Rect, canvas_hw: tuple[int, int]) -> int:
    """The largest f in 1, 2, 4, 8 whose 1/f-size source still has the canvas's resolution.

    ``rect`` maps onto the whole canvas, so the source is sampled at cw / rect width canvas
    pixels per source pixel (and likewise in y); a 1/f decode keeps every canvas pixel's
    detail while that is at most 1/f in both axes.
    """
    ch, cw = canvas_hw
    x0, y0, x1, y1 = rect
    scale = max(cw / (x1 - x0), ch / (y1 - y0))  # canvas pixels per source pixel
    for f in (8, 4, 2):
        if scale * f <= 1.0:
            return f
    return 1


def _decoded(
    image: np.ndarray | EncodedImage, rect: Rect, canvas_hw: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """(pixels, reduction): an encoded image decoded at `reduction_for` of its rect."""
    if isinstance(image, np.ndarray):
        return image, 1
    reduction = reduction_for(rect, canvas_hw)
    return image.decode(reduction), reduction


def _crop_padded(
    image: np.ndarray, u0: int, v0: int, u1: int, v1: int, fill: Sequence[float]
) -> np.ndarray:
    """``image[v0:v1, u0:u1]``, padded with ``fill`` where it leaves the image."""
    h, w = image.shape[:2]
    if u0 >= 0 and v0 >= 0 and u1 <= w and v1 <= h:
        return image[v0:v1, u0:u1]
    out = np.empty((v1 - v0, u1 - u0, 3), np.uint8)
    out[:] = np.round(np.asarray(fill)).astype(np.uint8)
    iu0, iv0, iu1, iv1 = max(u0, 0), max(v0, 0), min(u1, w), min(v1, h)
    if iu1 > iu0 and iv1 > iv0:
        out[iv0 - v0 : iv1 - v0, iu0 - u0 : iu1 - u0] = image[iv0:iv1, iu0:iu1]
    return out


def warp(
    image: np.ndarray,
    boxes: np.ndarray,
    rect: Rect,
    canvas_hw: tuple[int, int],
    *,
    flip: bool = False,
    window: Rect | None = None,
    fill: Sequence[float] | float = 0,
    hsv: tuple[float, float, float] | None = None,
    reduction: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps source ``rect`` onto a ``canvas_hw`` canvas (optionally flipped) and renders ``window``.

    The canvas is never built: only ``window`` (canvas coordinates, default the whole canvas) is
    rendered, as one crop (padded with ``fill`` outside the image) and one bilinear cv2.resize,
    as darknet's cv::resize. The crop is rounded to whole source pixels, which is 7x faster than
    cv2.warpAffine; the boxes use the exact map of the rounded crop, so they follow the pixels.
    ``hsv`` (from `hsv_params`) is applied on whichever of crop and output has fewer pixels.
    ``image`` may be the source decoded at 1/``reduction`` of its size (`EncodedImage`) while
    ``rect`` and ``boxes`` stay in full-resolution pixels: the boxes come out the same and the
    pixels are sampled at the same places (`_render_reduced`).
    Returns the window image and the boxes in window pixels (unclipped; see `clip_boxes`).
    """
    ch, cw = canvas_hw
    x0, y0, x1, y1 = rect
    wx0, wy0, wx1, wy1 = window if window is not None else (0, 0, cw, ch)
    out_w, out_h = round(wx1 - wx0), round(wy1 - wy0)
    sx, sy = cw / (x1 - x0), ch / (y1 - y0)
    ux0, ux1 = (cw - wx1, cw - wx0) if flip else (wx0, wx1)  # window before the flip
    u0 = round(x0 + ux0 / sx)
    u1 = max(round(x0 + ux1 / sx), u0 + 1)
    v0 = round(y0 + wy0 / sy)
    v1 = max(round(y0 + wy1 / sy), v0 + 1)
    if np.isscalar(fill):
        fill = (fill, fill, fill)
    if reduction > 1:  # the source has more pixels than the output: HSV last
        out = _render_reduced(image, (u0, v0, u1, v1), (out_h, out_w), reduction, flip, fill)
        out = apply_hsv(out, hsv) if hsv is not None else out
    else:
        crop = _crop_padded(image, u0, v0, u1, v1, fill)
        small_crop = crop.shape[0] * crop.shape[1] <= out_w * out_h
        if small_crop:
            crop = apply_hsv(crop, hsv) if hsv is not None else crop
            crop = cv2.flip(crop, 1) if flip else crop
        out = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if not small_crop:
            out = cv2.flip(out, 1) if flip else out
            out = apply_hsv(out, hsv) if hsv is not None else out
    ax, ay = out_w / (u1 - u0), out_h / (v1 - v0)
    bx = (boxes[:, 0::2] - u0) * ax
    if flip:
        bx = out_w - bx[:, ::-1]
    by = (boxes[:, 1::2] - v0) * ay
    new = np.stack([bx[:, 0], by[:, 0], bx[:, 1], by[:, 1]], axis=1)
    return out, new.astype(np.float32)


def _render_reduced(
    image: np.ndarray,
    crop: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    reduction: int,
    flip: bool,
    fill: Sequence[float],
) -> np.ndarray:
    """Full-resolution ``crop`` (u0, v0, u1, v1) resized to ``out_hw`` from a 1/``reduction`` image.

    Samples where cv2.resize of the full-resolution crop does: output pixel d's centre is at
    full-resolution u0 + (d + .5) (u1 - u0) / out_w, and reduced pixel j's centre at f (j + .5).
    The crop's edges need not fall on reduced pixels, so one cv2.warpAffine (bilinear, ``fill``
    outside the image) does it; it downscales by at most 2 after the decode's f x f averaging.
    """
    u0, v0, u1, v1 = crop
    out_h, out_w = out_hw
    ax, ay = (u1 - u0) / (reduction * out_w), (v1 - v0) / (reduction * out_h)
    bx, by = u0 / reduction + 0.5 * ax - 0.5, v0 / reduction + 0.5 * ay - 0.5
    if flip:  # output column d shows column out_w - 1 - d
        bx, ax = bx + (out_w - 1) * ax, -ax
    return cv2.warpAffine(
        image,
        np.array([[ax, 0.0, bx], [0.0, ay, by]]),
        (out_w, out_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in np.round(fill)),
    )


def clip_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    width: float,
    height: float,
    min_size: float,
    min_visible: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips boxes to the image and drops those too small or mostly cut away.

    A box survives when both clipped sides are at least ``min_size`` pixels (darknet drops
    boxes under 1 px, data.c::fill_truth_detection) and at least ``min_visible`` of its area
    is left inside the image.
    """
    if len(boxes) == 0:
        return empty_boxes()
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    clipped = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h > 0) & (w * h >= min_visible * area)
    return clipped[keep], labels[keep].astype(np.int32)


def hsv_params(
    rng: np.random.Generator, hue: float, saturation: float, exposure: float
) -> tuple[float, float, float] | None:
    """Random (hue shift, saturation scale, exposure scale), or None for the identity.

    As image_opencv.cpp::image_data_augmentation: the hue shift is uniform in ±``hue`` of the
    colour circle; saturation and value are scaled by `rand_scale`.
    """
    dhue = rng.uniform(-hue, hue) if hue > 0 else 0.0
    dsat = rand_scale(rng, saturation)
    dexp = rand_scale(rng, exposure)
    if dhue == 0.0 and dsat == 1.0 and dexp == 1.0:
        return None
    return float(dhue), dsat, dexp


def apply_hsv(image: np.ndarray, params: tuple[float, float, float] | None) -> np.ndarray:
    """Applies `hsv_params` to an RGB image with 8-bit HSV and per-channel lookup tables.

    Several times faster than darknet's float HSV, with the same effect up to rounding.
    """
    if params is None:
        return image
    dhue, dsat, dexp = params
    x = np.arange(256, dtype=np.float32)
    luts = [
        np.mod(np.round(x + dhue * 180.0), 180.0),  # OpenCV's 8-bit hue is degrees / 2
        np.clip(np.round(x * dsat), 0, 255),
        np.clip(np.round(x * dexp), 0, 255),
    ]
    channels = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    hsv = cv2.merge(
        [cv2.LUT(c, lut.astype(np.uint8)) for c, lut in zip(channels, luts, strict=True)]
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def random_hsv(
    rng: np.random.Generator, image: np.ndarray, hue: float, saturation: float, exposure: float
) -> np.ndarray:
    """Random hue shift and saturation/exposure scaling of an RGB image (see `hsv_params`)."""
    return apply_hsv(image, hsv_params(rng, hue, saturation, exposure))


def _fill_value(
    image: np.ndarray, letterbox: bool, reduction: int = 1
) -> tuple[float, float, float]:
    # Darknet pads jitter crops with the image's mean colour (image_data_augmentation) and
    # letterboxes with grey. Every 8th full-resolution pixel: every (8 / f)th of a 1/f image.
    if letterbox:
        return (LETTERBOX_FILL,) * 3
    step = max(8 // reduction, 1)
    small = image[::step, ::step].reshape(-1, 3)
    return tuple(float(v) for v in small.mean(axis=0))


def letterbox_geometry(height: int, width: int, canvas_hw: tuple[int, int]):
    """(new_h, new_w, dy, dx): the resized image's size and offset (image.c::letterbox_image)."""
    ch, cw = canvas_hw
    if cw / width < ch / height:
        new_w, new_h = cw, (height * cw) // width
    else:
        new_h, new_w = ch, (width * ch) // height
    return new_h, new_w, (ch - new_h) // 2, (cw - new_w) // 2


def resize_to_canvas(sample: Sample, canvas_hw: tuple[int, int], letterbox: bool) -> Sample:
    """The evaluation transform: the whole image stretched (or letterboxed) to the canvas."""
    h, w = sample.image.shape[:2]
    ch, cw = canvas_hw
    if letterbox:
        new_h, new_w, dy, dx = letterbox_geometry(h, w, canvas_hw)
        image = np.full((ch, cw, 3), LETTERBOX_FILL, np.uint8)
        image[dy : dy + new_h, dx : dx + new_w] = cv2.resize(
            sample.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR
        )
        scale = np.array([new_w / w, new_h / h] * 2, np.float32)
        boxes = sample.boxes * scale + np.array([dx, dy, dx, dy], np.float32)
    else:
        image = cv2.resize(sample.image, (cw, ch), interpolation=cv2.INTER_LINEAR)
        boxes = sample.boxes * np.array([cw / w, ch / h] * 2, np.float32)
    boxes, labels = clip_boxes(boxes, sample.labels, cw, ch, 0.0, 0.0)
    return Sample(image, boxes, labels)


def _geometric(
    rng: np.random.Generator, sample: Sample, canvas_hw: tuple[int, int], p: AugmentParams
) -> tuple[Rect, bool]:
    h, w = sample.image.shape[:2]
    crop = jitter_crop(rng, h, w, p.jitter, p.resize)
    flip = bool(p.flip and rng.random() < 0.5)
    return canvas_rect(crop, canvas_hw, p.letterbox), flip


def augment_single(
    rng: np.random.Generator, sample: Sample, canvas_hw: tuple[int, int], p: AugmentParams
) -> Sample:
    """Darknet's per-image augmentation: jitter crop, stretch to the canvas, flip, HSV."""
    rect, flip = _geometric(rng, sample, canvas_hw, p)
    hsv = hsv_params(rng, p.hue, p.saturation, p.exposure)
    pixels, reduction = _decoded(sample.image, rect, canvas_hw)
    fill = _fill_value(pixels, p.letterbox, reduction)
    image, boxes = warp(
        pixels,
        sample.boxes,
        rect,
        canvas_hw,
        flip=flip,
        fill=fill,
        hsv=hsv,
        reduction=reduction,
    )
    ch, cw = canvas_hw
    boxes, labels = clip_boxes(boxes, sample.labels, cw, ch, p.min_box_size, p.min_visible)
    return Sample(image, boxes, labels)


def mosaic(
    rng: np.random.Generator,
    samples: Sequence[Sample],
    canvas_hw: tuple[int, int],
    p: AugmentParams,
) -> Sample:
    """Mosaic (paper section 3.3): four images around a random cut point.

    As darknet's load_data_detection: the cut point is uniform in [min_cut, max_cut] of each
    side; each image gets its own jitter crop, stretch to the full canvas, flip and HSV; the
    quadrant shows the part of that image next to the cut point, shifted past its jitter
    padding with p=.5 (darknet's left/right/top/bot_shift). Only the quadrants are rendered.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(samples)}")
    ch, cw = canvas_hw
    cut_x = int(rng.uniform(p.mosaic_min_cut, p.mosaic_max_cut) * cw)
    cut_y = int(rng.uniform(p.mosaic_min_cut, p.mosaic_max_cut) * ch)
    cut_x, cut_y = min(max(cut_x, 1), cw - 1), min(max(cut_y, 1), ch - 1)
    out = np.empty((ch, cw, 3), np.uint8)
    all_boxes, all_labels = [], []
    for i, sample in enumerate(samples):
        rect, flip = _geometric(rng, sample, canvas_hw, p)
        h, w = sample.image.shape[:2]
        sx, sy = cw / (rect[2] - rect[0]), ch / (rect[3] - rect[1])
        # Padding (in canvas pixels) the jitter crop added on each side of the image.
        pad_l, pad_r = max(0.0, -rect[0] * sx), max(0.0, (rect[2] - w) * sx)
        pad_t, pad_b = max(0.0, -rect[1] * sy), max(0.0, (rect[3] - h) * sy)
        if flip:
            pad_l, pad_r = pad_r, pad_l
        if rng.random() < 0.5:
            left, right = int(min(cut_x, pad_l)), int(min(cw - cut_x, pad_r))
            top, bot = int(min(cut_y, pad_t)), int(min(ch - cut_y, pad_b))
        else:
            left = right = top = bot = 0
        # Quadrant i of the mosaic (qx0, qy0, qx1, qy1) and the canvas window shown there.
        right_side, bottom_side = i % 2 == 1, i >= 2
        qx0, qx1 = (cut_x, cw) if right_side else (0, cut_x)
        qy0, qy1 = (cut_y, ch) if bottom_side else (0, cut_y)
        wx0 = left if right_side else cw - cut_x - right
        wy0 = top if bottom_side else ch - cut_y - bot
        window = (wx0, wy0, wx0 + qx1 - qx0, wy0 + qy1 - qy0)
        hsv = hsv_params(rng, p.hue, p.saturation, p.exposure)
        pixels, reduction = _decoded(sample.image, rect, canvas_hw)
        out[qy0:qy1, qx0:qx1], boxes = warp(
            pixels,
            sample.boxes,
            rect,
            canvas_hw,
            flip=flip,
            window=window,
            fill=_fill_value(pixels, p.letterbox, reduction),
            hsv=hsv,
            reduction=reduction,
        )
        boxes, labels = clip_boxes(
            boxes, sample.labels, qx1 - qx0, qy1 - qy0, p.min_box_size, p.min_visible
        )
        all_boxes.append(boxes + np.array([qx0, qy0, qx0, qy0], np.float32))
        all_labels.append(labels)
    return Sample(out, np.concatenate(all_boxes), np.concatenate(all_labels))


def _subtract_patch(boxes: np.ndarray, patch: Rect) -> np.ndarray:
    """Shrinks each box to its part outside ``patch`` where that part is a rectangle."""
    px0, py0, px1, py1 = patch
    out = boxes.copy()
    spans_y = (py0 <= boxes[:, 1]) & (py1 >= boxes[:, 3])
    spans_x = (px0 <= boxes[:, 0]) & (px1 >= boxes[:, 2])
    # The patch covers the box's whole height and its left (or right) part: cut that part off.
    left = spans_y & (px0 <= boxes[:, 0]) & (px1 > boxes[:, 0]) & (px1 < boxes[:, 2])
    right = spans_y & (px1 >= boxes[:, 2]) & (px0 < boxes[:, 2]) & (px0 > boxes[:, 0])
    top = spans_x & (py0 <= boxes[:, 1]) & (py1 > boxes[:, 1]) & (py1 < boxes[:, 3])
    bot = spans_x & (py1 >= boxes[:, 3]) & (py0 < boxes[:, 3]) & (py0 > boxes[:, 1])
    out[left, 0] = px1
    out[right, 2] = px0
    out[top, 1] = py1
    out[bot, 3] = py0
    return out


def cutmix(rng: np.random.Generator, a: Sample, b: Sample, p: AugmentParams) -> Sample:
    """CutMix adapted to detection: a random patch of ``b`` pasted over ``a`` at the same place.

    Darknet applies CutMix only to classifier training (patch side uniform in 30-80% of the
    image, data.c::load_data_augment); for detection this project keeps ``a``'s boxes whose
    visible area is at least ``cutmix_min_visible`` (shrunk where the patch covers a whole side)
    and ``b``'s boxes clipped to the patch by the usual size/visibility rule.
    """
    ch, cw = a.image.shape[:2]
    pw = int(rng.uniform(p.cutmix_min_size, p.cutmix_max_size) * cw)
    ph = int(rng.uniform(p.cutmix_min_size, p.cutmix_max_size) * ch)
    px0, py0 = int(rng.integers(0, cw - pw + 1)), int(rng.integers(0, ch - ph + 1))
    patch = (px0, py0, px0 + pw, py0 + ph)
    image = a.image.copy()
    image[py0 : py0 + ph, px0 : px0 + pw] = b.image[py0 : py0 + ph, px0 : px0 + pw]

    ab = a.boxes
    area = (ab[:, 2] - ab[:, 0]) * (ab[:, 3] - ab[:, 1])
    iw = np.clip(np.minimum(ab[:, 2], patch[2]) - np.maximum(ab[:, 0], patch[0]), 0, None)
    ih = np.clip(np.minimum(ab[:, 3], patch[3]) - np.maximum(ab[:, 1], patch[1]), 0, None)
    visible = area - iw * ih
    keep = (visible > 0) & (visible >= p.cutmix_min_visible * area)
    a_boxes = _subtract_patch(ab[keep], patch)
    a_labels = a.labels[keep]

    shifted = b.boxes - np.array([px0, py0, px0, py0], np.float32)
    b_boxes, b_labels = clip_boxes(shifted, b.labels, pw, ph, p.min_box_size, p.min_visible)
    b_boxes = b_boxes + np.array([px0, py0, px0, py0], np.float32)
    return Sample(
        image,
        np.concatenate([a_boxes, b_boxes]).astype(np.float32),
        np.concatenate([a_labels, b_labels]).astype(np.int32),
    )


def mixup(a: Sample, b: Sample) -> Sample:
    """MixUp as darknet (data.c::load_data_detection, mixup=1): a 0.5/0.5 blend, union of boxes."""
    image = cv2.addWeighted(a.image, 0.5, b.image, 0.5, 0.0)
    return Sample(
        image,
        np.concatenate([a.boxes, b.boxes]).astype(np.float32),
        np.concatenate([a.labels, b.labels]).astype(np.int32),
    )


def choose_mix(rng: np.random.Generator, p: AugmentParams) -> str:
    """Which multi-image augmentation a sample gets: "mosaic", "cutmix", "mixup" or "none".

    Darknet draws Mosaic per loaded batch with p=.5, and ``mosaic=1`` switches MixUp off
    altogether; here each sample draws Mosaic with ``mosaic_prob``, else CutMix with
    ``cutmix_prob``, else (only when Mosaic is off, as darknet) MixUp with ``mixup_prob``.
    """
    if p.mosaic_prob > 0 and rng.random() < p.mosaic_prob:
        return "mosaic"
    if p.cutmix_prob > 0 and rng.random() < p.cutmix_prob:
        return "cutmix"
    if p.mixup_prob > 0 and p.mosaic_prob == 0 and rng.random() < p.mixup_prob:
        return "mixup"
    return "none"


def augment(
    rng: np.random.Generator,
    samples: Sequence[Sample],
    canvas_hw: tuple[int, int],
    p: AugmentParams,
    mix: str,
) -> Sample:
    """Applies the full training augmentation for the chosen ``mix`` to decoded samples.

    ``samples`` holds 4 images for "mosaic", 2 for "cutmix" and "mixup", 1 for "none".
    """
    if mix == "mosaic":
        return mosaic(rng, samples, canvas_hw, p)
    if mix == "cutmix":
        a, b = (augment_single(rng, s, canvas_hw, p) for s in samples)
        return cutmix(rng, a, b, p)
    if mix == "mixup":
        a, b = (augment_single(rng, s, canvas_hw, p) for s in samples)
        return mixup(a, b)
    if mix == "none":
        return augment_single(rng, samples[0], canvas_hw, p)
    raise ValueError(f"unknown mix {mix!r}")


def num_images(mix: str) -> int:
    """How many source images ``mix`` needs."""
    return {"mosaic": 4, "cutmix": 2, "mixup": 2, "none": 1}[mix]
