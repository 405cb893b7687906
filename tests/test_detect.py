"""The detect CLI: files written, boxes mapped back to image pixels, errors naming the file.

A tiny yolov4-tiny (width 0.25, 3 classes, 96x64 input) with random weights runs end to end;
the pixel mapping is checked with a stand-in predict function that returns a planted box.
"""

from __future__ import annotations

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax import darknet, detect
from yolov4_jax.detection.nms import Detections
from yolov4_jax.models import yolov4_tiny_layers

NET_W, NET_H = 96, 64


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    cfg, weights = folder / "tiny.cfg", folder / "tiny.weights"
    layers = yolov4_tiny_layers(num_classes=3, width=0.25)
    cfg.write_text(darknet.format_cfg({"width": NET_W, "height": NET_H, "channels": 3}, layers))
    # Random variables of the right shapes without compiling `init` (20 s on a cold cache).
    model = darknet.model_from_cfg(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, NET_H, NET_W, 3)))
    rng = np.random.default_rng(0)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 1.5, shape.shape)
        if "kernel" in name:
            return rng.normal(0, 1 / np.sqrt(np.prod(shape.shape[:-1])), shape.shape)
        return rng.normal(0, 0.1, shape.shape)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    darknet.save(model, variables, weights)
    return str(cfg), str(weights)


def _write_image(path, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def _args(model_files, out, *images, extra=()):
    cfg, weights = model_files
    return ["--cfg", cfg, "--weights", weights, "--out", str(out), *map(str, [*extra, *images])]


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def test_detects_and_writes_files(model_files, tmp_path, capsys):
    a = tmp_path / "a.png"
    b = tmp_path / "b.jpg"
    _write_image(a, 50, 80, seed=1)
    _write_image(b, 70, 40, seed=2)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    out = tmp_path / "out"
    extra = ("--thresh", "0.01", "--max-detections", "5", "--names", str(names))
    assert detect.main(_args(model_files, out, a, b, extra=extra)) == 0
    assert "a.png: " in capsys.readouterr().out
    for stem, (h, w) in (("a", (50, 80)), ("b", (70, 40))):
        drawn = cv2.imread(str(out / f"{stem}.png"))
        assert drawn.shape == (h, w, 3)
        found = _read_json(out / f"{stem}.json")
        # Random weights give every box a score near obj * cls ~ .25, far above .01.
        assert 1 <= len(found) <= 5
        scores = [d["score"] for d in found]
        assert scores == sorted(scores, reverse=True) and min(scores) > 0.01
        for d in found:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert d["name"] == ["cat", "dog", "bird"][d["label"]]


def _planted_predict(seen: list):
    """A predict function returning one box [.2, .35, .6, .65] of class 1 plus padding."""

    def make_predict_fn(model, options):
        def predict(variables, images):
            seen.append(np.asarray(images))
            return Detections(
                boxes=jnp.asarray([[[0.2, 0.35, 0.6, 0.65], [0, 0, 0, 0]]], jnp.float32),
                scores=jnp.asarray([[0.9, 0.0]]),
                classes=jnp.asarray([[1, 0]], jnp.int32),
                valid=jnp.asarray([[True, False]]),
            )

        return predict

    return make_predict_fn


@pytest.mark.parametrize(
    "letterbox,expected",
    [
        # Stretch: x scales by 100, y by 50.
        (False, [20.0, 17.5, 60.0, 32.5]),
        # Letterbox of 100x50 onto 64x64: 64x32 at dy=16, so y = (v * 64 - 16) / .64.
        (True, [20.0, 10.0, 60.0, 40.0]),
    ],
)
def test_planted_box_maps_to_image_pixels(model_files, tmp_path, monkeypatch, letterbox, expected):
    seen: list[np.ndarray] = []
    monkeypatch.setattr(detect, "make_predict_fn", _planted_predict(seen))
    image = np.zeros((50, 100, 3), np.uint8)  # black, so every drawn pixel shows
    cv2.imwrite(str(tmp_path / "wide.png"), image)
    out = tmp_path / "out"
    extra = ["--size", "64", *(["--letterbox"] if letterbox else [])]
    assert detect.main(_args(model_files, out, tmp_path / "wide.png", extra=extra)) == 0

    (canvas,) = seen
    assert canvas.shape == (1, 64, 64, 3) and canvas.dtype == np.uint8
    if letterbox:  # grey bars above and below the image
        assert (canvas[0, :16] == 127).all() and (canvas[0, 48:] == 127).all()
        assert (canvas[0, 16:48] == 0).all()
    else:
        assert (canvas == 0).all()
    (found,) = _read_json(out / "wide.json")
    assert found["label"] == 1 and found["name"] == "class_1"
    assert found["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(found["box"], expected, atol=0.01)
    # The box is drawn where the JSON says: its bottom edge on row y2 - 1, nothing below it,
    # nothing right of it under the label (above the box, at most 12 rows tall, kept inside
    # the image).
    drawn = cv2.imread(str(out / "wide.png"))
    x1, y1, x2, y2 = (round(v) for v in expected)
    assert drawn[y2 - 1, (x1 + x2) // 2].any() and drawn[(y1 + y2) // 2, x1].any()
    assert not drawn[y2:].any() and not drawn[max(y1, 12) + 1 :, x2:].any()
    assert not drawn[max(y1, 12) + 1 : y2 - 1, x1 + 1 : x2 - 1].any()  # hollow


def test_corrupt_image_is_named_and_others_are_written(model_files, tmp_path, capsys):
    good = tmp_path / "good.png"
    _write_image(good, 32, 32)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    assert detect.main(_args(model_files, out, bad, good)) == 1
    err = capsys.readouterr().err
    assert f"{bad}: cannot decode image" in err and "1 of 2 images" in err
    assert (out / "good.png").exists() and (out / "good.json").exists()
    assert not (out / "bad.json").exists()


@pytest.mark.parametrize("broken", ["image", "cfg", "weights"])
def test_missing_file_is_named(model_files, tmp_path, capsys, broken):
    image = tmp_path / "x.png"
    _write_image(image, 16, 16)
    cfg, weights = model_files
    missing = str(tmp_path / f"missing.{broken}")
    files = {"image": image, "cfg": cfg, "weights": weights, broken: missing}
    argv = ["--cfg", files["cfg"], "--weights", files["weights"], "--out", str(tmp_path / "o")]
    assert detect.main([*argv, str(files["image"])]) == 1
    assert missing in capsys.readouterr().err


def test_names_file_with_wrong_count(model_files, tmp_path, capsys):
    image = tmp_path / "x.png"
    _write_image(image, 16, 16)
    names = tmp_path / "coco.names"
    names.write_text("a\nb\n")
    assert detect.main(_args(model_files, tmp_path / "o", image, extra=("--names", names))) == 1
    assert f"{names}: 2 class names, but the model has 3 classes" in capsys.readouterr().err


def test_size_that_does_not_fit_the_network(model_files, tmp_path, capsys):
    image = tmp_path / "x.png"
    _write_image(image, 16, 16)
    assert detect.main(_args(model_files, tmp_path / "o", image, extra=("--size", "100"))) == 1
    assert "input size 100x100 does not fit the network" in capsys.readouterr().err


def test_class_names_default():
    assert detect.class_names(80)[0] == "person"
    assert detect.class_names(2) == ["class_0", "class_1"]


def test_bf16_convolutions_through_mkl(model_files, tmp_path, monkeypatch):
    from yolov4_jax.ops import cpu_gemm

    if not cpu_gemm.available():
        pytest.skip("oneMKL or a C++ compiler is missing (pip install mkl)")
    seen = []
    real = detect.make_predict_fn

    def recording(model, options):
        seen.append((model.dtype, model.conv_algorithm))
        return real(model, options)

    monkeypatch.setattr(detect, "make_predict_fn", recording)
    image = tmp_path / "a.png"
    _write_image(image, 50, 80, seed=1)
    extra = ("--thresh", "0.01", "--dtype", "bfloat16", "--conv-algorithm", "mkl")
    assert detect.main(_args(model_files, tmp_path / "out", image, extra=extra)) == 0
    assert seen == [(jnp.bfloat16, "mkl")]
    found = _read_json(tmp_path / "out" / "a.json")
    assert found and all(0 <= d["box"][0] <= d["box"][2] <= 80 for d in found)


def test_flags_take_the_programs_one_style_and_the_old_dashes():
    """Underscores, as absl's programs (main, evaluate, anchors); dashes still read."""
    base_args = ["a.png", "--out", "o", "--cfg", "c", "--weights", "w"]
    new = detect._parse(
        base_args
        + ["--nms_thresh", "0.3", "--nms_kind", "diou", "--max_detections", "7"]
        + ["--conv_algorithm", "direct"]
    )
    old = detect._parse(
        base_args
        + ["--nms-thresh", "0.3", "--nms-kind", "diou", "--max-detections", "7"]
        + ["--conv-algorithm", "direct"]
    )
    assert vars(new) == vars(old)
    assert (new.nms_thresh, new.nms_kind, new.max_detections) == (0.3, "diou", 7)
