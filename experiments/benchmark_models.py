"""Model cost per variant: parameters, FLOPs per image, compile time and forward latency.

    python experiments/benchmark_models.py [--variants yolov4,yolov4_tiny,yolov4_csp] \\
        [--sizes 416,608] [--batches 1,8] [--repeats 20] [--dtype float32] [--out FILE.md]

Prints one Markdown table (and writes it to ``--out`` if given), one row per variant, input
size and batch size, on the default JAX device:

- params (M): trainable parameters (``params`` collection; BN statistics excluded).
- GFLOPs/img: XLA's count for the compiled forward pass
  (``jax.jit(f).lower(...).compile().cost_analysis()["flops"]``) divided by the batch size.
  A multiply-add counts as 2 FLOPs, and XLA skips the multiplications by the zero padding
  of convolutions, so this is a little below darknet's figure.
- darknet BFLOPs: darknet's count for convolutional layers (``l.bflops = 2 * nweights *
  out_h * out_w``), from the layer specs. Darknet's "Total BFLOPS" also adds its small counts
  for pooling and shortcut layers: yolov4 at 608 is 128.39 here, 128.46 in darknet's log.
- compile s: ``lower`` plus ``compile`` of the jitted forward pass, with the persistent
  compilation cache off, so it is the cost a fresh process pays per input shape.
- ms/batch: median wall time of ``--repeats`` calls after one warm-up call, each waited for
  with ``block_until_ready``; img/s follows from it.

The forward pass is ``model.apply(variables, images, train=False)``: the raw head outputs,
without decoding and NMS. Variables are random (latency does not depend on their values);
images are float32 ``[B, S, S, 3]``. Run it on an otherwise idle machine; on a CPU the full
default grid takes long (yolov4 at 608, batch 8, is ~1 TFLOP per call).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.timing import timed_calls  # noqa: E402
from yolov4_jax.models import (  # noqa: E402
    Network,
    output_shapes,
    specs,
    yolov4_csp_layers,
    yolov4_layers,
    yolov4_tiny_layers,
)

BUILDERS = {
    "yolov4": yolov4_layers,
    "yolov4_tiny": yolov4_tiny_layers,
    "yolov4_csp": yolov4_csp_layers,
}


def _define_flags() -> SimpleNamespace:
    # Defined only when run as a program, so importing this module defines no absl flags.
    return SimpleNamespace(
        variants=flags.DEFINE_list("variants", list(BUILDERS), f"Variants, from {list(BUILDERS)}."),
        sizes=flags.DEFINE_list("sizes", ["416", "608"], "Square input sides (multiples of 32)."),
        batches=flags.DEFINE_list("batches", ["1", "8"], "Batch sizes."),
        repeats=flags.DEFINE_integer("repeats", 20, "Timed calls per setting (median reported)."),
        dtype=flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype."),
        out=flags.DEFINE_string("out", None, "Also write the Markdown table to this file."),
    )


def random_variables(model: Network, size: int, seed: int = 0):
    """Variables of `model` with random values, without compiling `init`."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:  # BN running variance: positive
            values = rng.uniform(0.5, 1.5, leaf.shape)
        elif "kernel" in name:
            values = rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        else:
            values = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def count_params(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def darknet_bflops(layers, size: int) -> float:
    """Darknet's BFLOPs for one image: 2 * kernel weights * output pixels per conv layer."""
    shapes = output_shapes(layers, size, size)
    channels = [3] + [c for _, _, c in shapes[:-1]]
    total = 0.0
    for spec, (h, w, _), c_in in zip(layers, shapes, channels, strict=True):
        if isinstance(spec, specs.Conv):
            weights = c_in // spec.groups * spec.filters * spec.size * spec.size
            total += 2.0 * weights * h * w
    return total / 1e9


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def network_flops(model: Network, variables, images) -> float:
    """XLA's FLOP count of the float32 forward pass with direct convolutions: the network's
    own count, whatever algorithm (Winograd's takes fewer multiplications) computes it."""
    direct = model.clone(dtype=jnp.float32, conv_algorithm="direct")
    forward = jax.jit(lambda v, x: direct.apply(v, x, train=False))
    return xla_flops(forward.lower(variables, images).compile())


def measure(model: Network, variables, size: int, batch: int, repeats: int) -> dict[str, float]:
    """Compile time, XLA FLOPs per image and latency of the jitted forward pass."""
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(variables, images))  # warm-up
    times = timed_calls(lambda: jax.block_until_ready(compiled(variables, images)), repeats)
    ms = 1e3 * statistics.median(times)
    return {
        "gflops": network_flops(model, variables, images) / batch / 1e9,
        "compile_s": compile_s,
        "ms": ms,
        "img_s": batch / ms * 1e3,
    }


def benchmark(variants, sizes, batches, repeats: int, dtype) -> str:
    """The Markdown table of every (variant, size, batch)."""
    device = jax.devices()[0]
    lines = [
        f"Device: {device.platform} {device.device_kind} ({jax.device_count()} devices, "
        f"first used); JAX {jax.__version__}; dtype {jnp.dtype(dtype).name}; "
        f"median of {repeats} calls.",
        "",
        "| variant | params (M) | size | batch | GFLOPs/img (XLA) | darknet BFLOPs "
        "| compile s | ms/batch | img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in variants:
        layers = BUILDERS[name]()
        model = Network(layers, dtype=dtype)
        variables = random_variables(model, min(sizes))
        params = count_params(variables) / 1e6
        for size in sizes:
            bflops = darknet_bflops(layers, size)
            for batch in batches:
                r = measure(model, variables, size, batch, repeats)
                row = (
                    f"| {name} | {params:.2f} | {size} | {batch} | {r['gflops']:.2f} "
                    f"| {bflops:.2f} | {r['compile_s']:.1f} | {r['ms']:.2f} | {r['img_s']:.1f} |"
                )
                print(row, file=sys.stderr, flush=True)  # progress; the table follows at the end
                lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    unknown = set(_FLAGS.variants.value) - set(BUILDERS)
    if unknown:
        raise app.UsageError(f"--variants: unknown {sorted(unknown)}; choose from {list(BUILDERS)}")
    # Compile time is what a fresh process pays, not a cache hit.
    jax.config.update("jax_enable_compilation_cache", False)
    table = benchmark(
        _FLAGS.variants.value,
        [int(s) for s in _FLAGS.sizes.value],
        [int(b) for b in _FLAGS.batches.value],
        _FLAGS.repeats.value,
        {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[_FLAGS.dtype.value],
    )
    print(table, end="")
    if _FLAGS.out.value:
        with open(_FLAGS.out.value, "w") as f:
            f.write(table)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(main)
