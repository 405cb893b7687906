"""Matrix products and convolutions through Intel oneMKL on the CPU, as XLA FFI custom calls.

XLA:CPU computes bfloat16 convolutions and dots in float32 (it converts the operands before
any kernel sees them), so a bfloat16 model gains nothing there. oneMKL's
``cblas_gemm_bf16bf16f32`` multiplies bfloat16 matrices with float32 accumulation on the
CPU's bf16 units (AMX tiles on Sapphire Rapids and later, AVX-512 BF16 elsewhere).
`conv2d` computes a convolution as its image patches times the kernel reshaped to
[kh * kw * C, O], both in one custom call (``cpu_gemm.cc`` builds the patches a few MB at a
time), and `conv.conv2d` takes it for ``model.conv_algorithm="mkl"``. Its backward pass goes
through oneMKL as well (`filter_gradient`, and `conv.input_gradient`'s phases through the
forward handler), so the algorithm trains. Float32 operands go to ``cblas_sgemm``.

Nothing here runs unless asked for. `register` builds ``cpu_gemm.cc`` with the C++ compiler
(``CXX``, else ``c++``) against jaxlib's FFI headers into ``$XDG_CACHE_HOME/yolov4_jax``
(once per source and jaxlib version), opens oneMKL's ``libmkl_rt`` (``YOLOV4_JAX_MKL`` names
it, else the one ``pip install mkl`` puts under ``sys.prefix``, else the loader's search path)
and registers the handlers for the CPU platform. oneMKL threads with GNU OpenMP unless
``MKL_THREADING_LAYER`` says otherwise.

One device: the custom call has no partitioning rule, so under a multi-device mesh XLA
gathers its operands and every device computes the whole batch (the values are right, the
work is not shared; tests/test_cpu_gemm.py checks this on 8 simulated devices).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax import Error
from yolov4_jax.ops import conv_gradients

SOURCE = Path(__file__).with_name("cpu_gemm.cc")
# (operation, dtype) -> (XLA target name, handler symbol in cpu_gemm.cc)
_HANDLERS = {
    ("conv", "bfloat16"): ("yolov4_conv_bf16", "YoloConvBf16"),
    ("conv", "float32"): ("yolov4_conv_f32", "YoloConvF32"),
    ("filter_grad", "bfloat16"): ("yolov4_filter_grad_bf16", "YoloFilterGradBf16"),
    ("filter_grad", "float32"): ("yolov4_filter_grad_f32", "YoloFilterGradF32"),
}


class CpuGemmError(Error, RuntimeError):
    """The oneMKL kernels cannot be built or loaded here; the message says why."""


def mkl_library() -> str:
    """Path (or soname) of oneMKL's single dynamic library."""
    if os.environ.get("YOLOV4_JAX_MKL"):
        return os.environ["YOLOV4_JAX_MKL"]
    for prefix in (sys.prefix, sys.base_prefix):
        for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"):
            if (Path(prefix) / "lib" / name).exists():
                return str(Path(prefix) / "lib" / name)
    found = ctypes.util.find_library("mkl_rt")
    if found is None:
        raise CpuGemmError(
            "model.conv_algorithm='mkl' needs Intel oneMKL: `pip install mkl` (Linux x86-64), "
            "or set YOLOV4_JAX_MKL to the path of libmkl_rt"
        )
    return found


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "yolov4_jax"


def build() -> Path:
    """The compiled handler library, built on first use (an atomic rename, so concurrent
    builds are safe) and reused while the source and jaxlib's version stay the same."""
    include = jax.ffi.include_dir()
    key = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_gemm-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, "-O2", "-shared", "-fPIC", "-std=c++17", "-fopenmp", "-w", f"-I{include}"]
        cmd += [str(SOURCE), "-o", str(out), "-ldl"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise CpuGemmError(f"no C++ compiler {compiler!r} to build {SOURCE} (set CXX)") from e
        if done.returncode:
            raise CpuGemmError(f"building {SOURCE} failed:\n{' '.join(cmd)}\n{done.stderr}")
        os.replace(out, target)
    return target


@functools.cache
def register() -> None:
    """Builds and loads the handlers, opens oneMKL and registers the handlers with XLA, once
    per process."""
    lib = open_mkl(build(), mkl_library())
    for name, symbol in _HANDLERS.values():
        handler = jax.ffi.pycapsule(getattr(lib, symbol))
        jax.ffi.register_ffi_target(name, handler, platform="cpu")


def open_mkl(library: Path, mkl: str) -> ctypes.CDLL:
    """The handler library at ``library``, with oneMKL (``mkl``) opened for it."""
    lib = ctypes.CDLL(str(library))
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")  # the OpenMP runtime the handlers use
    error = ctypes.create_string_buffer(1024)
    if lib.yolov4_cpu_gemm_open(mkl.encode(), error, len(error)):
        raise CpuGemmError(f"cannot open oneMKL ({mkl}): {error.value.decode()}")
    return lib


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux; empty where the file cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_advice(conv_algorithm: str, flags: frozenset[str] | None = None) -> str | None:
    """What a bfloat16 model on this CPU costs, where it is not what the user likely wants.

    Measured (docs/benchmarks.md): on Sapphire Rapids (AMX-BF16) bf16 through oneMKL ran
    YOLOv4 at 416, batch 1 in 153 ms against 240 ms in float32; on an AMD EPYC with AVX-512
    BF16 but no AMX it ran in 448-477 ms against 155-182 ms in float32, and a 416 batch-2
    training step took 2.93 s against 1.31-1.38 s. XLA's own bf16 converts to float32 inside
    its kernels (399 against 240 ms on Sapphire Rapids; +20% on the training step on EPYC).
    Returns None where bf16 through oneMKL on AMX is asked for: the measured fast case.
    """
    flags = cpu_flags() if flags is None else flags
    amx = "amx_bf16" in flags
    if conv_algorithm == "mkl":
        if amx:
            return None
        return (
            "bfloat16 through oneMKL on a CPU without AMX: measured 2.6-2.9x slower than "
            "float32 (AMD EPYC, YOLOv4 at 416: 448-477 ms against 155-182 ms per image; "
            "docs/benchmarks.md); float32 (model.dtype=float32) is the fast choice here"
        )
    return (
        "bfloat16 with XLA's convolutions on the CPU: XLA:CPU converts them to float32, "
        "measured 1.2-1.7x slower than float32; "
        + (
            "this CPU has AMX, where model.conv_algorithm=mkl ran 1.6x faster than float32"
            if amx
            else "use model.dtype=float32 on this CPU"
        )
    )


def available() -> bool:
    """Whether `register` succeeds here (a compiler and oneMKL are present)."""
    try:
        register()
    except CpuGemmError:
        return False
    return True


def _call(op, x, other, out_shape, kernel_hw, stride, pads):
    """One handler call; ``pads`` ((top, bottom), (left, right)), negative crops."""
    register()
    (top, bottom), (left, right) = pads
    target = _HANDLERS[(op, jnp.dtype(x.dtype).name)][0]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32))
    attrs = dict(kh=kernel_hw[0], kw=kernel_hw[1], stride=stride, top=top, bottom=bottom)
    attrs.update(left=left, right=right)
    return call(x, other, **{k: np.int64(v) for k, v in attrs.items()})


def _conv(x, kernel, stride, pads):
    """NHWC x HWIO correlation with per-side padding, float32 products (no gradient)."""
    kh, kw, channels, filters = kernel.shape
    rows = (x.shape[1] + sum(pads[0]) - kh) // stride + 1
    cols = (x.shape[2] + sum(pads[1]) - kw) // stride + 1
    w = kernel.reshape(kh * kw * channels, filters)
    return _call("conv", x, w, (x.shape[0], rows, cols, filters), (kh, kw), stride, pads)


def _check(x, kernel):
    if jnp.dtype(x.dtype).name not in ("bfloat16", "float32") or kernel.dtype != x.dtype:
        raise ValueError(
            "cpu_gemm.conv2d takes a 4-D input and HWIO kernel, both bfloat16 or both float32;"
            f" got {x.dtype}{x.shape} and {kernel.dtype}{kernel.shape}"
        )
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"cpu_gemm.conv2d: kernel {kernel.shape} does not fit input {x.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """NHWC x HWIO convolution (no groups, symmetric zero padding) through oneMKL: image
    patches times the kernel reshaped to [kh * kw * C, O], accumulated in float32 and
    returned in ``x.dtype``. ``x`` and ``kernel`` are both bfloat16 or both float32.

    The backward pass goes through oneMKL too: the filter gradient is the patches' transpose
    times the output gradient (`filter_gradient`), the input gradient the phases of
    `conv.input_gradient`, each a stride-1 convolution of the output gradient through
    `_conv`; both are rounded to the operands' dtype as XLA's would be."""
    _check(x, kernel)
    pads = ((padding, padding), (padding, padding))
    return _conv(x, kernel, stride, pads).astype(x.dtype)


def filter_gradient(x, grad, kernel_hw, stride, padding) -> jax.Array:
    """[kh, kw, C, O] gradient of `conv2d`'s kernel for the output gradient ``grad``, float32."""
    pads = ((padding, padding), (padding, padding))
    out = (kernel_hw[0] * kernel_hw[1] * x.shape[3], grad.shape[3])
    flat = _call("filter_grad", x, grad.astype(x.dtype), out, kernel_hw, stride, pads)
    return flat.reshape(*kernel_hw, x.shape[3], grad.shape[3])


def _conv2d_fwd(x, kernel, stride, padding):
    return conv2d(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, grad):
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    grad_kernel = filter_gradient(x, grad, kernel.shape[:2], stride, padding)
    kernel = conv_gradients.after(kernel, grad)  # its flips and transposes when the gradient exists

    def correlate(g, taps, pads):
        return _conv(g, taps, 1, pads)

    grad_x = conv_gradients.input_gradient(
        grad, kernel, stride, padding, x.shape[1:3], correlate=correlate
    )
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
