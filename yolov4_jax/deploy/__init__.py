"""Deployment: the detector as an ONNX graph or a StableHLO module, each checked against JAX.

`inference_fn` is the function every format reproduces: float32 images ``[N, H, W, 3]``, RGB
in [0, 1] -> the raw head outputs in the model's order (what ``model.apply(variables, images,
train=False)`` returns), and with ``decode`` the decoded boxes and scores after them
(`evaluation.prediction.decode_heads`, no NMS). `onnx_export` builds the ONNX graph from the
model's layer list, `stablehlo` serialises it through `jax.export`, `portability` checks a
lowered module for custom calls that only the CPU has, and `verify` measures how far an
artefact's outputs are from JAX's.
"""

from yolov4_jax.deploy.signature import (
    ExportError,
    check_exportable,
    for_export,
    inference_fn,
    output_names,
)

__all__ = ["ExportError", "check_exportable", "for_export", "inference_fn", "output_names"]
