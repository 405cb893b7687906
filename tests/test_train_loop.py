"""The training loop: resume after a stop or a SIGTERM along the same trajectory, the
non-finite stop, the progress bar, metrics.jsonl and TensorBoard after a crash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
import tiny_runs

from configs import test_tiny
from yolov4_jax import detect, evaluate, training
from yolov4_jax.ops import cpu_gemm
from yolov4_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/total"] for r in rows if "train/total" in r}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_data_dir):
    """A 4-update run straight through, and the same run stopped at 2 and resumed."""
    root = tmp_path_factory.mktemp("resume")
    tiny_runs.run(root / "straight", tiny_data_dir)
    tiny_runs.run(root / "resumed", tiny_data_dir, stop_at_step=2)
    stopped = sorted(_losses(root / "resumed"))
    metrics = tiny_runs.run(root / "resumed", tiny_data_dir)
    return root, stopped, metrics


def test_a_run_stopped_early_returns_no_metrics(tmp_path, tiny_data_dir):
    """Even after evaluating on the way: the sweeps read metrics as "finished" (a SIGTERM at
    update 1139 of 2400 used to be recorded as a result, with the update-800 evaluation)."""
    metrics = tiny_runs.run(tmp_path, tiny_data_dir, stop_at_step=2, **{"train.eval_every": 1})
    assert metrics == {}
    with open(tmp_path / "metrics.jsonl") as f:
        evaluated = [json.loads(line)["step"] for line in f if "eval/AP50" in line]
    assert evaluated == [1, 2]


@pytest.mark.slow
def test_resumed_run_follows_the_uninterrupted_trajectory(resumed_run, tmp_path, tiny_data_dir):
    root, stopped, metrics = resumed_run
    assert stopped == [1, 2]
    straight, resumed = _losses(root / "straight"), _losses(root / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4]
    for k in straight:
        assert resumed[k] == pytest.approx(straight[k], rel=1e-5), (k, straight, resumed)
    assert "eval/AP50" in metrics
    assert os.path.isdir(root / "resumed" / "best")

    # detect and evaluate read the run's checkpoint and class names.
    image = tmp_path / "shapes.png"
    cv2.imwrite(str(image), np.full((50, 70, 3), 128, np.uint8))
    args = ["--workdir", str(root / "resumed"), "--out", str(tmp_path / "det"), str(image)]
    assert detect.main(args + ["--thresh", "0.0", "--max_detections", "3"]) == 0
    with open(tmp_path / "det" / "shapes.json") as f:
        found = json.load(f)
    assert len(found) == 3
    assert {d["name"] for d in found} <= {"circle", "square", "triangle", "cross", "ring"}
    assert all(0 <= d["box"][0] <= d["box"][2] <= 70 for d in found)
    config = test_tiny.get_config()
    config.data.data_dir = str(tiny_data_dir)
    again = evaluate.run(
        config, workdir=str(root / "resumed"), max_batches=1, thresh=0.005, nms_thresh=0.45
    )
    assert again["AP50"] == pytest.approx(metrics["eval/AP50"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_replaces_the_checkpoints_compute_with_onemkl(resumed_run, tiny_data_dir):
    """--dtype and --conv_algorithm replace the checkpoint's: oneMKL's float32 products give
    the same AP up to float32 rounding; its bfloat16 ones a finite one."""
    if not cpu_gemm.available():
        pytest.skip("oneMKL or a C++ compiler is missing (pip install mkl)")
    root, _, metrics = resumed_run
    config = test_tiny.get_config()
    config.data.data_dir = str(tiny_data_dir)
    run = dict(workdir=str(root / "resumed"), max_batches=1, thresh=0.005, nms_thresh=0.45)
    mkl = evaluate.run(config, conv_algorithm="mkl", **run)
    assert mkl["AP50"] == pytest.approx(metrics["eval/AP50"], abs=0.02)
    bf16 = evaluate.run(config, dtype="bfloat16", conv_algorithm="mkl", **run)
    assert np.isfinite(bf16["AP50"])


def test_non_finite_loss_stops_the_run_with_the_step(tmp_path, tiny_data_dir):
    """Checked every step (not only at logging steps), and never checkpointed."""
    overrides = {"optim.learning_rate": 1e30, "optim.burn_in": 0, "optim.max_batches": 8}
    overrides.update({"train.log_every": 100, "train.checkpoint_every": 1})
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+") as e:
        tiny_runs.run(tmp_path / "nan", tiny_data_dir, **overrides)
    bad = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    saved = sorted(int(p) for p in os.listdir(tmp_path / "nan" / "checkpoints") if p.isdigit())
    assert bad < 8 and saved == list(range(1, bad))[-2:], (bad, saved)  # the last two kept
    assert f"last good checkpoint is step {bad - 1}" in str(e.value)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_data_dir):
    import signal
    import time

    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [
        sys.executable,
        "-m",
        "yolov4_jax.main",
        "--config=configs/test_tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.optim.max_batches=100000",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=100000",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM" in stderr
    # The progress bar (tqdm, on stderr) shows the loss terms, the learning rate and images/s.
    bar = [line for line in re.split(r"[\r\n]", stderr) if "step/s" in line or "s/step" in line]
    assert bar and re.search(r"loss=[\d.e+-]+, box=.*obj=.*cls=.*lr=.*img/s=[\d.]+", bar[-1])
    last = max(_losses(workdir))
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [last]


def _sigterm_at_batch(monkeypatch, k):
    """A real SIGTERM to this process while the loop fetches its k-th batch of this run."""
    import signal

    calls = {"n": 0}
    real = training.global_batch

    def global_batch(local, mesh):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(local, mesh)

    monkeypatch.setattr(loop, "global_batch", global_batch)  # as the loop calls it
    return lambda: monkeypatch.setattr(loop, "global_batch", real)


def _saved_state(workdir):
    """The raw latest checkpoint's state tree (numpy) and its step."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, jax.tree.map(np.asarray, state["state"])


@pytest.mark.slow
def test_sigterm_resume_follows_the_trajectory_with_ema_cbn_and_sat(
    tmp_path, tiny_data_dir, monkeypatch
):
    """Interrupted by SIGTERM at step 3 and resumed: the same losses at every step and the
    same final state (weights, EMA, CBN history, BN statistics, optimizer, RNG) as a run that
    was never interrupted, with EMA, CBN and SAT (after burn-in, every micro-batch) on."""
    recipe = {
        "optim.max_batches": 6,
        "optim.burn_in": 1,
        "optim.ema": True,
        "optim.ema_warmup_steps": 0.0,
        "optim.ema_decay": 0.5,
        "train.bn": "cbn",
        "train.cbn_window": 3,
        "train.sat": True,
        "train.sat_prob": 1.0,
        "train.checkpoint_every": 100,
    }
    straight = tiny_runs.run(tmp_path / "straight", tiny_data_dir, **recipe)
    restore = _sigterm_at_batch(monkeypatch, 3)
    assert tiny_runs.run(tmp_path / "resumed", tiny_data_dir, **recipe) == {}  # stopped, no eval
    restore()
    assert sorted(_losses(tmp_path / "resumed")) == [1, 2, 3]
    assert _saved_state(tmp_path / "resumed")[0] == 3  # saved on SIGTERM, not by schedule
    resumed = tiny_runs.run(tmp_path / "resumed", tiny_data_dir, **recipe)

    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 7))
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a, b)
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert all(r["train/sat"] == 1.0 for r in rows if r["step"] > 1 and "train/sat" in r)
    assert resumed["eval/AP50"] == pytest.approx(straight["eval/AP50"], abs=1e-6)
    (sa, tree_a), (sb, tree_b) = (
        _saved_state(tmp_path / "straight"),
        _saved_state(tmp_path / "resumed"),
    )
    assert sa == sb == 6
    assert set(tree_a) == set(tree_b) >= {"params", "ema_params", "cbn", "batch_stats", "opt_state"}
    assert jax.tree.leaves(tree_a["ema_params"]) and jax.tree.leaves(tree_a["cbn"])
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), tree_a, tree_b
    )


def _tensorboard_scalars(logdir):
    """{tag: {step: value}} and the purge steps from tensorboardX event files."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars, purges = {}, []
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                purges.append(event.step)
                # TensorBoard drops the earlier events at or after a START's step.
                for values in scalars.values():
                    for s in [s for s in values if s >= event.step]:
                        del values[s]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, purges


@pytest.mark.slow
def test_metrics_are_written_once_per_step_after_a_crash(tmp_path, tiny_data_dir):
    """A run killed after logging steps past its last checkpoint: the resumed run drops those
    rows and rewrites them, in metrics.jsonl and (by a purge) in TensorBoard."""
    workdir = tmp_path / "run"
    tiny_runs.run(workdir, tiny_data_dir, stop_at_step=2)
    # What a SIGKILL at step 4 leaves: rows for steps 3 and 4 beyond checkpoint 2, the last
    # one cut short.
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "train/total": 123.0}) + "\n")
        f.write('{"step": 4, "train/tot')
    tiny_runs.run(workdir, tiny_data_dir)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_steps = [r["step"] for r in rows if "train/total" in r]
    assert train_steps == [1, 2, 3, 4]
    assert 123.0 not in {r["train/total"] for r in rows if "train/total" in r}
    assert [r["step"] for r in rows if "eval/AP50" in r] == [4]

    scalars, purges = _tensorboard_scalars(workdir / "tensorboard")
    assert purges[-1] == 3
    jsonl = {r["step"]: r["train/total"] for r in rows if "train/total" in r}
    assert sorted(scalars["train/total"]) == [1, 2, 3, 4]
    for step, value in jsonl.items():
        assert scalars["train/total"][step] == pytest.approx(value, rel=1e-6)
    assert {"train/box", "train/obj", "train/cls", "train/lr", "eval/AP50"} <= set(scalars)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"optim.learning_rate": -0.01}, "config.optim.learning_rate=-0.01: expected a positive"),
        ({"optim.max_batches": 0}, "config.optim.max_batches=0: expected at least 1"),
        ({"data.batch_size": 0}, "config.data.batch_size=0: expected a positive"),
        ({"data.batch_size": 7}, r"batch_size=7 must be divisible by config.optim.subdivisions"),
        ({"data.image_size": 80}, "config.data.image_size=80: expected a positive multiple"),
        ({"data.eval_image_size": 48}, "config.data.eval_image_size=48: expected"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(
    tmp_path, tiny_data_dir, override, match
):
    """Checked before the workdir is created or a step compiled (a negative learning rate
    used to train silently; image_size 80 failed inside JAX at the first step)."""
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        tiny_runs.run(workdir, tiny_data_dir, **override)
    assert not workdir.exists()
