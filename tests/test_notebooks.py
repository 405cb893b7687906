"""The notebooks run end to end with their small settings and produce what they show.

Each notebook is executed by nbclient in a kernel of this interpreter (a kernelspec written to a
temporary folder, so that no other installed `python3` kernel is picked up), from the
repository root, on CPU, with ``YOLOV4_NOTEBOOK_SMALL=1`` and the tiny embedded dataset.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow  # each notebook runs in a kernel of its own

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = "yolov4_jax_tests"
CELL_TIMEOUT_S = 300


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(
            f'{module} is missing ({e}): install the notebooks extra, pip install -e ".[notebooks]"'
        )


@pytest.fixture
def notebook_env(tmp_path, tiny_data_dir, monkeypatch):
    """The kernel's environment (it inherits os.environ): small settings, CPU, this Python."""
    kernelspec = _require("ipykernel.kernelspec")
    kernelspec.write_kernel_spec(str(tmp_path / "jupyter" / "kernels" / KERNEL))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("YOLOV4_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("YOLOV4_DATA_DIR", tiny_data_dir)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebooks' tempfile folders
    return monkeypatch


def run_notebook(name: str):
    """Executes notebooks/<name>.ipynb; returns it with its outputs (a cell error raises)."""
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": ROOT}},  # the kernel's working directory
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    return nb


def _text(nb) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream" and out.name == "stdout"
    )


def _num_images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def test_kernel_is_this_interpreter(notebook_env):
    kernelspec = _require("jupyter_client.kernelspec")
    spec = kernelspec.KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable


def test_data_and_augmentations(notebook_env):
    nb = run_notebook("01_data_and_augmentations")
    # The validation grid, seven single augmentations and the demo's recipe.
    assert _num_images(nb) == 9
    assert "num_classes=5" in _text(nb)


def test_train_then_detect_with_its_darknet_export(notebook_env, tmp_path):
    workdir = tmp_path / "train"
    notebook_env.setenv("YOLOV4_NOTEBOOK_WORKDIR", str(workdir))
    nb = run_notebook("02_train_on_embedded_data")
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train_steps = {r["step"] for r in records if "train/total" in r}
    for key in ("train/box", "train/obj", "train/cls"):
        assert all(key in r for r in records if "train/total" in r)
    eval_steps = {r["step"] for r in records if "eval/AP50" in r and "eval/AP" in r}
    assert train_steps == {2, 4} and eval_steps == {2, 4}  # two chunks, each evaluated
    assert (workdir / "detections.png").stat().st_size > 0
    assert _num_images(nb) >= 2  # the curves and detections.png

    nb = run_notebook("03_detect_with_darknet_weights")
    text = _text(nb)
    assert f"the best checkpoint of {workdir}" in text
    assert "outputs identical" in text
    assert text.count("validation_") == 4  # one line per detected image
    assert _num_images(nb) == 1


def test_ablation_results(notebook_env, tmp_path):
    results = tmp_path / "ablation"
    notebook_env.setenv("YOLOV4_ABLATION_DIR", str(results))
    nb = run_notebook("04_ablation_results")
    with open(results / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["variant"], r["seed"], r["status"]) for r in rows) == [
        ("baseline", "0", "ok"),
        ("baseline", "1", "ok"),
        ("no_mosaic", "0", "ok"),
        ("no_mosaic", "1", "ok"),
    ]
    assert _num_images(nb) == 2  # means and paired differences; the learning curves
    assert "AP50" in _text(nb) and "vs baseline" in _text(nb)
    # The committed sweeps follow, each with its table (more land as the sweeps run; v1 is
    # the superseded colour-cue sweeps, left out).
    sweeps = os.path.join(ROOT, "experiments", "results")
    committed = sorted(
        name
        for name in os.listdir(sweeps)
        if name != "v1" and os.path.exists(os.path.join(sweeps, name, "results.md"))
    )
    assert {"bof_classifier", "bof_detector"} <= set(committed)
    assert f"other sweeps shown: {', '.join(committed)}" in _text(nb)
    shown = [
        out["data"]["text/markdown"]
        for cell in nb.cells[-1:]
        for out in cell.outputs
        if out.output_type == "display_data" and "text/markdown" in out["data"]
    ]
    assert [text.split("\n")[0] for text in shown] == [f"### {name}" for name in committed]
    assert "Sweep `configs/ablations/bof_detector.py`" in shown[committed.index("bof_detector")]


def test_colab_quickstart_runs_its_non_colab_cells_on_cpu(notebook_env):
    """notebooks/05 (Colab, GPU or TPU runtime) with its small settings on the CPU: the setup
    cell's Colab branch (installing JAX for the runtime and the checkout) runs only on Colab;
    the demo, both exports and the StableHLO call run here as they do there."""
    nb = run_notebook("05_colab_quickstart")
    text = _text(nb)
    assert "runtime: " in text and "JAX package for it: jax" in text
    assert text.count("largest difference") == 2  # the onnx and stablehlo exports' checks
    assert "platforms: ('cpu', 'cuda', 'tpu')" in text
    assert "ran on " in text and "AP50 " in text
    assert _num_images(nb) == 1  # detections.png
