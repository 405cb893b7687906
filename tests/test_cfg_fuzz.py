"""Seeded mutations of yolov4-tiny.cfg: parsing, building and initialising the model raise
nothing but the project's own errors (`CfgError` naming the file and line), and the values the
cfg parser accepts are in range."""

from __future__ import annotations

import math
import os
import random
import re

import jax
import jax.numpy as jnp
import pytest

from yolov4_jax import Error, darknet
from yolov4_jax.darknet import CfgError
from yolov4_jax.models import specs

REFERENCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "reference"
)
TINY_CFG = os.path.join(REFERENCE, "yolov4-tiny.cfg")
VALUES = ["-1", "0", "abc", "nan", "inf", "-inf", "1e30", "3", "-0.5", "", "1,2", "99999", "0.5"]


def _mutations(lines: list[bytes], count: int, seed: int):
    rng = random.Random(seed)
    options = [i for i, line in enumerate(lines) if b"=" in line and not line.startswith(b"#")]
    for _ in range(count):
        out = list(lines)
        kind = rng.random()
        if kind < 0.7:  # a value replaced
            i = rng.choice(options)
            key = out[i].split(b"=", 1)[0]
            out[i] = key + b"=" + rng.choice(VALUES).encode()
        elif kind < 0.8:  # bytes that are not UTF-8
            i = rng.randrange(len(out))
            out[i] = out[i] + bytes([rng.randrange(0x80, 0x100)])
        elif kind < 0.9:  # a line dropped
            del out[rng.randrange(len(out))]
        else:  # two values replaced
            for i in rng.sample(options, 2):
                out[i] = out[i].split(b"=", 1)[0] + b"=" + rng.choice(VALUES).encode()
        yield b"\n".join(out)


def _init_shapes(model, net):
    h, w = int(net.get("height", 416)), int(net.get("width", 416))
    c = int(net.get("channels", 3))
    image = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), image)


def _check_in_range(layer_specs, net):
    for key in ("width", "height", "channels"):
        assert key not in net or int(net[key]) >= 1
    for s in layer_specs:
        if isinstance(s, specs.Yolo):
            assert all(a > 0 and math.isfinite(a) for pair in s.anchors for a in pair)
            for name in ("ignore_thresh", "truth_thresh", "iou_thresh", "beta_nms"):
                assert 0.0 <= getattr(s, name) <= 1.0, (name, s)
            assert s.classes >= 1 and s.mask
        elif isinstance(s, specs.Conv):
            assert s.size >= 1 and s.stride >= 1 and s.filters >= 1 and s.padding >= 0
        elif isinstance(s, specs.DropBlock):
            assert 0.0 <= s.probability < 1.0


def test_mutated_cfgs_raise_only_cfg_errors(tmp_path):
    with open(TINY_CFG, "rb") as f:
        lines = f.read().split(b"\n")
    path = tmp_path / "mutated.cfg"
    built: dict = {}
    errors = 0
    for n, text in enumerate(_mutations(lines, 300, seed=27)):
        path.write_bytes(text)
        try:
            net, layer_specs = darknet.parse_cfg(path)
            _check_in_range(layer_specs, net)
            key = (
                net.get("width"),
                net.get("height"),
                net.get("channels"),
                tuple(s for s in layer_specs if not isinstance(s, specs.Yolo)),
            )
            if key not in built:
                model = darknet.model_from_cfg(path)
                built[key] = _init_shapes(model, net)
        except CfgError as e:
            errors += 1
            # File and line, then what is wrong.
            assert re.match(re.escape(str(path)) + r"(:\d+)?: ", str(e)), str(e)
        except Error:
            errors += 1
        except Exception as e:  # noqa: BLE001 - what this test exists to catch
            pytest.fail(f"mutation {n}: {type(e).__name__}: {e}\n{text.decode(errors='replace')}")
    assert 100 < errors < 300  # most mutations are caught, some are harmless


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (("width=416", "width=abc"), r":\d+: \[net\]: bad value width='abc'"),
        (("width=416", "width=-416"), r"\[net\]: bad value width='-416': expected a number >= 1"),
        (("size=3", "size=0"), r"\[convolutional\]: bad value size='0': expected a number >= 1"),
        (("stride=2", "stride=-2"), r"bad value stride='-2'"),
        (("ignore_thresh = .7", "ignore_thresh = inf"), r"ignore_thresh='inf': expected .*\[0"),
        (("beta_nms=0.6", "beta_nms=3"), r"beta_nms='3': expected a number in \[0.0, 1.0\]"),
        (("anchors = 10,14", "anchors = -10,14"), r"anchors=.*expected every value"),
    ],
)
def test_out_of_range_values_name_the_file_line_section_and_key(tmp_path, change, match):
    with open(TINY_CFG) as f:
        text = f.read()
    old, new = change
    assert old in text, old
    path = tmp_path / "bad.cfg"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(CfgError, match=match):
        darknet.parse_cfg(path)


def test_non_utf8_bytes_are_a_cfg_error_with_the_line(tmp_path):
    path = tmp_path / "latin1.cfg"
    path.write_bytes(b"[net]\nwidth=416\n# caf\xe9\nheight=416\n")
    with pytest.raises(CfgError, match=r"latin1.cfg:3: not UTF-8 text \(byte 0xe9\)"):
        darknet.parse_cfg(path)
