"""The grain pipeline: batch contract, determinism, resume, random shapes, sharding, eval."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import test_tiny
from yolov4_jax import data
from yolov4_jax.data import augment, pipeline, sources, synthetic
from yolov4_jax.models import factory, specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("base", os.path.join(ROOT, "configs", "base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    sources.load_builder("yolov4_synthetic/tiny", path)  # prepares it once
    return path


@pytest.fixture
def config(data_dir) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "yolov4_synthetic/tiny"
    c.data.data_dir = data_dir
    c.data.image_size = 96
    c.data.batch_size = 4
    c.data.max_boxes = 12
    c.data.random_shapes = False
    c.data.mosaic_prob = 0.5
    c.data.cutmix = True
    c.data.mixup = True
    return c


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_dataset_info(config) -> None:
    info = data.dataset_info(config)
    assert info.num_classes == 5 and info.class_names == synthetic.CLASS_NAMES
    assert info.split_sizes == {"train": 24, "validation": 12}


def test_train_batch_contract(config) -> None:
    for batch in take(data.create_train_iterator(config, seed=0), 3):
        assert batch["image"].shape == (4, 96, 96, 3) and batch["image"].dtype == np.uint8
        assert batch["boxes"].shape == (4, 12, 4) and batch["boxes"].dtype == np.float32
        assert batch["labels"].shape == (4, 12) and batch["labels"].dtype == np.int32
        assert batch["mask"].shape == (4, 12) and batch["mask"].dtype == bool
        mask = batch["mask"]
        assert mask.any()
        # Real boxes first, padding rows all zero.
        assert np.all(np.diff(mask.astype(int), axis=1) <= 0)
        assert not batch["boxes"][~mask].any() and not batch["labels"][~mask].any()
        real = batch["boxes"][mask]
        assert np.all((real >= 0) & (real <= 1)) and np.all(real[:, 2:] > real[:, :2])
        assert np.all((batch["labels"][mask] >= 0) & (batch["labels"][mask] < 5))


def test_deterministic_per_seed_and_resumable(config) -> None:
    first = take(data.create_train_iterator(config, seed=3), 3)
    assert_same(first, take(data.create_train_iterator(config, seed=3), 3))
    other = next(data.create_train_iterator(config, seed=4))
    assert not np.array_equal(first[0]["image"], other["image"])
    it = data.create_train_iterator(config, seed=3)
    take(it, 2)
    state = it.get_state()
    resumed = data.create_train_iterator(config, seed=3)
    resumed.set_state(state)
    assert_same(first[2:], take(resumed, 1))


def test_worker_process_gives_the_same_batches(config) -> None:
    config.data.workers = 1
    with_worker = take(data.create_train_iterator(config, seed=5), 2)
    config.data.workers = 0
    assert_same(with_worker, take(data.create_train_iterator(config, seed=5), 2))


def test_random_shapes_change_every_n_steps(config) -> None:
    config.data.random_shapes = True
    config.data.random_shapes_range = (64, 128)
    config.data.random_shapes_every = 3
    assert data.train_canvas_sizes(config) == [64, 96, 128]
    sides = [b["image"].shape[1] for b in take(data.create_train_iterator(config, seed=0), 12)]
    for period in range(4):
        assert len(set(sides[3 * period : 3 * period + 3])) == 1
    sides_long = [data.train_canvas_size(config, k, seed=0) for k in range(0, 300, 3)]
    assert set(sides_long) == {64, 96, 128}
    assert sides == [data.train_canvas_size(config, k, seed=0) for k in range(12)]


def test_darknet_random_shape_rule() -> None:
    c = base_config()
    # detector.c: round(r * 608 / 32 + 1) * 32 for r in [1/1.4, 1.4], never above 608 when r < 1.
    assert data.train_canvas_sizes(c) == list(range(480, 897, 32))
    c.data.image_size = 416
    assert data.train_canvas_sizes(c) == list(range(320, 609, 32))
    sides = {data.train_canvas_size(c, k, seed=1) for k in range(0, 3000, 10)}
    assert sides <= set(data.train_canvas_sizes(c)) and len(sides) > 5
    c.data.random_shapes = False
    assert data.train_canvas_sizes(c) == [416]


def test_darknet_trains_its_first_and_last_shapes_at_the_largest_side() -> None:
    """detector.c::train_detector: the first resize (avg_loss < 0) and every resize after
    iteration max_batches - 100 take round(1.4 * 416 / 32 + 1) * 32 = 608; resizes happen
    every 10 iterations, so with 1000 updates steps 0-9 and 910-999 are at 608."""
    c = base_config()
    c.data.image_size = 416
    c.optim.max_batches = 1000
    sides = [data.train_canvas_size(c, k, seed=1) for k in range(1000)]
    assert set(sides[:10]) == {608} and set(sides[910:]) == {608}
    assert sides[900] == sides[909] and len(set(sides[10:910])) > 5  # drawn in between
    assert sides[900:910] == [data.train_canvas_size(c, 900, seed=1)] * 10
    # The project's range rule (random_shapes_range) has no such ends.
    c.data.random_shapes_range = (320, 608)
    assert len({data.train_canvas_size(c, k, seed=1) for k in range(0, 10)}) == 1
    assert {data.train_canvas_size(c, k, seed=s) for s in range(20) for k in (0, 990)} != {608}


def test_dynamic_minibatch(config) -> None:
    config.data.random_shapes = True
    config.data.random_shapes_range = (64, 128)
    config.data.dynamic_minibatch = True
    # detector.c: dim_b = 4 * 128^2 / side^2 (integer division), x .8 where that exceeds 4.
    assert data.train_batch_size(config, 128) == 4  # 4; 3.2 -> 3 is not above 4: stays 4
    assert data.train_batch_size(config, 64) == 12  # 16; 12.8 -> 12
    assert data.train_batch_size(config, 96) == 5  # 7 (7.1); 5.6 -> 5
    assert data.train_batch_size(config, 96, multiple=4) == 4  # rounded down to 4
    wide = ml_collections.ConfigDict(config.to_dict())
    wide.data.batch_size, wide.data.random_shapes_range = 8, (160, 192)
    assert data.train_batch_size(wide, 160) == 11  # 11 (11.5); 8.8 -> 8 is not above 8
    for batch in take(data.create_train_iterator(config, seed=0), 25):
        side = batch["image"].shape[1]
        assert batch["image"].shape[0] == data.train_batch_size(config, side)


def test_processes_read_disjoint_shards(config) -> None:
    keys = []
    for index in range(2):
        t = pipeline._TrainBatches(
            config,
            "unused",
            "train",
            num_records=24,
            process_index=index,
            process_count=2,
            seed=0,
            batch_multiple=1,
        )
        keys.append({t._key(p) for p in range(12)})
    assert keys[0] == set(range(12)) and keys[1] == set(range(12, 24))
    config.data.batch_size = 6
    batch = next(data.create_train_iterator(config, seed=0, process_index=1, process_count=2))
    assert batch["image"].shape[0] == 3


def test_letterbox_with_mosaic_is_an_error(config) -> None:
    config.data.letterbox = True
    with pytest.raises(ValueError, match="letterbox with mosaic"):
        data.create_train_iterator(config, seed=0)
    config.data.mosaic = False
    assert next(data.create_train_iterator(config, seed=0))["image"].shape == (4, 96, 96, 3)


@pytest.mark.parametrize("letterbox", [False, True])
def test_eval_batches_cover_the_split_and_map_back(config, letterbox: bool) -> None:
    config.data.batch_size = 5  # 12 images: 3 batches, the last padded with 3 invalid rows
    config.data.letterbox = letterbox
    batches = list(data.create_eval_iterator(config))
    assert len(batches) == data.num_eval_batches(config, 12) == 3
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 12 and not valid[-3:].any()
    last = batches[-1]
    assert last["image_id"].dtype == np.int64 and last["orig_size"].dtype == np.int32
    assert not last["mask"][~last["valid"]].any() and not last["image"][~last["valid"]].any()

    builder = sources.load_builder(config.data.name, config.data.data_dir)
    source = sources.open_split(builder, "validation")
    originals = {}
    for k in range(len(source)):
        sample, image_id = sources.decode(source[k])
        originals[image_id] = sample
    seen = []
    for b in batches:
        pixel = data.boxes_to_original(b["boxes"], b["orig_size"], (96, 96), letterbox)
        for i in np.flatnonzero(b["valid"]):
            orig = originals[int(b["image_id"][i])]
            seen.append(int(b["image_id"][i]))
            assert tuple(b["orig_size"][i]) == orig.image.shape[:2]
            np.testing.assert_allclose(pixel[i][b["mask"][i]], orig.boxes, atol=1e-3)
    assert sorted(seen) == sorted(originals)


def test_boxes_to_original_letterbox_by_hand_and_under_jit() -> None:
    # A 200x100 (h x w) image letterboxed into 100x100: scale .5, 25 px bars left and right.
    boxes = np.array([[0.25, 0.0, 0.75, 1.0]], np.float32)
    out = data.boxes_to_original(boxes, np.array([200, 100]), (100, 100), letterbox=True)
    np.testing.assert_allclose(out, [[0, 0, 100, 200]], atol=1e-4)
    stretch = jax.jit(lambda b, s: data.boxes_to_original(b, s, (100, 100)))
    out = stretch(jnp.asarray(boxes)[None], jnp.array([[200, 100]]))
    np.testing.assert_allclose(out, [[[25, 0, 75, 200]]], atol=1e-4)


def test_preview_writes_exact_inputs_and_boxes(config, tmp_path) -> None:
    from yolov4_jax.data import preview

    config.seed = 0
    index = preview.write_preview(config, str(tmp_path), 5)
    batches = take(data.create_train_iterator(config, seed=0), 2)
    with open(tmp_path / "boxes.json") as f:
        assert json.load(f) == index
    for k in range(5):
        batch, i = batches[k // 4], k % 4
        name = f"input_{k:04d}.png"
        image = cv2.cvtColor(cv2.imread(str(tmp_path / name)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, batch["image"][i])
        want = batch["boxes"][i][batch["mask"][i]] * 96
        np.testing.assert_allclose(index[name]["boxes"], want, atol=0.01)
        assert index[name]["labels"] == batch["labels"][i][batch["mask"][i]].tolist()
        assert (tmp_path / name.replace("input_", "annotated_")).exists()


def test_preview_cli_with_config_overrides(data_dir, tmp_path) -> None:
    out = tmp_path / "preview"
    cmd = [sys.executable, "-m", "yolov4_jax.data.preview", "--config=configs/test_tiny.py"]
    cmd += ["--num", "3", f"--config.data.data_dir={data_dir}", "--config.data.image_size=96"]
    run_cli = functools.partial(
        subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    run = run_cli(cmd + ["--out", str(out)])
    assert run.returncode == 0, run.stderr
    with open(out / "boxes.json") as f:
        index = json.load(f)
    assert sorted(index) == ["input_0000.png", "input_0001.png", "input_0002.png"]
    # The same config in this process: the PNGs are its first batch's images, at the new size.
    # The preview shows what training feeds: jitter and resize from the model's last [yolo].
    config = test_tiny.get_config()
    config.data.data_dir, config.data.image_size = data_dir, 96
    layers = factory.model_layers(config.model, 5)
    config = data.with_head_augmentation(config, [s for s in layers if isinstance(s, specs.Yolo)])
    assert config.data.resize == 1.5  # yolov4-tiny's
    batch = next(data.create_train_iterator(config, seed=config.seed))
    for k, name in enumerate(sorted(index)):
        image = cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, batch["image"][k])
        assert cv2.imread(str(out / name.replace("input_", "annotated_"))).shape == (96, 96, 3)
        mask = batch["mask"][k]
        want = batch["boxes"][k][mask] * 96  # pixel (x1, y1, x2, y2)
        np.testing.assert_allclose(np.reshape(index[name]["boxes"], (-1, 4)), want, atol=0.01)
        assert index[name]["labels"] == batch["labels"][k][mask].tolist()
        assert index[name]["names"] == [synthetic.CLASS_NAMES[i] for i in index[name]["labels"]]
    assert sum(len(v["labels"]) for v in index.values()) > 0
    # An unknown field is an error naming it, before anything is written.
    bad = tmp_path / "bad"
    run = run_cli(cmd + ["--out", str(bad), "--config.data.nope=1"])
    assert run.returncode != 0 and "'nope'" in run.stderr and not bad.exists()


def test_mosaic_reads_four_distinct_records(config, monkeypatch) -> None:
    config.data.mosaic_prob = 1.0
    config.data.cutmix = config.data.mixup = False
    t = pipeline._TrainBatches(
        config,
        "unused",
        "train",
        num_records=24,
        process_index=0,
        process_count=1,
        seed=0,
        batch_multiple=1,
    )
    builder = sources.load_builder(config.data.name, config.data.data_dir)
    source = sources.open_split(builder, "train")
    read: list[int] = []

    def fake_read(key):
        read.append(key)
        return sources.decode(source[key])

    monkeypatch.setattr(t, "read", fake_read)
    for step in range(3):
        for i in range(4):
            del read[:]
            t.sample(step, i, (64, 64))
            assert len(set(read)) == 4


def test_synthetic_dataset_is_deterministic(data_dir, tmp_path) -> None:
    again = sources.load_builder("yolov4_synthetic/tiny", str(tmp_path))
    first = sources.load_builder("yolov4_synthetic/tiny", data_dir)
    a, b = sources.open_split(first, "validation"), sources.open_split(again, "validation")
    for k in range(len(a)):
        assert a[k]["image"] == b[k]["image"]
        np.testing.assert_array_equal(a[k]["objects"]["bbox"], b[k]["objects"]["bbox"])


def test_eval_is_split_across_processes(config) -> None:
    config.data.batch_size = 4  # 2 rows per process; 12 images -> 3 batches on each process
    ids, counts = [], []
    for index in range(2):
        batches = list(data.create_eval_iterator(config, process_index=index, process_count=2))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape[0] == 2
            ids += b["image_id"][b["valid"]].tolist()
    assert counts == [3, 3] and len(ids) == 12 and len(set(ids)) == 12


# data.fast_decode: JPEGs decoded at 1/2, 1/4 or 1/8 size when the canvas needs no more.


def _exif_orientation_segment(orientation: int) -> bytes:
    """An APP1 Exif segment whose only tag is the orientation (big-endian TIFF)."""
    tiff = b"MM\0*\0\0\0\x08\0\x01" + b"\x01\x12\0\x03\0\0\0\x01"  # IFD0: 1 entry, SHORT x1
    body = b"Exif\0\0" + tiff + orientation.to_bytes(2, "big") + b"\0\0" + b"\0\0\0\0"
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def _smooth_textured(height: int = 480, width: int = 640) -> np.ndarray:
    """A natural-ish RGB image: gradients plus texture of periods 30-45 px."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            60 + 120 * x / width + 40 * np.sin(x / 7 + y / 11),
            127 + 60 * np.cos(y / 5) * np.sin(x / 6),
            200 - 150 * y / height + 30 * np.sin((x + y) / 5),
        ],
        axis=-1,
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def test_jpeg_size_reads_the_header_or_gives_none() -> None:
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    baseline = cv2.imencode(".jpg", image)[1].tobytes()
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    grey = cv2.imencode(".jpg", image[..., 0])[1].tobytes()
    assert b"\xff\xc0" in baseline and b"\xff\xc2" in progressive  # SOF0 and SOF2 frames
    for jpeg in (baseline, progressive, grey):
        assert sources.jpeg_size(jpeg) == (37, 53) == sources.decode_image(jpeg).shape[:2]
    # cv2 applies the Exif orientation: 6 turns the image a quarter, so the sides swap.
    turned = baseline[:2] + _exif_orientation_segment(6) + baseline[2:]
    assert sources.jpeg_size(turned) == (53, 37) == sources.decode_image(turned).shape[:2]
    # Deferred decoding leaves it to the full decode: the reduced blocks would be misaligned.
    assert isinstance(sources.decode({"image": turned}, deferred=True)[0].image, np.ndarray)
    mirrored = baseline[:2] + _exif_orientation_segment(2) + baseline[2:]
    assert sources.jpeg_size(mirrored) == (37, 53) == sources.decode_image(mirrored).shape[:2]
    lossless = baseline.replace(b"\xff\xc0", b"\xff\xc3")
    png = cv2.imencode(".png", image)[1].tobytes()
    garbage = [b"", b"\xff\xd8", b"\xff\xd8\xff not really a jpeg", baseline[:40], png, lossless]
    garbage.append(baseline[:2] + b"\xff\xe1\0\x0eExif\0\0MM\0*\0\0" + baseline[2:])  # bad Exif
    for data_bytes in garbage:
        assert sources.jpeg_size(data_bytes) is None, data_bytes[:12]
    # Deferred decoding keeps only JPEGs it can size; the rest decode (or fail) at once.
    assert isinstance(
        sources.decode({"image": progressive}, deferred=True)[0].image, sources.EncodedJpeg
    )
    assert isinstance(sources.decode({"image": png}, deferred=True)[0].image, np.ndarray)
    with pytest.raises(ValueError, match="undecodable"):
        sources.decode({"image": garbage[2]}, deferred=True)


def test_encoded_jpeg_decodes_at_reduced_size_and_reports_errors() -> None:
    image = _smooth_textured(101, 203)  # not multiples of 8: the reduced size rounds up
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        jpeg = cv2.imencode(".jpg", image, params)[1].tobytes()
        lazy = sources.EncodedJpeg(jpeg, 101, 203)
        full = lazy.decode(1)
        np.testing.assert_array_equal(full, sources.decode_image(jpeg))
        for f in (2, 4, 8):
            reduced = lazy.decode(f)
            h, w = -(-101 // f), -(-203 // f)
            assert reduced.shape == (h, w, 3)
            # Reduced pixel j covers full pixels [f j, f j + f) (the last ones edge-padded).
            padded = cv2.copyMakeBorder(full, 0, h * f - 101, 0, w * f - 203, cv2.BORDER_REPLICATE)
            blocks = padded.reshape(h, f, w, f, 3).mean(axis=(1, 3))
            assert np.abs(reduced - blocks).mean() < 1.5, f
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    wrong = sources.EncodedJpeg(jpeg, 100, 203, "ds split train record 7")
    with pytest.raises(ValueError, match="record 7: decodes to 203x101 but its header says"):
        wrong.decode(2)
    # A header that parses and a body that does not (a bogus Huffman table): named errors.
    table = jpeg.index(b"\xff\xc4")
    broken = jpeg[: table + 4] + b"\x55" + jpeg[table + 5 :]
    (sample, _) = sources.decode({"image": broken}, deferred=True, where="ds split x record 3")
    assert sample.image.shape == (101, 203, 3)
    for f in (1, 2):
        with pytest.raises(ValueError, match="record 3: undecodable image"):
            sample.image.decode(f)


def _count_reductions(monkeypatch) -> list[int]:
    """The reduction factor of every EncodedJpeg.decode call, in order."""
    reductions: list[int] = []
    decode = sources.EncodedJpeg.decode

    def counted(self, reduction: int = 1) -> np.ndarray:
        reductions.append(reduction)
        return decode(self, reduction)

    monkeypatch.setattr(sources.EncodedJpeg, "decode", counted)
    return reductions


def test_reduction_never_lowers_the_canvas_resolution() -> None:
    rect = (0.0, 0.0, 640.0, 480.0)
    assert augment.reduction_for(rect, (240, 320)) == 2  # exactly half in both axes
    assert augment.reduction_for(rect, (241, 320)) == 1  # y needs more than half
    assert augment.reduction_for(rect, (120, 159)) == 4
    assert augment.reduction_for(rect, (60, 80)) == 8 == augment.reduction_for(rect, (6, 8))
    assert augment.reduction_for((-100.0, -50.0, 740.0, 530.0), (240, 320)) == 2  # padded crop
    rng, seen = np.random.default_rng(0), set()
    for _ in range(200):
        x0, y0 = rng.uniform(-300, 300, 2)
        width, height = rng.uniform(10, 2000, 2)
        canvas_h, canvas_w = (int(v) for v in rng.integers(32, 640, 2))
        f = augment.reduction_for((x0, y0, x0 + width, y0 + height), (canvas_h, canvas_w))
        # The largest f whose 1/f source has a pixel per canvas pixel in both axes.
        assert f == 1 or (width / f >= canvas_w and height / f >= canvas_h)
        assert f == 8 or width / (2 * f) < canvas_w or height / (2 * f) < canvas_h
        seen.add(f)
    assert seen == {1, 2, 4, 8}


@pytest.mark.parametrize("mix", ["none", "mosaic", "cutmix"])
def test_fast_decode_keeps_boxes_and_pixels_close(mix, monkeypatch) -> None:
    image = _smooth_textured()
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    full = sources.decode_image(jpeg)
    boxes = np.array([[10, 20, 300, 200], [320, 100, 630, 470]], np.float32)
    labels = np.array([1, 2], np.int32)
    lazy = sources.EncodedJpeg(jpeg, 480, 640)
    reductions = _count_reductions(monkeypatch)
    p = augment.AugmentParams()
    n = augment.num_images(mix)
    for canvas, reduced in (((608, 608), False), ((128, 160), True)):
        del reductions[:]
        differences = []
        for seed in range(6):
            outs = [
                augment.augment(
                    np.random.default_rng(seed),
                    [augment.Sample(x, boxes, labels)] * n,
                    canvas,
                    p,
                    mix,
                )
                for x in (full, lazy)
            ]
            np.testing.assert_array_equal(outs[0].boxes, outs[1].boxes)
            np.testing.assert_array_equal(outs[0].labels, outs[1].labels)
            differences.append(np.abs(outs[0].image.astype(int) - outs[1].image).mean())
        if reduced:  # a quarter-pixel misalignment would give about 4 on average
            assert np.mean(differences) < 1.5 and np.max(differences) < 3, differences
        else:  # 640x480 onto 608 needs full resolution: the same pixels
            assert np.max(differences) == 0
        assert len(reductions) == 6 * n
        assert (max(reductions) > 1) == reduced and set(reductions) <= {1, 2, 4}


def test_fast_decode_switch_keeps_the_batches_boxes(config, monkeypatch) -> None:
    reductions = _count_reductions(monkeypatch)
    config.data.image_size = 64  # the tiny dataset's 100-128 px scenes: some at 1/2
    config.data.fast_decode = False
    slow = take(data.create_train_iterator(config, seed=2), 3)
    assert not reductions
    config.data.fast_decode = True
    fast = take(data.create_train_iterator(config, seed=2), 3)
    assert max(reductions) > 1
    for a, b in zip(fast, slow, strict=True):
        for key in ("boxes", "labels", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        assert np.abs(a["image"].astype(int) - b["image"]).mean() < 2


def test_a_label_outside_the_class_list_is_an_error(config) -> None:
    builder_dir, num_records = pipeline._prepared(config, "validation")
    transform = pipeline._EvalBatches(
        config, builder_dir, "validation", num_records=num_records, process_index=0,
        process_count=1,
    )  # fmt: skip
    transform.source()
    labels = [int(transform.read(k)[0].labels.max(initial=-1)) for k in range(num_records)]
    assert max(labels) >= 2
    transform._num_classes = 2  # as if the class list were shorter than the annotations
    key = next(k for k, v in enumerate(labels) if v >= 2)
    with pytest.raises(ValueError, match=rf"split validation record {key}: object label \d"):
        transform.read(key)
