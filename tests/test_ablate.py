"""The ablation runner: runs, resume, failures, tables and plot."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import threading
import types

import pytest

from experiments import ablate, paper, plots, records, stats
from yolov4_jax.detection import losses
from yolov4_jax.models import factory
from yolov4_jax.training import optim

SWEEP = """
BASE = "configs/test_tiny.py"
SEEDS = (0, 1)


def sweep():
    return {
        "baseline": {},
        "giou": {"loss.box_loss": "giou"},
        "diverges": {"optim.learning_rate": 1e30, "optim.burn_in": 0},
    }
"""


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(tmp_path, tiny_data_dir, monkeypatch):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(SWEEP)
    workdir = tmp_path / "runs"
    extra = {
        "data.data_dir": str(tiny_data_dir),
        "train.detections_image": False,
        "train.eval_max_batches": 1,
        "optim.max_batches": 3,
    }
    table = ablate.run_sweep(str(sweep), str(workdir), extra=extra)
    by_name = {e["variant"]: e for e in table}
    assert by_name["baseline"]["runs"] == 2 and by_name["giou"]["runs"] == 2
    assert by_name["diverges"]["runs"] == 0 and by_name["diverges"]["failed"] == 2
    with open(workdir / "diverges" / "seed0" / "result.json") as f:
        assert "non-finite" in json.load(f)["error"]
    with open(workdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    base_ap50 = [float(r["AP50"]) for r in rows if r["variant"] == "baseline"]
    mean, std = ablate._mean_std(base_ap50)
    assert by_name["baseline"]["AP50"] == pytest.approx(mean)
    assert by_name["baseline"]["AP50_std"] == pytest.approx(std) or math.isnan(std)
    text = (workdir / "results.md").read_text()
    assert "| baseline | 2 |" in text and "(+2 failed)" in text
    assert os.path.getsize(workdir / "results.png") > 0

    # A second call finds every result and trains nothing.
    monkeypatch.setattr(ablate, "run_one", lambda *a: pytest.fail("should resume, not rerun"))
    again = ablate.run_sweep(str(sweep), str(workdir), extra=extra)
    assert [e["variant"] for e in again] == ["baseline", "giou", "diverges"]
    # --only and --seeds reruns keep the other variants' and seeds' results in the tables.
    only = ablate.run_sweep(str(sweep), str(workdir), extra=extra, only=["giou"], seeds=[0])
    assert [(e["variant"], e["runs"]) for e in only][:2] == [("baseline", 2), ("giou", 2)]
    assert "seeds [0, 1]" in (workdir / "results.md").read_text()


def test_bad_overrides_fail_before_training(tmp_path):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(SWEEP.replace('"loss.box_loss"', '"loss.box_los"'))
    with pytest.raises(KeyError, match="loss.box_los"):
        ablate.run_sweep(str(sweep), str(tmp_path / "runs"))
    with pytest.raises(KeyError, match="--only"):
        ablate.run_sweep(str(tmp_path / "sweep.py"), str(tmp_path / "r"), only=["nope"])
    sweep.write_text(SWEEP)
    with pytest.raises(ValueError, match="baseline: config.train.eval_split is empty"):
        ablate.run_sweep(str(sweep), str(tmp_path / "runs"), extra={"train.eval_split": ""})


@pytest.mark.parametrize(
    "name", ["bof_detector", "bos_detector", "activation", "augmentation", "bof_classifier"]
)
def test_committed_sweeps_build_their_configs(name):
    """Each variant's config carries its overrides and builds; the model-changing ones change
    the model's layers, the loss-changing ones the loss options the step will use."""
    base, seeds, variants = ablate.load_sweep(
        os.path.join(ablate.ROOT, "configs", "ablations", f"{name}.py")
    )
    first = next(iter(variants))  # the sweep's reference ("baseline", or e.g. "none")
    assert len(seeds) >= 1
    reference = ablate.make_config(base, variants[first], seeds[0], {})
    reference_layers = factory.model_layers(reference.model, num_classes=5)
    reference_loss = losses.loss_options(reference.loss)
    for variant, overrides in variants.items():
        config = ablate.make_config(base, overrides, seeds[0], {})
        for key, value in overrides.items():
            group, field = key.split(".")
            want = value(config) if callable(value) else value
            got = config[group][field]
            got = got.to_dict() if hasattr(got, "to_dict") else got
            assert json.dumps(got) == json.dumps(want), (variant, key)
        layers = factory.model_layers(config.model, num_classes=5)
        optim.make_optimizer(config.optim, global_batch_size=8, total_steps=100)
        changed = {k for k, v in overrides.items() if variants[first].get(k, object()) != v}
        if variant == first:
            continue
        touches_model = any(k.startswith("model.") for k in changed)
        if touches_model:
            assert layers != reference_layers, variant
        if any(k.startswith("loss.") for k in changed):
            assert losses.loss_options(config.loss) != reference_loss, variant


def test_callable_overrides_follow_set():
    """A callable override sees --set's values: the steps schedule at fractions of the run."""
    path = os.path.join(ablate.ROOT, "configs", "ablations", "bof_detector.py")
    base, _, variants = ablate.load_sweep(path)
    config = ablate.make_config(base, variants["steps_schedule"], 0, {"optim.max_batches": 300})
    assert (config.optim.schedule, tuple(config.optim.steps)) == ("steps", (240, 270))
    config = ablate.make_config(base, variants["steps_schedule"], 0, {})
    assert tuple(config.optim.steps) == (1920, 2160)  # sweep_detector.py's 2400 updates
    assert "max_batches" in json.dumps(variants["steps_schedule"], default=ablate._describe)


def test_mean_std():
    assert ablate._mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = ablate._mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(v) for v in ablate._mean_std([]))


@pytest.mark.slow
def test_classifier_sweep_reports_top1_and_top5(tmp_path, tiny_cls_data_dir):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(
        'BASE = "configs/test_tiny_classifier.py"\nMETRICS = ("top1", "top5")\n'
        'def sweep():\n    return {"none": {"data.cutmix": False}, "cutmix": {}}\n'
    )
    extra = {"data.data_dir": str(tiny_cls_data_dir), "optim.max_batches": 2}
    table = ablate.run_sweep(str(sweep), str(tmp_path / "runs"), extra=extra)
    assert [e["variant"] for e in table] == ["none", "cutmix"]
    assert all(0.0 <= e["top1"] <= e["top5"] <= 1.0 for e in table)
    text = (tmp_path / "runs" / "results.md").read_text()
    assert "| variant | runs | top1 | Δtop1 | top5 | Δtop5 | min/run |" in text
    with open(tmp_path / "runs" / "results.csv") as f:
        assert next(csv.reader(f))[:5] == ["variant", "seed", "status", "top1", "top5"]


def test_an_interrupted_run_stops_the_sweep_without_a_result(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(SWEEP)
    calls = []

    def preempted(config, run_dir):
        calls.append(run_dir)
        return {"status": "interrupted", "error": "", "wall_s": 1.0}

    monkeypatch.setattr(ablate, "run_one", preempted)
    with pytest.raises(ablate.Interrupted, match="baseline seed 0"):
        ablate.run_sweep(str(sweep), str(tmp_path / "runs"))
    assert len(calls) == 1  # stopped at the first interrupted run
    assert not (tmp_path / "runs" / "baseline" / "seed0" / "result.json").exists()
    # The command exits 143, as a process SIGTERM ended, so a script of sweeps stops too.
    argv = ["--sweep", str(sweep), "--workdir", str(tmp_path / "runs")]
    assert ablate.main(argv) == 143 and len(calls) == 2


def test_wall_time_is_summed_over_resumes_and_survives_a_killed_process(tmp_path):
    clock = [100.0]
    run = str(tmp_path / "run")
    # A process killed outright never exits its stopwatch: its last heartbeat is what stays.
    killed = records.Stopwatch(run, every=0.01, clock=lambda: clock[0]).__enter__()
    clock[0] = 160.0
    path = tmp_path / "run" / records.WALL_FILE
    for _ in range(500):
        if json.loads(path.read_text())["wall_s"] == 60.0:
            break
        threading.Event().wait(0.01)
    killed._stop.set()
    killed._thread.join()
    assert json.loads(path.read_text())["wall_s"] == 60.0
    # The resumed process adds its own 30 s; the total stops at its exit.
    clock[0] = 1000.0
    with records.Stopwatch(run, every=3600, clock=lambda: clock[0]) as resumed:
        clock[0] = 1030.0
    clock[0] = 5000.0
    assert resumed.total() == 90.0 and json.loads(path.read_text())["wall_s"] == 90.0


def test_a_resumed_runs_record_counts_the_earlier_processes_time(tmp_path, monkeypatch):
    from yolov4_jax import training

    run = tmp_path / "run"
    run.mkdir()
    (run / records.WALL_FILE).write_text(json.dumps({"wall_s": 500.0}))  # before a SIGKILL
    monkeypatch.setattr(training, "train_and_evaluate", lambda config, run_dir: {"eval/AP": 0.3})
    result = ablate.run_one(None, str(run))
    assert result["status"] == "ok" and result["AP"] == 0.3
    assert 500.0 <= result["wall_s"] < 510.0


def test_t_quantiles_and_intervals_by_hand():
    # Student's t 97.5% quantiles (tables): dof 1, 2, 4, 30; beyond, Cornish-Fisher.
    assert stats.t975(1) == 12.706 and stats.t975(2) == 4.303 and stats.t975(4) == 2.776
    assert stats.t975(40) == pytest.approx(2.021, abs=1e-3)
    assert stats.t975(120) == pytest.approx(1.980, abs=1e-3)
    assert math.isnan(stats.t975(0))
    # mean 2, sd 1 (values 1, 2, 3): half-width 4.303 / sqrt(3).
    mean, half, n = stats.mean_ci([1.0, 2.0, 3.0, None, math.nan])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(stats.mean_ci([0.5])[1])
    # Paired over shared seeds only: differences .1, .2, .3 (seed 3 has no baseline).
    variant = {0: 0.6, 1: 0.7, 2: 0.8, 3: 0.9}
    baseline = {0: 0.5, 1: 0.5, 2: 0.5}
    diff, half, pairs = stats.paired_difference(variant, baseline)
    assert pairs == 3 and diff == pytest.approx(0.2)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert half == pytest.approx(0.2484, abs=1e-4) and not stats.excludes_zero(diff, half)
    assert stats.excludes_zero(0.3, 0.2484) and stats.excludes_zero(-0.3, 0.2484)
    assert not stats.excludes_zero(0.1, math.nan)


def test_reports_show_paired_differences_and_intervals(tmp_path):
    """A seed-to-seed shift shared by every variant cancels in the paired difference."""
    rows = []
    for seed, shift in enumerate((0.0, 0.2, -0.1)):
        for variant, effect in (("baseline", 0.0), ("better", 0.05), ("same", 0.0)):
            extra = 0.001 * seed if variant == "same" else 0.0
            ap = 0.3 + shift + effect + extra
            rows.append(
                {"variant": variant, "seed": seed, "status": "ok", "AP": ap, "AP50": ap,
                 "AP75": ap, "wall_s": 60.0}
            )  # fmt: skip
    table = ablate.summarise(rows, ["baseline", "better", "same"])
    better = table[1]
    assert better["AP_diff"] == pytest.approx(0.05) and better["AP_pairs"] == 3
    assert better["AP_diff_ci"] == pytest.approx(0.0, abs=1e-9)  # the shifts cancel
    assert better["AP_ci"] > 0.1  # unpaired, the seeds' spread swamps the effect
    ablate.write_reports(str(tmp_path), rows, table, "header")
    text = (tmp_path / "results.md").read_text()
    assert "| better | 3 | 0.383 ± " in text and "+0.050 ± 0.000 *" in text
    same_row = next(line for line in text.splitlines() if line.startswith("| same |"))
    assert "+0.001 ± " in same_row and " *" not in same_row.split("|")[4]
    assert "95% t interval" in text
    # 2 variants x 3 metrics = 6 paired intervals; "better" excludes zero in all 3.
    assert "3 of the 6 paired intervals exclude zero" in text and "about 0.3 would" in text


def test_summary_figure_shows_means_and_paired_differences(tmp_path):
    """The figure's lower panel holds each variant's paired difference with its interval,
    filled where the interval excludes zero; the upper one the means over seeds."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rows = []
    for seed, shift in enumerate((0.0, 0.2, -0.1)):
        for variant, effect, noise in (("baseline", 0, 0), ("better", 0.05, 0), ("same", 0, 1)):
            ap = 0.3 + shift + effect + noise * (0.01, -0.02, 0.01)[seed]
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "status": "ok",
                    "AP": ap,
                    "AP50": ap,
                    "wall_s": 1.0,
                }
            )
    table = ablate.summarise(rows, ["baseline", "better", "same"], metrics=("AP", "AP50"))
    fig = Figure()
    plots.draw_summary(fig, table, rows, metrics=("AP", "AP50"))
    means_ax, diffs_ax = fig.axes
    heights = sorted(round(bar.get_height(), 4) for bar in means_ax.patches)
    assert heights == [0.3333, 0.3333, 0.3333, 0.3333, 0.3833, 0.3833]  # by hand: 0.3 + 0.1/3
    points = {}
    for container in diffs_ax.containers:
        line = container.lines[0]
        x, y = line.get_xdata()[0], line.get_ydata()[0]
        points[round(float(x), 1)] = (round(float(y), 4), line.get_markerfacecolor() != "white")
    # AP50 at x - 0.2, AP at x + 0.2; "better" +0.05 exactly (filled), "same" 0 ± 0.043 (hollow).
    assert points == {0.8: (0.05, True), 1.2: (0.05, True), 1.8: (0.0, False), 2.2: (0.0, False)}
    ablate.write_reports(str(tmp_path), rows, table, "header", metrics=("AP", "AP50"))
    assert (tmp_path / "results.png").stat().st_size > 0


def test_summary_figure_compares_a_variant_with_its_named_control():
    """Where the sweep's PAPER names another control (MixUp against no Mosaic), the lower panel
    shows the paired difference from that control, as results.md's verdict does, and its tick
    says so."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rows = []
    for seed, shift in enumerate((0.0, 0.2, -0.1)):
        for variant, effect, noise in (("baseline", 0, 0), ("same", 0, 1), ("better", 0.05, 0)):
            ap = 0.3 + shift + effect + noise * (0.01, -0.02, 0.01)[seed]
            rows.append({"variant": variant, "seed": seed, "status": "ok", "AP": ap, "wall_s": 1})
    table = ablate.summarise(rows, ["baseline", "same", "better"], metrics=("AP",))
    fig = Figure()
    plots.draw_summary(fig, table, rows, metrics=("AP",), controls={"better": "same"})
    _, diffs_ax = fig.axes
    points = {}
    for container in diffs_ax.containers:
        line, (bar,) = container.lines[0], container.lines[2]
        segment = bar.get_segments()[0]
        half = (segment[1][1] - segment[0][1]) / 2
        points[round(float(line.get_xdata()[0]))] = (
            round(float(line.get_ydata()[0]), 4),
            round(float(half), 3),
        )
    # By hand, better - same per seed: 0.04, 0.07, 0.04; mean 0.05, sd 0.01732,
    # half-width 4.303 * 0.01732 / sqrt(3) = 0.043 (against the baseline it is 0.05 exactly).
    assert points == {1: (0.0, 0.043), 2: (0.05, 0.043)}
    labels = [t.get_text() for t in diffs_ax.get_xticklabels()]
    assert labels == ["baseline", "same", "better\n(vs same)"]


def test_slurm_array_variables_choose_the_task():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert ablate.task_from_environment(None, None, env) == (2, 4)
    assert ablate.task_from_environment(0, 2, env) == (0, 2)  # the flags win
    assert ablate.task_from_environment(None, None, {}) == (0, 1)


@pytest.mark.slow
def test_sharded_tasks_as_separate_processes_then_collect(tmp_path, tiny_data_dir):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(
        SWEEP.replace(
            '        "diverges": {"optim.learning_rate": 1e30, "optim.burn_in": 0},\n', ""
        )
    )
    workdir = tmp_path / "runs"
    sets = ["data.data_dir=" + json.dumps(str(tiny_data_dir)), "train.detections_image=false"]
    sets += ["train.eval_max_batches=1", "optim.max_batches=2", "train.eval_every=1"]
    argv = [sys.executable, "-m", "experiments.ablate", "--sweep", str(sweep)]
    argv += ["--workdir", str(workdir)] + [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    tasks = [
        subprocess.Popen(argv + ["--task-index", str(i), "--num-tasks", "2"], cwd=ablate.ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    # Four pairs, in sweep order: task 0 ran (baseline, 0), (giou, 0); task 1 the seed-1 runs.
    assert "baseline seed 0" in outputs[0] and "giou seed 0" in outputs[0]
    assert "baseline seed 1" in outputs[1] and "giou seed 1" in outputs[1]
    assert not (workdir / "results.md").exists()  # tasks leave the reports to --collect
    done = subprocess.run(argv + ["--collect"], cwd=ablate.ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (workdir / "results.md").read_text()
    assert "| baseline | 2 |" in text and "| giou | 2 |" in text and "ΔAP" in text
    assert (workdir / "curves.png").exists()
    assert plots.learning_curves(str(workdir), "giou", "AP50").keys() == {1, 2}


def test_paper_verdict_by_hand():
    # +0.030 ± 0.010 excludes zero: the paper's "+" agrees, its "-" is the opposite.
    assert paper.verdict(0.03, 0.01, "+") == "agrees"
    assert paper.verdict(0.03, 0.01, "-") == "opposite"
    assert paper.verdict(-0.03, 0.01, "-") == "agrees"
    # -0.005 ± 0.010 contains zero; one seed has no interval (nan), so nothing is resolved.
    assert paper.verdict(-0.005, 0.01, "+") == "within noise"
    assert paper.verdict(0.05, math.nan, "+") == "within noise"
    assert paper.verdict(math.nan, math.nan, "+") == "—"
    # The paper's "0" (no difference): a resolved difference differs, noise is consistent.
    assert paper.verdict(0.03, 0.01, "0") == "differs"
    assert paper.verdict(0.005, 0.01, "0") == "consistent"
    # "?": the paper names the item but reports no direction; the measured one is named.
    assert paper.verdict(0.03, 0.01, "?") == "higher"
    assert paper.verdict(-0.03, 0.01, "?") == "lower"
    assert paper.verdict(0.005, 0.01, "?") == "within noise"


def test_paper_table_in_results_md(tmp_path):
    aps = {
        "baseline": (0.30, 0.32, 0.31),
        "no_mosaic": (0.25, 0.26, 0.27),
        "cmbn": (0.28, 0.28, 0.29),
    }
    rows = [
        {"variant": v, "seed": s, "status": "ok", "AP": ap, "wall_s": 60.0}
        for v, values in aps.items()
        for s, ap in enumerate(values)
    ]
    table = ablate.summarise(rows, list(aps), ("AP",))
    entries = {"no_mosaic": ("-", "Table 4, M"), "cmbn": ("+", "Table 4, CBN", "no_mosaic")}
    module = types.SimpleNamespace(PAPER=entries)
    checked = paper.sweep_paper(module, "sweep.py", list(aps))
    ablate.write_reports(str(tmp_path), rows, table, "header", ("AP",), checked)
    text = (tmp_path / "results.md").read_text()
    # Paired differences -0.05, -0.06, -0.04: mean -0.05, sd 0.01, t(2) 4.303 -> ± 0.025.
    assert "| no_mosaic | baseline | - | Table 4, M | -0.050 ± 0.025 | agrees |" in text
    # cmbn against its control no_mosaic: .03, .02, .02: mean .0233, sd .00577 -> ± .0143
    # (against the baseline it would be -0.027, "opposite").
    assert "| cmbn | no_mosaic | + | Table 4, CBN | +0.023 ± 0.014 | agrees |" in text
    with pytest.raises(ValueError, match="PAPER"):
        paper.sweep_paper(types.SimpleNamespace(PAPER={"a": ("up", "")}), "bad.py", ["a"])
    with pytest.raises(ValueError, match=r"PAPER names no variant \['nope'\]"):
        paper.sweep_paper(
            types.SimpleNamespace(PAPER={"cmbn": ("+", "", "nope")}), "bad.py", list(aps)
        )


def test_runs_equal_to_another_sweeps_are_copied_not_retrained(tmp_path, monkeypatch):
    """augmentation's baseline and no_mosaic are bof_detector's: the same base, overrides, seed."""
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(SWEEP)
    second.write_text(
        SWEEP.replace('"giou": {"loss.box_loss": "giou"}', '"mse": {"loss.box_loss": "mse"}')
    )
    trained = []

    def fake_run(config, run_dir):
        trained.append(os.path.relpath(run_dir, tmp_path))
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 3, "eval/AP50": 0.5 + config.seed}) + "\n")
        failed = config.optim.learning_rate > 1
        return {"status": "failed" if failed else "ok", "error": "", "wall_s": 7.0,
                "AP": 0.1 * (config.seed + 1), "AP50": 0.5, "AP75": 0.1}  # fmt: skip

    monkeypatch.setattr(ablate, "run_one", fake_run)
    ablate.run_sweep(str(first), str(tmp_path / "a"), seeds=[0, 1])
    assert len(trained) == 6
    trained.clear()
    with pytest.raises(SystemExit):  # the flag's folder is checked
        ablate.main(["--sweep", str(second), "--workdir", str(tmp_path / "b"), "--reuse", "x"])
    reuse = [str(tmp_path / "a")]
    table = ablate.run_sweep(str(second), str(tmp_path / "b"), seeds=[0, 1], reuse=reuse)
    # mse is new; a failed run (diverges) is trained again, not copied.
    assert sorted(trained) == [
        "b/diverges/seed0", "b/diverges/seed1", "b/mse/seed0", "b/mse/seed1"
    ]  # fmt: skip
    copied = tmp_path / "b" / "baseline" / "seed1"
    with open(copied / "result.json") as f:
        record = json.load(f)
    assert record["variant"] == "baseline" and record["seed"] == 1
    assert record["AP"] == pytest.approx(0.2) and record["wall_s"] == 7.0
    assert record["reused_from"] == os.path.join("..", "..", "a", "baseline", "seed1")
    assert record["config"]["seed"] == 1 and record["config"]["optim"]["learning_rate"] < 1
    assert (copied / "metrics.jsonl").read_text() == (
        tmp_path / "a" / "baseline" / "seed1" / "metrics.jsonl"
    ).read_text()
    assert not (copied / "checkpoints").exists()
    assert table[0]["variant"] == "baseline" and table[0]["runs"] == 2
    with open(tmp_path / "b" / "results.csv") as f:
        assert "config" not in next(csv.reader(f))
    # A --set the other sweep's runs did not have makes the configs differ: nothing is copied.
    trained.clear()
    extra = {"optim.max_batches": 7}
    ablate.run_sweep(str(second), str(tmp_path / "c"), seeds=[0], extra=extra, reuse=reuse)
    assert "c/baseline/seed0" in trained
