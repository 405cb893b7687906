"""Entry point: `python -m yolov4_jax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden: `--config.optim.max_batches=100 --config.loss.box_loss=giou`.
Training resumes from DIR's checkpoints; see `yolov4_jax.training.train_and_evaluate`.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from yolov4_jax import cli
from yolov4_jax.ops import hostmem


def _define_flags():
    # Defined only when run as a program, so importing this module defines no absl flags.
    config = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config_flag, workdir_flag = _FLAGS
    config = config_flag.value
    import jax  # here: the restart for huge pages (below) comes before JAX is imported

    if config.train.distributed:
        jax.distributed.initialize()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    logging.getLogger().setLevel(logging.INFO)
    logging.info(
        "JAX %s: %d processes, %d devices (%s)",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    from yolov4_jax import training

    metrics = training.train_and_evaluate(config, workdir_flag.value)
    if metrics and jax.process_index() == 0:
        print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "/AP/" not in k))


if __name__ == "__main__":
    hostmem.apply_defaults()  # may restart the program, so first (see yolov4_jax.ops.hostmem)
    _FLAGS = _define_flags()
    cli.run(main)
