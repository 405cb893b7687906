"""YOLOv4 in JAX/Flax.

The top level holds the programs (`main`, `detect`, `evaluate`, `anchors`); each sub-package
is one concern: `models`, `detection` (boxes, targets, the loss, decoding, NMS, SAT), `training`,
`evaluation` (COCO AP and prediction), `data`, `darknet` (cfg and weights interop), `cli` (what
the programs share) and `ops` (the convolution dispatch and everything CPU-specific).
docs/architecture.md maps them.

Importing the package sets one XLA:CPU default before JAX starts its backend
(`yolov4_jax.ops.xla_flags`); the training program also restarts itself with glibc's
huge-page malloc tunable (`yolov4_jax.ops.hostmem`); importing the package does not.
"""

from yolov4_jax.ops import xla_flags

xla_flags.apply()
