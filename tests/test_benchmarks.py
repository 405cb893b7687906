"""experiments/benchmark_opencv.py at its smallest: the JAX side, the table, and (where OpenCV 4
is installed in .cache/opencv4; tests never download it) the agreement with OpenCV's DNN."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest

from experiments import benchmark_opencv as bench

TINY = ["--model", "yolov4_tiny", "--sizes", "64", "--batches", "1", "--rounds", "1"]
TINY += ["--iters", "1"]


def test_table_rows_ratio_throughput_and_flops():
    medians = {
        ("JAX float32", "forward"): 0.5,
        ("JAX float32", "detect"): 0.8,
        ("OpenCV", "forward"): 1.0,
    }
    rows = bench.table_rows("yolov4", 416, 2, medians, flops=100e9)
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    # ms, img/s, GFLOP/s, x OpenCV (OpenCV's time over ours; none for detect here)
    assert cells[0][5:] == ["500.0", "4.00", "200.0", "2.00"]
    assert cells[1][5:] == ["800.0", "2.50", "125.0", "n/a"]
    assert cells[2][3:5] == ["OpenCV", "forward"] and cells[2][-1] == "1.00"
    assert bench.TABLE_HEADER.count("|") == rows[0].count("|") * 2


@pytest.mark.slow
def test_calibrated_weights_give_few_confident_predictions():
    from yolov4_jax.models import Network, yolov4_tiny_layers

    model = Network(yolov4_tiny_layers())
    variables = bench.detector_variables(model, bench.scene_images(128, 8, seed=0))
    images = bench.scene_images(128, 4, seed=1)  # not the calibration scenes
    outputs = jax.jit(model.apply)(variables, images / np.float32(255))
    _, scores = bench._decode(model, outputs, 128)
    confident = (scores.max(-1) > bench.NMS.score_threshold).mean()
    assert 0.0 < confident < 0.2, confident  # uncalibrated heads: every score ~.25


@pytest.mark.slow
def test_jax_side_runs_without_opencv(tmp_path, capsys):
    out = tmp_path / "report.md"
    missing = tmp_path / "no_opencv"
    assert bench.main(TINY + ["--opencv_dir", str(missing), "--out", str(out)]) == 0
    report = out.read_text()
    assert report == capsys.readouterr().out
    assert f"OpenCV 4 is not installed in {missing}" in report
    assert "JAX - OpenCV" not in report  # no agreement with OpenCV (ONNX Runtime's is there)
    rows = [r for r in report.splitlines() if r.startswith("| yolov4_tiny |")]
    measured = {tuple(c.strip() for c in r.split("|")[4:6]) for r in rows}
    assert measured == {
        ("JAX float32", "forward"),
        ("JAX float32", "detect"),
        ("JAX bfloat16", "forward"),
        ("JAX bfloat16", "detect"),
        ("ONNX Runtime", "forward"),
    }
    ort = re.search(r"max \|JAX - ONNX Runtime\| (\S+) of", report)
    assert ort and float(ort.group(1)) <= 1e-4
    assert all(r.endswith("| n/a |") for r in rows)
    line = r"bf16 vs fp32, 64x64, batch 1 \(JAX bfloat16\): raw head outputs max \|diff\| \S+"
    assert re.search(line, report)


@pytest.mark.slow
def test_bf16_through_mkl_is_its_own_row_with_its_accuracy(tmp_path, capsys):
    from yolov4_jax.ops import cpu_gemm

    if not cpu_gemm.available():
        pytest.skip("oneMKL or a C++ compiler is missing (pip install mkl)")
    args = TINY + ["--opencv_dir", str(tmp_path), "--dtypes", "bfloat16:mkl", "--no-onnxruntime"]
    assert bench.main(args) == 0
    report = capsys.readouterr().out
    rows = [r for r in report.splitlines() if r.startswith("| yolov4_tiny |")]
    assert {tuple(c.strip() for c in r.split("|")[4:6]) for r in rows} == {
        ("JAX bfloat16, mkl convs", "forward"),
        ("JAX bfloat16, mkl convs", "detect"),
    }
    accuracy = r"bf16 vs fp32, 64x64, batch 1 \(JAX bfloat16, mkl convs\): .* (\S+)% of the (\d+)"
    match = re.search(accuracy, report)
    share, detections = float(match.group(1)), int(match.group(2))
    assert 0 <= share <= 100 if detections else np.isnan(share)
    # The row really ran in bfloat16: its raw outputs differ from float32's, by bf16's
    # rounding (8 significand bits) amplified through a small random network (0.29 here).
    raw = float(re.search(r"raw head outputs max \|diff\| (\S+) of their", report).group(1))
    assert 1e-4 < raw < 1.0, raw


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(bench.OPENCV_DIR, "cv2")),
    reason=f"OpenCV 4 not in .cache/opencv4 (tests do not download it): {bench.OPENCV_INSTALL}",
)
def test_opencv_agrees_and_is_timed(capsys):
    bench.main(TINY + ["--dtypes", "float32"])
    report = capsys.readouterr().out
    agreement = re.search(r"Agreement, 64x64, batch 1: .* \((\S+) of their largest", report)
    assert agreement and float(agreement.group(1)) < 1e-3
    rows = [r for r in report.splitlines() if r.startswith("| yolov4_tiny |")]
    assert sum("| OpenCV |" in r for r in rows) == 2
    assert all(r.endswith("| 1.00 |") for r in rows if "| OpenCV |" in r)


def test_benchmark_images_reads_files_as_rgb_at_the_input_size(tmp_path):
    import cv2

    bgr = np.zeros((30, 50, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    images = bench.benchmark_images([str(tmp_path / "blue.png")], 32, 3, seed=0)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 2] == 255).all() and (images[..., :2] == 0).all()
    scenes = bench.benchmark_images([], 32, 2, seed=0)
    assert scenes.shape == (2, 32, 32, 3) and scenes.std() > 0


@pytest.mark.slow
def test_train_benchmark_reports_time_memory_and_a_profile(tmp_path, capsys):
    # experiments/benchmark_train.py on the tiny test network: the real step, its cost
    # analysis, XLA's buffer sizes, the step's own peak RSS and a per-operation profile.
    import json

    from experiments import benchmark_train

    args = ["--config", os.path.join(bench.ROOT, "configs", "test_tiny.py"), "--size", "64"]
    args += ["--batch", "2", "--steps", "1", "--classes", "3", "--profile", str(tmp_path)]
    assert benchmark_train.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step_s"] > 0 and result["gflops_per_step"] > 0
    assert result["xla_temp_gb"] > 0 and result["xla_arguments_gb"] > 0  # the state goes in
    assert 0 < result["peak_memory_gb"] <= result["process_max_rss_gb"] + 1e-6
    ops = result["top_ops_ms"]
    assert ops and sum(ops.values()) > 0
    assert any("conv" in name or "fusion" in name or "dot" in name for name in ops), ops
    assert os.listdir(tmp_path)  # the trace was written
    assert result["minor_faults_per_step"] >= 0
    assert np.isfinite(result["loss"])


@pytest.mark.slow
def test_train_benchmark_loads_a_step_compiled_in_a_child():
    # --compile_in_child: a child process compiles the step into a fresh persistent cache
    # and the benchmark loads it from there (it raises if the step was compiled again).
    # A fresh process of its own, since this one's compilation cache is already set up.
    import json
    import subprocess
    import sys

    script = os.path.join(bench.ROOT, "experiments", "benchmark_train.py")
    args = ["--config", os.path.join(bench.ROOT, "configs", "test_tiny.py"), "--size", "64"]
    args += ["--batch", "2", "--steps", "1", "--classes", "3", "--compile_in_child"]
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert result["child_compile_s"] > 0 and result["compile_s"] > 0
    assert result["step_s"] > 0 and result["minor_faults_per_step"] >= 0


TORCH_DIR = os.path.join(bench.ROOT, ".cache", "torch")


@pytest.mark.slow
def test_train_benchmark_names_a_missing_torch_folder(tmp_path):
    from experiments import benchmark_train

    args = ["--config", os.path.join(bench.ROOT, "configs", "test_tiny.py"), "--size", "64"]
    args += ["--batch", "2", "--steps", "1", "--classes", "3", "--torch_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="no torch package there"):
        benchmark_train.main(args)


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(TORCH_DIR, "torch")),
    reason="PyTorch not in .cache/torch (tests do not install it): "
    "python -m pip install --target .cache/torch torch",
)
def test_train_benchmark_times_the_same_network_in_pytorch(capsys):
    # The PyTorch peer builds the JAX model's layer specs (benchmark_train checks that the
    # parameter counts agree) and runs its step, alternating with JAX's.
    import json

    from experiments import benchmark_train

    args = ["--config", os.path.join(bench.ROOT, "configs", "test_tiny.py"), "--size", "64"]
    args += ["--batch", "2", "--steps", "1", "--rounds", "2", "--classes", "3"]
    assert benchmark_train.main(args + ["--torch_dir", TORCH_DIR]) == 0
    result = json.loads(capsys.readouterr().out)
    torch = result["torch"]
    assert torch["parameters"] == result["parameters"] > 0
    assert torch["step_s"] > 0 and torch["peak_memory_gb"] > 0
    # The ratio is of the unrounded medians; the printed times are rounded to 1 ms.
    ratio = result["torch_step_over_jax"]
    assert ratio > 0
    assert abs(ratio * result["step_s"] - torch["step_s"]) <= 6e-4 * (1 + ratio)
    rounds = result["torch_step_over_jax_by_round"]
    assert len(rounds) == 2 and all(r > 0 for r in rounds)
    # Each round's first step on each side is untimed (settle_step_s), the rest are timed.
    assert len(result["settle_step_s"]) == len(torch["settle_step_s"]) == 2
    assert len(result["step_times_s"]) == len(torch["step_times_s"]) == 2
    assert torch["dtype"] == "float32"
    # --dtype bfloat16: PyTorch under autocast, as the JAX side's mixed precision.
    args += ["--rounds", "1", "--dtype", "bfloat16"]
    assert benchmark_train.main(args + ["--torch_dir", TORCH_DIR]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["torch"]["dtype"] == "bfloat16" and result["torch"]["step_s"] > 0


@pytest.mark.slow
def test_conv_gradient_benchmark_covers_every_convolution(capsys):
    from experiments import benchmark_conv_gradients as conv_bench
    from yolov4_jax.models import specs, yolov4_tiny_layers

    argv = ["--model", "yolov4_tiny", "--size", "32", "--batch", "1", "--iters", "1"]
    assert conv_bench.main([*argv, "--rounds", "1", "--top", "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    convs = sum(isinstance(s, specs.Conv) for s in yolov4_tiny_layers())
    assert summary["convs"] == sum(r["count"] for r in rows) == convs
    for form in ("xla", "canonical"):
        total = sum(r[f"{form}_ms"] * r["count"] for r in rows)
        assert summary[f"total_{form}_ms"] == pytest.approx(total, abs=0.1) and total > 0
    # The first layer, 3x3 stride 2 on the 32x32 image.
    assert any(r["layer"] == "3x3/2 32x32x3->32" for r in rows)
    # --xla_checks prints what XLA compiled (internals, reported rather than asserted).
    assert conv_bench.main(["--xla_checks"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert set(checks["scan_dim_labels"]) == {"canonical", "xla"}
    assert all(checks["scan_dim_labels"].values())  # each form has gradient convolutions
    assert min(checks["after_temp_bytes"].values()) > 0


def test_timed_calls_times_each_call_and_counts_its_page_faults():
    import mmap
    import time

    from experiments.timing import timed_calls

    def call():  # 10 ms, and a fresh 1 MiB mapping written page by page
        time.sleep(0.01)
        memory = mmap.mmap(-1, 1 << 20)
        for offset in range(0, 1 << 20, mmap.PAGESIZE):
            memory[offset] = 1
        memory.close()

    faults = []
    times = timed_calls(call, 3, faults)
    assert len(times) == len(faults) == 3
    assert all(t >= 0.01 for t in times)  # the sleep at least (no upper bound: no timing test)
    assert all(f >= (1 << 20) // mmap.PAGESIZE // 2 for f in faults)
    assert timed_calls(call, 2) and timed_calls(call, 0) == []
