"""Export, check, write: `export_model` runs one format's artefact on a few images against
JAX's outputs and writes it only when they agree (the largest difference, relative to the
outputs' magnitude, at most `TOLERANCE`).

The raw head outputs are compared with ``model.apply``'s. The decoded boxes and scores
(``decode``) are compared with JAX's decoding (`prediction.decode_heads`) of the artefact's
own heads: decoding amplifies the heads' float32 rounding (``exp(tw)``, the sigmoids), so
end to end the two would differ by more than either is from the exact values. Measured on
yolov4.cfg with random weights at 160 x 160, heads up to 122: JAX float32's heads were 2e-5
from float64's and ONNX Runtime's 2.7e-5 from JAX's, but JAX float32's boxes and scores were
already 3.7e-4 from float64's (boxes up to 6e8, from exp). The two comparisons together
check the network and the decoding each at 1e-4.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from yolov4_jax import darknet
from yolov4_jax.deploy import onnx_export, stablehlo
from yolov4_jax.deploy.signature import (
    ExportError,
    check_exportable,
    for_export,
    inference_fn,
    output_names,
)
from yolov4_jax.evaluation.prediction import decode_heads
from yolov4_jax.models import Network

FORMATS = ("onnx", "stablehlo", "darknet")
TOLERANCE = 1e-4
# Batch sizes of the check: two images, then one (the exported batch dimension is dynamic).
CHECK_BATCHES = (2, 1)


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What was written and how far its outputs are from JAX's."""

    format: str
    paths: tuple[str, ...]
    difference: float  # largest |artefact - JAX| / largest |JAX| over outputs and checks
    worst_output: str  # the output where it was largest
    images: int


def relative_difference(
    reference: Sequence[Any], outputs: Sequence[Any], names
) -> tuple[float, str]:
    """(max over outputs of max |out - ref| / max |ref|, the name of the worst output)."""
    if len(reference) != len(outputs):
        raise ExportError(f"the export returns {len(outputs)} outputs, JAX {len(reference)}")
    worst, worst_name = 0.0, names[0]
    for ref, out, name in zip(reference, outputs, names, strict=True):
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise ExportError(f"output {name} is {out.shape} in the export, {ref.shape} in JAX")
        diff = float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
        if not np.isfinite(diff) or diff > worst:
            worst, worst_name = (diff if np.isfinite(diff) else float("inf")), name
    return worst, worst_name


def check_images(size: tuple[int, int], batch: int, seed: int) -> np.ndarray:
    """``batch`` random float32 images in [0, 1] (the check's inputs)."""
    return np.random.default_rng(seed).uniform(0, 1, (batch, *size, 3)).astype(np.float32)


def export_model(
    model: Network,
    variables: Any,
    *,
    fmt: str,
    out: str,
    size: tuple[int, int],
    decode: bool = False,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Exports ``model`` at ``size`` (height, width) as ``fmt`` to ``out``, after checking the
    artefact against ``model.apply`` on random images; raises `ExportError` without writing
    when the check fails. darknet writes ``out`` (weights) and ``out`` with ``.cfg``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "darknet" and decode:
        raise ExportError("--decode adds outputs to onnx and stablehlo exports, not darknet files")
    model = for_export(model)
    check_exportable(model, size, decode)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    names = output_names(model, decode)
    raw = len(names) - 2 * decode  # the heads, then boxes and scores
    reference_fn = jax.jit(inference_fn(model, variables, False))
    decode_fn = jax.jit(lambda heads: decode_heads(heads, model.heads, size))
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        staged = os.path.join(tmp, os.path.basename(out))
        if fmt == "onnx":
            proto = onnx_export.build_onnx(model, variables, size, decode=decode)
            data = proto.SerializeToString()

            def run(images, data=data):
                return onnx_export.run_onnx(data, images)

            written = [(staged, out, data)]
        elif fmt == "stablehlo":
            data = bytes(
                stablehlo.export_stablehlo(model, variables, size, decode=decode).serialize()
            )
            restored = jax.export.deserialize(bytearray(data))

            def run(images, restored=restored):
                return restored.call(images)

            written = [(staged, out, data)]
        else:
            cfg_out = os.path.splitext(out)[0] + ".cfg"
            staged_cfg = os.path.join(tmp, "model.cfg")
            net = dict(model.net)  # a training run's model has no [net]: give it the size
            net.setdefault("height", str(size[0]))
            net.setdefault("width", str(size[1]))
            try:
                darknet.save(
                    model.clone(net=tuple(net.items())), variables, staged, cfg_path=staged_cfg
                )
                reloaded, reloaded_vars = darknet.load(staged_cfg, staged)
            except (darknet.CfgError, darknet.WeightsError) as e:
                raise ExportError(f"darknet files cannot express this model: {e}") from None
            reloaded_fn = jax.jit(inference_fn(for_export(reloaded), reloaded_vars, False))

            def run(images):
                return reloaded_fn(images)

            written = [(staged, out, None), (staged_cfg, cfg_out, None)]
        difference, worst = 0.0, names[0]
        count = 0
        for seed, batch in enumerate(CHECK_BATCHES):
            images = check_images(size, batch, seed)
            got = [np.asarray(o) for o in run(images)]
            if len(got) != len(names):
                raise ExportError(f"the export returns {len(got)} outputs, JAX {len(names)}")
            checks = [relative_difference(reference_fn(images), got[:raw], names[:raw])]
            if decode:
                decoded = decode_fn(tuple(got[:raw]))
                checks.append(relative_difference(decoded, got[raw:], names[raw:]))
            count += batch
            for d, name in checks:
                if d > difference:
                    difference, worst = d, name
        if not difference <= tolerance:
            raise ExportError(
                f"{fmt} export differs from JAX by {difference:.3g} of the outputs' magnitude "
                f"in {worst} (allowed {tolerance:g}); nothing written"
            )
        for path, _, data in written:
            if data is not None:
                with open(path, "wb") as f:
                    f.write(data)
        for path, final, _ in written:
            os.replace(path, final)
    return ExportReport(fmt, tuple(final for _, final, _ in written), difference, worst, count)
