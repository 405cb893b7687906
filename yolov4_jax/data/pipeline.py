"""The grain host pipeline: records -> augmented, padded, batched numpy arrays.

Each grain element is one whole batch: a tiny source yields the step number ``k`` and one Map
transform builds batch ``k`` by random access (Mosaic, CutMix and MixUp read extra records).
This makes every batch a pure function of (seed, process, step): the result does not depend on
the number of workers, the canvas size (random shapes) and batch size (dynamic mini-batch) are
known per step, and the DataLoader's checkpointable state is just the position in the stream.

Training batch (per process): ``image`` uint8 [B, H, W, 3] RGB; ``boxes`` float32 [B, M, 4]
(x1, y1, x2, y2) normalised to the canvas; ``labels`` int32 [B, M]; ``mask`` bool [B, M].
Evaluation batches add ``image_id`` int64 [B], ``orig_size`` int32 [B, 2] (height, width),
``valid`` bool [B] (the last batch is padded with blank images whose ``valid`` is False) and the
ground truth as COCO scores it: ``gt_boxes`` float32 [B, M, 4] xyxy in original pixels,
``gt_labels``, ``gt_mask``, ``gt_crowd`` (crowd boxes, kept and flagged) and ``gt_area``
(the annotation's area in pixels, -1 where the record has none).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import ml_collections
import numpy as np

from yolov4_jax.data import augment, loader, sources
from yolov4_jax.data.augment import AugmentParams, Sample

# darknet's values where no [yolo] head gives them (yolov4.cfg's jitter; resize off).
DEFAULT_JITTER, DEFAULT_RESIZE = 0.3, 1.0


def with_head_augmentation(
    config: ml_collections.ConfigDict, heads: Sequence[Any]
) -> ml_collections.ConfigDict:
    """``config`` with ``data.jitter`` and ``data.resize`` left at None taken from the heads.

    darknet reads jitter, resize and random from the *last* [yolo] layer
    (detector.c::train_detector), so a config that follows a darknet cfg follows its data
    recipe too (yolov4-tiny.cfg: resize 1.5; yolov4-csp.cfg: jitter .1, resize 1.5).
    Returns a copy; ``config`` is unchanged.
    """
    d = config.data
    if not heads or (d.jitter is not None and d.resize is not None):
        return config
    out = ml_collections.ConfigDict(config.to_dict())
    last = heads[-1]
    if d.jitter is None:
        out.data.jitter = float(last.jitter)
    if d.resize is None:
        out.data.resize = float(last.resize)
    return out


def augment_params(config: ml_collections.ConfigDict) -> AugmentParams:
    """The augmentation flags of ``config.data`` (jitter and resize: see configs/base.py)."""
    d = config.data
    for name in ("saturation", "exposure"):
        if not d[name] > 0:
            raise ValueError(
                f"config.data.{name}={d[name]}: expected a positive factor, darknet's value "
                "(1: off; 1.5 and 1/1.5 both scale by 1/1.5 to 1.5)"
            )
    resize = DEFAULT_RESIZE if d.get("resize") is None else d.resize
    if not resize > 0:
        raise ValueError(f"config.data.resize={resize}: expected a positive scale (1: off)")
    return AugmentParams(
        jitter=DEFAULT_JITTER if d.jitter is None else d.jitter,
        resize=resize,
        flip=d.flip,
        hue=d.hue,
        saturation=d.saturation,
        exposure=d.exposure,
        mosaic_prob=d.mosaic_prob if d.mosaic else 0.0,
        mosaic_min_cut=d.mosaic_min_cut,
        mosaic_max_cut=d.mosaic_max_cut,
        cutmix_prob=d.cutmix_prob if d.cutmix else 0.0,
        cutmix_min_size=d.cutmix_min_size,
        cutmix_max_size=d.cutmix_max_size,
        cutmix_min_visible=d.cutmix_min_visible,
        mixup_prob=d.mixup_prob if d.mixup else 0.0,
        letterbox=d.letterbox,
        min_box_size=d.min_box_size,
        min_visible=d.min_visible,
    )


def _darknet_size(r: float, init: int, step: int) -> int:
    # detector.c::train_detector: round(r * init / step + 1) * step; shrinking never grows.
    size = int(round(r * init / step + 1)) * step
    return init if (r < 1 and size > init) else size


def train_canvas_sizes(config: ml_collections.ConfigDict) -> list[int]:
    """Every canvas side random training shapes can pick (ascending); each compiles once."""
    d = config.data
    if not d.random_shapes:
        return [d.image_size]
    if d.random_shapes_range:
        lo, hi = d.random_shapes_range
        return list(range(lo, hi + 1, d.random_shapes_step))
    s = d.random_shapes_scale
    grid = np.concatenate([np.linspace(1 / s, 1, 2001), np.linspace(1, s, 2001)])
    return sorted({_darknet_size(float(r), d.image_size, d.random_shapes_step) for r in grid})


def train_canvas_size(config: ml_collections.ConfigDict, step: int, seed: int) -> int:
    """The canvas side of training step ``step``: redrawn every ``random_shapes_every`` steps.

    The draw depends only on (seed, step // every), so every process agrees. With the default
    empty ``random_shapes_range`` it is darknet's rule: r uniform in [1, scale], inverted with
    p=.5 (utils.c::rand_scale), size round(r * image_size / 32 + 1) * 32; the first period and
    every period that starts after ``optim.max_batches - 100`` take the largest size, r = scale
    (detector.c::train_detector: "at the beginning (check if enough memory) and at the end
    (calc rolling mean/variance)"). darknet's first period is also the largest after each
    restart (its avg_loss starts at -1 again); here a resumed run keeps the uninterrupted one's
    sizes.
    """
    d = config.data
    if not d.random_shapes:
        return d.image_size
    period = step // d.random_shapes_every
    rng = np.random.default_rng([seed, period, 0x5A4E])
    if d.random_shapes_range:
        return int(rng.choice(train_canvas_sizes(config)))
    if period == 0 or period * d.random_shapes_every > config.optim.max_batches - 100:
        r = d.random_shapes_scale
    else:
        r = augment.rand_scale(rng, d.random_shapes_scale)
    return _darknet_size(r, d.image_size, d.random_shapes_step)


def train_batch_size(
    config: ml_collections.ConfigDict, canvas: int, process_count: int = 1, multiple: int = 1
) -> int:
    """Per-process batch size at ``canvas``: fixed, or scaled by area with dynamic_minibatch.

    Darknet (detector.c, dynamic_minibatch=1) keeps the configured batch at the largest shape
    and grows it as the area shrinks, so memory use stays about the same.
    """
    d = config.data
    if d.batch_size % process_count:
        raise ValueError(f"batch_size {d.batch_size} is not divisible by {process_count} processes")
    base = d.batch_size // process_count
    if not d.dynamic_minibatch:
        return base
    largest = max(train_canvas_sizes(config))
    # detector.c: dim_b = init_b * max_w * max_h / (w * h) (integer division), then x .8 where
    # that still exceeds init_b (memory headroom); otherwise the unscaled dim_b stays.
    scaled = base * largest * largest // (canvas * canvas)
    if int(scaled * 0.8) > base:
        scaled = int(scaled * 0.8)
    return max(multiple, scaled // multiple * multiple)


def pad_boxes(
    rng: np.random.Generator, sample: Sample, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised boxes [M, 4], labels [M], mask [M]; a random subset if there are too many."""
    h, w = sample.image.shape[:2]
    boxes, labels = sample.boxes, sample.labels
    if len(boxes) > max_boxes:  # darknet shuffles truths and keeps the first max (randomize_boxes)
        keep = np.sort(rng.permutation(len(boxes))[:max_boxes])
        boxes, labels = boxes[keep], labels[keep]
    n = len(boxes)
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    out_labels = np.zeros((max_boxes,), np.int32)
    mask = np.zeros((max_boxes,), bool)
    out_boxes[:n] = np.clip(boxes / np.array([w, h, w, h], np.float32), 0.0, 1.0)
    out_labels[:n] = labels
    mask[:n] = True
    return out_boxes, out_labels, mask


class _BatchTransform(grain.transforms.Map):
    """Shared part of the train and eval transforms: lazy, picklable access to the records.

    With ``deferred`` (training with data.fast_decode), `read` leaves JPEGs encoded for the
    augmentation to decode at the resolution its canvas needs (sources.EncodedJpeg).
    """

    def __init__(self, builder_dir: str, split: str, workers: int, deferred: bool = False):
        self._builder_dir = builder_dir
        self._split = split
        self._in_worker = workers > 0
        self._deferred = deferred
        self._source = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"{self._builder_dir}:{self._split}"

    def source(self) -> Any:
        with self._lock:
            if self._source is None:
                if self._in_worker:
                    cv2.setNumThreads(1)  # one worker process per core; avoid oversubscription
                builder = sources.builder_from_directory(self._builder_dir)
                self._num_classes = len(sources.class_names(builder))
                self._source = sources.open_split(builder, self._split)
            return self._source

    def read(self, key: int) -> tuple[Sample, int]:
        """Record ``key`` as a training sample (crowd boxes dropped) and its image id."""
        return self._decode(self.source()[int(key)], key)

    def _where(self, key: int) -> str:
        return f"{self._builder_dir} split {self._split} record {key}"

    def _decode(self, record: dict[str, Any], key: int) -> tuple[Sample, int]:
        where = self._where(key)
        try:
            sample, image_id = sources.decode(record, deferred=self._deferred, where=where)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        self._check_labels(sample.labels, key)
        return sample, image_id

    def _check_labels(self, labels: np.ndarray, key: int) -> None:
        bad = labels[(labels < 0) | (labels >= self._num_classes)]
        if bad.size:
            # darknet skips such truths with a warning (yolo_layer.c); a silent skip would
            # train on a different dataset than the one asked for.
            raise ValueError(
                f"{self._where(key)}: object label {int(bad[0])} is outside the dataset's "
                f"{self._num_classes} classes [0, {self._num_classes}); fix the annotation "
                "or the class list"
            )


class _ShardedBatches(_BatchTransform):
    """Shared part of the training transforms: this process's shard, reshuffled every epoch."""

    def __init__(
        self,
        builder_dir: str,
        split: str,
        workers: int,
        *,
        num_records: int,
        process_index: int,
        process_count: int,
        seed: int,
        deferred: bool = False,
    ):
        super().__init__(builder_dir, split, workers, deferred)
        shard = num_records // process_count  # equal shards: no process waits for another
        if shard < 1:
            raise ValueError(f"{num_records} records cannot feed {process_count} processes")
        self._shard_start = process_index * shard
        self._shard_size = shard
        self._process_index = process_index
        self._process_count = process_count
        self._seed = seed
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        cached = self._perm_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        perm = np.random.default_rng([self._seed, self._process_index, epoch]).permutation(
            self._shard_size
        )
        self._perm_cache = (epoch, perm)
        return perm

    def _key(self, position: int) -> int:
        epoch, offset = divmod(position, self._shard_size)
        return self._shard_start + int(self._permutation(epoch)[offset])

    def _random_key(self, rng: np.random.Generator, exclude: list[int]) -> int:
        # Extra Mosaic/CutMix/MixUp images: distinct from the others when the shard allows.
        for _ in range(16):
            key = self._shard_start + int(rng.integers(self._shard_size))
            if key not in exclude or self._shard_size <= len(exclude):
                return key
        return key


class _TrainBatches(_ShardedBatches):
    """Builds training batch ``step`` of one process."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        builder_dir: str,
        split: str,
        *,
        num_records: int,
        process_index: int,
        process_count: int,
        seed: int,
        batch_multiple: int,
    ):
        super().__init__(
            builder_dir,
            split,
            config.data.workers,
            num_records=num_records,
            process_index=process_index,
            process_count=process_count,
            seed=seed,
            deferred=config.data.fast_decode,
        )
        self._config = ml_collections.ConfigDict(config.to_dict())
        self._params = augment_params(config)
        self._max_boxes = config.data.max_boxes
        self._multiple = batch_multiple
        self._max_batch = max(
            train_batch_size(config, c, process_count, batch_multiple)
            for c in train_canvas_sizes(config)
        )

    def sample(self, step: int, index: int, canvas_hw: tuple[int, int]) -> Sample:
        """Augmented sample ``index`` of batch ``step`` (pixel boxes on the canvas)."""
        rng = np.random.default_rng([self._seed, self._process_index, step, index])
        keys = [self._key(step * self._max_batch + index)]
        mix = augment.choose_mix(rng, self._params)
        while len(keys) < augment.num_images(mix):
            keys.append(self._random_key(rng, keys))
        samples = [self.read(k)[0] for k in keys]
        return augment.augment(rng, samples, canvas_hw, self._params, mix)

    def map(self, step: int) -> dict[str, np.ndarray]:
        canvas = train_canvas_size(self._config, step, self._seed)
        batch = train_batch_size(self._config, canvas, self._process_count, self._multiple)
        images = np.empty((batch, canvas, canvas, 3), np.uint8)
        boxes = np.empty((batch, self._max_boxes, 4), np.float32)
        labels = np.empty((batch, self._max_boxes), np.int32)
        mask = np.empty((batch, self._max_boxes), bool)
        for i in range(batch):
            s = self.sample(step, i, (canvas, canvas))
            images[i] = s.image
            pad_rng = np.random.default_rng([self._seed, step, i, 1])
            boxes[i], labels[i], mask[i] = pad_boxes(pad_rng, s, self._max_boxes)
        return {"image": images, "boxes": boxes, "labels": labels, "mask": mask}


class _EvalBatches(_BatchTransform):
    """Builds evaluation batch ``step``: resize only, padded with invalid rows at the end."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        builder_dir: str,
        split: str,
        *,
        num_records: int,
        process_index: int,
        process_count: int,
    ):
        super().__init__(builder_dir, split, config.data.workers)
        d = config.data
        self._batch = d.eval_batch_size or d.batch_size
        if self._batch % process_count:
            raise ValueError(f"eval batch {self._batch} is not divisible by {process_count}")
        self._batch //= process_count
        self._canvas = d.eval_image_size or d.image_size
        self._letterbox = d.letterbox
        self._max_boxes = d.max_boxes
        self._num_records = num_records
        self._process_index, self._process_count = process_index, process_count

    def map(self, step: int) -> dict[str, np.ndarray]:
        b, c, m = self._batch, self._canvas, self._max_boxes
        out = {
            "image": np.zeros((b, c, c, 3), np.uint8),
            "boxes": np.zeros((b, m, 4), np.float32),
            "labels": np.zeros((b, m), np.int32),
            "mask": np.zeros((b, m), bool),
            "image_id": np.full((b,), -1, np.int64),
            "orig_size": np.zeros((b, 2), np.int32),
            "valid": np.zeros((b,), bool),
            # The COCO evaluation's ground truth, untouched by the canvas: original pixels,
            # crowd boxes included (flagged), each annotation's own area (-1: none given).
            "gt_boxes": np.zeros((b, m, 4), np.float32),
            "gt_labels": np.zeros((b, m), np.int32),
            "gt_mask": np.zeros((b, m), bool),
            "gt_crowd": np.zeros((b, m), bool),
            "gt_area": np.full((b, m), -1.0, np.float32),
        }
        first = (step * self._process_count + self._process_index) * b
        for i, key in enumerate(range(first, min(first + b, self._num_records))):
            record = self.source()[int(key)]
            sample, image_id = self._decode(record, key)
            height, width = sample.image.shape[:2]
            out["orig_size"][i] = (height, width)
            gt = sources.decode_annotations(record, height, width)
            self._check_labels(gt[1], key)
            n = min(len(gt[1]), m)  # at most max_boxes objects, in record order
            for name, values in zip(
                ("gt_boxes", "gt_labels", "gt_crowd", "gt_area"), gt, strict=True
            ):
                out[name][i, :n] = values[:n]
            out["gt_mask"][i, :n] = True
            sample = augment.resize_to_canvas(sample, (c, c), self._letterbox)
            out["image"][i] = sample.image
            rng = np.random.default_rng([key])
            out["boxes"][i], out["labels"][i], out["mask"][i] = pad_boxes(rng, sample, m)
            out["image_id"][i] = image_id if image_id >= 0 else key
            out["valid"][i] = True
        return out


def _prepared(
    config: ml_collections.ConfigDict, split: str, task: str = sources.DETECTION
) -> tuple[str, int]:
    """(dataset dir, records in ``split``) of ``config.data.name``, checked to be a ``task`` one."""
    builder = sources.load_builder(config.data.name, config.data.data_dir)
    found = sources.dataset_task(builder)
    if found != task:
        other = "create_classification_" if task == sources.DETECTION else "create_"
        raise ValueError(
            f"config.data.name={config.data.name!r} is a {found} dataset, but this iterator "
            f"needs a {task} dataset (use the {other}*_iterator functions for it, or another "
            "config.data.name)"
        )
    sources.open_split(builder, split)  # fails early with a clear message
    return str(builder.data_dir), int(builder.info.splits[split].num_examples)


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int,
    split: str = "train",
    batch_multiple: int = 1,
) -> grain.DataLoaderIterator:
    """An endless, checkpointable iterator of this process's training batches.

    Batch ``k`` has the canvas `train_canvas_size(config, k, seed)` (read it from
    ``batch["image"].shape``) and `train_batch_size` rows (``batch_size // process_count``
    unless dynamic_minibatch, which rounds to ``batch_multiple``, e.g. the local device count).
    Use ``get_state``/``set_state`` (or grain.checkpoint with orbax) to resume.
    """
    d = config.data
    if d.letterbox and d.mosaic:
        raise ValueError(
            "letterbox with mosaic is an error in darknet (since commit 9a9fcdb); "
            "set config.data.mosaic=False or config.data.letterbox=False"
        )
    if d.random_shapes and d.random_shapes_range:
        lo, hi = d.random_shapes_range
        if lo % 32 or hi % 32 or lo > hi:
            raise ValueError(f"random_shapes_range {d.random_shapes_range}: multiples of 32")
    builder_dir, num_records = _prepared(config, split)
    transform = _TrainBatches(
        config,
        builder_dir,
        split,
        num_records=num_records,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        batch_multiple=batch_multiple,
    )
    return loader.loader(transform, None, d.workers)


def num_eval_batches(config: ml_collections.ConfigDict, num_records: int) -> int:
    """Batches (per process, the same on all) that cover ``num_records`` evaluation images."""
    batch = config.data.eval_batch_size or config.data.batch_size
    return math.ceil(num_records / batch)


def create_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str = "validation",
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DataLoaderIterator:
    """One pass over ``split`` in order, without augmentation, padded to whole batches.

    Every process yields the same number of batches (its rows of each global batch), so a
    jitted step sees equal shapes everywhere; rows with ``valid`` False are padding.
    """
    builder_dir, num_records = _prepared(config, split)
    transform = _EvalBatches(
        config,
        builder_dir,
        split,
        num_records=num_records,
        process_index=process_index,
        process_count=process_count,
    )
    steps = num_eval_batches(config, num_records)
    return loader.loader(transform, steps, config.data.workers)


def boxes_to_original(
    boxes: Any, orig_size: Any, canvas_hw: tuple[int, int], letterbox: bool = False
) -> Any:
    """Boxes normalised to the canvas [..., 4] -> pixel xyxy of the original image.

    ``orig_size`` is (height, width), per image ([..., 2] for [..., N, 4] boxes) or per box. Undoes
    the stretch (darknet's default) or the letterbox of evaluation; numpy or jax arrays.
    """
    import jax
    import jax.numpy as jnp

    xp = jnp if isinstance(boxes, jax.Array) or isinstance(orig_size, jax.Array) else np
    boxes = xp.asarray(boxes, dtype=xp.float32)
    size = xp.asarray(orig_size, dtype=xp.float32)
    if size.ndim == boxes.ndim - 1:  # one size per image for [..., N, 4] boxes
        size = size[..., None, :]
    h, w = size[..., 0:1], size[..., 1:2]
    ch, cw = canvas_hw
    if letterbox:
        # augment.letterbox_geometry with array ops: the image fills (new_w, new_h) at (dx, dy).
        w, h = xp.maximum(w, 1.0), xp.maximum(h, 1.0)  # padding rows have size 0
        wide = cw / w < ch / h
        # floor_divide of exact integer-valued floats is exact, as C's integer division.
        new_w = xp.where(wide, cw, xp.floor_divide(w * ch, h))
        new_h = xp.where(wide, xp.floor_divide(h * cw, w), ch)
        dx, dy = xp.floor((cw - new_w) / 2), xp.floor((ch - new_h) / 2)
        rw, rh = cw * w / new_w, ch * h / new_h  # the canvas's extent in original pixels
        x0, y0 = -dx * w / new_w, -dy * h / new_h
    else:
        rw, rh, x0, y0 = w, h, 0.0, 0.0
    x = boxes[..., 0::2] * rw + x0
    y = boxes[..., 1::2] * rh + y0
    x, y = xp.clip(x, 0.0, w), xp.clip(y, 0.0, h)
    return xp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)
