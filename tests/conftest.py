"""Shared fixtures."""

from __future__ import annotations

import pytest

from yolov4_jax.data import sources


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
