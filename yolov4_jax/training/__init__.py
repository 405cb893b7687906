"""Training: the state (`state`), the jitted step (`step`), the loop (`loop`), the tasks
(detection, classification), the optimizer chain (`optim`), checkpoints and metric files.

The names below are the training API that programs, notebooks and tests use.
"""

from yolov4_jax.training.loop import train_and_evaluate
from yolov4_jax.training.state import (
    TrainState,
    cbn_newest,
    cbn_push,
    create_train_state,
    eval_variables,
    init_variables,
    zero_cbn,
    zero_cmbn,
)
from yolov4_jax.training.step import global_batch, make_mesh, make_train_step

__all__ = [
    "TrainState",
    "cbn_newest",
    "cbn_push",
    "create_train_state",
    "eval_variables",
    "global_batch",
    "init_variables",
    "make_mesh",
    "make_train_step",
    "train_and_evaluate",
    "zero_cbn",
    "zero_cmbn",
]
