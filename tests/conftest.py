"""Shared fixtures, and the tests' XLA setting.

Tests compile far more than they run (tiny networks, a few steps each), so they ask XLA:CPU
for LLVM's lowest optimisation level (``--xla_backend_optimization_level=0``): compiles take
about half as long and the tiny steps run a little slower. Numerics are XLA's either way (no
fast-math at any level). It goes into ``XLA_FLAGS`` before JAX starts its backend, and so
into the environment of the programs tests start, unless ``XLA_FLAGS`` already sets it:
``XLA_FLAGS=--xla_backend_optimization_level=2 make test`` tests the optimised code.
"""

from __future__ import annotations

import os

_OPT = "--xla_backend_optimization_level"
if _OPT not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT}=0".strip()

import pytest  # noqa: E402

from yolov4_jax.data import sources  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A data directory with the tiny embedded dataset (24 train / 12 validation images)."""
    path = str(tmp_path_factory.mktemp("tfds_tiny"))
    sources.load_builder("yolov4_synthetic/tiny", path)
    return path


@pytest.fixture(scope="session")
def tiny_cls_data_dir(tmp_path_factory) -> str:
    """A data directory with the tiny embedded classification dataset (40 train / 20 val)."""
    path = str(tmp_path_factory.mktemp("tfds_tiny_cls"))
    sources.load_builder("yolov4_synthetic_cls/tiny", path)
    return path
