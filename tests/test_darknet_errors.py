"""Malformed cfgs and weights files fail with errors that say where and what."""

from __future__ import annotations

import re

import darknet_reference as ref
import numpy as np
import pytest

from yolov4_jax import darknet

TINY_CFG = """\
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""
# layer 0: 8 biases + 8 scales + 8 means + 8 vars + 8*3*3*3 weights; layer 1: 18 + 18*8.
VALUES = 8 * 4 + 8 * 27 + 18 + 18 * 8


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "net.cfg"
    path.write_text(TINY_CFG)
    return path


def _write(tmp_path, text: str):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,pattern",
    [
        (TINY_CFG.replace("[convolutional]\nfilters=18", "[convolutional\nfilters=18"), "lacks"),
        (TINY_CFG.replace("filters=8\n", "filters=8\nbogus_key=1\n"), "bogus_key"),
        (TINY_CFG.replace("filters=8\n", "filters=eight\n"), "filters"),
        (TINY_CFG.replace("filters=8\n", "filters 8\n"), "key=value"),
        (TINY_CFG.replace("[net]", "[convolutional]", 1), r"\[net\]"),
        (TINY_CFG.replace("filters=18", "filters=20"), "filters"),
        (TINY_CFG.replace("mask=0,1,2", "mask=0,1,5"), "mask"),
        (TINY_CFG.replace("37,58", "37"), "odd"),
        (TINY_CFG + "\n[route]\nlayers=-9\n", "layer"),
        (TINY_CFG + "\n[fancy_new_layer]\n", "fancy_new_layer"),
    ],
)
def test_malformed_cfg_names_file_and_problem(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(darknet.CfgError, match=pattern) as error:
        darknet.parse_cfg(path)
    assert str(path) in str(error.value)


def test_missing_cfg(tmp_path):
    with pytest.raises(darknet.CfgError, match="cannot read"):
        darknet.parse_cfg(tmp_path / "nope.cfg")


def test_unknown_key_error_gives_line(tmp_path):
    path = _write(tmp_path, TINY_CFG.replace("filters=8\n", "filters=8\nbogus_key=1\n"))
    with pytest.raises(darknet.CfgError, match=re.escape(f"{path}:9")):
        darknet.parse_cfg(path)


def _weights(tmp_path, cfg, count: int, seen_bits: int = 64):
    minor = 2 if seen_bits == 64 else 1
    header = np.array([0, minor, 0], "<i4").tobytes()
    header += np.array([5], "<u8" if seen_bits == 64 else "<i4").tobytes()
    path = tmp_path / "w.weights"
    path.write_bytes(header + np.ones(count, "<f4").tobytes())
    return path


def test_exact_file_loads(tmp_path, cfg):
    model, variables = darknet.load(cfg, _weights(tmp_path, cfg, VALUES))
    assert model.apply(variables, np.zeros((1, 64, 64, 3), np.float32))[0].shape == (
        1,
        32,
        32,
        18,
    )


def test_truncated_weights_name_layer_and_counts(tmp_path, cfg):
    path = _weights(tmp_path, cfg, VALUES - 10)
    with pytest.raises(darknet.WeightsError) as error:
        darknet.load(cfg, path)
    message = str(error.value)
    assert str(path) in message
    assert "layer 1" in message and "expected 162" in message and "found 152" in message


def test_too_long_weights_say_how_many_left(tmp_path, cfg):
    path = _weights(tmp_path, cfg, VALUES + 7)
    with pytest.raises(darknet.WeightsError, match=f"7 float32 values left over.*has {VALUES + 7}"):
        darknet.load(cfg, path)


def test_weights_for_another_cfg(tmp_path, cfg):
    """A cfg with one more filter: the file runs out at the last layer."""
    other = _write(tmp_path, TINY_CFG.replace("filters=8\n", "filters=9\n"))
    path = _weights(tmp_path, cfg, VALUES)
    with pytest.raises(darknet.WeightsError, match="truncated at layer 1"):
        darknet.load(other, path)


def test_partial_header_and_ragged_bytes(tmp_path, cfg):
    short = tmp_path / "short.weights"
    short.write_bytes(b"\0" * 10)
    with pytest.raises(darknet.WeightsError, match="too short"):
        darknet.load(cfg, short)
    ragged = _weights(tmp_path, cfg, VALUES)
    ragged.write_bytes(ragged.read_bytes() + b"\1\2")
    with pytest.raises(darknet.WeightsError, match="whole number"):
        darknet.load(cfg, ragged)


def test_32_bit_seen_header(tmp_path, cfg):
    model, _ = darknet.load(cfg, _weights(tmp_path, cfg, VALUES, seen_bits=32))
    assert dict(model.net)["weights_seen"] == "5"


def test_partial_file_with_num_layers(tmp_path, cfg):
    """darknet's yolov4.conv.137 style: the first layers only; the rest initialised."""
    path = _weights(tmp_path, cfg, 8 * 4 + 8 * 27)
    _, variables = darknet.load(cfg, path, num_layers=1)
    np.testing.assert_array_equal(variables["params"]["layer000"]["kernel"], 1.0)
    assert not np.all(np.asarray(variables["params"]["layer001"]["kernel"]) == 1.0)


def test_reference_layout_agrees_on_sizes(tmp_path, cfg):
    """The independent reference counts the same number of values for this cfg."""
    path = tmp_path / "ref.weights"
    assert ref.write_random_weights(cfg, path, seed=0, calibration_size=None) == VALUES


def test_maxpool_size_defaults_to_stride():
    # parser.c parse_maxpool: size = option_find_int(options, "size", stride).
    text = TINY_CFG.replace(
        "[convolutional]\nfilters=18", "[maxpool]\nstride=2\n\n[convolutional]\nfilters=18"
    )
    _, layers = darknet.parse_cfg(text, is_text=True)
    pool = layers[1]
    assert (pool.size, pool.stride, pool.padding) == (2, 2, 1)
