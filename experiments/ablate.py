"""Ablation sweeps: a grid of config overrides x seeds, one workdir per run, a table and a plot.

    python -m experiments.ablate --sweep configs/ablations/bof_detector.py --workdir DIR \
        [--seeds 0,1,2] [--only baseline,no_mosaic] [--set optim.max_batches=200 ...] \
        [--task-index I --num-tasks N | --collect] [--reuse OTHER_DIR ...]

A sweep file is plain Python:

    BASE = "configs/demo.py"          # the config every variant starts from
    SEEDS = (0, 1, 2)                 # default seeds (config.seed)
    METRICS = ("AP", "AP50", "AP75")  # eval metrics of the table (classifiers: top1, top5)
    def sweep():                      # variant name -> {"group.field": value}
        return {"baseline": {}, "no_mosaic": {"data.mosaic": False}}
    PAPER = {"no_mosaic": ("-", "Table 4, M")}  # optional: the paper's direction per variant
                                      # (a third item names another control: experiments.paper)

Each (variant, seed) trains in ``DIR/<variant>/seed<k>/`` with `training.train_and_evaluate`.
Every variant runs the same seeds as the baseline (the first variant): a seed fixes the data
order and, where the architecture agrees, the initialisation, so differences are paired. A
finished run leaves ``result.json`` there and is skipped next time; an interrupted one resumes
from its checkpoints, so rerunning the command continues a partly finished sweep (a SIGTERM
saves the running run's checkpoint and ends the command with exit status 143, so a script of
sweeps stops too; the run's ``wall_s`` sums every process that trained it, `records.Stopwatch`).
A run that fails (for example a non-finite loss) is recorded with its error
and the sweep goes on.

The reports: ``DIR/results.csv`` (one row per run), ``DIR/results.md`` (per variant and metric
the mean over seeds with its 95% t interval, and the paired difference from the baseline with
its own 95% interval, marked * where that interval excludes zero; `experiments.stats`),
with ``PAPER``, a second table puts each variant's measured direction (first metric) beside the
paper's: "agrees" or "opposite" where the paired interval excludes zero, else "within noise";
``DIR/results.png`` (the same intervals: means above, paired differences below, each from
the variant's control where ``PAPER`` names one;
`experiments.plots`) and ``DIR/curves.png`` (each variant's evaluation
metric against updates, from its runs' metrics.jsonl: has the budget flattened the curve?).

On a batch system the runs are shared out: ``--task-index I --num-tasks N`` (or SLURM's
``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``) runs every N-th (variant, seed) pair from
the I-th, into the same DIR, and writes no report; ``--collect`` then writes the reports from
the finished runs without training. One process alone (N = 1) does both, as before.

Sweeps that share a base share runs: each ``result.json`` keeps the run's requested config, and
with ``--reuse OTHER_DIR`` a (variant, seed) whose config equals that of a finished run in the
other sweep's workdir is copied from there with its records, not trained again; its
``result.json`` says ``reused_from``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import paper as paper_lib  # noqa: E402
from experiments import plots, records, stats  # noqa: E402

METRICS = ("AP", "AP50", "AP75")
# The exit status of a sweep or search stopped by SIGTERM (as a shell reports a process the
# signal ended), so that a script running several (experiments/run_sweeps.sh) stops too.
INTERRUPTED_EXIT = 143


class Interrupted(Exception):
    """A run was stopped by SIGTERM (its checkpoint saved): rerun the same command to resume.
    Raised by `run_sweep` (after writing the reports) and `experiments.evolve.run_search`."""


def load_module(path: str):
    """Imports a config or sweep file by path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such sweep or config file")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_sweep_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_metrics(path: str) -> tuple[str, ...]:
    """The eval metrics a sweep file's table reports (``METRICS``; default AP, AP50, AP75)."""
    metrics = tuple(getattr(load_module(path), "METRICS", METRICS))
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ValueError(f"{path}: METRICS must be a non-empty tuple of eval metric names")
    return metrics


def sweep_paper(path: str, variants: Sequence[str] = ()) -> dict[str, paper_lib.Entry]:
    """A sweep file's ``PAPER`` (`experiments.paper`), checked against its ``variants``."""
    return paper_lib.sweep_paper(load_module(path), path, variants)


def load_sweep(path: str) -> tuple[str, tuple[int, ...], dict[str, dict[str, Any]]]:
    """(base config path, seeds, variants) of a sweep file, checked."""
    module = load_module(path)
    for attr in ("BASE", "sweep"):
        if not hasattr(module, attr):
            raise ValueError(f"{path}: a sweep file needs {attr} (see experiments/ablate.py)")
    variants = module.sweep()
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError(f"{path}: sweep() must return a non-empty dict name -> overrides")
    for name in variants:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{path}: variant name {name!r} must be a plain file name")
    base = module.BASE
    if not os.path.isabs(base):
        base = os.path.join(ROOT, base)
    return base, tuple(getattr(module, "SEEDS", (0,))), dict(variants)


def apply_overrides(config, overrides: Mapping[str, Any], source: str = "sweep"):
    """``{"group.field": value}`` onto a ConfigDict; an unknown field is an error."""
    for key, value in overrides.items():
        *groups, field = key.split(".")
        node = config
        for g in groups:
            if g not in node:
                raise KeyError(f"{source}: unknown config group {key!r}")
            node = node[g]
        if field not in node:
            raise KeyError(f"{source}: unknown config field {key!r}")
        node[field] = value
    return config


def make_config(base: str, overrides: Mapping[str, Any], seed: int, extra: Mapping[str, Any]):
    """The base config with the variant's overrides, then ``--set``'s, then the seed.

    A callable override value is called last with the config, so it can follow ``--set``: for
    example schedule steps at fractions of ``optim.max_batches``.
    """
    config = load_module(base).get_config()
    apply_overrides(config, {k: v for k, v in overrides.items() if not callable(v)})
    apply_overrides(config, extra, "--set")
    derived = {k: v(config) for k, v in overrides.items() if callable(v)}
    apply_overrides(config, derived)
    config.seed = seed
    return config


def run_one(config, run_dir: str) -> dict[str, Any]:
    """Trains one run (resuming if it was interrupted) and returns its result record."""
    from yolov4_jax import training

    with records.Stopwatch(run_dir) as watch:  # wall_s: summed over resumes
        try:
            metrics = training.train_and_evaluate(config, run_dir)
            # A finished run always evaluates; no metrics means it stopped early (SIGTERM).
            status, error = ("ok", "") if metrics else ("interrupted", "")
        except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
            metrics, status = {}, "failed"
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    return {
        "status": status,
        "error": error,
        "wall_s": round(watch.total(), 1),
        **{k.removeprefix("eval/"): v for k, v in metrics.items()},
    }


def _describe(value: Any) -> str:
    """A callable override in the results: its docstring, else its name."""
    return (getattr(value, "__doc__", None) or getattr(value, "__name__", repr(value))).strip()


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text in ("True", "False"):
            return text == "True"
        return text


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def collect(workdir: str, variants: Sequence[str]) -> list[dict[str, Any]]:
    """Every finished run's record under ``workdir``."""
    rows = []
    for variant in variants:
        folder = os.path.join(workdir, variant)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name, "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    rows.append(json.load(f))
    return rows


def summarise(
    rows: Sequence[Mapping[str, Any]],
    variants: Sequence[str],
    metrics: Sequence[str] = METRICS,
) -> list[dict[str, Any]]:
    """Per variant: runs, failures, and per metric the mean over seeds (``m``), its standard
    deviation (``m_std``) and 95% half-width (``m_ci``), and the paired difference from the
    first variant (``m_diff``, ``m_diff_ci``, over ``m_pairs`` shared seeds); minutes per run."""
    table = []
    by_seed: dict[str, dict[str, dict[int, float]]] = {}
    for variant in variants:
        ok = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
        by_seed[variant] = {m: {int(r["seed"]): r.get(m) for r in ok} for m in metrics}
    reference = next((v for v in variants if any(r["variant"] == v for r in rows)), None)
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        ok = [r for r in runs if r["status"] == "ok"]
        entry = {"variant": variant, "runs": len(ok), "failed": len(runs) - len(ok)}
        for m in metrics:
            values = [r.get(m) for r in ok]
            entry[m], entry[f"{m}_std"] = _mean_std(values)
            entry[f"{m}_ci"] = stats.mean_ci(values)[1]
            diff, half, pairs = stats.paired_difference(by_seed[variant][m], by_seed[reference][m])
            entry[f"{m}_diff"], entry[f"{m}_diff_ci"], entry[f"{m}_pairs"] = diff, half, pairs
        entry["minutes"] = _mean_std([r["wall_s"] / 60 for r in runs])[0]
        table.append(entry)
    return table


def write_reports(
    workdir: str,
    rows,
    table,
    header: str,
    metrics: Sequence[str] = METRICS,
    paper: Mapping[str, paper_lib.Entry] | None = None,
) -> None:
    keys = sorted({k for r in rows for k in r if not k.startswith("AP/") and k != "config"})
    first = ["variant", "seed", "status", *metrics, "wall_s"]
    fields = [k for k in first if k in keys] + [k for k in keys if k not in first]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    baseline = table[0]["variant"] if table else "baseline"
    cols = " | ".join(f"{m} | Δ{m}" for m in metrics)
    lines = [
        header,
        "",
        f"| variant | runs | {cols} | min/run |",
        "|---" * (2 * len(metrics) + 3) + "|",
    ]
    for e in table:
        runs = f"{e['runs']}" + (f" (+{e['failed']} failed)" if e["failed"] else "")
        cells = []
        for m in metrics:
            cells.append(stats.format_interval(e[m], e[f"{m}_ci"]))
            if e["variant"] == baseline:
                cells.append("")
                continue
            diff = stats.format_interval(e[f"{m}_diff"], e[f"{m}_diff_ci"], signed=True)
            mark = " *" if stats.excludes_zero(e[f"{m}_diff"], e[f"{m}_diff_ci"]) else ""
            cells.append(diff + mark)
        lines.append(f"| {e['variant']} | {runs} | {' | '.join(cells)} | {e['minutes']:.1f} |")
    lines += [
        "",
        "Mean over seeds ± the half-width of its 95% t interval (validation split); Δ: the paired "
        f"difference from `{baseline}` over the seeds both ran, ± its 95% t interval; * where "
        "that interval excludes zero. No interval with one seed.",
    ]
    intervals = [
        (e[f"{m}_diff"], e[f"{m}_diff_ci"])
        for e in table[1:]
        for m in metrics
        if not math.isnan(e[f"{m}_diff_ci"])
    ]
    if intervals:
        marked = sum(stats.excludes_zero(*i) for i in intervals)
        lines += [
            "",
            f"{marked} of the {len(intervals)} paired intervals exclude zero; were no variant to "
            f"change anything, about {0.05 * len(intervals):.1f} would by chance (5% each), so a "
            "lone * is weak evidence.",
        ]
    lines += paper_lib.lines(table, rows, metrics[0], paper or {})
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots.write_summary(workdir, table, rows, metrics, paper_lib.controls(paper or {}))
    plots.write_curves(
        workdir, [e["variant"] for e in table], metrics[1] if len(metrics) > 1 else metrics[0]
    )


def run_sweep(
    sweep_path: str,
    workdir: str,
    *,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    collect_only: bool = False,
    reuse: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Runs (or resumes) the sweep's variant x seed pairs of task ``task_index`` of
    ``num_tasks`` (every ``num_tasks``-th pair from the ``task_index``-th, in sweep order) and
    returns the summary table; with ``collect_only`` runs nothing and writes the reports;
    ``reuse``: other sweeps' workdirs whose equal finished runs are copied
    (`records.find_reusable`)."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in [0, {num_tasks})")
    base, default_seeds, variants = load_sweep(sweep_path)
    metrics = sweep_metrics(sweep_path)
    paper = sweep_paper(sweep_path, list(variants))
    names = list(variants)  # the tables cover every variant with finished runs, not just --only
    if only:
        unknown = sorted(set(only) - set(variants))
        if unknown:
            raise KeyError(f"--only {unknown}: not in {sweep_path} ({sorted(variants)})")
        variants = {k: v for k, v in variants.items() if k in only}
    seeds = tuple(seeds) if seeds else default_seeds
    extra = dict(extra or {})
    os.makedirs(workdir, exist_ok=True)
    # Fail on a bad override before any training.
    configs = {
        (name, seed): make_config(base, overrides, seed, extra)
        for name, overrides in variants.items()
        for seed in seeds
    }
    for (name, _), config in configs.items():
        if not config.train.eval_split:
            # A run that evaluates nothing has no result: it would read as interrupted forever.
            raise ValueError(
                f"{name}: config.train.eval_split is empty; a sweep compares evaluations"
            )

    def report() -> list[dict[str, Any]]:
        rows = collect(workdir, names)
        found = sorted({r["seed"] for r in rows})
        header = (
            f"Sweep `{os.path.relpath(sweep_path, ROOT)}` from `{os.path.relpath(base, ROOT)}`, "
            f"seeds {found}" + (f", with {extra}" if extra else "")
        )
        table = summarise(rows, names, metrics)
        write_reports(workdir, rows, table, header, metrics, paper)
        return table

    if collect_only:
        return report()
    for k, ((name, seed), config) in enumerate(configs.items()):
        if k % num_tasks != task_index:
            continue
        run_dir = os.path.join(workdir, name, f"seed{seed}")
        if os.path.exists(os.path.join(run_dir, "result.json")):
            print(f"[ablate] {name} seed {seed}: done, skipped", flush=True)
            continue
        overrides = json.dumps(variants[name], default=_describe)
        record = {"variant": name, "seed": seed, "overrides": overrides}
        source = records.find_reusable(config, reuse) if reuse else None
        if source and not os.path.exists(run_dir):
            print(f"[ablate] {name} seed {seed}: the same run as {source}, copied", flush=True)
            records.copy_run(source, run_dir, record)
        else:
            print(f"[ablate] {name} seed {seed}: {dict(variants[name])}", flush=True)
            result = run_one(config, run_dir)
            if result["status"] == "interrupted":
                if num_tasks == 1:
                    report()
                raise Interrupted(f"{name} seed {seed} in {run_dir}")
            record.update(result)
            records.write_result(run_dir, {**record, "config": records.config_record(config)})
        if num_tasks == 1:
            report()
    if num_tasks > 1:  # concurrent tasks leave the reports to --collect
        return summarise(collect(workdir, names), names, metrics)
    return report()


def task_from_environment(
    task_index: int | None, num_tasks: int | None, env: Mapping[str, str] = os.environ
) -> tuple[int, int]:
    """(index, count) of this task: the flags, else a SLURM job array's, else (0, 1)."""
    if task_index is None and "SLURM_ARRAY_TASK_ID" in env:
        task_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    if num_tasks is None and "SLURM_ARRAY_TASK_COUNT" in env:
        num_tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
    return (task_index or 0), (num_tasks or 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", required=True, help="sweep file (configs/ablations/*.py)")
    parser.add_argument("--workdir", required=True, help="folder for the runs and the tables")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the sweep's SEEDS)")
    parser.add_argument("--only", help="comma-separated variants to run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="override for every run, e.g. optim.max_batches=200 (JSON values)",
    )
    parser.add_argument(
        "--task-index", "--task_index", type=int, help="this task's index (SLURM_ARRAY_TASK_ID)"
    )
    parser.add_argument(
        "--num-tasks", "--num_tasks", type=int, help="tasks sharing the sweep (SLURM's count)"
    )
    parser.add_argument(
        "--collect", action="store_true", help="write the reports from finished runs; train none"
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="OTHER_DIR",
        help="another sweep's workdir: runs equal to its finished ones are copied, not trained",
    )
    args = parser.parse_args(argv)
    for other in args.reuse:
        if not os.path.isdir(other):
            parser.error(f"--reuse {other}: not a folder")
    task_index, num_tasks = task_from_environment(args.task_index, args.num_tasks)
    extra = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected GROUP.FIELD=VALUE")
        key, value = item.split("=", 1)
        extra[key] = _parse_value(value)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    only = args.only.split(",") if args.only else None
    try:
        table = run_sweep(
            args.sweep,
            args.workdir,
            seeds=seeds,
            only=only,
            extra=extra,
            task_index=task_index,
            num_tasks=num_tasks,
            collect_only=args.collect,
            reuse=args.reuse,
        )
    except Interrupted as e:
        print(f"[ablate] interrupted: {e}; rerun the same command to resume", flush=True)
        return INTERRUPTED_EXIT
    if num_tasks == 1 or args.collect:
        with open(os.path.join(args.workdir, "results.md")) as f:
            print(f.read())
    return 0 if all(e["failed"] == 0 for e in table) else 1


if __name__ == "__main__":
    sys.exit(main())
