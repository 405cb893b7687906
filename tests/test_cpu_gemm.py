"""oneMKL convolutions on the CPU (yolov4_jax/ops/cpu_gemm.py, model.conv_algorithm="mkl"): values
and gradients equal XLA's convolution of the same (bf16-rounded) operands; a network with them
equals the direct one; `prediction.prepare_variables` stores bf16 kernels; missing pieces are
clear errors. Skipped where oneMKL or a C++ compiler is missing (`pip install mkl`; the dev
extras install it on Linux x86-64)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from tests.test_models import _config
from yolov4_jax.evaluation import prediction
from yolov4_jax.models import factory
from yolov4_jax.ops import conv, cpu_gemm
from yolov4_jax.ops.conv_gradients import NHWC as _NHWC

pytestmark = pytest.mark.skipif(
    not cpu_gemm.available(), reason="oneMKL or a C++ compiler is missing (pip install mkl)"
)


def _xla(x, kernel, stride, padding):
    pad = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=_NHWC)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, stride, padding",
    [
        ((2, 9, 7, 5), (1, 1, 5, 6), 1, 0),  # a plain matrix product
        ((2, 9, 7, 5), (3, 3, 5, 6), 1, 1),
        ((1, 10, 13, 3), (3, 3, 3, 4), 2, 1),  # odd output sides, zero padding at stride 2
        ((1, 8, 8, 2), (5, 5, 2, 3), 1, 2),
        ((3, 6, 6, 4), (1, 1, 4, 2), 2, 0),  # strided 1x1 (patches of one tap)
        ((1, 4, 4, 2), (3, 3, 2, 2), 1, 0),  # valid convolution
        # Kernels larger than the maps: the input gradient flips the maps instead (13 x 13).
        ((1, 3, 3, 8), (3, 3, 8, 16), 1, 1),
        ((1, 5, 5, 8), (3, 3, 8, 16), 2, 1),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_equal_xla(x_shape, kernel_shape, stride, padding, dtype):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape).astype(dtype)
    kernel = jax.random.normal(kk, kernel_shape).astype(dtype)
    got = jax.jit(cpu_gemm.conv2d, static_argnums=(2, 3))(x, kernel, stride, padding)
    # XLA:CPU convolves the same bf16 values in float32: the two differ by summation order
    # in float32, then by the final rounding to the input dtype.
    want = _xla(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, padding)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == jnp.float32 else 8e-3
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.float32(got) / scale, np.float32(want) / scale, atol=tol)

    # Gradients: through oneMKL too, against XLA's of the same (rounded) values in float32.
    grad = jax.random.normal(kg, want.shape).astype(dtype)
    _, vjp = jax.vjp(lambda a, b: cpu_gemm.conv2d(a, b, stride, padding), x, kernel)
    f32 = [v.astype(jnp.float32) for v in (x, kernel, grad)]
    _, vjp_xla = jax.vjp(lambda a, b: _xla(a, b, stride, padding), *f32[:2])
    for g, w in zip(vjp(grad), vjp_xla(f32[2]), strict=True):
        assert g.dtype == dtype and g.shape == w.shape
        scale = float(jnp.abs(w).max())
        np.testing.assert_allclose(np.float32(g) / scale, np.float32(w) / scale, atol=tol)


def test_bf16_results_are_rounded_to_nearest_even_as_xla_rounds():
    # A 1x1 convolution with a diagonal kernel: each output is one exact float32 product of
    # two bf16 values (16 significant bits), which the handler rounds to bf16 itself.
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, 5, 7, 16)).astype(jnp.bfloat16).at[0, 0, 0, 0].set(jnp.nan)
    diagonal = jax.random.normal(kw, (16,)).astype(jnp.bfloat16)
    kernel = jnp.diag(diagonal)[None, None]
    got = jax.jit(cpu_gemm.conv2d, static_argnums=(2, 3))(x, kernel, 1, 0)
    want = (x.astype(jnp.float32) * diagonal.astype(jnp.float32)).astype(jnp.bfloat16)
    want = want.at[0, 0, 0].set(jnp.nan)  # NaN * 0 is NaN: the pixel's whole row
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.float32(got), np.float32(want))


def test_bad_operands_are_errors():
    with pytest.raises(ValueError, match="both bfloat16 or both float32"):
        cpu_gemm.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1), jnp.bfloat16), 1, 1)
    with pytest.raises(ValueError, match="both bfloat16 or both float32"):
        cpu_gemm.conv2d(jnp.ones((1, 4, 4, 2), jnp.float16), jnp.ones((3, 3, 2, 1)), 1, 1)
    with pytest.raises(ValueError, match="does not fit input"):
        cpu_gemm.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 1)), 1, 1)


def test_conv2d_takes_mkl_for_ungrouped_layers_only():
    def lowered(groups):
        x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4 // groups, 4))
        fn = jax.jit(lambda a, b: conv.conv2d(a, b, 1, 1, groups, algorithm="mkl"))
        return fn.lower(x, kernel).as_text()

    assert "yolov4_conv_f32" in lowered(1)
    grouped = lowered(2)  # grouped convolutions stay XLA's
    assert "yolov4_conv_f32" not in grouped and "convolution" in grouped


@pytest.mark.slow
def test_a_network_with_mkl_convolutions_equals_the_direct_one():
    images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
    direct = factory.create_model(_config(conv_algorithm="direct"))
    mkl = factory.create_model(_config(conv_algorithm="mkl"))
    variables = direct.init(jax.random.key(1), images)
    apply = jax.jit(lambda m, v: m.apply(v, images), static_argnums=0)
    want = apply(direct, variables)
    for got, ref in zip(apply(mkl, variables), want, strict=True):
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(got / scale, ref / scale, atol=1e-5)

    # bfloat16: prepare_variables stores the kernels in bf16 (BN and biases stay float32);
    # the outputs equal those of the network computing with the float32 kernels.
    bf16 = mkl.clone(dtype=jnp.bfloat16)
    prepared = prediction.prepare_variables(bf16, variables)
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(prepared["params"])
        if path[-1].key == "kernel"
    ]
    others = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(prepared)
        if path[-1].key != "kernel"
    ]
    assert kernels and all(k.dtype == jnp.bfloat16 for k in kernels)
    assert others and all(o.dtype == jnp.float32 for o in others)
    for got, ref in zip(apply(bf16, prepared), apply(bf16, variables), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert prediction.prepare_variables(mkl, variables) is variables  # float32: nothing to do


def test_missing_compiler_and_library_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(cpu_gemm.CpuGemmError, match="no C..? compiler .*no-such-c"):
        cpu_gemm.build()
    monkeypatch.setenv("CXX", "false")  # runs, fails, says nothing
    with pytest.raises(cpu_gemm.CpuGemmError, match="building .*cpu_gemm.cc failed"):
        cpu_gemm.build()
    monkeypatch.delenv("CXX")
    library = cpu_gemm.build()
    assert library.parent == tmp_path / "cache" / "yolov4_jax"
    assert cpu_gemm.build() == library  # built once
    missing = str(tmp_path / "libmkl_rt.so.3")
    with pytest.raises(cpu_gemm.CpuGemmError, match=f"cannot open oneMKL \\({missing}\\)"):
        cpu_gemm.open_mkl(library, missing)
    monkeypatch.setenv("YOLOV4_JAX_MKL", missing)
    assert cpu_gemm.mkl_library() == missing


def test_sharded_batch_gives_the_same_values(tmp_path):
    # No partitioning rule: on 8 (simulated) devices XLA gathers the batch for the call.
    script = (
        "import jax, jax.numpy as jnp\n"
        "from jax.sharding import NamedSharding, PartitionSpec as P\n"
        "from yolov4_jax.ops import cpu_gemm\n"
        "mesh = jax.make_mesh((8,), ('data',))\n"
        "x = jax.random.normal(jax.random.key(0), (8, 6, 6, 4))\n"
        "k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))\n"
        "xs = jax.device_put(x, NamedSharding(mesh, P('data')))\n"
        "y = jax.jit(lambda a, b: cpu_gemm.conv2d(a, b, 2, 1))(xs, k)\n"
        "ref = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "assert float(jnp.abs(y - ref).max()) <= 1e-5 * float(jnp.abs(ref).max())\n"
        "print('ok', len(jax.devices()))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "8"]


def test_bf16_advice_follows_the_cpus_measured_capability(monkeypatch, caplog):
    amx = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})
    epyc = frozenset({"avx512_bf16", "avx512f"})
    assert cpu_gemm.bf16_advice("mkl", amx) is None  # the measured fast case
    assert "without AMX" in cpu_gemm.bf16_advice("mkl", epyc)
    assert "use model.dtype=float32" in cpu_gemm.bf16_advice("auto", epyc)
    assert "conv_algorithm=mkl" in cpu_gemm.bf16_advice("auto", amx)
    config = base.get_config().model
    config.name, config.width = "yolov4_tiny", 0.25
    config.dtype, config.conv_algorithm = "bfloat16", "mkl"
    monkeypatch.setattr(cpu_gemm, "cpu_flags", lambda path="/proc/cpuinfo": epyc)
    with caplog.at_level("WARNING"):
        factory.create_model(config, num_classes=3)
    assert "without AMX" in caplog.text
    caplog.clear()
    monkeypatch.setattr(cpu_gemm, "cpu_flags", lambda path="/proc/cpuinfo": amx)
    with caplog.at_level("WARNING"):
        factory.create_model(config, num_classes=3)
    assert "bfloat16" not in caplog.text


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_gemm.cpu_flags(str(info)) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert cpu_gemm.cpu_flags(str(tmp_path / "missing")) == frozenset()
