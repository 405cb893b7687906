"""YOLOv4 in JAX/Flax.

The top level holds the programs (`main`, `detect`, `evaluate`, `anchors`, `export`); each
sub-package is one concern: `models`, `detection` (boxes, targets, the loss, decoding, NMS, SAT),
`training`, `evaluation` (COCO AP and prediction), `data`, `darknet` (cfg and weights interop),
`deploy` (ONNX and StableHLO exports, checked against JAX), `cli` (what the programs share) and
`ops` (the convolution dispatch and everything CPU-specific).
docs/architecture.md maps them.

Importing the package sets one XLA:CPU default before JAX starts its backend
(`yolov4_jax.ops.xla_flags`); the training program also restarts itself with glibc's
huge-page malloc tunable (`yolov4_jax.ops.hostmem`); importing the package does not.

`Error` is the base of the project's own errors (a bad config, cfg, dataset, checkpoint or
input): the programs print them as one line that says what to change (`yolov4_jax.cli`).
"""


class Error(Exception):
    """A problem with the user's input, config or files; the message says what to change."""


class ConfigError(Error, ValueError):
    """A config value a run cannot use; the message names the field and what it expects."""


from yolov4_jax.ops import xla_flags  # noqa: E402 - after Error, which ops modules import

xla_flags.apply()
