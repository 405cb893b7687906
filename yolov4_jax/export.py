"""Export a detector for deployment: ONNX, StableHLO (jax.export) or darknet files.

    python -m yolov4_jax.export --cfg yolov4.cfg --weights yolov4.weights \\
        --format onnx --out yolov4.onnx [--size 608 | --size 640x480] [--decode]
    python -m yolov4_jax.export --workdir WORKDIR [--checkpoint best|latest] \\
        --format stablehlo --out model.stablehlo
    python -m yolov4_jax.export --workdir WORKDIR --format darknet --out model.weights

The exported function takes float32 images ``[N, H, W, 3]``, RGB in [0, 1] (N dynamic), and
returns the raw head outputs ``head0, head1, ...`` (``[N, H/s, W/s, A*(5+C)]``, the model's
order, what ``model.apply(variables, images, train=False)`` returns); ``--decode`` adds
``boxes`` ``[N, M, 4]`` (xyxy in units of the input, unclipped) and ``scores`` ``[N, M, C]``
(objectness times class probability), without NMS.

* onnx: an opset-17 graph built from the model's layers (`yolov4_jax.deploy.onnx_export`),
  for ONNX Runtime, TensorRT, OpenVINO; needs ``pip install onnx onnxruntime``.
* stablehlo: `jax.export` serialised for cpu, cuda and tpu with the weights inside:
  ``jax.export.deserialize(data).call(images)`` on any of them.
* darknet: ``OUT`` (.weights) and ``OUT`` with .cfg, for darknet and OpenCV's DNN module.

Before writing, each export runs the artefact (ONNX Runtime, the deserialised module, the
reloaded darknet files) on random images, prints its largest difference from JAX relative
to the outputs' magnitude, and fails above 1e-4 without writing anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yolov4_jax import Error, cli
from yolov4_jax.deploy import ExportError
from yolov4_jax.deploy.exporter import CHECK_BATCHES, FORMATS, TOLERANCE, export_model
from yolov4_jax.evaluation import loading


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yolov4_jax.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cfg", help="darknet .cfg (with --weights)")
    parser.add_argument("--weights", help="darknet .weights (with --cfg)")
    parser.add_argument("--workdir", help="a training workdir instead of --cfg/--weights")
    parser.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint of --workdir (default: best)",
    )
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument(
        "--size",
        type=cli.parse_size,
        help="input, N or WIDTHxHEIGHT (default: the cfg's [net] size, or the run's eval size)",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also output decoded boxes and scores (no NMS); onnx and stablehlo",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.format not in FORMATS:  # before the (slow) model load
            raise ExportError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
        if not args.workdir and not (args.cfg and args.weights):
            raise ExportError("pass --cfg and --weights (darknet files), or --workdir")
        loaded = loading.load_model(
            cfg=args.cfg, weights=args.weights, workdir=args.workdir, checkpoint=args.checkpoint
        )
        size = args.size or loaded.size
        if size is None:
            raise ExportError(f"{args.cfg}: no [net] width and height; pass --size")
        report = export_model(
            loaded.model,
            loaded.variables,
            fmt=args.format,
            out=args.out,
            size=size,
            decode=args.decode,
        )
    except Error as e:  # the project's own errors (ExportError too): one line (yolov4_jax.cli)
        return cli.report(e)
    print(
        f"checked {report.format} against JAX on {report.images} images "
        f"(batches of {', '.join(map(str, CHECK_BATCHES))}): largest difference "
        f"{report.difference:.2e} of the outputs' magnitude ({report.worst_output}; "
        f"limit {TOLERANCE:g})"
    )
    print(f"wrote {', '.join(report.paths)} ({size[1]}x{size[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
