"""Convolution gradients per layer: autodiff's form against `conv.canonical_conv2d`.

    python experiments/benchmark_conv_gradients.py [--model yolov4] [--size 416] [--batch 2] \\
        [--iters 5] [--rounds 2] [--top 12]
    python experiments/benchmark_conv_gradients.py --xla_checks

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
import re
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
from yolov4_jax.ops import conv, conv_gradients  # noqa: E402


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


def xla_cpu_checks() -> dict:
    """What XLA:CPU does with the two forms, read from its compiled programs (printed, not
    tested: these are XLA internals that a JAX upgrade may change).

    ``scan_dim_labels``: the dimension labels of the gradient convolutions inside a
    `lax.scan` body, per form (the canonical form's should be NHWC x HWIO -> NHWC,
    ``b01f_01io->b01f``, the one Eigen runs fast; autodiff's others run as naive loops).
    ``after_temp_bytes``: XLA's temp memory for the gradient of a conv + BN + Mish chain with
    `conv.after` tying backward-only work to the incoming gradient, and without it.
    """

    def step(kernel, images, gradients):
        def body(total, x):
            loss = lambda k: jnp.sum(conv.conv2d(x, k, 2, 1, gradients=gradients) ** 2)  # noqa: E731
            return total + jax.grad(loss)(kernel), None

        return jax.lax.scan(body, jnp.zeros_like(kernel), images)[0]

    kernel, images = jnp.ones((3, 3, 4, 8)), jnp.ones((2, 1, 8, 8, 4))
    labels = {}
    for form in ("canonical", "xla"):
        hlo = jax.jit(step, static_argnums=2).lower(kernel, images, form).compile().as_text()
        labels[form] = sorted(set(re.findall(r"convolution\(.*dim_labels=([^,]+)", hlo)))

    def loss(kernels, x):
        for k in kernels:
            x = conv.conv2d(x, k, 1, 1, gradients="canonical")
            x = layers.normalize_activate(x, jnp.ones(8), jnp.zeros(8), "mish")[0]
        return jnp.sum(x)

    kernels = [jnp.full((3, 3, 3 if i == 0 else 8, 8), 0.1) for i in range(6)]
    chain_images = jnp.ones((2, 64, 64, 3))

    def temp_bytes():
        compiled = jax.jit(jax.grad(loss)).lower(kernels, chain_images).compile()
        return int(compiled.memory_analysis().temp_size_in_bytes)

    tied = temp_bytes()
    originals = (conv_gradients.after, layers.after)
    conv_gradients.after = layers.after = lambda value, grad: value
    try:
        untied = temp_bytes()
    finally:
        conv_gradients.after, layers.after = originals
    return {
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "scan_dim_labels": labels,
        "after_temp_bytes": {"tied": tied, "untied": untied},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="yolov4")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="groups printed (all: 0)")
    parser.add_argument(
        "--xla_checks",
        action="store_true",
        help="print what XLA:CPU compiles the two forms into (xla_cpu_checks) and exit",
    )
    args = parser.parse_args(argv)
    if args.xla_checks:
        print(json.dumps(xla_cpu_checks()))
        return 0
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
