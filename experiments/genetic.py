"""The search space and the genetic operators of `experiments.evolve` (YOLOv4 section 3.3).

A search file's ``space()`` maps config fields to genes (`Gene`: float, log, int or choice
bounds); `load_search` reads and checks it; `random_candidate`, `crossover` and `mutate` are the
operators; `generation_candidates` makes generation g from the seed and the recorded results of
the earlier generations only, so a rerun regenerates the same candidates. `experiments.evolve`
trains and records them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import ablate  # noqa: E402 - needs ROOT on sys.path when run as a script

KINDS = ("float", "log", "int", "choice")
_DEFAULTS = {
    "FITNESS": "AP50",
    "POPULATION": 6,
    "GENERATIONS": 4,
    "SEED": 0,
    "ELITE": 1,
    "TOURNAMENT": 2,
    "MUTATION_PROB": 0.3,
    "MUTATION_SCALE": 0.15,
}
# config.loss fields whose darknet [yolo] name differs (losses.LossOptions.resolve).
_LOSS_TO_HEAD = {"box_loss": "iou_loss", "label_smoothing": "label_smooth_eps"}


def canon(value: Any) -> str:
    """A value's identity across a JSON round trip (tuples and lists alike)."""
    return json.dumps(value, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Gene:
    """One searched config field: its kind and its bounds (or choices)."""

    key: str
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    choices: tuple = ()

    def _span(self) -> tuple[float, float]:
        if self.kind == "log":
            return math.log(self.lo), math.log(self.hi)
        return float(self.lo), float(self.hi)

    def to_unit(self, value: float) -> float:
        """The value's place in the bounds, 0 to 1 (in log space for "log")."""
        a, b = self._span()
        x = math.log(value) if self.kind == "log" else float(value)
        return (x - a) / (b - a)

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` in [0, 1]: rounded (6 significant digits or an int), in bounds."""
        a, b = self._span()
        x = a + min(max(float(u), 0.0), 1.0) * (b - a)
        if self.kind == "log":
            x = math.exp(x)
        if self.kind == "int":
            return int(min(max(round(x), self.lo), self.hi))
        return min(max(float(f"{x:.6g}"), float(self.lo)), float(self.hi))

    def random(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "int":
            return int(rng.integers(int(self.lo), int(self.hi) + 1))
        return self.from_unit(rng.random())

    def mutate(self, value: Any, rng: np.random.Generator, scale: float) -> Any:
        if self.kind == "choice":
            others = [c for c in self.choices if canon(c) != canon(value)]
            return others[int(rng.integers(len(others)))]
        return self.from_unit(self.to_unit(value) + scale * rng.standard_normal())

    def decode(self, value: Any) -> Any:
        """A value read back from JSON (a list where a choice was a tuple) as the search's own."""
        if self.kind == "choice":
            for c in self.choices:
                if canon(c) == canon(value):
                    return c
        return value


@dataclasses.dataclass(frozen=True)
class Search:
    """A checked search file."""

    path: str
    base: str  # absolute path of the base config
    fitness: str
    population: int
    generations: int
    seed: int
    elite: int
    tournament: int
    mutation_prob: float
    mutation_scale: float
    genes: tuple[Gene, ...]
    start: dict[str, Any]  # the base config's values of the searched fields


def _parse_gene(path: str, key: Any, spec: Any) -> Gene:
    where = f"{path}: space()[{key!r}]"
    if not isinstance(key, str) or "." not in key:
        raise ValueError(f"{where}: keys are 'group.field' strings")
    if not isinstance(spec, tuple | list) or not spec or spec[0] not in KINDS:
        raise ValueError(f"{where}: expected (kind, ...) with kind one of {KINDS}, got {spec!r}")
    kind = spec[0]
    if kind == "choice":
        if len(spec) != 2 or not isinstance(spec[1], tuple | list):
            raise ValueError(f"{where}: expected ('choice', (a, b, ...)), got {spec!r}")
        choices = tuple(spec[1])
        if len({canon(c) for c in choices}) != len(choices) or len(choices) < 2:
            raise ValueError(f"{where}: needs at least two distinct choices, got {choices!r}")
        return Gene(key, kind, choices=choices)
    if len(spec) != 3:
        raise ValueError(f"{where}: expected ({kind!r}, lo, hi), got {spec!r}")
    lo, hi = spec[1], spec[2]
    number = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (lo, hi)):
        raise ValueError(f"{where}: {kind} bounds must be {'ints' if kind == 'int' else 'numbers'}")
    if not lo < hi:
        raise ValueError(f"{where}: lo must be below hi, got lo={lo}, hi={hi}")
    if kind == "log" and lo <= 0:
        raise ValueError(f"{where}: log bounds must be positive, got lo={lo}")
    return Gene(key, kind, lo, hi)


def _base_value(config, key: str, source: str) -> Any:
    """The base config's value of ``key``; a None loss field is the model's [yolo] value."""
    *groups, field = key.split(".")
    node = config
    for g in groups:
        node = node[g]
    value = node[field]
    if value is not None:
        return value
    if groups != ["loss"]:
        raise ValueError(f"{source}: {key} is None in the base config; the search needs a value")
    from yolov4_jax.detection import losses
    from yolov4_jax.models import factory, specs

    try:
        layers = factory.model_layers(config.model)
    except ValueError as e:
        raise ValueError(f"{source}: {key} is None in the base config ({e})") from e
    heads = [s for s in layers if isinstance(s, specs.Yolo)]
    resolved = losses.loss_options(config.loss).resolve(heads)
    values = {getattr(h, _LOSS_TO_HEAD.get(field, field)) for h in resolved}
    if len(values) != 1:
        raise ValueError(
            f"{source}: {key} is None in the base config and the model's heads differ "
            f"({sorted(values)}); set one value in the base config"
        )
    return values.pop()


def load_search(
    path: str, *, population: int | None = None, generations: int | None = None
) -> Search:
    """Reads and checks a search file (see the module docstring); errors name file and field."""
    module = ablate.load_module(path)
    for attr in ("BASE", "space"):
        if not hasattr(module, attr):
            raise ValueError(f"{path}: a search file needs {attr} (see experiments/evolve.py)")
    values = {k: getattr(module, k, v) for k, v in _DEFAULTS.items()}
    if population is not None:
        values["POPULATION"] = population
    if generations is not None:
        values["GENERATIONS"] = generations
    for name, low in (("POPULATION", 2), ("GENERATIONS", 1), ("SEED", 0), ("TOURNAMENT", 1)):
        v = values[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{path}: {name} must be an int >= {low}, got {v!r}")
    if not isinstance(values["ELITE"], int) or not 0 <= values["ELITE"] < values["POPULATION"]:
        raise ValueError(f"{path}: ELITE must be an int in [0, POPULATION), got {values['ELITE']}")
    if not 0 < values["MUTATION_PROB"] <= 1 or not values["MUTATION_SCALE"] > 0:
        raise ValueError(f"{path}: MUTATION_PROB must be in (0, 1] and MUTATION_SCALE above 0")
    from yolov4_jax.evaluation import STAT_NAMES

    fitness = values["FITNESS"]
    if fitness not in STAT_NAMES and not str(fitness).startswith("AP/"):
        raise ValueError(f"{path}: FITNESS {fitness!r} is not one of {STAT_NAMES} or AP/<class>")
    space = module.space()
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"{path}: space() must return a non-empty dict 'group.field' -> spec")
    genes = tuple(_parse_gene(path, k, v) for k, v in space.items())

    base = module.BASE if os.path.isabs(module.BASE) else os.path.join(ROOT, module.BASE)
    config = ablate.load_module(base).get_config()
    start = {}
    for gene in genes:
        where = f"{path}: {gene.key}"
        probe = config.copy_and_resolve_references()
        bounds = gene.choices if gene.kind == "choice" else (gene.lo, gene.hi)
        for value in bounds:  # an unknown field or a value the field cannot hold
            try:
                ablate.apply_overrides(probe, {gene.key: value}, path)
            except TypeError as e:
                raise ValueError(f"{where}: {value!r} does not fit the config field ({e})") from e
        value = _base_value(config, gene.key, path)
        if gene.kind == "choice":
            if canon(value) not in {canon(c) for c in gene.choices}:
                raise ValueError(f"{where}: the base value {value!r} is not among {gene.choices}")
            value = gene.decode(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: the base value {value!r} is not a number; use 'choice'")
        elif not gene.lo <= value <= gene.hi:
            raise ValueError(
                f"{where}: the base value {value} (from {module.BASE}) is outside "
                f"[{gene.lo}, {gene.hi}]"
            )
        start[gene.key] = int(value) if gene.kind == "int" else value
    return Search(
        path=path,
        base=base,
        fitness=fitness,
        population=values["POPULATION"],
        generations=values["GENERATIONS"],
        seed=values["SEED"],
        elite=values["ELITE"],
        tournament=values["TOURNAMENT"],
        mutation_prob=float(values["MUTATION_PROB"]),
        mutation_scale=float(values["MUTATION_SCALE"]),
        genes=genes,
        start=start,
    )


# --- the genetic operators -------------------------------------------------------------------


def random_candidate(genes: Sequence[Gene], rng: np.random.Generator) -> dict[str, Any]:
    return {g.key: g.random(rng) for g in genes}


def crossover(
    a: Mapping[str, Any], b: Mapping[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """Uniform crossover: each value from either parent with probability 1/2."""
    return {k: (a[k] if rng.random() < 0.5 else b[k]) for k in a}


def mutate(
    candidate: Mapping[str, Any],
    genes: Sequence[Gene],
    rng: np.random.Generator,
    prob: float,
    scale: float,
) -> dict[str, Any]:
    """Each value mutated with probability ``prob`` (see `Gene.mutate`); in bounds."""
    return {
        g.key: g.mutate(candidate[g.key], rng, scale) if rng.random() < prob else candidate[g.key]
        for g in genes
    }


def identity(candidate: Mapping[str, Any]) -> str:
    return canon(sorted(candidate.items()))


def rank_key(record: Mapping[str, Any]) -> tuple:
    return (-record["fitness"], record["generation"], record["index"])


def generation_candidates(
    search: Search, generation: int, history: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The candidates of ``generation``: a function of the seed and generations < it only."""
    history = [r for r in history if r["generation"] < generation]
    rng = np.random.default_rng([search.seed, generation])
    seen = {identity(r["overrides"]) for r in history}
    genes = search.genes
    pool = []
    if generation > 0:
        finite = sorted((r for r in history if math.isfinite(r["fitness"])), key=rank_key)
        last = [r for r in finite if r["generation"] == generation - 1]
        elite = finite[: search.elite]
        elite_ids = {(r["generation"], r["index"]) for r in elite}
        pool = elite + [r for r in last if (r["generation"], r["index"]) not in elite_ids]
        pool.sort(key=rank_key)  # pool[0] is the fittest; ties go to the lower index

    def pick() -> int:
        k = min(search.tournament, len(pool))
        return int(min(rng.choice(len(pool), size=k, replace=False)))

    out: list[dict[str, Any]] = []
    while len(out) < search.population:
        child = None
        if generation == 0 and not out:
            child = dict(search.start)
        for _ in range(100 if pool and child is None else 0):
            i, j = pick(), pick()
            parent_a, parent_b = pool[i]["overrides"], pool[j]["overrides"]
            option = mutate(
                crossover(parent_a, parent_b, rng),
                genes,
                rng,
                search.mutation_prob,
                search.mutation_scale,
            )
            if identity(option) not in seen:
                child = option
                break
        for _ in range(0 if child is not None else 1000):
            option = random_candidate(genes, rng)
            if identity(option) not in seen:
                child = option
                break
        if child is None:
            raise RuntimeError(f"{search.path}: no new candidate left in the search space")
        seen.add(identity(child))
        out.append(child)
    return out
