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
from yolov4_jax.data import pipeline, sources, synthetic

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


def test_dynamic_minibatch(config) -> None:
    config.data.random_shapes = True
    config.data.random_shapes_range = (64, 128)
    config.data.dynamic_minibatch = True
    assert data.train_batch_size(config, 128) == 4
    assert data.train_batch_size(config, 64) == 16
    assert data.train_batch_size(config, 96, multiple=4) == 4  # 7.1 rounded down to 4
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


def test_synthetic_images_are_deterministic_with_a_range_of_sizes() -> None:
    a = synthetic.render_image(np.random.default_rng([0, 0, 5]), 224, 320, 6)
    b = synthetic.render_image(np.random.default_rng([0, 0, 5]), 224, 320, 6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    sides = []
    for i in range(40):
        image, boxes, labels = synthetic.render_image(np.random.default_rng(i), 224, 320, 6)
        h, w = image.shape[:2]
        assert (
            np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= w) and np.all(boxes[:, [1, 3]] <= h)
        )
        assert set(labels.tolist()) <= set(range(len(synthetic.CLASS_NAMES)))
        sides += np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    # Small (stride 8), medium (stride 16) and large (stride 32) objects at 608 px input.
    sides = np.array(sides) * 608 / 272
    assert (sides < 48).sum() > 10 and ((sides > 64) & (sides < 128)).sum() > 10
    assert (sides > 192).sum() > 5


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
    config = test_tiny.get_config()
    config.data.data_dir, config.data.image_size = data_dir, 96
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
