"""Training-step cost on the machine it runs on: compile time, step time, images/s, memory, FLOPs.

    python experiments/benchmark_train.py --config=configs/base.py --size 416 --batch 2 \
        [--subdivisions 1] [--steps 5] [--dtype float32|bfloat16] [--set train.sat=True ...]
    python experiments/benchmark_train.py --config=configs/yolov4_coco.py --size 608 --batch 64 \
        --subdivisions 8 --compile_only     # FLOPs and bytes of the paper's step, no execution

Runs `yolov4_jax.train.make_train_step` (the real step: micro-batch accumulation, BN/CmBN/CBN,
SAT, loss, SGD, EMA as configured) on random uint8 images with a few boxes each, so the host
input pipeline is excluded (experiments/benchmark_data.py measures that). Prints, for the
default JAX device (CPU, GPU or TPU, nothing to change):

- compile s: lower + compile of the step (the persistent compilation cache is bypassed unless
  --use_cache), then the step is run --steps times after one warm-up step;
- median step s and images/s;
- XLA's FLOPs and bytes accessed per step (`cost_analysis`), and achieved TFLOP/s;
- peak memory: the device's `peak_bytes_in_use` where it reports one (GPU, TPU), else the
  process's peak resident memory during the steps (CPU, Linux: VmHWM restarted after
  compilation; it includes the Python process, JAX and the train state, not init's and
  the compiler's own peaks, which `process_max_rss_gb` adds);
- XLA's buffer assignment of the compiled step: `xla_temp_gb` (activations, gradients and
  scratch) and `xla_arguments_gb` (the train state and the batch).

`--profile DIR` traces one more step with `jax.profiler` and prints the time per XLA operation
kind; `--hlo FILE` writes the compiled step's HLO.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _batch(size: int, batch: int, max_boxes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    labels = np.zeros((batch, max_boxes), np.int32)
    mask = np.zeros((batch, max_boxes), bool)
    for i in range(batch):
        for j in range(min(6, max_boxes)):
            x0, y0 = rng.uniform(0, 0.7, 2)
            w, h = rng.uniform(0.05, 0.3, 2)
            boxes[i, j] = (x0, y0, x0 + w, y0 + h)
            labels[i, j] = rng.integers(0, 5)
            mask[i, j] = True
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "boxes": boxes,
        "labels": labels,
        "mask": mask,
    }


def _status_gb(field: str) -> float | None:
    """VmRSS or VmHWM (peak) of this process from /proc/self/status, in GiB (Linux only)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) from the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory_gb(device) -> tuple[float, str]:
    """The device's peak where it reports one (GPU, TPU); else the process's peak resident
    set since the last `_reset_peak_rss` (VmHWM), or over its whole life (ru_maxrss)."""
    stats = device.memory_stats() if device is not None else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    peak = _status_gb("VmHWM")
    if peak is not None:
        return peak, "process peak RSS"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def _profile_ops(compiled, state, batch, directory: str, top: int = 25) -> dict[str, float]:
    """Runs one step under `jax.profiler` into `directory` (open it in TensorBoard or Perfetto)
    and returns the summed wall time per XLA operation kind (its name up to the first '.'),
    the largest first. On CPU the names are the thunks: fusions, convolutions, dots."""
    import collections
    import glob
    import gzip

    import jax

    jax.profiler.start_trace(directory)
    jax.block_until_ready(compiled(state, batch))
    jax.profiler.stop_trace()
    paths = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.trace.json.gz")))
    events = json.load(gzip.open(paths[-1]))["traceEvents"]
    total: collections.Counter = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "end: ")):
            total[name.split(".")[0]] += event["dur"] / 1000
    return {name: round(ms, 1) for name, ms in total.most_common(top)}


def benchmark(args) -> dict:
    import jax

    from experiments.ablate import _parse_value, apply_overrides, load_module
    from yolov4_jax import optim, train
    from yolov4_jax.models import factory

    if not args.use_cache:
        jax.config.update("jax_enable_compilation_cache", False)
    config = load_module(args.config).get_config()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = _parse_value(value)
    extra.update(
        {
            "data.batch_size": args.batch,
            "data.image_size": args.size,
            "optim.subdivisions": args.subdivisions,
            "model.dtype": args.dtype,
        }
    )
    apply_overrides(config, extra, "benchmark")
    model = factory.create_model(config.model, num_classes=args.classes)
    tx, schedule = optim.make_optimizer(
        config.optim, global_batch_size=args.batch, total_steps=config.optim.max_batches
    )
    mesh = train.make_mesh() if jax.device_count() > 1 else None
    state = train.create_train_state(model, config, tx, jax.random.PRNGKey(0))
    step = train.make_train_step(model, config, tx, schedule, mesh)
    batch = _batch(args.size, args.batch, config.data.max_boxes)
    if mesh is not None:
        state = jax.device_put(
            state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        )
        batch = train.global_batch(batch, mesh)
    else:
        batch = jax.device_put(batch)

    rss_before_compile = _status_gb("VmRSS")
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan")))
    bytes_accessed = float(cost.get("bytes accessed", float("nan")))
    result = {
        "device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind}",
        "devices": jax.device_count(),
        "config": os.path.relpath(args.config, ROOT),
        "model": config.model.name,
        "size": args.size,
        "batch": args.batch,
        "subdivisions": args.subdivisions,
        "dtype": args.dtype,
        "overrides": {k: v for k, v in extra.items() if k not in ("data.batch_size",)},
        "compile_s": round(compile_s, 2),
        "gflops_per_step": round(flops / 1e9, 1),
        "gb_accessed_per_step": round(bytes_accessed / 2**30, 2),
        "rss_before_compile_gb": rss_before_compile and round(rss_before_compile, 2),
    }
    memory = compiled.memory_analysis()
    if memory is not None:  # XLA's buffer assignment: what the step itself allocates
        result["xla_temp_gb"] = round(memory.temp_size_in_bytes / 2**30, 3)
        result["xla_arguments_gb"] = round(memory.argument_size_in_bytes / 2**30, 3)
    if args.compile_only:
        return result
    # The step's own peak: from here on (init and compilation excluded, their own peak is
    # `process_max_rss_gb`).
    _reset_peak_rss()
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    if args.profile:
        result["top_ops_ms"] = _profile_ops(compiled, state, batch, args.profile)
    memory, memory_kind = _peak_memory_gb(jax.devices()[0])
    result.update(
        step_s=round(median, 3),
        images_per_s=round(args.batch / median, 2),
        achieved_tflops=round(flops / median / 1e12, 3),
        peak_memory_gb=round(memory, 2),
        memory_kind=memory_kind,
        process_max_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        loss=float(metrics["total"]),
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "base.py"))
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--subdivisions", type=int, default=1)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE")
    parser.add_argument("--compile_only", action="store_true")
    parser.add_argument("--hlo", metavar="FILE", help="write the compiled step's HLO to FILE")
    parser.add_argument("--profile", metavar="DIR", help="trace one more step into DIR")
    parser.add_argument("--use_cache", action="store_true", help="allow the compilation cache")
    args = parser.parse_args(argv)
    result = benchmark(args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
