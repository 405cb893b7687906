"""Convolution gradients per layer: autodiff's form against `conv.canonical_conv2d`.

    python experiments/benchmark_conv_gradients.py [--model yolov4] [--size 416] [--batch 2] \\
        [--iters 5] [--rounds 2] [--top 12]

Records every convolution of the network (its spec and input shape, by intercepting
`ConvBN` under `jax.eval_shape`), groups equal ones, and times, for each group, the input
and filter gradients of one convolution (`jax.vjp`'s backward pass, jitted, random
operands) in the two forms of `model.conv_gradients`: "xla" and "canonical". The forms
alternate per group, `--rounds` times. Prints one JSON line per group (medians in ms and the
count in the network) sorted by the xla form's total time, and totals weighted by the count.
The timings are of isolated convolutions in XLA's entry computation, where XLA brings
autodiff's form into its Eigen layout itself; inside `lax.scan` or `lax.cond` it does not
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import base  # noqa: E402
from experiments.timing import timed_calls  # noqa: E402
from yolov4_jax.models import factory, layers  # noqa: E402
from yolov4_jax.ops import conv  # noqa: E402


def conv_shapes(model_name: str, size: int, batch: int) -> collections.Counter:
    """(size, stride, padding, groups, filters, input shape) of every convolution, counted."""
    config = base.get_config().model
    config.name = model_name
    model = factory.create_model(config)
    found = collections.Counter()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.ConvBN) and context.method_name == "__call__":
            s = context.module.spec
            found[(s.size, s.stride, s.padding, s.groups, s.filters, tuple(args[0].shape))] += 1
        return next_fun(*args, **kwargs)

    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    return found


def _backward(stride, padding, groups, gradients):
    def grads(x, kernel, cotangent):
        _, vjp = jax.vjp(
            lambda x, k: conv.conv2d(x, k, stride, padding, groups, gradients), x, kernel
        )
        return vjp(cotangent)

    return jax.jit(grads)


def _time(fn, args, iters: int) -> list[float]:
    """Milliseconds per call, after a warm-up call."""
    jax.block_until_ready(fn(*args))
    return [1e3 * t for t in timed_calls(lambda: jax.block_until_ready(fn(*args)), iters)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="yolov4")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="groups printed (all: 0)")
    args = parser.parse_args(argv)
    shapes = conv_shapes(args.model, args.size, args.batch)
    rows, keys = [], jax.random.split(jax.random.key(0), 3)
    for (size, stride, padding, groups, filters, shape), count in shapes.items():
        x = jax.random.normal(keys[0], shape)
        kernel = jax.random.normal(keys[1], (size, size, shape[-1] // groups, filters))
        out = jax.eval_shape(
            functools.partial(conv.conv2d, stride=stride, padding=padding, groups=groups),
            x,
            kernel,
        )
        cotangent = jax.random.normal(keys[2], out.shape)
        fns = {g: _backward(stride, padding, groups, g) for g in ("xla", "canonical")}
        times = {g: [] for g in fns}
        for _ in range(args.rounds):
            for g, fn in fns.items():
                times[g] += _time(fn, (x, kernel, cotangent), args.iters)
        medians = {g: round(statistics.median(t), 2) for g, t in times.items()}
        layer = f"{size}x{size}/{stride} {shape[1]}x{shape[2]}x{shape[3]}->{filters}"
        rows.append({"layer": layer, "count": count, **{f"{g}_ms": m for g, m in medians.items()}})
    rows.sort(key=lambda r: -r["xla_ms"] * r["count"])
    for row in rows[: args.top or None]:
        print(json.dumps(row))
    totals = {g: round(sum(r[f"{g}_ms"] * r["count"] for r in rows), 1) for g in fns}
    summary = {
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "convs": sum(shapes.values()),
        "total_xla_ms": totals["xla"],
        "total_canonical_ms": totals["canonical"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
