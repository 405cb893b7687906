"""Detection math: boxes and the IoU family, target assignment, the loss, decoding, NMS, SAT.

Pure JAX functions of arrays, the same on every device: `boxes`, `targets`, `losses`,
`decode`, `nms` and `sat` (Self-Adversarial Training's image step).
"""
