"""The genetic hyperparameter search: operators, determinism, resume, failures, outputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import ablate, evolve, genetic

SEARCH = """
BASE = "configs/test_tiny.py"
FITNESS = "AP50"
POPULATION = 4
GENERATIONS = 3
SEED = 7


def space():
    return {
        "optim.learning_rate": ("log", 1e-5, 1e-1),
        "optim.momentum": ("float", 0.8, 0.98),
        "optim.burn_in": ("int", 1, 10),
        "loss.box_loss": ("choice", ("ciou", "giou", "diou")),
    }
"""


def _write(tmp_path, text: str = SEARCH, name: str = "search.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def fake_train(config, run_dir):
    """A fitness of the config alone: best at lr 1e-3, momentum .9, giou; lr > .05 diverges."""
    lr, momentum = config.optim.learning_rate, config.optim.momentum
    if lr > 0.05:
        return {"status": "failed", "error": "FloatingPointError: non-finite loss at step 3"}
    ap50 = 1.0 - (math.log10(lr) + 3.0) ** 2 / 10 - (momentum - 0.9) ** 2
    ap50 += 0.05 * (config.loss.box_loss == "giou") + 0.001 * config.optim.burn_in
    return {"status": "ok", "error": "", "wall_s": 1.5, "AP50": ap50, "AP": ap50 / 2}


GENES = (
    genetic.Gene("a.f", "float", 0.5, 2.0),
    genetic.Gene("a.l", "log", 1e-4, 1.0),
    genetic.Gene("a.i", "int", 1, 5),
    genetic.Gene("a.c", "choice", choices=("x", "y", (1, 2))),
)


def test_mutation_stays_in_bounds_for_every_kind():
    rng = np.random.default_rng(0)
    start = {"a.f": 1.9, "a.l": 2e-4, "a.i": 5, "a.c": (1, 2)}
    for _ in range(500):
        child = genetic.mutate(start, GENES, rng, prob=1.0, scale=0.5)
        assert 0.5 <= child["a.f"] <= 2.0 and 1e-4 <= child["a.l"] <= 1.0
        assert isinstance(child["a.i"], int) and 1 <= child["a.i"] <= 5
        assert child["a.c"] in ("x", "y")  # a mutated choice is one of the others
        random = genetic.random_candidate(GENES, rng)
        assert 0.5 <= random["a.f"] <= 2.0 and 1e-4 <= random["a.l"] <= 1.0
        assert 1 <= random["a.i"] <= 5 and random["a.c"] in GENES[3].choices
    unchanged = genetic.mutate(start, GENES, rng, prob=1e-9, scale=0.5)
    assert unchanged == start


def test_log_genes_move_in_log_space():
    gene = GENES[1]
    assert gene.from_unit(0.5) == pytest.approx(1e-2)  # the geometric middle of [1e-4, 1]
    rng = np.random.default_rng(1)
    # Mutation: a gaussian step of `scale` in log-bounds units, whatever the value's size.
    for value in (1e-3, 1e-1):
        steps = [
            gene.to_unit(gene.mutate(value, rng, 0.05)) - gene.to_unit(value) for _ in range(2000)
        ]
        assert np.mean(steps) == pytest.approx(0.0, abs=0.005)
        assert np.std(steps) == pytest.approx(0.05, rel=0.1)
    # Sampling: log-uniform, so each decade holds a quarter of the draws.
    draws = np.array([gene.random(rng) for _ in range(4000)])
    per_decade = np.histogram(np.log10(draws), bins=[-4, -3, -2, -1, 0])[0] / len(draws)
    np.testing.assert_allclose(per_decade, 0.25, atol=0.03)


def test_crossover_only_mixes_the_parents_values():
    a = {"a.f": 0.5, "a.l": 1e-4, "a.i": 1, "a.c": "x"}
    b = {"a.f": 2.0, "a.l": 1.0, "a.i": 5, "a.c": "y"}
    rng = np.random.default_rng(2)
    children = [genetic.crossover(a, b, rng) for _ in range(200)]
    for child in children:
        assert all(child[k] in (a[k], b[k]) for k in a)
    for k in a:  # uniform crossover: both parents give every field sometimes
        assert {c[k] for c in children} == {a[k], b[k]}


def test_generations_are_deterministic_for_a_seed(tmp_path):
    search = genetic.load_search(_write(tmp_path))
    gen0 = genetic.generation_candidates(search, 0, [])
    assert gen0 == genetic.generation_candidates(search, 0, [])
    assert (
        gen0[0]
        == search.start
        == {
            "optim.learning_rate": 0.001,
            "optim.momentum": 0.949,
            "optim.burn_in": 2,
            "loss.box_loss": "ciou",  # None in configs/base.py: the yolov4-tiny cfg's value
        }
    )
    assert len({json.dumps(sorted(c.items())) for c in gen0}) == len(gen0) == 4
    history = [
        {"generation": 0, "index": i, "overrides": c, "fitness": f}
        for i, (c, f) in enumerate(zip(gen0, [0.3, -math.inf, 0.5, 0.1], strict=True))
    ]
    gen1 = genetic.generation_candidates(search, 1, history)
    assert gen1 == genetic.generation_candidates(search, 1, history)
    assert not any(c in gen0 for c in gen1)  # never an evaluated candidate again
    other = genetic.load_search(_write(tmp_path, SEARCH.replace("SEED = 7", "SEED = 8"), "s8.py"))
    assert genetic.generation_candidates(other, 0, [])[1:] != gen0[1:]


def test_search_finds_better_candidates_and_writes_best_config(tmp_path):
    workdir = tmp_path / "run"
    extra = {"optim.max_batches": 5}
    records = evolve.run_search(
        _write(tmp_path), str(workdir), generations=4, extra=extra, train_fn=fake_train
    )
    assert [(r["generation"], r["index"]) for r in records] == [
        (g, i) for g in range(4) for i in range(4)
    ]
    best = max(records, key=lambda r: r["fitness"])
    gen0_best = max(r["fitness"] for r in records if r["generation"] == 0)
    assert best["fitness"] > gen0_best  # evolution improved on generation 0
    lines = (workdir / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[0])["metrics"]["AP"] > 0

    text = (workdir / "best_config.py").read_text()
    assert f"AP50 = {best['fitness']:.4f}: generation {best['generation']}" in text
    assert "python -m experiments.evolve --search" in text
    config = ablate.load_module(str(workdir / "best_config.py")).get_config()
    for key, value in best["overrides"].items():
        group, field = key.split(".")
        assert config[group][field] == value
    assert config.optim.max_batches == 5  # the --set the fitness was measured with
    assert config.model.width == 0.125  # the rest is configs/test_tiny.py
    report = (workdir / "evolve.md").read_text()
    assert "### Generation 3" in report and "| learning_rate |" in report
    assert os.path.getsize(workdir / "evolve.png") > 0


def test_failed_candidates_get_minus_inf_and_the_search_goes_on(tmp_path):
    def train(config, run_dir):
        if config.optim.burn_in >= 6:
            raise RuntimeError("boom")
        result = fake_train(config, run_dir)
        if config.loss.box_loss == "diou":
            result.pop("AP50")  # an evaluation that returned no AP50
        return result

    records = evolve.run_search(_write(tmp_path), str(tmp_path / "run"), train_fn=train)
    assert len(records) == 12
    causes = set()
    for r in records:
        o = r["overrides"]
        if o["optim.burn_in"] >= 6:
            cause = "RuntimeError: boom"
        elif o["optim.learning_rate"] > 0.05:
            cause = "non-finite loss"
        elif o["loss.box_loss"] == "diou":
            cause = "no finite AP50"
        else:
            assert r["status"] == "ok" and math.isfinite(r["fitness"])
            continue
        causes.add(cause)
        assert r["status"] == "failed" and r["fitness"] == -math.inf and cause in r["error"]
    assert len(causes) >= 2  # the seed's candidates hit more than one kind of failure
    assert any(math.isfinite(r["fitness"]) for r in records if r["generation"] == 2)
    assert "Failed candidates:" in (tmp_path / "run" / "evolve.md").read_text()


def test_resume_regenerates_the_same_candidates_and_skips_finished_ones(tmp_path):
    search = _write(tmp_path)
    reference = evolve.run_search(search, str(tmp_path / "whole"), train_fn=fake_train)

    calls = []

    def interrupted(config, run_dir):
        if len(calls) == 6:
            raise KeyboardInterrupt  # killed during the 7th training
        calls.append(run_dir)
        return fake_train(config, run_dir)

    workdir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evolve.run_search(search, str(workdir), train_fn=interrupted)
    # The 6th candidate trained but the process stopped before candidates.jsonl got its line.
    path = workdir / "candidates.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))

    rerun = []

    def train(config, run_dir):
        rerun.append(run_dir)
        return fake_train(config, run_dir)

    records = evolve.run_search(search, str(workdir), train_fn=train)
    assert [os.path.relpath(p, workdir) for p in rerun] == [
        os.path.join("gen01", "cand02"),
        os.path.join("gen01", "cand03"),
        *(os.path.join("gen02", f"cand{i:02d}") for i in range(4)),
    ]
    assert records == reference
    assert len(path.read_text().splitlines()) == 12
    # Everything done: a third call trains nothing.
    evolve.run_search(search, str(workdir), train_fn=lambda *a: pytest.fail("should skip"))
    # A changed search no longer regenerates the recorded candidates.
    changed = _write(tmp_path, SEARCH.replace("0.8, 0.98", "0.81, 0.98"))
    with pytest.raises(ValueError, match="candidate 1 was .* regenerates as .* new --workdir"):
        evolve.run_search(changed, str(workdir), train_fn=fake_train)
    reseeded = _write(tmp_path, SEARCH.replace("SEED = 7", "SEED = 9"))
    with pytest.raises(ValueError, match="'seed': 7.*'seed': 9.* new --workdir"):
        evolve.run_search(reseeded, str(workdir), train_fn=fake_train)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (
            '"optim.momentum"',
            '"optim.momentun"',
            "search.py: unknown config field 'optim.momentun'",
        ),
        ("0.8, 0.98", "0.98, 0.8", r"'optim.momentum'\]: lo must be below hi"),
        ("0.8, 0.98", "0.8, 0.9", r"optim.momentum: the base value 0.949 .* outside \[0.8, 0.9\]"),
        ("1e-5, 1e-1", "0, 1e-1", "log bounds must be positive"),
        ('("int", 1, 10)', '("int", 1.0, 10)', "int bounds must be ints"),
        ('("float", 0.8', '("uniform", 0.8', "kind one of"),
        ('("ciou", "giou", "diou")', '("giou", "diou")', "base value 'ciou' is not among"),
        ('("int", 1, 10)', '("float", 1.5, 10.0)', "optim.burn_in: 1.5 does not fit"),
        ('FITNESS = "AP50"', 'FITNESS = "mAP"', "FITNESS 'mAP'"),
        ("POPULATION = 4", "POPULATION = 1", "POPULATION must be an int >= 2"),
        ("def space", "def spaces", "needs space"),
    ],
)
def test_bad_search_files_give_clear_errors(tmp_path, old, new, match):
    assert old in SEARCH
    with pytest.raises((ValueError, KeyError), match=match):
        evolve.run_search(_write(tmp_path, SEARCH.replace(old, new)), str(tmp_path / "r"))


def test_set_of_a_searched_field_is_refused(tmp_path):
    with pytest.raises(ValueError, match="optim.momentum"):
        evolve.run_search(_write(tmp_path), str(tmp_path / "r"), extra={"optim.momentum": 0.9})
    with pytest.raises(ValueError, match="eval_split is empty"):
        evolve.run_search(_write(tmp_path), str(tmp_path / "r"), extra={"train.eval_split": ""})


@pytest.mark.parametrize("name", ["demo", "test_tiny"])
def test_committed_searches_load(name):
    """Generation 0 starts from the base config's values, and every candidate's genes are in
    their bounds and land in the config it trains."""
    search = genetic.load_search(os.path.join(evolve.ROOT, "configs", "evolve", f"{name}.py"))
    candidates = genetic.generation_candidates(search, 0, [])
    assert len(candidates) == search.population and candidates[0] == search.start
    assert len({genetic.identity(c) for c in candidates}) == len(candidates)  # all different
    genes = {g.key: g for g in search.genes}
    for candidate in candidates:
        assert set(candidate) == set(genes)
        config = ablate.make_config(search.base, candidate, 0, {})
        for key, value in candidate.items():
            gene = genes[key]
            if gene.kind == "choice":
                assert genetic.canon(value) in {genetic.canon(c) for c in gene.choices}, key
            else:
                assert gene.lo <= value <= gene.hi, (key, value)
            group, field = key.split(".")
            assert genetic.canon(config[group][field]) == genetic.canon(value), key


def test_an_interrupted_candidate_stops_the_search_and_resumes(tmp_path):
    search, workdir = _write(tmp_path), tmp_path / "run"
    calls = []

    def preempted(config, run_dir):
        calls.append(run_dir)
        return {"status": "interrupted", "error": "", "wall_s": 1.0}

    with pytest.raises(ablate.Interrupted, match="gen 0 cand 0"):
        evolve.run_search(search, str(workdir), train_fn=preempted)
    assert len(calls) == 1
    assert (
        not (workdir / "candidates.jsonl").exists()
        or not (workdir / "candidates.jsonl").read_text().strip()
    )
    records = evolve.run_search(search, str(workdir), train_fn=fake_train)
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)


@pytest.mark.slow
def test_sharded_generations_as_separate_processes(tmp_path, tiny_data_dir):
    """Two task processes per generation, --collect after each: the same records and the
    same next generation as the search computes from them."""
    search_file = os.path.join(evolve.ROOT, "configs", "evolve", "test_tiny.py")
    workdir = tmp_path / "evolve"
    argv = [sys.executable, "-m", "experiments.evolve", "--search", search_file]
    argv += ["--workdir", str(workdir)]
    for item in (f"data.data_dir={tiny_data_dir}", "train.detections_image=false"):
        argv += ["--set", item]
    argv += ["--set", "train.eval_max_batches=1", "--set", "optim.max_batches=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def run(extra):
        return subprocess.run(
            argv + extra, cwd=evolve.ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    for generation in range(2):
        tasks = [
            subprocess.Popen(argv + ["--task-index", str(i), "--num-tasks", "2"],
                             cwd=evolve.ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(2)
        ]  # fmt: skip
        outputs = [t.communicate(timeout=600)[0] for t in tasks]
        assert [t.returncode for t in tasks] == [0, 0], outputs
        assert f"gen {generation} cand 0" in outputs[0] and f"gen {generation} cand 1" in outputs[1]
        collected = run(["--collect"])
        assert collected.returncode == 0, collected.stderr[-3000:]
    assert "all 2 generations finished" in collected.stdout
    records = [
        json.loads(line) for line in (workdir / "candidates.jsonl").read_text().split("\n") if line
    ]
    assert [(r["generation"], r["index"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["status"] == "ok" and "AP50" in r["metrics"] for r in records)
    assert (workdir / "gen01" / "cand01" / "config.json").exists()
    # Generation 1 is what the search derives from generation 0's recorded results.
    search = genetic.load_search(search_file)
    gen0 = [r for r in records if r["generation"] == 0]
    for r in gen0:
        r["overrides"] = {g.key: g.decode(r["overrides"][g.key]) for g in search.genes}
    expected = genetic.generation_candidates(search, 1, gen0)
    got = [r["overrides"] for r in records if r["generation"] == 1]
    assert [genetic.identity(c) for c in got] == [genetic.identity(c) for c in expected]
    assert (workdir / "best_config.py").exists() and (workdir / "evolve.md").exists()
    config = ablate.load_module(str(workdir / "best_config.py")).get_config()
    assert config.optim.max_batches == 2 and config.data.data_dir == tiny_data_dir
