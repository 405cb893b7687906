"""Training runs of `configs/test_tiny.py` on the tiny embedded dataset, shared by the tests of
the training loop and of its failure handling."""

from __future__ import annotations

from configs import test_tiny
from yolov4_jax import training


def config(data_dir, **overrides):
    """test_tiny's config on ``data_dir``, logging every update, evaluating one batch, with
    ``overrides`` given as ``group.field=value``."""
    c = test_tiny.get_config()
    c.data.data_dir = str(data_dir)
    c.train.log_every = 1
    c.train.detections_image = False
    c.train.eval_max_batches = 1
    for key, value in overrides.items():
        group, field = key.split(".")
        c[group][field] = value
    return c


def run(workdir, data_dir, stop_at_step=None, **overrides):
    """Trains (or resumes) `config` in ``workdir``; its final metrics."""
    return training.train_and_evaluate(
        config(data_dir, **overrides), str(workdir), stop_at_step=stop_at_step
    )
