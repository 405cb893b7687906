"""COCO and YOLO folders -> tfds datasets: round trips and every bad-input case."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from configs import base
from yolov4_jax.data import formats, pipeline, prepare, sources

# COCO category ids on purpose not contiguous and not sorted: labels follow ascending ids.
CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 10, "name": "ten"}]
LABEL_OF = {3: 0, 7: 1, 10: 2}


def _write_images(folder: str, count: int, rng: np.random.Generator) -> list[dict]:
    """PNG images (lossless, so round trips compare exactly) with 0-3 random boxes each."""
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(count):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        name = f"img_{i:03d}.png"
        cv2.imwrite(os.path.join(folder, name), image)
        boxes = []
        # The first image always has boxes, the last one none.
        n_boxes = 0 if i == count - 1 else int(rng.integers(1 if i == 0 else 0, 4))
        for _ in range(n_boxes):
            x0, y0 = rng.uniform(0, w - 12), rng.uniform(0, h - 12)
            bw, bh = rng.uniform(4, w - x0), rng.uniform(4, h - y0)
            boxes.append(
                (
                    [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)],
                    int(rng.choice([3, 7, 10])),
                )
            )
        items.append({"file": name, "h": h, "w": w, "rgb": image[..., ::-1], "boxes": boxes})
    return items


def _coco(folder: str, items: list[dict], first_id: int = 1) -> str:
    images, annotations = [], []
    for i, it in enumerate(items):
        images.append(
            {"id": first_id + i, "file_name": it["file"], "height": it["h"], "width": it["w"]}
        )
        for bbox, cat in it["boxes"]:
            annotations.append(
                {
                    "id": len(annotations) + 100,
                    "image_id": first_id + i,
                    "category_id": cat,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def _yolo(images_dir: str, labels_dir: str, items: list[dict]) -> None:
    os.makedirs(labels_dir, exist_ok=True)
    for it in items:
        lines = []
        for (x, y, w, h), cat in it["boxes"]:
            cx, cy = (x + w / 2) / it["w"], (y + h / 2) / it["h"]
            lines.append(f"{LABEL_OF[cat]} {cx:.6f} {cy:.6f} {w / it['w']:.6f} {h / it['h']:.6f}")
        stem = os.path.splitext(it["file"])[0]
        with open(os.path.join(labels_dir, stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


@pytest.fixture
def coco_folder(tmp_path):
    rng = np.random.default_rng(0)
    items = _write_images(str(tmp_path / "images"), 5, rng)
    return str(tmp_path / "images"), _coco(str(tmp_path), items), items


def _read_back(data_dir: str, name: str, split: str) -> dict[str, tuple]:
    builder = sources.load_builder(name, data_dir)
    source = sources.open_split(builder, split)
    out = {}
    for k in range(len(source)):
        record = source[k]
        sample, _ = sources.decode(record)
        filename = record["image/filename"]  # tfds Text comes back as bytes
        out[filename.decode() if isinstance(filename, bytes) else filename] = (sample, record)
    return out


def _assert_matches(read: dict, items: list[dict]) -> None:
    by_file = {it["file"]: it for it in items}
    for filename, (sample, _) in read.items():
        it = by_file[os.path.basename(filename)]
        np.testing.assert_array_equal(sample.image, it["rgb"])
        want = np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in it["boxes"]]).reshape(-1, 4)
        np.testing.assert_allclose(sample.boxes, want, atol=2e-3 * max(it["h"], it["w"]))
        np.testing.assert_array_equal(sample.labels, [LABEL_OF[c] for _, c in it["boxes"]])


def test_coco_round_trip(tmp_path, coco_folder) -> None:
    images, annotations, items = coco_folder
    rng = np.random.default_rng(1)
    val_items = _write_images(str(tmp_path / "val"), 3, rng)
    val_json = _coco(str(tmp_path / "val"), val_items, first_id=50)
    data_dir = str(tmp_path / "tfds")
    code = prepare.main(
        [
            "--format",
            "coco",
            "--images",
            images,
            "--annotations",
            annotations,
            "--val-images",
            str(tmp_path / "val"),
            "--val-annotations",
            val_json,
            "--name",
            "my_coco",
            "--data-dir",
            data_dir,
        ]
    )
    assert code == 0
    info = sources.dataset_info_from_builder(sources.load_builder("my_coco", data_dir))
    assert info.class_names == ("three", "seven", "ten")
    assert info.split_sizes == {"train": 5, "validation": 3}
    train = _read_back(data_dir, "my_coco", "train")
    _assert_matches(train, items)
    _assert_matches(_read_back(data_dir, "my_coco", "validation"), val_items)
    ids = sorted(int(r["image/id"]) for _, r in train.values())
    assert ids == [1, 2, 3, 4, 5]


def test_coco_crowd_boxes_are_stored_and_dropped_by_decode(tmp_path, coco_folder) -> None:
    images, annotations, _ = coco_folder
    with open(annotations) as f:
        coco = json.load(f)
    coco["annotations"].append(
        {
            "id": 999,
            "image_id": 1,
            "category_id": 3,
            "bbox": [1, 1, 10, 10],
            "iscrowd": 1,
            "area": 77.0,
        }
    )
    with open(annotations, "w") as f:
        json.dump(coco, f)
    prepare.prepare(
        format="coco",
        images=images,
        annotations=annotations,
        name="crowd",
        data_dir=str(tmp_path / "tfds"),
    )
    read = _read_back(str(tmp_path / "tfds"), "crowd", "train")
    sample, record = read["img_000.png"]
    assert np.asarray(record["objects"]["is_crowd"]).sum() == 1
    assert len(sample.labels) == len(record["objects"]["label"]) - 1
    # The annotation's area survives (-1 where the json gives none): the COCO evaluation
    # uses it, and keeps the crowd box as an ignore region.
    np.testing.assert_allclose(np.asarray(record["objects"]["area"])[-1], 77.0)
    assert (np.asarray(record["objects"]["area"])[:-1] == -1).all()
    config = base.get_config()
    config.data.name, config.data.data_dir = "crowd", str(tmp_path / "tfds")
    config.data.image_size, config.data.batch_size, config.data.max_boxes = 64, 5, 8
    builder_dir, num_records = pipeline._prepared(config, "train")
    evals = pipeline._EvalBatches(
        config, builder_dir, "train", num_records=num_records, process_index=0, process_count=1
    )
    batch = evals.map(0)
    row = list(batch["image_id"]).index(1)
    n = len(record["objects"]["label"])
    assert batch["gt_mask"][row].sum() == n and batch["gt_crowd"][row].sum() == 1
    assert batch["mask"][row].sum() == n - 1  # the training-style boxes drop the crowd
    np.testing.assert_allclose(batch["gt_boxes"][row, n - 1], [1, 1, 11, 11], atol=0.05)
    assert batch["gt_area"][row, n - 1] == pytest.approx(77.0)


def test_yolo_round_trip_with_val_fraction(tmp_path) -> None:
    rng = np.random.default_rng(2)
    items = _write_images(str(tmp_path / "images"), 6, rng)
    _yolo(str(tmp_path / "images"), str(tmp_path / "labels"), items)
    (tmp_path / "obj.names").write_text("three\nseven\nten\n")
    report = prepare.prepare(
        format="yolo",
        images=str(tmp_path / "images"),
        labels=str(tmp_path / "labels"),
        names=str(tmp_path / "obj.names"),
        val_fraction=0.34,
        name="my_yolo",
        data_dir=str(tmp_path / "tfds"),
    )
    assert report.split_sizes == {"train": 4, "validation": 2}
    train = _read_back(str(tmp_path / "tfds"), "my_yolo", "train")
    val = _read_back(str(tmp_path / "tfds"), "my_yolo", "validation")
    assert not set(train) & set(val)
    _assert_matches({**train, **val}, items)


def _coco_written(items: list[dict]) -> dict[str, tuple[np.ndarray, list[int]]]:
    """COCO boxes as written, converted as documented: [x, y, w, h] pixels -> tfds's
    normalised (y / H, x / W, (y + h) / H, (x + w) / W); labels in ascending category id."""
    out = {}
    for it in items:
        xywh = np.array([b for b, _ in it["boxes"]], np.float64).reshape(-1, 4)
        x, y, w, h = xywh.T
        yxyx = np.stack([y / it["h"], x / it["w"], (y + h) / it["h"], (x + w) / it["w"]], 1)
        out[it["file"]] = (yxyx, [LABEL_OF[c] for _, c in it["boxes"]])
    return out


def _yolo_written(labels_dir: str, items: list[dict]) -> dict[str, tuple[np.ndarray, list[int]]]:
    """YOLO lines as written in each .txt, converted as documented: class cx cy w h ->
    (cy - h/2, cx - w/2, cy + h/2, cx + w/2), clipped to [0, 1]."""
    out = {}
    for it in items:
        with open(os.path.join(labels_dir, os.path.splitext(it["file"])[0] + ".txt")) as f:
            rows = np.array([line.split() for line in f if line.strip()], np.float64)
        cls, cx, cy, w, h = rows.reshape(-1, 5).T
        yxyx = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
        out[it["file"]] = (np.clip(yxyx, 0.0, 1.0), cls.astype(int).tolist())
    return out


def _assert_exact(read: dict, items: list[dict], written: dict) -> None:
    """Pixels, stored boxes (within 1e-6 of the written ones) and labels survive the round trip."""
    by_file = {it["file"]: it for it in items}
    assert set(read) == set(written)
    for filename, (sample, record) in read.items():
        yxyx, labels = written[filename]
        np.testing.assert_array_equal(sample.image, by_file[filename]["rgb"])
        stored = np.asarray(record["objects"]["bbox"], np.float64).reshape(-1, 4)
        np.testing.assert_allclose(stored, yxyx, rtol=0, atol=1e-6)
        h, w = sample.image.shape[:2]
        pixels = yxyx[:, [1, 0, 3, 2]] * [w, h, w, h]  # decode's pixel (x1, y1, x2, y2)
        np.testing.assert_allclose(sample.boxes, pixels, rtol=0, atol=1e-4)
        assert sample.labels.tolist() == labels


def test_yolo_round_trip_with_val_images(tmp_path) -> None:
    rng = np.random.default_rng(5)
    train = _write_images(str(tmp_path / "train"), 4, rng)
    val = _write_images(str(tmp_path / "val"), 3, rng)
    _yolo(str(tmp_path / "train"), str(tmp_path / "train_labels"), train)
    _yolo(str(tmp_path / "val"), str(tmp_path / "val_labels"), val)
    (tmp_path / "obj.names").write_text("three\nseven\nten\n")
    data_dir = str(tmp_path / "tfds")
    args = ["--format", "yolo", "--names", str(tmp_path / "obj.names"), "--name", "yolo_val"]
    args += ["--images", str(tmp_path / "train"), "--labels", str(tmp_path / "train_labels")]
    args += ["--val-images", str(tmp_path / "val"), "--val-labels", str(tmp_path / "val_labels")]
    assert prepare.main(args + ["--data-dir", data_dir]) == 0
    info = sources.dataset_info_from_builder(sources.load_builder("yolo_val", data_dir))
    assert info.class_names == ("three", "seven", "ten")
    assert info.split_sizes == {"train": 4, "validation": 3}
    ids = []
    for split, items, labels in [
        ("train", train, "train_labels"),
        ("validation", val, "val_labels"),
    ]:
        read = _read_back(data_dir, "yolo_val", split)
        _assert_exact(read, items, _yolo_written(str(tmp_path / labels), items))
        ids += sorted(int(record["image/id"]) for _, record in read.values())
    assert ids == list(range(7))  # sorted file order, validation after training


def test_coco_round_trip_with_val_fraction(tmp_path, coco_folder) -> None:
    images, annotations, items = coco_folder
    data_dir = str(tmp_path / "tfds")
    common = ["--format", "coco", "--images", images, "--annotations", annotations]
    common += ["--val-fraction", "0.4", "--data-dir", data_dir]
    splits = {}
    for name, seed in [("first", "0"), ("again", "0"), ("other", "1")]:
        assert prepare.main(common + ["--name", name, "--seed", seed]) == 0
        info = sources.dataset_info_from_builder(sources.load_builder(name, data_dir))
        assert info.class_names == ("three", "seven", "ten")
        assert info.split_sizes == {"train": 3, "validation": 2}  # round(0.4 * 5) held out
        train = _read_back(data_dir, name, "train")
        val = _read_back(data_dir, name, "validation")
        assert not set(train) & set(val) and set(train) | set(val) == {it["file"] for it in items}
        _assert_exact({**train, **val}, items, _coco_written(items))
        ids = {int(r["image/id"]) for _, r in [*train.values(), *val.values()]}
        assert ids == {1, 2, 3, 4, 5}  # COCO image ids are kept
        splits[name] = sorted(val)
    assert splits["first"] == splits["again"] != splits["other"]  # seeded: --seed decides


def test_yolo_missing_label_file_means_no_objects(tmp_path) -> None:
    rng = np.random.default_rng(3)
    items = _write_images(str(tmp_path / "images"), 3, rng)
    _yolo(str(tmp_path / "images"), str(tmp_path / "images"), items[:2])  # labels beside images
    (tmp_path / "obj.names").write_text("a\nb\nc\n")
    _, examples, problems = formats.read_yolo(
        str(tmp_path / "images"), None, str(tmp_path / "obj.names")
    )
    assert not problems
    assert len(examples[2].labels) == 0 and len(examples[0].labels) == len(items[0]["boxes"])


def test_images_without_boxes_are_kept_or_dropped(tmp_path, coco_folder) -> None:
    images, annotations, items = coco_folder
    n_empty = sum(not it["boxes"] for it in items)
    assert n_empty > 0
    report = prepare.prepare(
        format="coco",
        images=images,
        annotations=annotations,
        name="keep",
        data_dir=str(tmp_path / "tfds"),
    )
    assert report.empty_images == n_empty and report.split_sizes["train"] == 5
    report = prepare.prepare(
        format="coco",
        images=images,
        annotations=annotations,
        name="drop",
        data_dir=str(tmp_path / "tfds"),
        drop_empty=True,
    )
    assert report.split_sizes["train"] == 5 - n_empty


def test_existing_dataset_needs_overwrite(tmp_path, coco_folder) -> None:
    images, annotations, _ = coco_folder
    kwargs = dict(
        format="coco",
        images=images,
        annotations=annotations,
        name="twice",
        data_dir=str(tmp_path / "tfds"),
    )
    prepare.prepare(**kwargs)
    with pytest.raises(formats.DataError, match="--overwrite"):
        prepare.prepare(**kwargs)
    prepare.prepare(**kwargs, overwrite=True)


def _break_coco(kind: str, images: str, annotations: str) -> tuple[str, str]:
    """Introduces one ``kind`` of problem; returns (file named in the report, record named)."""
    with open(annotations) as f:
        coco = json.load(f)
    ann = coco["annotations"][0]  # belongs to image id 1, img_000.png
    img_path = os.path.join(images, "img_000.png")
    record = f"annotation id {ann['id']}"
    if kind == formats.MISSING_IMAGE:
        os.remove(img_path)
        record = "image id 1"
    elif kind == formats.UNREADABLE_IMAGE:
        with open(img_path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nnot really a png")
        record = "image id 1"
    elif kind == formats.SIZE_MISMATCH:
        coco["images"][0]["width"] += 7
        record = "image id 1"
    elif kind == formats.OUTSIDE_IMAGE:
        ann["bbox"] = [coco["images"][0]["width"] - 5, 2, 20, 5]
    elif kind == formats.NON_POSITIVE_SIZE:
        ann["bbox"] = [3, 3, 0, 5]
    elif kind == "negative_size":
        ann["bbox"] = [3, 3, 5, -2]
    elif kind == formats.UNKNOWN_CATEGORY:
        ann["category_id"] = 42
    elif kind == formats.MALFORMED:
        ann["bbox"] = [1, 2, 3]
    elif kind == "bbox_not_numbers":
        ann["bbox"] = ["x", 1, 2, 3]
    elif kind == "annotation_not_an_object":
        coco["annotations"].append("oops")
        img_path, record = annotations, f"annotations[{len(coco['annotations']) - 1}]"
    elif kind == "truncated_png":
        data = open(img_path, "rb").read()
        open(img_path, "wb").write(data[: len(data) * 2 // 3])
        record = "image id 1"
    elif kind == formats.UNKNOWN_IMAGE:
        ann["image_id"] = 12345
        img_path = annotations
    with open(annotations, "w") as f:
        json.dump(coco, f)
    return img_path, record


@pytest.mark.parametrize(
    "kind",
    [
        formats.MISSING_IMAGE,
        formats.UNREADABLE_IMAGE,
        formats.SIZE_MISMATCH,
        formats.OUTSIDE_IMAGE,
        formats.NON_POSITIVE_SIZE,
        "negative_size",
        formats.UNKNOWN_CATEGORY,
        formats.MALFORMED,
        formats.UNKNOWN_IMAGE,
        "bbox_not_numbers",
        "annotation_not_an_object",
        "truncated_png",
    ],
)
def test_coco_bad_input_fails_or_skips(tmp_path, coco_folder, kind: str) -> None:
    images, annotations, _ = coco_folder
    file, record = _break_coco(kind, images, annotations)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(formats.DataError) as err:
        prepare.prepare(
            format="coco", images=images, annotations=annotations, name="bad", data_dir=data_dir
        )
    assert file in str(err.value) and record in str(err.value) and "--skip-bad" in str(err.value)
    assert not os.path.exists(os.path.join(data_dir, "bad"))
    report = prepare.prepare(
        format="coco",
        images=images,
        annotations=annotations,
        name="bad",
        data_dir=data_dir,
        skip_bad=True,
    )
    expected_kind = {
        "negative_size": formats.NON_POSITIVE_SIZE,
        "bbox_not_numbers": formats.MALFORMED,
        "annotation_not_an_object": formats.MALFORMED,
        "truncated_png": formats.UNREADABLE_IMAGE,
    }.get(kind, kind)
    assert report.counts() == {expected_kind: 1}
    # A bad image is skipped whole; an annotation of an unknown image is dropped alone.
    alone = kind in (formats.UNKNOWN_IMAGE, "annotation_not_an_object")
    assert report.split_sizes["train"] == (5 if alone else 4)
    assert report.skipped_images == (0 if alone else 1)


def test_truncated_jpeg_is_caught_though_opencv_decodes_it(tmp_path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    data = encoded.tobytes()
    cut = data[: len(data) // 2]
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    assert cv2.imread(str(path)) is not None  # decoded, the missing rows grey
    assert formats.truncation(data) is None
    assert "truncated JPEG" in formats.truncation(cut)
    example = formats.Example(str(path), 1, "cut.jpg", np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    (problem,) = formats.check_images([example])
    assert problem.kind == formats.UNREADABLE_IMAGE and "truncated JPEG" in str(problem)
    assert str(path) in str(problem) and example.bad


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            lambda c: c["images"].append(dict(c["images"][0], file_name="x.png")),
            "repeats image id 1",
        ),
        (lambda c: c["categories"].append({"id": 3, "name": "again"}), r"category ids \[3\]"),
        (lambda c: c["categories"].append({"name": "no id"}), r"categories\[3\] needs"),
    ],
)
def test_ambiguous_coco_ids_are_errors(tmp_path, coco_folder, change, pattern) -> None:
    images, annotations, _ = coco_folder
    with open(annotations) as f:
        coco = json.load(f)
    change(coco)
    with open(annotations, "w") as f:
        json.dump(coco, f)
    with pytest.raises(formats.DataError, match=pattern) as err:
        prepare.prepare(
            format="coco", images=images, annotations=annotations, name="x", data_dir=str(tmp_path)
        )
    assert annotations in str(err.value)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("5 0.5 0.5 0.2 0.2", formats.UNKNOWN_CATEGORY),
        ("0 0.95 0.5 0.2 0.2", formats.OUTSIDE_IMAGE),
        ("0 0.5 0.5 0 0.2", formats.NON_POSITIVE_SIZE),
        ("0 0.5 0.5 -0.1 0.2", formats.NON_POSITIVE_SIZE),
        ("0 0.5 0.5 0.2", formats.MALFORMED),
        ("x 0.5 0.5 0.2 0.2", formats.MALFORMED),
    ],
)
def test_yolo_bad_lines(tmp_path, line: str, kind: str) -> None:
    rng = np.random.default_rng(4)
    items = _write_images(str(tmp_path / "images"), 3, rng)
    _yolo(str(tmp_path / "images"), str(tmp_path / "labels"), items)
    label_file = str(tmp_path / "labels" / "img_001.txt")
    with open(label_file, "a") as f:
        f.write(line + "\n")
    (tmp_path / "obj.names").write_text("three\nseven\nten\n")
    kwargs = dict(
        format="yolo",
        images=str(tmp_path / "images"),
        labels=str(tmp_path / "labels"),
        names=str(tmp_path / "obj.names"),
        name="bad_yolo",
        data_dir=str(tmp_path / "tfds"),
    )
    n = len(open(label_file).read().splitlines())
    with pytest.raises(formats.DataError) as err:
        prepare.prepare(**kwargs)
    assert f"{label_file} [line {n}]: {kind}" in str(err.value)
    report = prepare.prepare(**kwargs, skip_bad=True)
    assert report.counts() == {kind: 1} and report.split_sizes["train"] == 2


def test_clear_errors_for_missing_inputs(tmp_path) -> None:
    with pytest.raises(formats.DataError, match="annotation file not found"):
        prepare.prepare(
            format="coco",
            images=str(tmp_path),
            annotations=str(tmp_path / "x.json"),
            name="x",
            data_dir=str(tmp_path),
        )
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(formats.DataError, match="not valid JSON"):
        prepare.prepare(
            format="coco",
            images=str(tmp_path),
            name="x",
            data_dir=str(tmp_path),
            annotations=str(tmp_path / "broken.json"),
        )
    with pytest.raises(formats.DataError, match="names file not found"):
        prepare.prepare(
            format="yolo",
            images=str(tmp_path),
            names=str(tmp_path / "n"),
            name="x",
            data_dir=str(tmp_path),
        )
    with pytest.raises(formats.DataError, match="--name"):
        prepare.prepare(
            format="yolo", images=str(tmp_path), names="n", name="Bad-Name", data_dir=str(tmp_path)
        )
    assert (
        prepare.main(
            [
                "--format",
                "yolo",
                "--images",
                str(tmp_path),
                "--names",
                "nope",
                "--name",
                "x",
                "--data-dir",
                str(tmp_path),
            ]
        )
        == 1
    )
