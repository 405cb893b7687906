"""Genetic hyperparameter search (YOLOv4 paper section 3.3 and Table 4's "GA" row).

    python -m experiments.evolve --search configs/evolve/demo.py --workdir DIR \
        [--generations G] [--population P] [--set optim.max_batches=300 ...] \
        [--task-index I --num-tasks N | --collect]

A search file is plain Python:

    BASE = "configs/demo.py"          # the config every candidate starts from
    FITNESS = "AP50"                  # evaluation metric (no "eval/" prefix), maximised
    POPULATION, GENERATIONS, SEED = 6, 4, 0
    def space():                      # "group.field" -> (kind, bounds)
        return {
            "optim.learning_rate": ("log", 1e-3, 3e-2),   # log-uniform
            "optim.momentum": ("float", 0.8, 0.98),
            "optim.burn_in": ("int", 20, 200),
            "loss.box_loss": ("choice", ("ciou", "giou")),
        }

Optional: ELITE (1), TOURNAMENT (2), MUTATION_PROB (0.3), MUTATION_SCALE (0.15).

The algorithm follows the spirit of YOLOv5's ``--evolve`` (which the YOLOv4 paper's GA row and
darknet's iou_thresh/iou_normalizer values come from) as a plain GA. Generation 0 is the base
config's values, then random candidates within the bounds (log-uniform for "log"). Each next
generation draws parents by tournament from a pool made of the last generation plus the elite
(the best ELITE candidates so far, which therefore never drop out; they are not retrained, as
an exact duplicate is never evaluated twice), mixes them by uniform crossover, and mutates each
value with probability MUTATION_PROB: a gaussian step of MUTATION_SCALE in the bounds mapped to
[0, 1] (log bounds for "log"), clipped to the bounds; a "choice" is resampled among the others.
Generation g is a function of SEED, g and the recorded results of generations < g only, so a
rerun of the command regenerates the same candidates and continues where it stopped.

Every candidate trains with `ablate.run_one` in ``DIR/gen<g>/cand<i>/`` (an interrupted one
resumes from its checkpoints) and leaves ``result.json`` there; ``DIR/candidates.jsonl`` gets
one line per evaluated candidate. A failed candidate (a non-finite loss, say) has fitness -inf,
its error recorded, and the search goes on. After every candidate the search rewrites
``DIR/best_config.py`` (an importable config file for the best candidate), ``DIR/evolve.md``
(a table per generation) and ``DIR/evolve.png`` (fitness of each candidate by generation).

On a batch system a generation's candidates share out over a job array: ``--task-index I
--num-tasks N`` (or SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT) trains every N-th candidate
from the I-th of the first unfinished generation into the same DIR (their ``result.json``) and
stops; ``--collect`` then records the finished candidates, writes the reports and prints the
next generation's candidates, which every task derives the same way from the results. One array
per generation, each followed by ``--collect``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import ablate  # noqa: E402 - needs ROOT on sys.path when run as a script
from experiments.genetic import (  # noqa: E402
    Gene,
    Search,
    canon,
    generation_candidates,
    identity,
    load_search,
    rank_key,
)

TrainFn = Callable[[Any, str], Mapping[str, Any]]

# --- records, resume and reports -------------------------------------------------------------


def _read_history(workdir: str, search: Search) -> dict[tuple[int, int], dict[str, Any]]:
    path = os.path.join(workdir, "candidates.jsonl")
    history = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = _decoded(json.loads(line), search)
                    history[(record["generation"], record["index"])] = record
    return history


def _read_results(workdir: str, search: Search) -> dict[tuple[int, int], dict[str, Any]]:
    """The candidates' own result.json files (what sharded tasks leave), by (gen, index)."""
    found = {}
    for gen in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        if not gen.startswith("gen"):
            continue
        for cand in sorted(os.listdir(os.path.join(workdir, gen))):
            path = os.path.join(workdir, gen, cand, "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    record = _decoded(json.load(f), search)
                found[(record["generation"], record["index"])] = record
    return found


def _decoded(record: dict[str, Any], search: Search) -> dict[str, Any]:
    keys = {g.key for g in search.genes}
    if set(record["overrides"]) != keys:
        raise ValueError(
            f"generation {record['generation']} candidate {record['index']} searched "
            f"{sorted(record['overrides'])}, the search file now {sorted(keys)}; "
            "use a new --workdir"
        )
    record["overrides"] = {g.key: g.decode(record["overrides"][g.key]) for g in search.genes}
    record["fitness"] = float(record["fitness"])
    return record


def _check_same(record: Mapping[str, Any], candidate: Mapping[str, Any], workdir: str) -> None:
    if identity(record["overrides"]) != identity(candidate):
        raise ValueError(
            f"{workdir}: generation {record['generation']} candidate {record['index']} was "
            f"{dict(record['overrides'])} but regenerates as {dict(candidate)}: the search file, "
            "its SEED or --population changed since it ran; use a new --workdir"
        )


def _fitness(result: Mapping[str, Any], metric: str) -> tuple[float, str, str]:
    """(fitness, status, error) of a training result."""
    if result.get("status") == "interrupted":
        return -math.inf, "interrupted", ""
    if result.get("status") != "ok":
        return -math.inf, "failed", str(result.get("error", ""))
    value = result.get(metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return -math.inf, "failed", f"no finite {metric} among the evaluation metrics"
    return float(value), "ok", ""


def _evaluate(
    search: Search,
    generation: int,
    index: int,
    candidate: Mapping[str, Any],
    run_dir: str,
    extra: Mapping[str, Any],
    train_seed: int,
    train_fn: TrainFn,
) -> dict[str, Any]:
    config = ablate.make_config(search.base, candidate, train_seed, extra)
    try:
        result = dict(train_fn(config, run_dir))
    except Exception as e:  # noqa: BLE001 - a pluggable trainer's failure is a failed candidate
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    fitness, status, error = _fitness(result, search.fitness)
    skip = {"status", "error", "wall_s"}
    return {
        "generation": generation,
        "index": index,
        "overrides": dict(candidate),
        "fitness": fitness,
        "status": status,
        "error": error,
        "wall_s": result.get("wall_s", 0.0),
        "metrics": {k: v for k, v in result.items() if k not in skip},
    }


def _config_module_line(base: str) -> tuple[str, str]:
    """(import line, module name) that gives the base config in a generated config file."""
    rel = os.path.relpath(base, ROOT)
    parts = rel[: -len(".py")].split(os.sep)
    if parts[0] == "configs" and all(p.isidentifier() for p in parts):
        return f"from {'.'.join(parts[:-1])} import {parts[-1]}", parts[-1]
    return f"from experiments.ablate import load_module\n\nbase = load_module({base!r})", "base"


def write_best_config(
    workdir: str,
    search: Search,
    best: Mapping[str, Any],
    evaluated: int,
    extra: Mapping[str, Any],
    command: str,
) -> str:
    """``DIR/best_config.py``: the base config with the best candidate's values."""
    import_line, module = _config_module_line(search.base)
    lines = [
        f"# Best candidate of the genetic search {os.path.relpath(search.path, ROOT)} "
        "(experiments/evolve.py).",
        f"# {search.fitness} = {best['fitness']:.4f}: generation {best['generation']}, "
        f"candidate {best['index']} ({evaluated} candidates evaluated so far).",
        f"# Command: {command}",
        "",
        '"""The best candidate of a genetic search; train it with yolov4_jax.main --config."""',
        "",
        import_line,
        "",
        "",
        "def get_config():",
        f"    config = {module}.get_config()",
    ]
    lines += [f"    config.{k} = {v!r}" for k, v in best["overrides"].items()]
    if extra:
        lines.append("    # --set of the search: the settings the fitness was measured with")
        lines += [f"    config.{k} = {v!r}" for k, v in extra.items()]
    lines.append("    return config")
    path = os.path.join(workdir, "best_config.py")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _short_names(genes: Sequence[Gene]) -> list[str]:
    fields = [g.key.rsplit(".", 1)[1] for g in genes]
    return [f if fields.count(f) == 1 else g.key for f, g in zip(fields, genes, strict=True)]


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(workdir: str, search: Search, records: Sequence[Mapping[str, Any]], header: str):
    """``DIR/evolve.md`` (a table per generation) and ``DIR/evolve.png``."""
    names = _short_names(search.genes)
    metric = search.fitness
    ok = [r for r in records if math.isfinite(r["fitness"])]
    best = min(ok, key=rank_key) if ok else None
    lines = [header, ""]
    if best:
        lines.append(
            f"Best {metric} {best['fitness']:.4f}: generation {best['generation']}, candidate "
            f"{best['index']} (`gen{best['generation']:02d}/cand{best['index']:02d}`), "
            "written to `best_config.py`."
        )
    lines += ["", f"| generation | trained | failed | best {metric} | mean {metric} |"]
    lines.append("|---" * 5 + "|")
    generations = sorted({r["generation"] for r in records})
    for g in generations:
        rows = [r for r in records if r["generation"] == g]
        fit = [r["fitness"] for r in rows if math.isfinite(r["fitness"])]
        best_g = f"{max(fit):.4f}" if fit else "—"
        mean_g = f"{sum(fit) / len(fit):.4f}" if fit else "—"
        lines.append(f"| {g} | {len(rows)} | {len(rows) - len(fit)} | {best_g} | {mean_g} |")
    for g in generations:
        rows = sorted((r for r in records if r["generation"] == g), key=lambda r: r["index"])
        top = min(rows, key=rank_key)
        lines += ["", f"### Generation {g}", ""]
        lines.append(f"| candidate | {metric} | min | " + " | ".join(names) + " |")
        lines.append("|---" * (3 + len(names)) + "|")
        for r in rows:
            name = f"cand{r['index']:02d}" + (" (base)" if (g, r["index"]) == (0, 0) else "")
            if r is top and math.isfinite(r["fitness"]):
                name = f"**{name}**"
            fit = f"{r['fitness']:.4f}" if math.isfinite(r["fitness"]) else "failed"
            values = [_value(r["overrides"][gene.key]) for gene in search.genes]
            row = [name, fit, f"{r['wall_s'] / 60:.1f}", *values]
            lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in records if not math.isfinite(r["fitness"])]
    if failed:
        lines += ["", "Failed candidates:", ""]
        lines += [f"- gen {r['generation']} cand {r['index']}: {r['error']}" for r in failed]
    with open(os.path.join(workdir, "evolve.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(workdir, search, records)


def _plot(workdir: str, search: Search, records: Sequence[Mapping[str, Any]]) -> None:
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
    except ImportError:  # matplotlib is in the notebooks extra
        return
    ok = [r for r in records if math.isfinite(r["fitness"])]
    if not ok:
        return
    spread = 0.3 / max(search.population - 1, 1)
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot()
    ax.scatter(
        [r["generation"] + spread * (r["index"] - (search.population - 1) / 2) for r in ok],
        [r["fitness"] for r in ok],
        s=18,
        label="candidate",
    )
    generations = sorted({r["generation"] for r in records})
    best_so_far = [
        max([r["fitness"] for r in ok if r["generation"] <= g] or [math.nan]) for g in generations
    ]
    ax.plot(generations, best_so_far, "-", color="C1", label="best so far")
    failed = [r for r in records if not math.isfinite(r["fitness"])]
    if failed:
        low = min(r["fitness"] for r in ok)
        ax.scatter(
            [r["generation"] for r in failed],
            [low] * len(failed),
            marker="x",
            color="C3",
            label="failed",
        )
    ax.set_xticks(generations)
    ax.set_xlabel("generation")
    ax.set_ylabel(search.fitness)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "evolve.png"), dpi=120)


def _command(search: Search, workdir: str, generations, population, extra) -> str:
    args = ["--search", os.path.relpath(search.path, ROOT), "--workdir", workdir]
    if generations is not None:
        args += ["--generations", str(generations)]
    if population is not None:
        args += ["--population", str(population)]
    for k, v in extra.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return "python -m experiments.evolve " + shlex.join(args)


def run_search(
    search_path: str,
    workdir: str,
    *,
    generations: int | None = None,
    population: int | None = None,
    extra: Mapping[str, Any] | None = None,
    train_fn: TrainFn | None = None,
    command: str | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    collect_only: bool = False,
) -> list[dict[str, Any]]:
    """Runs (or resumes) the search; returns every evaluated candidate's record.

    With ``num_tasks`` > 1 this task trains its share (every ``num_tasks``-th candidate from
    the ``task_index``-th) of the first unfinished generation and returns; ``collect_only``
    trains nothing, records the finished candidates and writes the reports.

    ``train_fn(config, run_dir)`` returns a result like `ablate.run_one`'s (``status``,
    ``error``, ``wall_s`` and the metrics without their ``eval/`` prefix); it is
    `ablate.run_one` unless given (tests pass a fitness function of the config).
    """
    search = load_search(search_path, population=population, generations=generations)
    extra = dict(extra or {})
    clash = sorted(set(extra) & {g.key for g in search.genes})
    if clash:
        raise ValueError(f"--set {clash}: searched by {search_path}; leave them to the search")
    base_config = ablate.make_config(search.base, {}, 0, extra)  # a bad --set fails now
    if not base_config.train.eval_split:  # no evaluation, no fitness (nor an end to resuming)
        raise ValueError("config.train.eval_split is empty; the search's fitness is an evaluation")
    train_seed = int(extra.get("seed", ablate.load_module(search.base).get_config().seed))
    train_fn = train_fn or ablate.run_one
    command = command or _command(search, workdir, generations, population, extra)
    os.makedirs(workdir, exist_ok=True)
    settings = {"fitness": search.fitness, "seed": search.seed, "extra": extra}
    settings_path = os.path.join(workdir, "search.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            recorded = json.load(f)
        if canon(recorded) != canon(settings):
            raise ValueError(
                f"{workdir}: started with {recorded}, now {settings}; use a new --workdir"
            )
    else:
        with open(f"{settings_path}.{os.getpid()}", "w") as f:  # atomic: tasks may race here
            json.dump(settings, f, indent=1)
        os.replace(f"{settings_path}.{os.getpid()}", settings_path)
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in [0, {num_tasks})")
    history = _read_history(workdir, search)
    if num_tasks > 1 or collect_only:  # sharded tasks leave result.json files only
        history = {**_read_results(workdir, search), **history}
    header = (
        f"# Genetic search `{os.path.relpath(search_path, ROOT)}` from "
        f"`{os.path.relpath(search.base, ROOT)}`\n\n"
        f"Fitness {search.fitness} (maximised); population {search.population}, "
        f"{search.generations} generations, seed {search.seed}"
        + (f"; with {extra}" if extra else "")
        + f".\n\n`{command}`"
    )

    def report() -> None:
        records = sorted(history.values(), key=lambda r: (r["generation"], r["index"]))
        write_report(workdir, search, records, header)
        ok = [r for r in records if math.isfinite(r["fitness"])]
        if ok:
            best = min(ok, key=rank_key)
            write_best_config(workdir, search, best, len(records), extra, command)

    if collect_only:
        return _collect(workdir, search, history, report)
    for g in range(search.generations):
        candidates = generation_candidates(search, g, list(history.values()))
        if num_tasks > 1 and all((g, i) in history for i in range(len(candidates))):
            continue  # a finished generation: the next one is this task's
        for i, candidate in enumerate(candidates):
            if i % num_tasks != task_index:
                continue
            run_dir = os.path.join(workdir, f"gen{g:02d}", f"cand{i:02d}")
            result_path = os.path.join(run_dir, "result.json")
            if (g, i) in history:
                _check_same(history[(g, i)], candidate, workdir)
                print(f"[evolve] gen {g} cand {i}: done, skipped", flush=True)
                continue
            if os.path.exists(result_path):  # trained, but stopped before candidates.jsonl
                with open(result_path) as f:
                    record = _decoded(json.load(f), search)
                _check_same(record, candidate, workdir)
            else:
                print(f"[evolve] gen {g} cand {i}: {candidate}", flush=True)
                record = _evaluate(search, g, i, candidate, run_dir, extra, train_seed, train_fn)
                if record["status"] == "interrupted":  # SIGTERM: resume later, record nothing
                    raise ablate.Interrupted(f"gen {g} cand {i} in {run_dir}")
                os.makedirs(run_dir, exist_ok=True)
                with open(result_path + ".tmp", "w") as f:  # atomic for a collecting process
                    json.dump(record, f, indent=1)
                os.replace(result_path + ".tmp", result_path)
                print(
                    f"[evolve] gen {g} cand {i}: {search.fitness} {record['fitness']}", flush=True
                )
            history[(g, i)] = record
            if num_tasks > 1:
                continue  # the reports and candidates.jsonl are --collect's
            with open(os.path.join(workdir, "candidates.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            report()
        if num_tasks > 1:
            print(f"[evolve] gen {g}: task {task_index} of {num_tasks} done; then --collect")
            return sorted(history.values(), key=lambda r: (r["generation"], r["index"]))
    report()
    return sorted(history.values(), key=lambda r: (r["generation"], r["index"]))


def _collect(workdir, search, history, report) -> list[dict[str, Any]]:
    """Records the finished candidates (candidates.jsonl in order), writes the reports and
    prints the first unfinished generation's candidates and how many are still to train."""
    records = sorted(history.values(), key=lambda r: (r["generation"], r["index"]))
    with open(os.path.join(workdir, "candidates.jsonl.tmp"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(
        os.path.join(workdir, "candidates.jsonl.tmp"), os.path.join(workdir, "candidates.jsonl")
    )
    if records:
        report()
    for g in range(search.generations):
        candidates = generation_candidates(search, g, records)
        missing = [i for i in range(len(candidates)) if (g, i) not in history]
        if missing:
            print(f"[evolve] next: generation {g}, {len(missing)} of {len(candidates)} to train")
            for i in missing:
                print(f"[evolve]   cand {i}: {candidates[i]}")
            break
    else:
        print(f"[evolve] all {search.generations} generations finished")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", required=True, help="search file (configs/evolve/*.py)")
    parser.add_argument("--workdir", required=True, help="folder for the candidates and reports")
    parser.add_argument("--generations", type=int, help="default: the search file's GENERATIONS")
    parser.add_argument("--population", type=int, help="default: the search file's POPULATION")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="override for every candidate, e.g. optim.max_batches=300 (JSON values)",
    )
    parser.add_argument("--task-index", "--task_index", type=int, help="SLURM_ARRAY_TASK_ID")
    parser.add_argument("--num-tasks", "--num_tasks", type=int, help="SLURM_ARRAY_TASK_COUNT")
    parser.add_argument("--collect", action="store_true", help="record results; train none")
    args = parser.parse_args(argv)
    task_index, num_tasks = ablate.task_from_environment(args.task_index, args.num_tasks)
    extra = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected GROUP.FIELD=VALUE")
        key, value = item.split("=", 1)
        extra[key] = ablate._parse_value(value)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        records = run_search(
            args.search,
            args.workdir,
            generations=args.generations,
            population=args.population,
            extra=extra,
            command="python -m experiments.evolve " + shlex.join(argv),
            task_index=task_index,
            num_tasks=num_tasks,
            collect_only=args.collect,
        )
    except ablate.Interrupted as e:
        print(f"[evolve] interrupted: {e}; rerun the same command to resume", flush=True)
        return ablate.INTERRUPTED_EXIT
    if num_tasks > 1:
        return 0
    report = os.path.join(args.workdir, "evolve.md")
    if os.path.exists(report):
        with open(report) as f:
            print(f.read())
    return 0 if any(math.isfinite(r["fitness"]) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
