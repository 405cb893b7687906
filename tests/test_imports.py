"""Every module imports alongside every other, and the programs parse their own flags.

absl flags are process-global: two modules that define the same flag at import time cannot be
imported by one process (pytest's, a notebook's). Programs define theirs only when run.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> list[str]:
    names = ["yolov4_jax"]
    for info in pkgutil.walk_packages([os.path.join(ROOT, "yolov4_jax")], "yolov4_jax."):
        names.append(info.name)
    for name in sorted(os.listdir(os.path.join(ROOT, "experiments"))):
        if name.endswith(".py") and name != "__init__.py":
            names.append("experiments." + name[:-3])
    return names


def _run(code_or_args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_all_modules_import_together_and_define_no_flags():
    modules = _modules()
    assert "yolov4_jax.evaluate" in modules and "experiments.benchmark_models" in modules
    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "ours = [m for m in flags.FLAGS.flags_by_module_dict()\n"
        "        if m.startswith(('yolov4_jax', 'experiments', '__main__'))]\n"
        "print('DEFINED', ours)\n"
    )
    result = _run(["-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DEFINED []" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "program, flag",
    [
        (["-m", "yolov4_jax.main"], "--workdir"),
        (["-m", "yolov4_jax.evaluate"], "--nms_thresh"),
        (["experiments/benchmark_models.py"], "--variants"),
        (["experiments/benchmark_data.py"], "--mosaic_prob"),
    ],
)
def test_programs_define_their_flags_when_run(program, flag):
    result = _run([*program, "--help"])  # absl prints the usage and exits with 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert flag in output


@pytest.mark.slow
@pytest.mark.parametrize(
    "program",
    [
        ["-m", "yolov4_jax.main", "--workdir=/nonexistent/never-created"],
        ["-m", "yolov4_jax.evaluate"],
        ["-m", "yolov4_jax.anchors"],
        ["-m", "yolov4_jax.data.preview", "--out=/nonexistent/never-created"],
    ],
)
@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/test_tiny.py", "--config.data.nope=1"],
            "--config.data.nope=1: the config has no field 'nope'",
        ),
        (
            ["--config=configs/test_tiny.py", "--config.data.image_sze=3"],
            "no field 'image_sze' (configs/base.py lists every field); Did you mean \"image_size\"",
        ),
        (["--config=configs/missing.py"], "--config: Failed loading config file"),
    ],
)
def test_bad_config_arguments_are_one_line_errors(program, args, expected):
    result = _run([*program, *args])
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "FATAL Flags parsing error: " in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr, result.stderr[-3000:]
    assert not os.path.exists("/nonexistent/never-created")


def test_package_import_leaves_ynnpack_reductions_only_unless_told_otherwise():
    # yolov4_jax/__init__.py appends the flag before JAX starts its CPU backend, keeps a
    # user's own setting and the opt-out; the compiled convolution then has no YNN fusion,
    # the long reduction (BatchNorm's statistics) has one.
    code = (
        "import os, jax, jax.numpy as jnp, yolov4_jax\n"
        "x, w = jnp.ones((1, 64, 64, 64)), jnp.ones((3, 3, 64, 64))\n"
        "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "conv = jax.jit(f).lower(x, w).compile().as_text()\n"
        "sums = jax.jit(lambda x: x.sum((0, 1, 2))).lower(x).compile().as_text()\n"
        "print(os.environ.get('XLA_FLAGS', ''), '|', '__ynn_fusion' in conv,"
        " '__ynn_fusion' in sums)\n"
    )
    flag = "--xla_cpu_experimental_ynn_fusion_type="
    cases = [  # (environment, XLA_FLAGS after the import, YNN fusions in conv and sums)
        ({}, f"{flag}reduce", "False True"),
        (
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            f"=2 {flag}reduce",
            "False True",
        ),
        ({"XLA_FLAGS": flag}, flag, "False False"),
        ({"YOLOV4_JAX_XLA_DEFAULTS": "0"}, "", None),
    ]
    for extra, flags, ynn in cases:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", **extra)
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-2000:]
        got_flags, got_ynn = (part.strip() for part in run.stdout.split("|"))
        assert got_flags.endswith(flags), (extra, run.stdout)
        assert ynn is None or got_ynn == ynn, (extra, run.stdout)
