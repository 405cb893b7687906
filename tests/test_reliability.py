"""Faults and bad inputs a run must survive (docs/reliability.md): a dataset without the
evaluation split, a failed restart, damaged checkpoints, leaked shared memory, and the programs'
one-line errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import pytest
import tiny_runs

from yolov4_jax import ConfigError, data
from yolov4_jax.models import factory
from yolov4_jax.training import checkpoints, loop, optim, tasks
from yolov4_jax.training.state import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(workdir) -> dict[str, str]:
    """{relative path: content hash} of every file under ``workdir``."""
    found = {}
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
    return found


def _steps(folder) -> list[int]:
    return sorted(int(p) for p in os.listdir(folder) if p.isdigit())


# 1. Splits: checked before anything is written; no evaluation when the config says so.


def test_a_missing_evaluation_split_is_refused_before_anything_is_written(
    tmp_path, tiny_data_dir, caplog
):
    workdir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        with pytest.raises(ConfigError, match=r"eval_split='test'.*no such split.*--val-fraction"):
            tiny_runs.run(workdir, tiny_data_dir, **{"train.eval_split": "test"})
    assert not workdir.exists()
    # config.model.num_classes (80) is not silently replaced by the dataset's 5 classes.
    assert "predicts the 5 classes of yolov4_synthetic (config.model.num_classes=80" in (
        caplog.text
    )


def test_training_without_evaluation_saves_the_final_step(tmp_path, tiny_data_dir, monkeypatch):
    """eval_split='' trains to the end without evaluating, and the last step is saved even
    off the checkpoint schedule; detect --workdir can load the run (no best/ checkpoint)."""

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated without an evaluation split")

    monkeypatch.setattr(tasks.DetectionTask, "evaluate", no_evaluation)
    workdir = tmp_path / "run"
    overrides = {"train.eval_split": "", "optim.max_batches": 3, "train.checkpoint_every": 100}
    assert tiny_runs.run(workdir, tiny_data_dir, **overrides) == {}
    assert _steps(workdir / "checkpoints") == [3]
    _, model, variables, names = checkpoints.load_for_inference(str(workdir))
    assert len(names) == 5 and jax.tree.leaves(variables)


def test_the_final_step_is_saved_before_evaluation(tmp_path, tiny_data_dir, monkeypatch):
    """An evaluation that fails at the end loses no update: the final step is on disk."""

    def failing(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(tasks.DetectionTask, "evaluate", failing)
    workdir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        tiny_runs.run(
            workdir, tiny_data_dir, **{"optim.max_batches": 3, "train.checkpoint_every": 100}
        )
    assert _steps(workdir / "checkpoints") == [3]


# 2. A workdir changes only once its run is known to start.


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data_dir):
    """A 3-update run evaluated and saved at every step (checkpoints 2 and 3 kept)."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    overrides = {"optim.max_batches": 3, "train.checkpoint_every": 1, "train.eval_every": 1}
    tiny_runs.run(workdir, tiny_data_dir, **overrides)
    return workdir


def test_two_checkpoints_are_kept(finished_run):
    assert _steps(finished_run / "checkpoints") == [2, 3]
    assert len(_steps(finished_run / "best")) == 1


def test_a_restart_that_cannot_resume_leaves_the_workdir_as_it_was(
    finished_run, tmp_path, tiny_data_dir
):
    """Another copy of the dataset (its data position does not fit): one-line error, and
    config.json, dataset.json, metrics and checkpoints untouched (they used to be rewritten
    before the restore, leaving a workdir detect could no longer load)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    other_data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, other_data)
    before = _snapshot(workdir)
    with pytest.raises(checkpoints.CheckpointError, match="data position does not fit") as e:
        tiny_runs.run(workdir, other_data, **{"optim.max_batches": 5})
    assert "\n" not in str(e.value)
    assert _snapshot(workdir) == before


def test_a_workdir_of_another_dataset_is_refused_before_anything_is_written(
    tmp_path, tiny_data_dir
):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / "dataset.json", "w") as f:
        json.dump({"name": "other", "task": "detection", "class_names": ["a", "b"]}, f)
    before = _snapshot(workdir)
    with pytest.raises(ConfigError, match=r"run on 'other' \(2 classes\).*new --workdir"):
        tiny_runs.run(workdir, tiny_data_dir)
    assert _snapshot(workdir) == before


def test_a_new_workdir_is_removed_when_the_run_fails_before_its_first_step(
    tmp_path, tiny_data_dir, monkeypatch
):
    def failing_step(*args, **kwargs):
        raise RuntimeError("compilation failed")

    monkeypatch.setattr(loop, "make_train_step", failing_step)
    workdir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="compilation failed"):
        tiny_runs.run(workdir, tiny_data_dir)
    assert not workdir.exists()


# 3. Damaged checkpoints: one line naming the folder; the fallback only when allowed.


def _template(data_dir):
    """(state, train iterator) of the test_tiny run, as the loop builds them."""
    config = tiny_runs.config(data_dir)
    info = data.dataset_info(config)
    model = factory.create_model(config.model, num_classes=info.num_classes)
    config = data.with_head_augmentation(config, model.heads)
    tx, _ = optim.make_optimizer(
        config.optim, global_batch_size=config.data.batch_size, total_steps=3
    )
    state = create_train_state(model, config, tx, jax.random.PRNGKey(0))
    iterator = data.create_train_iterator(config, seed=0, batch_multiple=2)
    return state, iterator


def _largest_file(folder):
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_file(os.path.join(step_dir, "state"))
    os.truncate(path, 100)


def _empty(step_dir):
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)


CORRUPTIONS = {
    "truncated data file": (_truncate, r"cannot be read \(OUT_OF_RANGE: "),
    "deleted metadata": (
        lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
        r"state/_METADATA missing",
    ),
    "deleted manifest": (
        lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
        r"state/manifest.ocdbt missing",
    ),
    "emptied step folder": (_empty, r"the checkpoint folder is empty"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_damaged_latest_checkpoint_is_one_line_and_the_fallback_is_opt_in(
    finished_run, tmp_path, tiny_data_dir, kind
):
    corrupt, reason = CORRUPTIONS[kind]
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    latest = os.path.join(workdir, "checkpoints", "3")
    corrupt(latest)
    state, iterator = _template(tiny_data_dir)
    ckpt = checkpoints.Checkpointer(str(workdir))
    try:
        with pytest.raises(checkpoints.CheckpointError) as e:
            ckpt.restore_latest(state, iterator)
        message = str(e.value)
        assert "\n" not in message and message.startswith(latest + ": "), message
        assert "restore_fallback=True" in message
        assert re.search(reason, message), message
        restored = ckpt.restore_latest(state, iterator, fallback=True)
        assert int(restored.step) == 2
    finally:
        ckpt.close()
        data.close_iterator(iterator)


def test_the_fallback_reaches_best_when_every_latest_checkpoint_is_damaged(
    finished_run, tmp_path, tiny_data_dir
):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    for step in (2, 3):
        _truncate(os.path.join(workdir, "checkpoints", str(step)))
    (best,) = _steps(workdir / "best")
    state, iterator = _template(tiny_data_dir)
    ckpt = checkpoints.Checkpointer(str(workdir))
    try:
        restored = ckpt.restore_latest(state, iterator, fallback=True)
        assert int(restored.step) == best
        assert json.loads(iterator.get_state())  # the best checkpoint's data position
    finally:
        ckpt.close()
        data.close_iterator(iterator)


def test_a_checkpoint_of_another_model_names_the_parameter(finished_run, tmp_path, tiny_data_dir):
    """Not a damaged checkpoint, so no fallback: the first parameter that differs."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    with pytest.raises(checkpoints.CheckpointError, match=r"parameter .* in this run's model"):
        tiny_runs.run(
            workdir, tiny_data_dir, **{"model.width": 0.25, "train.restore_fallback": True}
        )


# 5. One error convention; shared memory released.


def _program(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _stderr_lines(stderr: str) -> list[str]:
    """stderr without absl's log lines (``I1207 06:00:00.000 ...``)."""
    return [line for line in stderr.splitlines() if not re.match(r"[IWE]\d{4} ", line)]


def test_main_prints_the_projects_errors_in_one_line(tmp_path, tiny_data_dir):
    done = _program(
        "yolov4_jax.main",
        "--config=configs/test_tiny.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.optim.learning_rate=-0.01",
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert _stderr_lines(done.stderr) == [
        "error: config.optim.learning_rate=-0.01: expected a positive number"
    ], done.stderr[-2000:]


def test_a_damaged_checkpoint_ends_main_in_one_line(finished_run, tmp_path, tiny_data_dir):
    """Not a 30-500-line orbax traceback ending in 'Event loop is closed' (also printed at
    exit, by the coroutines the failed read left behind)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    _truncate(os.path.join(workdir, "checkpoints", "3"))
    done = _program(
        "yolov4_jax.main",
        "--config=configs/test_tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.optim.max_batches=5",
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = _stderr_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {workdir}/checkpoints/3: "), lines[:40]


_LEFTOVER_TASK = """
import asyncio, gc, logging, os, sys
from yolov4_jax.training import checkpoints

# A coroutine defined in a file under FOLDER (as orbax's reads are).
path = os.path.join(sys.argv[1], "serialization.py")
os.makedirs(sys.argv[1], exist_ok=True)
namespace = {}
exec(compile(
    "import asyncio\\n"
    "async def read(fail):\\n"
    "    await asyncio.sleep(0 if fail else 60)\\n"
    "    raise OSError('OUT_OF_RANGE: short read')\\n", path, "exec"), namespace)
logging.basicConfig()
kept = []

async def gather_reads():
    tasks = [asyncio.ensure_future(namespace["read"](i == 0)) for i in range(2)]
    kept.extend(tasks)  # still referenced when the read fails
    await asyncio.gather(*tasks)

try:
    with checkpoints._QuietAsyncio():
        asyncio.new_event_loop().run_until_complete(gather_reads())
except OSError:
    print("error: the read failed", file=sys.stderr)
kept.clear()
gc.collect()  # the pending task is destroyed (and logged by asyncio) only now
"""


@pytest.mark.parametrize("folder, logged", [("orbax", False), ("elsewhere", True)])
def test_tasks_a_failed_read_abandons_are_not_logged_later(tmp_path, folder, logged):
    """The one-line checkpoint error stays one line even when orbax's abandoned read tasks are
    destroyed after the restore gave up (under CI's load they were, at exit: 487 lines of
    "Task was destroyed but it is pending!"); asyncio's other reports are kept."""
    script = tmp_path / "leftover.py"
    script.write_text(_LEFTOVER_TASK)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / folder)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines[0] == "error: the read failed"
    assert any("Task was destroyed but it is pending" in line for line in lines) == logged, lines


@pytest.mark.slow
def test_a_run_with_worker_processes_releases_its_shared_memory(tmp_path, tiny_data_dir):
    """grain's worker batches live in shared memory; a run that ends (with an evaluation cut
    short by eval_max_batches) leaves none for Python's resource tracker to warn about."""
    done = _program(
        "yolov4_jax.main",
        "--config=configs/test_tiny.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.data.workers=1",
        "--config.optim.max_batches=2",
        "--config.train.eval_max_batches=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked shared_memory" not in done.stderr
    assert os.path.exists(tmp_path / "run" / "detections.png")


def test_prepare_prints_its_summary_and_warns_of_no_boxes_and_no_validation_split(
    tmp_path, capsys, caplog
):
    """The per-kind problem counts are printed whatever logging is set up (a root handler
    already there used to hide them); a dataset without any box, and one without a
    validation split, are warnings."""
    import logging

    import cv2
    import numpy as np

    from yolov4_jax.data import prepare

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), np.full((32, 32, 3), 100 * i, np.uint8))
    coco = {
        "images": [
            {"id": i + 1, "file_name": f"{i}.png", "height": 32, "width": 32} for i in range(2)
        ],
        "annotations": [
            {"id": 1, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    root = logging.getLogger()
    handler = logging.NullHandler()  # as if a library had configured logging first
    root.addHandler(handler)
    try:
        args = ["--format", "coco", "--images", str(images), "--name", "empty"]
        args += ["--annotations", str(tmp_path / "instances.json")]
        args += ["--data-dir", str(tmp_path / "tfds"), "--skip-bad"]
        with caplog.at_level(logging.WARNING):
            assert prepare.main(args) == 0
    finally:
        root.removeHandler(handler)
    out = capsys.readouterr().out
    assert "problems {'unknown_image': 1}" in out, out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no image has a box" in w for w in warnings), warnings
    assert any("no validation split" in w for w in warnings), warnings
