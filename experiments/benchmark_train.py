"""Training-step cost on the machine it runs on: compile time, step time, images/s, memory, FLOPs.

    python experiments/benchmark_train.py --config=configs/base.py --size 416 --batch 2 \
        [--subdivisions 1] [--steps 5] [--dtype float32|bfloat16] [--set training.sat=True ...]
    python experiments/benchmark_train.py --config=configs/yolov4_coco.py --size 608 --batch 64 \
        --subdivisions 8 --compile_only     # FLOPs and bytes of the paper's step, no execution

Runs `yolov4_jax.training.make_train_step` (the real step: micro-batch accumulation, BN/CmBN/CBN,
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
- minor page faults per step (median; host memory that the step's buffers fault in again,
  see `yolov4_jax.ops.hostmem`);
- XLA's buffer assignment of the compiled step: `xla_temp_gb` (activations, gradients and
  scratch) and `xla_arguments_gb` (the train state and the batch).

`--compile_in_child` compiles the step in a child process and loads it from the persistent
compilation cache, as a second start of the training program does (`compile_s` is then the
load). Run as a program, the benchmark restarts itself with the training program's host
malloc setting first (`yolov4_jax.ops.hostmem`; `huge_pages` in the output).

`--torch_dir DIR` times the same network's step in PyTorch eager (`experiments/torch_peer.py`),
alternating --rounds rounds of --steps steps with JAX's: `torch_step_over_jax` is the ratio of
the medians, `torch_step_over_jax_by_round` each round's (the machine's speed drifts). Each
round starts with one untimed step on each side (`settle_step_s`, experiments/timing.py): JAX
frees its step's 0.94 GB temp buffer when the step ends (glibc maps blocks above 32 MB and
unmaps them on free), and while PyTorch's round runs this machine's host takes that memory
back, so the first JAX step after it took 3.6-4.6 s instead of 2.1 s at 416, batch 2 (the
same after `time.sleep`, without the peer). PyTorch keeps most of what it frees in glibc's
heaps and paid 0-0.5 s. Back-to-back training steps do not pay it.

`--profile DIR` traces one more step with `jax.profiler` and prints the time per XLA operation
kind; `--hlo FILE` writes the compiled step's HLO.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments.peer_process import PeerProcess  # noqa: E402
from experiments.timing import timed_calls  # noqa: E402

TORCH_INSTALL = (
    "install it with: python -m pip install --target .cache/torch torch "
    "(CPU wheels: torch==VERSION+cpu where the index has them)"
)


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


def status_gb(field: str) -> float | None:
    """VmRSS or VmHWM (peak) of this process from /proc/self/status, in GiB (Linux only)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) from the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory_gb(device) -> tuple[float, str]:
    """The device's peak where it reports one (GPU, TPU); else the process's peak resident
    set since the last `reset_peak_rss` (VmHWM), or over its whole life (ru_maxrss)."""
    stats = device.memory_stats() if device is not None else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    peak = status_gb("VmHWM")
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
    from yolov4_jax import training
    from yolov4_jax.models import factory
    from yolov4_jax.ops import hostmem
    from yolov4_jax.training import optim

    cache_hits = []
    if args.compile_in_child:
        child = _compile_in_child(args)
        jax.config.update("jax_compilation_cache_dir", child["cache_dir"])
        jax.monitoring.register_event_listener(
            lambda event, **kwargs: (
                cache_hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
            )
        )
    elif not args.use_cache:
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
    mesh = training.make_mesh() if jax.device_count() > 1 else None
    state = training.create_train_state(model, config, tx, jax.random.PRNGKey(0))
    hostmem.release()  # as the training loop does
    step = training.make_train_step(model, config, tx, schedule, mesh)
    host_batch = batch = _batch(args.size, args.batch, config.data.max_boxes)
    if mesh is not None:
        state = jax.device_put(
            state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        )
        batch = training.global_batch(batch, mesh)
    else:
        batch = jax.device_put(batch)

    rss_before_compile = status_gb("VmRSS")
    start = time.perf_counter()
    with hostmem.collector_paused():  # as the training loop traces its step
        compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    if args.compile_in_child:
        shutil.rmtree(child["cache_dir"], ignore_errors=True)
        if not cache_hits:
            raise RuntimeError(
                "--compile_in_child: the step was not loaded from the child's compilation "
                "cache; it was compiled here, so the comparison would not hold"
            )
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
        "huge_pages": hostmem.huge_pages(),
        "overrides": {k: v for k, v in extra.items() if k not in ("data.batch_size",)},
        "compile_s": round(compile_s, 2),
        **({"child_compile_s": child["compile_s"]} if args.compile_in_child else {}),
        "gflops_per_step": float(f"{flops / 1e9:.4g}"),  # 4 significant digits
        "gb_accessed_per_step": round(bytes_accessed / 2**30, 2),
        "rss_before_compile_gb": rss_before_compile and round(rss_before_compile, 2),
    }
    memory = compiled.memory_analysis()
    if memory is not None:  # XLA's buffer assignment: what the step itself allocates
        result["xla_temp_gb"] = round(memory.temp_size_in_bytes / 2**30, 3)
        result["xla_arguments_gb"] = float(f"{memory.argument_size_in_bytes / 2**30:.4g}")
    if args.compile_only:
        return result
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    hostmem.release()  # what the compiler freed, as the training loop does after its first step
    # The step's own peak: from here on (init and compilation excluded, their own peak is
    # `process_max_rss_gb`).
    reset_peak_rss()
    peer = None
    if args.torch_dir:
        layers = factory.model_layers(config.model, num_classes=args.classes)
        peer = TorchPeer(args.torch_dir, layers, host_batch, config.optim, args.dtype)
        result["parameters"] = sum(x.size for x in jax.tree.leaves(state.params))
        if peer.ready["parameters"] != result["parameters"]:  # not the same network
            peer.close()
            raise RuntimeError(
                f"the PyTorch network has {peer.ready['parameters']} parameters, the JAX one "
                f"{result['parameters']}: experiments/torch_peer.py built a different network"
            )

    def step_once():
        nonlocal state, metrics
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)

    times, peer_times, faults, settle, peer_settle = [], [], [], [], []
    for _ in range(args.rounds):  # alternating with the peer, if any
        if peer is not None:  # one untimed step after the peer's idle time (module docstring)
            settle += timed_calls(step_once, 1)
        times += timed_calls(step_once, args.steps, faults)
        if peer is not None:
            first, *rest = peer("time", steps=args.steps + 1)["times"]
            peer_settle.append(first)
            peer_times += rest
    median = statistics.median(times)
    if args.profile:
        if peer is not None:  # the trace follows the peer's round: settle first
            step_once()
        result["top_ops_ms"] = _profile_ops(compiled, state, batch, args.profile)
    memory, memory_kind = _peak_memory_gb(jax.devices()[0])
    # getrusage's maximum can trail VmHWM by the kernel's lazily synced per-thread RSS
    # counts (seen: 1.10 against 1.11 GB); the whole run's peak is at least the step's.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if memory_kind == "process peak RSS":
        max_rss = max(max_rss, memory)
    result.update(
        step_s=round(median, 3),
        step_times_s=_rounded(times),
        images_per_s=round(args.batch / median, 2),
        minor_faults_per_step=int(statistics.median(faults)),
        achieved_tflops=round(flops / median / 1e12, 3),
        peak_memory_gb=round(memory, 2),
        memory_kind=memory_kind,
        process_max_rss_gb=round(max_rss, 2),
        loss=float(metrics["total"]),
    )
    if peer is not None:
        result["torch"] = peer.summary(peer_times, args.batch)
        result["torch"]["step_times_s"] = _rounded(peer_times)
        result["settle_step_s"] = _rounded(settle)
        result["torch"]["settle_step_s"] = _rounded(peer_settle)
        peer.close()
        # > 1: the JAX step is faster (smaller); the goal is torch / JAX >= 1 / 1.2
        result["torch_step_over_jax"] = round(result["torch"]["step_s"] / median, 3)
        # Per round (alternating): how far the machine's speed drifted during the run.
        n = args.steps
        result["torch_step_over_jax_by_round"] = [
            round(statistics.median(peer_times[i : i + n]) / statistics.median(times[i : i + n]), 3)
            for i in range(0, len(times), n)
        ]
        result["torch_peak_over_jax"] = round(result["torch"]["peak_memory_gb"] / memory, 3)
    return result


def _rounded(times: list[float]) -> list[float]:
    """Seconds to the millisecond, as printed."""
    return [round(t, 3) for t in times]


def _compile_in_child(args) -> dict:
    """Compiles the step in a child process (`--compile_only`) into a fresh persistent
    compilation cache, so that this process loads it instead of compiling, as a second start
    of the training program does (docs/benchmarks.md, "The step after an in-process compile",
    compares the two). Returns the child's compile time and the cache folder."""
    import subprocess
    import tempfile

    cache_dir = tempfile.mkdtemp(prefix="yolov4_jax_step_cache_")
    argv = [a for a in args.argv if a != "--compile_in_child"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, "--compile_only", "--use_cache"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the compiling child failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    return {"cache_dir": cache_dir, "compile_s": result["compile_s"]}


class TorchPeer(PeerProcess):
    """experiments/torch_peer.py in a child process: the same network (the project's layer
    specs), batch and optimiser settings as an eager PyTorch step, from `torch_dir` (a
    `pip install --target` folder). The constructor returns once the child has built the
    model and run one warm-up step."""

    def __init__(self, torch_dir: str, layers, host_batch: dict, optim_config, dtype="float32"):
        import dataclasses
        import tempfile

        import numpy as np

        if not os.path.isdir(os.path.join(torch_dir, "torch")):
            raise SystemExit(f"--torch_dir {torch_dir}: no torch package there; {TORCH_INSTALL}")
        self.folder = tempfile.TemporaryDirectory()
        batch_path = os.path.join(self.folder.name, "batch.npz")
        np.savez(batch_path, **host_batch)
        setup = {
            "layers": [{"type": type(s).__name__, **dataclasses.asdict(s)} for s in layers],
            "batch": batch_path,
            "learning_rate": optim_config.learning_rate,
            "momentum": optim_config.momentum,
            "weight_decay": optim_config.weight_decay,
            "dtype": dtype,
        }
        setup_path = os.path.join(self.folder.name, "setup.json")
        with open(setup_path, "w") as f:
            json.dump(setup, f)
        super().__init__(
            "PyTorch", os.path.join(ROOT, "experiments", "torch_peer.py"), torch_dir, setup_path
        )
        self.ready = self.answer("start")

    def summary(self, times: list[float], batch: int) -> dict:
        median = statistics.median(times)
        memory = self("memory")
        return {
            "version": self.ready["torch"],
            "threads": self.ready["threads"],
            "huge_pages": self.ready["huge_pages"],
            "parameters": self.ready["parameters"],
            "dtype": self.ready["dtype"],
            "warmup_s": round(self.ready["warmup_s"], 2),
            "step_s": round(median, 3),
            "images_per_s": round(batch / median, 2),
            "peak_memory_gb": round(memory["peak_gb"], 2),
            "rss_before_model_gb": round(self.ready["rss_before_model_gb"], 2),
        }

    def close(self) -> None:
        super().close()
        self.folder.cleanup()


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
    parser.add_argument(
        "--compile_in_child",
        action="store_true",
        help="compile the step in a child process into a fresh compilation cache and load it "
        "here (compile_s is then the load; child_compile_s the compile)",
    )
    parser.add_argument(
        "--torch_dir",
        help="also time the same step in eager PyTorch from this folder, alternating "
        f"(experiments/torch_peer.py; {TORCH_INSTALL})",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --steps steps")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    result = benchmark(args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from yolov4_jax.ops import hostmem

    hostmem.apply_defaults()  # may restart the program, as the training program does
    sys.exit(main())
