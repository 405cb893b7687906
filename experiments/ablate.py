"""Ablation sweeps: a grid of config overrides x seeds, one workdir per run, a table and a plot.

    python -m experiments.ablate --sweep configs/ablations/bof_detector.py --workdir DIR \
        [--seeds 0,1,2] [--only baseline,no_mosaic] [--set optim.max_batches=200 ...]

A sweep file is plain Python:

    BASE = "configs/demo.py"          # the config every variant starts from
    SEEDS = (0, 1, 2)                 # default seeds (config.seed)
    METRICS = ("AP", "AP50", "AP75")  # eval metrics of the table (classifiers: top1, top5)
    def sweep():                      # variant name -> {"group.field": value}
        return {"baseline": {}, "no_mosaic": {"data.mosaic": False}}

Each (variant, seed) trains in ``DIR/<variant>/seed<k>/`` with `training.train_and_evaluate` (in
this process, one after another). A finished run leaves ``result.json`` there and is skipped
next time; an interrupted one resumes from its checkpoints, so rerunning the command continues
a partly finished sweep. A run that fails (for example a non-finite loss) is recorded with its
error and the sweep goes on. After every run the sweep writes ``DIR/results.csv`` (one row per
run), ``DIR/results.md`` (mean and standard deviation over seeds of AP and AP50, minutes per
run) and ``DIR/results.png`` (the first two metrics per variant with the spread over seeds).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

METRICS = ("AP", "AP50", "AP75")


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

    start = time.time()
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
        "wall_s": round(time.time() - start, 1),
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
    """Per variant: runs, failures, mean and std over seeds of each metric, minutes per run."""
    table = []
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        ok = [r for r in runs if r["status"] == "ok"]
        entry = {"variant": variant, "runs": len(ok), "failed": len(runs) - len(ok)}
        for m in metrics:
            entry[m], entry[f"{m}_std"] = _mean_std([r.get(m) for r in ok])
        entry["minutes"] = _mean_std([r["wall_s"] / 60 for r in runs])[0]
        table.append(entry)
    return table


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def write_reports(workdir: str, rows, table, header: str, metrics: Sequence[str] = METRICS) -> None:
    keys = sorted({k for r in rows for k in r if not k.startswith("AP/")})
    first = ["variant", "seed", "status", *metrics, "wall_s"]
    fields = [k for k in first if k in keys] + [k for k in keys if k not in first]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    names = " | ".join(metrics)
    lines = [
        header,
        "",
        f"| variant | runs | {names} | min/run |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for e in table:
        runs = f"{e['runs']}" + (f" (+{e['failed']} failed)" if e["failed"] else "")
        cells = [_fmt(e[m], e[f"{m}_std"]) for m in metrics]
        lines.append(f"| {e['variant']} | {runs} | {' | '.join(cells)} | {e['minutes']:.1f} |")
    lines += ["", "Mean ± sample standard deviation over seeds (validation split)."]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(workdir, table, metrics)


def _plot(workdir: str, table, metrics: Sequence[str] = METRICS) -> None:
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
    except ImportError:  # matplotlib is in the notebooks extra
        return
    if not table:
        return
    names = [e["variant"] for e in table]
    xs = range(len(names))
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.5))
    ax = fig.add_subplot()
    shown = list(metrics[:2])
    if shown == ["AP", "AP50"]:
        shown = ["AP50", "AP"]
    offsets = (-0.2, 0.2) if len(shown) == 2 else (0.0,)
    for offset, metric in zip(offsets, shown, strict=True):
        means = [e[metric] for e in table]
        stds = [0.0 if math.isnan(e[f"{metric}_std"]) else e[f"{metric}_std"] for e in table]
        ax.bar([x + offset for x in xs], means, 0.4, yerr=stds, capsize=3, label=metric)
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("validation metric")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "results.png"), dpi=120)


def run_sweep(
    sweep_path: str,
    workdir: str,
    *,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Runs (or resumes) every variant x seed of the sweep; returns the summary table."""
    base, default_seeds, variants = load_sweep(sweep_path)
    metrics = sweep_metrics(sweep_path)
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

    def report() -> list[dict[str, Any]]:
        rows = collect(workdir, names)
        found = sorted({r["seed"] for r in rows})
        header = (
            f"Sweep `{os.path.relpath(sweep_path, ROOT)}` from `{os.path.relpath(base, ROOT)}`, "
            f"seeds {found}" + (f", with {extra}" if extra else "")
        )
        table = summarise(rows, names, metrics)
        write_reports(workdir, rows, table, header, metrics)
        return table

    for (name, seed), config in configs.items():
        run_dir = os.path.join(workdir, name, f"seed{seed}")
        if os.path.exists(os.path.join(run_dir, "result.json")):
            print(f"[ablate] {name} seed {seed}: done, skipped", flush=True)
            continue
        print(f"[ablate] {name} seed {seed}: {dict(variants[name])}", flush=True)
        result = run_one(config, run_dir)
        if result["status"] == "interrupted":
            print(f"[ablate] {name} seed {seed}: interrupted; rerun to resume", flush=True)
            break
        overrides = json.dumps(variants[name], default=_describe)
        record = {"variant": name, "seed": seed, "overrides": overrides}
        record.update(result)
        with open(os.path.join(run_dir, "result.json"), "w") as f:
            json.dump(record, f, indent=1)
        report()
    return report()


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
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected GROUP.FIELD=VALUE")
        key, value = item.split("=", 1)
        extra[key] = _parse_value(value)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    only = args.only.split(",") if args.only else None
    table = run_sweep(args.sweep, args.workdir, seeds=seeds, only=only, extra=extra)
    with open(os.path.join(args.workdir, "results.md")) as f:
        print(f.read())
    return 0 if all(e["failed"] == 0 for e in table) else 1


if __name__ == "__main__":
    sys.exit(main())
