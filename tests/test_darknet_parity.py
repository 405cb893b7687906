"""darknet.load reproduces darknet's forward pass; darknet.save reproduces the file.

Ground truth is `darknet_reference`, an independent float64 NumPy model of darknet's layers.
The cfgs are darknet's official ones from ../shared/reference when present; on a machine
without that folder they are the project's own builders written out with `format_cfg`
(equal to the official files, which `test_builders_equal_official_cfgs` checks where they
are available).
"""

from __future__ import annotations

import pathlib

import darknet_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax import darknet
from yolov4_jax.models import yolov4_csp_layers, yolov4_layers, yolov4_tiny_layers

BUILDERS = {
    "yolov4": yolov4_layers,
    "yolov4-tiny": yolov4_tiny_layers,
    "yolov4-csp": yolov4_csp_layers,
}
REFERENCE_DIR = ref.locate_reference_dir()
# Relative error bounds (max |ours - reference| / max |reference|). In float64 the only
# difference left is the final cast of the outputs to float32, so any semantic slip shows
# (measured: 3e-8). In float32 all three networks stay within the 1e-4.
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
# Random weights per network (`darknet_reference.write_random_weights`). yolov4-csp, Mish in
# all of its 175 layers and residual blocks in the neck too, is chaotic with the default draw:
# it amplifies float32 rounding ~1000x (rounding each layer's float64 output to float32, and
# nothing else, moves its heads by 6e-5), which a trained network does not. Smaller BN scales
# and statistics calibrated at the tested size keep it image-dependent (the two test images'
# outputs differ by half the outputs' magnitude) but tame: float32 error 3e-6 to 2e-5.
WEIGHTS = {"yolov4-csp": {"bn_scale": (0.2, 0.4), "calibration_size": 320}}


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory) -> dict[str, pathlib.Path]:
    if REFERENCE_DIR is not None:
        return {name: REFERENCE_DIR / f"{name}.cfg" for name in BUILDERS}
    folder = tmp_path_factory.mktemp("cfg")
    out = {}
    for name, build in BUILDERS.items():
        net = {"width": 416, "height": 416, "channels": 3}
        out[name] = folder / f"{name}.cfg"
        out[name].write_text(darknet.format_cfg(net, build()))
    return out


@pytest.fixture(scope="module")
def weights(cfgs, tmp_path_factory) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for seed, name in enumerate(BUILDERS):
        out[name] = folder / f"{name}.weights"
        options = WEIGHTS.get(name, {})
        ref.write_random_weights(cfgs[name], out[name], seed=seed, seen=123456789, **options)
    return out


@pytest.mark.skipif(REFERENCE_DIR is None, reason="darknet's cfgs not available")
@pytest.mark.parametrize("name", list(BUILDERS))
def test_builders_equal_official_cfgs(name):
    _, official = darknet.parse_cfg(REFERENCE_DIR / f"{name}.cfg")
    assert BUILDERS[name]() == official


def _images(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, so that every receptive field sees varied input.
    base = rng.uniform(0, 1, (2, size // 8, size // 8, 3))
    smooth = np.kron(base, np.ones((1, 8, 8, 1)))
    return np.clip(smooth + rng.normal(0, 0.1, smooth.shape), 0, 1).astype(np.float32)


def _check_parity(cfg, weights_path, size: int, tolerance: float, float64: bool = False):
    images = _images(size, seed=size)
    expected = ref.reference_forward(cfg, weights_path, images.astype(np.float64))
    with jax.enable_x64(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        model, variables = darknet.load(cfg, weights_path, dtype=dtype)
        variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
        # float64 convolutions compile to plain loops, which need LLVM's optimisation (the
        # suite's default is level 0, see conftest.py): 2.5x faster here.
        options = {"xla_backend_optimization_level": 2} if float64 else None
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=options)
        outputs = apply(variables, jnp.asarray(images, dtype))
    assert len(outputs) == len(expected) == len(model.heads)
    for head, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        assert got.shape == want.shape
        error = ref.relative_error(np.asarray(got), want)
        assert error <= tolerance, f"head {head} at {size}: relative error {error:.2e}"
        # The two images differ, so the outputs cannot be a constant the test misses.
        assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.parametrize("size", [320, 416])
def test_tiny_parity(cfgs, weights, size):
    _check_parity(cfgs["yolov4-tiny"], weights["yolov4-tiny"], size, TOLERANCE["float32"])


@pytest.mark.slow
@pytest.mark.parametrize("size", [320, 416])
def test_yolov4_parity(cfgs, weights, size):
    _check_parity(cfgs["yolov4"], weights["yolov4"], size, TOLERANCE["float32"])


@pytest.mark.slow
@pytest.mark.parametrize("size", [320, 416])
def test_csp_parity(cfgs, weights, size):
    _check_parity(cfgs["yolov4-csp"], weights["yolov4-csp"], size, TOLERANCE["float32"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_parity_in_float64_is_exact(cfgs, weights, name):
    for size in (96, 160):
        _check_parity(cfgs[name], weights[name], size, TOLERANCE["float64"], float64=True)


@pytest.mark.parametrize("major,minor", [(0, 2), (0, 1)])
def test_save_round_trip_is_byte_identical(cfgs, tmp_path, major, minor):
    """Both header variants: 64-bit `seen` (0.2) and 32-bit `seen` (0.1)."""
    cfg = cfgs["yolov4-tiny"]
    original = tmp_path / "in.weights"
    ref.write_random_weights(cfg, original, seed=7, major=major, minor=minor, seen=4242)
    model, variables = darknet.load(cfg, original)
    saved = tmp_path / "out.weights"
    saved_cfg = tmp_path / "out.cfg"
    darknet.save(model, variables, saved, cfg_path=saved_cfg)
    assert saved.read_bytes() == original.read_bytes()
    # The exported cfg describes the same network.
    _, layer_specs = darknet.parse_cfg(saved_cfg)
    assert layer_specs == model.layers


def test_full_yolov4_round_trip_is_byte_identical(cfgs, weights, tmp_path):
    model, variables = darknet.load(cfgs["yolov4"], weights["yolov4"])
    saved = tmp_path / "out.weights"
    darknet.save(model, variables, saved)
    assert saved.read_bytes() == weights["yolov4"].read_bytes()


def test_cspresnext50_cfg_weights_round_trip_and_parity(tmp_path):
    """The cspresnext50 classifier (width 1/8, fewer blocks) written as a darknet cfg reads
    back to the same specs; darknet weights load and save bit for bit; and the loaded network
    matches the reference's darknet forward pass, partial residual and [avgpool] included."""
    from configs import base
    from yolov4_jax.models import factory

    config = base.get_config().model
    config.update(name="cspresnext50", width=0.125, depth=0.34, activation="leaky")
    layers = factory.model_layers(config, num_classes=5)
    cfg = tmp_path / "cspresnext50.cfg"
    cfg.write_text(darknet.format_cfg({"width": 64, "height": 64, "channels": 3}, layers))
    assert darknet.parse_cfg(cfg)[1] == layers
    original = tmp_path / "in.weights"
    ref.write_random_weights(cfg, original, seed=11, seen=777, calibration_size=64)
    model, variables = darknet.load(cfg, original)
    assert model.layers == layers
    saved = tmp_path / "out.weights"
    darknet.save(model, variables, saved)
    assert saved.read_bytes() == original.read_bytes()

    images = _images(64, seed=5)
    expected = ref.forward_all(cfg, original, images.astype(np.float64))[-1]
    with jax.enable_x64(True):
        model, variables = darknet.load(cfg, original, dtype=jnp.float64)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
            variables, jnp.asarray(images, jnp.float64)
        )
    assert logits.shape == expected.shape == (2, 1, 1, 5)
    assert ref.relative_error(np.asarray(logits), expected) <= TOLERANCE["float64"]
    assert np.abs(expected[0] - expected[1]).max() > 0.1 * np.abs(expected).max()
