"""The export program: ONNX, StableHLO and darknet round trips of yolov4-tiny, every layer kind
in ONNX, the dynamic batch, --decode, the check before writing, and the errors.

References are computed here, independently of the exporter: ``model.apply`` and
`prediction.decode_heads` in JAX, the exported files run by ONNX Runtime and by
``jax.export.deserialize``.
"""

from __future__ import annotations

import os

import darknet_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest

from configs import test_tiny
from yolov4_jax import darknet, export, training
from yolov4_jax.deploy import ExportError, exporter, onnx_export
from yolov4_jax.evaluation.prediction import decode_heads
from yolov4_jax.models import (
    Network,
    specs,
    yolov4_csp_layers,
    yolov4_layers,
    yolov4_tiny_layers,
)

NET_W, NET_H = 96, 64


def _random_variables(model: Network, height: int, width: int, seed: int = 0):
    """Random variables of the right shapes without compiling `init`; BN statistics and
    fusion weights away from their initial values so that folding them is tested."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, height, width, 3)))
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 1.5, shape.shape).astype(np.float32)
        if "kernel" in name:
            fan_in = np.prod(shape.shape[:-1])
            return rng.normal(0, 1.5 / np.sqrt(fan_in), shape.shape).astype(np.float32)
        if "weights" in name:
            return rng.uniform(-0.5, 1.5, shape.shape).astype(np.float32)
        return rng.normal(0, 0.2, shape.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    cfg, weights = folder / "tiny.cfg", folder / "tiny.weights"
    layers = yolov4_tiny_layers(num_classes=3, width=0.25)
    cfg.write_text(darknet.format_cfg({"width": NET_W, "height": NET_H, "channels": 3}, layers))
    model = darknet.model_from_cfg(cfg)
    darknet.save(model, _random_variables(model, NET_H, NET_W), weights)
    return str(cfg), str(weights)


def _reference(cfg, weights, images, decode):
    model, variables = darknet.load(cfg, weights)
    heads = model.apply(variables, jnp.asarray(images), train=False)
    outputs = [np.asarray(h) for h in heads]
    if decode:
        boxes, scores = decode_heads(heads, model.heads, images.shape[1:3])
        outputs += [np.asarray(boxes), np.asarray(scores)]
    return outputs


def _images(batch, seed=7, height=NET_H, width=NET_W):
    return np.random.default_rng(seed).uniform(0, 1, (batch, height, width, 3)).astype(np.float32)


def _assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max(), rtol=0)


def _run(model_files, out, *extra):
    cfg, weights = model_files
    return export.main(["--cfg", cfg, "--weights", weights, "--out", str(out), *extra])


def test_onnx_round_trip_with_dynamic_batch_and_decode(model_files, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert _run(model_files, out, "--format", "onnx", "--decode") == 0
    printed = capsys.readouterr().out
    assert "largest difference" in printed and str(out) in printed
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    inputs = proto.graph.input[0].type.tensor_type.shape.dim
    assert inputs[0].dim_param == "N" and [d.dim_value for d in inputs[1:]] == [NET_H, NET_W, 3]
    assert [o.name for o in proto.graph.output] == ["head0", "head1", "boxes", "scores"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = _images(3, seed=3)  # not a batch size the export itself checked with (2, then 1)
    got = session.run(None, {"images": images})
    _assert_close(got, _reference(*model_files, images, decode=True))
    # [N, H/s, W/s, A*(5+C)] in the model's order: strides 32 then 16, 3 anchors, 3 classes.
    assert got[0].shape == (3, NET_H // 32, NET_W // 32, 24)
    assert got[1].shape == (3, NET_H // 16, NET_W // 16, 24)
    assert got[2].shape == (3, 3 * (2 * 3 + 4 * 6), 4)


def test_stablehlo_round_trip_runs_with_any_batch(model_files, tmp_path):
    out = tmp_path / "tiny.stablehlo"
    assert _run(model_files, out, "--format", "stablehlo", "--decode", "--size", "64") == 0
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    assert exported.platforms == ("cpu", "cuda", "tpu")
    images = _images(3, seed=3, height=64, width=64)  # the symbolic batch at a new size
    got = [np.asarray(o) for o in exported.call(images)]
    _assert_close(got, _reference(*model_files, images, decode=True))
    text = exported.mlir_module()
    assert "custom_call @lapack" not in text and "yolov4_conv" not in text


def test_darknet_export_reproduces_the_files(model_files, tmp_path, capsys):
    out = tmp_path / "copy.weights"
    assert _run(model_files, out, "--format", "darknet") == 0
    assert "0.00e+00" in capsys.readouterr().out  # the reloaded files give JAX's outputs exactly
    assert out.read_bytes() == open(model_files[1], "rb").read()
    images = _images(2)
    got = _reference(str(tmp_path / "copy.cfg"), str(out), images, decode=False)
    _assert_close(got, _reference(*model_files, images, decode=False))


def _every_layer_kind() -> tuple[specs.Spec, ...]:
    """A small network with every layer kind and activation the exporter knows."""
    anchors = ((4.0, 5.0), (8.0, 6.0), (10.0, 14.0), (20.0, 18.0))
    return (
        specs.Conv(8, 3, 1, 1, batch_normalize=True, activation="mish"),  # 0: 32x32x8
        specs.Conv(8, 3, 2, 1, batch_normalize=True, activation="leaky"),  # 1: 16x16
        specs.MaxPool(5, 1, 4),  # 2: SPP's pool
        specs.MaxPool(2, 1, 1),  # 3: odd padding (darknet's padding // 2 before)
        specs.Route((1, 3)),  # 4: 16 ch
        specs.Conv(8, 1, 1, 0, batch_normalize=True, activation="swish"),  # 5
        specs.Route((4,), groups=2, group_id=1),  # 6: 8 ch
        specs.Shortcut((5,), activation="relu"),  # 7
        specs.Conv(12, 1, 1, 0, batch_normalize=True, activation="logistic"),  # 8
        specs.Shortcut((7,)),  # 9: partial residual, 12 + 8 channels
        specs.Conv(8, 1, 1, 0, batch_normalize=True, activation="leaky"),  # 10
        specs.Shortcut((5, 7), weights_type="per_feature", weights_normalization="relu"),  # 11
        specs.Shortcut((9,)),  # 12: partial residual, 8 + 12 channels
        specs.Shortcut((7,), weights_type="per_channel", weights_normalization="softmax"),  # 13
        specs.Conv(8, 3, 1, 1, groups=2, batch_normalize=True, activation="leaky"),  # 14
        specs.Sam(13),  # 15
        specs.SpatialAttention(3),  # 16
        specs.ChannelAttention(4),  # 17
        specs.DropBlock(0.1, 3),  # 18
        specs.Conv(2 * 7, 1, 1, 0),  # 19
        specs.Yolo((2, 3), anchors, classes=2, scale_x_y=1.1),  # 20: stride 2
        specs.Route((18,)),  # 21
        specs.Upsample(2),  # 22: 32x32
        specs.Route((22, 0)),  # 23
        specs.Conv(2 * 7, 1, 1, 0, activation="logistic"),  # 24
        specs.Yolo((0, 1), anchors, classes=2, scale_x_y=2.0, new_coords=True),  # 25
    )


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_every_layer_kind_exports(fmt, tmp_path):
    model = Network(_every_layer_kind())
    variables = _random_variables(model, 32, 32, seed=3)
    out = tmp_path / f"net.{fmt}"
    report = exporter.export_model(
        model, variables, fmt=fmt, out=str(out), size=(32, 32), decode=True
    )
    assert report.difference <= 1e-5 and out.exists()
    images = _images(2, seed=5, height=32, width=32)
    heads = model.apply(variables, jnp.asarray(images), train=False)
    want = [np.asarray(h) for h in heads] + [
        np.asarray(a) for a in decode_heads(heads, model.heads, (32, 32))
    ]
    if fmt == "onnx":
        got = onnx_export.run_onnx(out.read_bytes(), images)
    else:
        got = jax.export.deserialize(bytearray(out.read_bytes())).call(images)
    _assert_close([np.asarray(g) for g in got], want)


def test_mish_matches_jax_over_the_float32_range():
    """The ONNX Mish (Softplus, Tanh, Mul) against the JAX model's darknet form, from deep
    negatives to past darknet's softplus threshold and float32 exp's overflow."""
    model = Network((specs.Conv(1, 1, activation="mish"),))
    x = np.concatenate([np.linspace(-100, 100, 4001), [-1e4, 1e4, 25, 88.5, 90]]).astype(np.float32)
    variables = {
        "params": {
            "layer000": {
                "kernel": np.ones((1, 1, 3, 1), np.float32) / 3,
                "bias": np.zeros(1, np.float32),
            }
        }
    }
    images = np.repeat(x[None, :, None, None], 3, axis=-1)  # [1, N, 1, 3]
    proto = onnx_export.build_onnx(model, variables, (len(x), 1))
    (got,) = onnx_export.run_onnx(proto.SerializeToString(), images)
    want = np.asarray(model.apply(variables, jnp.asarray(images)))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_a_failed_check_writes_nothing(model_files, tmp_path, monkeypatch, capsys):
    real = onnx_export.run_onnx

    def off_by_a_little(data, images):
        return [o * 1.001 for o in real(data, images)]

    monkeypatch.setattr(onnx_export, "run_onnx", off_by_a_little)
    out = tmp_path / "bad.onnx"
    assert _run(model_files, out, "--format", "onnx") == 1
    err = capsys.readouterr().err
    assert "differs from JAX by 0.001" in err and "nothing written" in err
    assert os.listdir(tmp_path) == []


def test_errors_are_one_line(model_files, tmp_path, capsys):
    cases = [
        (["--format", "tflite"], "unknown format 'tflite'; choose one of onnx, stablehlo, darknet"),
        (["--format", "darknet", "--decode"], "--decode adds outputs to onnx and stablehlo"),
        (["--format", "onnx", "--size", "100"], "input size 100x100 does not fit the network"),
    ]
    for extra, message in cases:
        assert _run(model_files, tmp_path / "x.onnx", *extra) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    empty = tmp_path / "run"
    empty.mkdir()
    args = ["--workdir", str(empty), "--format", "onnx", "--out", str(tmp_path / "y.onnx")]
    assert export.main(args) == 1
    assert "config.json is missing: is" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_a_run_without_checkpoints_is_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(test_tiny.get_config().to_json())
    (workdir / "dataset.json").write_text('{"class_names": ["a", "b", "c", "d", "e"]}')
    args = ["--workdir", str(workdir), "--checkpoint", "latest", "--format", "stablehlo"]
    assert export.main([*args, "--out", str(tmp_path / "m.stablehlo")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checkpoint" in err and str(workdir) in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.stablehlo").exists()


def test_a_layer_without_a_form_is_named(tmp_path):
    model = Network((specs.Conv(4, 3, 1, 1), specs.SpatialAttention(3), specs.Conv(4, 1)))
    variables = _random_variables(model, 32, 32)
    with pytest.raises(
        ExportError, match="darknet files cannot express this model: layer 1: SpatialAttention"
    ):
        exporter.export_model(
            model, variables, fmt="darknet", out=str(tmp_path / "a.weights"), size=(32, 32)
        )

    class Unknown:
        pass

    odd = Network((specs.Conv(4, 3, 1, 1), Unknown()))
    with pytest.raises(ExportError, match=r"layer 1 \(Unknown\) has no ONNX form"):
        onnx_export.build_onnx(odd, variables, (32, 32))
    assert os.listdir(tmp_path) == []


# Full-size networks, darknet's cfgs (or the builders' copies): random weights as the parity
# tests draw them (yolov4-csp's BN scales keep its Mish-heavy outputs tame), and the formats
# checked. ONNX translates layer by layer, so both networks; StableHLO serialises the traced
# JAX function whatever its layers, so one network (each full-size export compiles the network
# three times: about a minute).
FULL = {
    "yolov4": ({}, ("onnx", "stablehlo")),
    "yolov4-csp": ({"bn_scale": (0.2, 0.4), "calibration_size": 320}, ("onnx",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_full_size_networks_export_to_onnx_and_stablehlo(name, tmp_path):
    reference_dir = ref.locate_reference_dir()
    cfg = tmp_path / f"{name}.cfg"
    if reference_dir is not None:
        cfg.write_text((reference_dir / f"{name}.cfg").read_text())
    else:
        build = {"yolov4": yolov4_layers, "yolov4-csp": yolov4_csp_layers}[name]
        cfg.write_text(darknet.format_cfg({"width": 416, "height": 416, "channels": 3}, build()))
    weights = tmp_path / f"{name}.weights"
    weight_options, formats = FULL[name]
    ref.write_random_weights(cfg, weights, seed=1, **weight_options)
    files = (str(cfg), str(weights))
    images = _images(2, height=160, width=160)
    want = _reference(*files, images, decode=False)
    model = darknet.model_from_cfg(cfg)
    for fmt in formats:
        out = tmp_path / f"{name}.{fmt}"
        assert _run(files, out, "--format", fmt, "--size", "160", "--decode") == 0
        if fmt == "onnx":
            got = onnx_export.run_onnx(out.read_bytes(), images)
        else:
            got = jax.export.deserialize(bytearray(out.read_bytes())).call(images)
        got = [np.asarray(g) for g in got]
        # Heads at float32 parity's bound; boxes and scores against JAX's decoding of the
        # same heads (random weights make exp(tw) amplify the heads' rounding, `exporter`).
        for g, w in zip(got[:3], want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-4 * np.abs(w).max(), rtol=0)
        decoded = [np.asarray(a) for a in decode_heads(got[:3], model.heads, (160, 160))]
        _assert_close(got[3:], decoded)


@pytest.mark.slow
def test_a_training_run_exports(tmp_path, tiny_data_dir, capsys):
    config = test_tiny.get_config()
    config.data.data_dir = tiny_data_dir
    config.optim.max_batches = 2
    config.train.eval_max_batches = 1
    config.train.detections_image = False
    workdir = tmp_path / "run"
    training.train_and_evaluate(config, str(workdir))
    for fmt, suffix in (("onnx", "onnx"), ("stablehlo", "stablehlo"), ("darknet", "weights")):
        out = tmp_path / f"model.{suffix}"
        args = ["--workdir", str(workdir), "--checkpoint", "latest", "--format", fmt]
        assert export.main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
        assert "largest difference" in capsys.readouterr().out
    # The darknet files carry the run's model and its evaluation size.
    net, layers = darknet.parse_cfg(tmp_path / "model.cfg")
    assert (int(net["width"]), int(net["height"])) == (64, 64)
    model, variables = darknet.load(tmp_path / "model.cfg", tmp_path / "model.weights")
    images = _images(1, height=64, width=64)
    onnx_out = onnx_export.run_onnx((tmp_path / "model.onnx").read_bytes(), images)
    _assert_close(onnx_out, [np.asarray(h) for h in model.apply(variables, images)])
