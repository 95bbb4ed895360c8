"""The search: an optuna study over recipes, with constraints, a durable trial store and resume.

- Objectives (minimize latency, size, RAM, energy or accuracy drop; maximize the metric) are the
  study's values. The accuracy drop and the target's RAM / storage budgets are *constraints*
  (optuna ``constraints_func``: value > 0 means violated), never penalties folded into a value.
- Every trial is a frozen record in the study: its recipe, figures, constraints and why it was
  pruned. The report and :func:`load_result` read these records; nothing is recomputed.
- The store is any optuna storage URL (SQLite file by default; PostgreSQL for many workers on
  many machines). Workers sharing a study stop together once the study holds ``trials`` finished
  trials, and never run one twice.
- ``resume=True`` after a crash (even kill -9) keeps every finished trial. The interrupted trial is
  left RUNNING by the dead process; its heartbeat goes stale after ``grace_period`` seconds, optuna
  marks it failed and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues the same
  parameters again, so exactly that trial is re-run.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._json import to_jsonable
from ..errors import BudgetError, ConfigError, EdgeOptError
from .evaluate import CandidateEvaluator, ScreenedOut, TrialMetrics
from .space import NONE, SearchSpace, family_of

# objective name -> (TrialMetrics field, direction); "metric" takes its direction from the metric
OBJECTIVES: dict[str, tuple[str, str | None]] = {
    "latency": ("latency_ms", "minimize"),
    "size": ("size_bytes", "minimize"),
    "ram": ("ram_bytes", "minimize"),
    "energy": ("energy_uj", "minimize"),
    "drop": ("metric_drop", "minimize"),
    "metric": ("metric_value", None),
}
CONSTRAINT_NAMES = ("accuracy_drop", "ram", "storage", "unsupported")
MAX_PROBE_ROUNDS = 3   # single-technique references probed with mild combinations, per study
META_KEY = "edgeopt"


@dataclass(frozen=True)
class SearchOptions:
    """Rarely changed settings of the search, grouped so ``run_search`` keeps few arguments."""

    sampler: str = "tpe"               # "tpe" (multi-objective TPE with constraints), "nsga2", "random"
    study_name: str = "edgeopt"
    heartbeat_interval: int = 10       # seconds between a running trial's heartbeats (RDB storages)
    grace_period: int = 30             # a RUNNING trial silent this long is stale: failed and retried
    max_retry: int = 2
    screen_fraction: float = 0.5       # share of the trials run before training passes are offered
    promising: int = 3                 # best cheap recipes re-queued with training passes
    screen_rows: int | None = None     # tune rows for the cheap accuracy screen (None: a quarter, >= 100)
    latency_rounds: int = 5
    latency: str = "inprocess"         # "bench": edgeopt.bench.benchmark in fresh processes (slower)
    drop_bound: str = "upper"          # budget judged on the drop's 95% CI upper end, or "estimate"
    output: str | int | None = None    # the model output the metric scores (name or index; None: the first)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored in the study (optuna FrozenTrial, reduced to what edgeopt reports)."""

    number: int
    state: str                                  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: Mapping[str, Any]
    recipe: Mapping[str, Any] | None
    metrics: TrialMetrics | None
    constraints: tuple[float, ...] | None
    values: tuple[float, ...] | None
    reason: str | None = None                   # why it was pruned or failed
    retry_of: int | None = None
    duration_s: float | None = None
    worker: str | None = None                   # host:pid of the process that ran it
    duplicate_of: int | None = None             # re-proposed recipe: pruned unevaluated, not budgeted
    origin: str | None = None                   # why a queued (not sampled) trial was run

    @property
    def feasible(self) -> bool:
        return self.state == "COMPLETE" and self.constraints is not None and all(c <= 0 for c in self.constraints)

    @property
    def steps(self) -> list[str]:
        return [s["pass"] for s in (self.recipe or {}).get("steps", [])]

    def label(self) -> str:
        return " -> ".join(self.steps) or "(unchanged model)"

    def to_recipe(self):
        """The recipe as a :class:`~edgeopt.recipe.Recipe` (its passes must be registered)."""
        from ..recipe import Recipe

        if self.recipe is None:
            raise ConfigError(f"trial {self.number} stored no recipe")
        return Recipe.from_dict(self.recipe)

    def to_dict(self) -> dict:
        return {
            "number": self.number, "state": self.state, "params": dict(self.params), "recipe": self.recipe,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "constraints": dict(zip(CONSTRAINT_NAMES, self.constraints)) if self.constraints else None,
            "feasible": self.feasible, "values": list(self.values) if self.values else None,
            "reason": self.reason, "retry_of": self.retry_of, "duration_s": self.duration_s, "worker": self.worker,
            "duplicate_of": self.duplicate_of, "origin": self.origin,
        }

    @classmethod
    def from_frozen(cls, trial) -> "TrialRecord":
        attrs = trial.user_attrs
        metrics = TrialMetrics.from_dict(attrs["metrics"]) if attrs.get("metrics") else None
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number, state=trial.state.name, params=dict(trial.params), recipe=attrs.get("recipe"),
            metrics=metrics,
            constraints=tuple(trial.constraints[n] for n in CONSTRAINT_NAMES) if all(n in trial.constraints for n in CONSTRAINT_NAMES) else None,
            values=tuple(trial.values) if trial.values else None, reason=attrs.get("reason"),
            retry_of=trial.system_attrs.get("failed_trial"), duration_s=duration, worker=attrs.get("worker"),
            duplicate_of=attrs.get("duplicate_of"), origin=_origin(attrs),
        )


def _origin(attrs: Mapping[str, Any]) -> str | None:
    if attrs.get("probe_of") is not None:
        return f"probe: trial {attrs['probe_of']} (best single technique) + a mild structural pass"
    if attrs.get("requeued_from") is not None:
        return f"trial {attrs['requeued_from']} re-queued for training passes"
    return None


@dataclass
class SearchResult:
    """What a search found: ``best`` (the chosen feasible trial), ``pareto`` (the feasible
    non-dominated trials), ``trials`` (every record), plus what it was searched for."""

    best: TrialRecord | None
    pareto: list[TrialRecord]
    trials: list[TrialRecord]
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    target: Any
    max_drop: float
    metric: str | None = None
    baseline: TrialMetrics | None = None
    study_name: str = "edgeopt"
    storage_url: str | None = None
    requested_trials: int | None = None
    drop_bound: str = "estimate"       # what the accuracy budget was judged on (see judged_drop)

    def to_dict(self) -> dict:
        return {
            "study": {"name": self.study_name, "storage": _redact(self.storage_url), "requested_trials": self.requested_trials},
            "objectives": list(self.objectives), "directions": list(self.directions),
            "target": self.target.summary(), "max_drop": self.max_drop, "metric": self.metric,
            "drop_bound": self.drop_bound,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "best": self.best.number if self.best else None,
            "pareto": [t.number for t in self.pareto],
            "trials": [t.to_dict() for t in self.trials],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``search.json`` (every trial record) and ``search_report.html``; returns the folder."""
        from .._io import write_text_atomic
        from .report_data import write_report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        data["study"]["storage"] = self.storage_url   # needed by `edgeopt report` to reload the study
        write_text_atomic(out / "search.json", json.dumps(to_jsonable(data), indent=2))
        write_report(self, out / "search_report.html")
        return out

    def report(self, path: str | os.PathLike) -> Path:
        from .report_data import write_report

        return write_report(self, Path(path))


def _redact(url: str | None) -> str | None:
    """Storage URL without its password, for reports."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}@{host}"


# ------------------------------------------------------------------------------------------------
# Constraints and Pareto front
# ------------------------------------------------------------------------------------------------

DROP_BOUNDS = ("upper", "estimate")


def check_drop_bound(value: str, *, name: str = "drop bound") -> None:
    """ConfigError unless ``value`` is one of DROP_BOUNDS (``name``: how the caller's user spells it)."""
    if value not in DROP_BOUNDS:
        raise ConfigError(f"{name} must be one of {list(DROP_BOUNDS)} (judge the accuracy budget on the drop's "
                          f"95% CI upper end, or on its point estimate); got {value!r}")


def judged_drop(metrics: TrialMetrics, drop_bound: str = "upper") -> float | None:
    """The drop the accuracy budget is judged on: the upper end of its 95% CI (``"upper"``) when the
    metric has per-sample scores, else (or with ``"estimate"``) the point estimate.

    Why the upper end by default: a search scores many candidates on the same tune rows and keeps
    the best-looking ones, so the kept point estimates are biased low (the winner's curse). On KWS
    with 1000 tune rows (CI about +-1.4 pt for a pruned model) a 36-trial search picked a model at
    -0.2 pt on the tune rows that lost 1.94 pt on held-out rows; judged on the upper bound it picks
    one that holds the budget (docs/search.md).
    """
    if metrics.metric_drop is None:
        return None
    if drop_bound == "upper" and metrics.metric_drop_ci is not None:
        return float(metrics.metric_drop_ci[1])
    return float(metrics.metric_drop)


def constraint_values(metrics: TrialMetrics, target, max_drop: float, drop_bound: str = "upper") -> list[float]:
    """[accuracy drop, RAM, storage, unsupported] with value > 0 meaning violated.

    The drop is :func:`judged_drop` (by default its CI upper end). Budgets are relative overshoot
    (0.25 = 25% over) so that violations of different budgets are comparable when a sampler ranks
    infeasible trials; a target without a budget gives -1.
    """
    judged = judged_drop(metrics, drop_bound)
    drop = -max_drop if judged is None else judged - max_drop
    ram = -1.0 if target.ram_bytes is None else metrics.ram_bytes / target.ram_bytes - 1.0
    storage = -1.0 if target.storage_bytes is None else metrics.size_bytes / target.storage_bytes - 1.0
    return [float(drop), float(ram), float(storage), float(len(metrics.unsupported))]


def _directions(objectives: Sequence[str], metric_higher_is_better: bool) -> tuple[str, ...]:
    out = []
    for name in objectives:
        direction = OBJECTIVES[name][1]
        out.append(direction or ("maximize" if metric_higher_is_better else "minimize"))
    return tuple(out)


def objective_value(metrics: TrialMetrics, name: str) -> float:
    value = getattr(metrics, OBJECTIVES[name][0])
    if value is None:
        raise ConfigError(f"objective {name!r} needs TrialMetrics.{OBJECTIVES[name][0]}, but evaluate_trial returned None for it")
    return float(value)


#: Objective values closer than this (relative) are equal. Estimated latencies of int8 variants of
#: one network differ by a few MACs (KWS on cortex-m7: 8.59322 vs 8.59325 ms); without a tolerance
#: each such variant is its own "Pareto point" and the front shows differences nobody could measure.
OBJECTIVE_RTOL = 1e-4


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= OBJECTIVE_RTOL * max(abs(a), abs(b))


def no_worse(values: Sequence[float], other: Sequence[float], directions: Sequence[str]) -> bool:
    """``values`` at least as good as ``other`` on every objective (equal within OBJECTIVE_RTOL counts)."""
    return all(_close(a, b) or (a < b if d == "minimize" else a > b) for a, b, d in zip(values, other, directions))


def dominates(values: Sequence[float], other: Sequence[float], directions: Sequence[str]) -> bool:
    return no_worse(values, other, directions) and not all(_close(a, b) for a, b in zip(values, other))


def pareto_front(records: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """Feasible complete trials not dominated by another feasible trial (ties, within
    OBJECTIVE_RTOL, kept once: the first trial in objective order)."""
    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    pts = sorted((r for r in records if r.feasible and r.values),
                 key=lambda r: (tuple(s * v for s, v in zip(sign, r.values)), r.number))
    front = []
    for r in pts:
        if any(dominates(q.values, r.values, directions) for q in pts):
            continue
        if any(all(_close(a, b) for a, b in zip(f.values, r.values)) for f in front):
            continue
        front.append(r)
    return front


def choose_best(front: Sequence[TrialRecord], reference: TrialRecord | None = None,
                directions: Sequence[str] = ()) -> TrialRecord | None:
    """The first Pareto point in objective order (the front is sorted by objective 1, then 2...).

    With a ``reference`` (the best single-technique trial, :func:`best_single_technique`): the first
    other front point at least as good as it on every objective, when there is one. A combination of
    techniques earns its extra steps only if it loses to no single technique on any objective; with
    accuracy drop as an objective, the fastest point often trades accuracy away while another point
    beats the single technique on all three (DS-CNN / KWS on cortex-m7: docs/search.md).
    """
    if not front:
        return None
    if reference is not None and directions:
        better = [t for t in front if t is not reference and no_worse(t.values, reference.values, directions)]
        if better:
            return better[0]
    return front[0]


# Families that prepare a graph rather than compress it: a recipe of these plus one compression
# technique is still a "single-technique" result.
PREPARATION_FAMILIES = frozenset({"fold", "equalize", "ort"})


def techniques_of(record) -> list[str]:
    return [p for p in record.steps if family_of(p) not in PREPARATION_FAMILIES]


def single_technique_trials(records) -> list:
    return [t for t in records if t.feasible and t.values and len(techniques_of(t)) == 1]


def best_single_technique(records, directions):
    """The best feasible trial whose recipe holds one compression technique (first Pareto point in
    objective order among those), or None."""
    singles = single_technique_trials(records)
    return choose_best(pareto_front(singles, directions)) if singles else None


def pick(records: Sequence[TrialRecord], directions: Sequence[str]) -> tuple[list[TrialRecord], TrialRecord | None]:
    """(Pareto front, chosen trial) of a study's records: the one rule the search, the report and
    the progress bar share."""
    front = pareto_front(records, directions)
    return front, choose_best(front, best_single_technique(records, directions), directions)


# ------------------------------------------------------------------------------------------------
# Storage, sampler
# ------------------------------------------------------------------------------------------------

def make_storage(url: str | None, options: SearchOptions):
    """An optuna storage: in memory for None, else an RDB storage with heartbeats and retries."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"--study must be a database URL like 'sqlite:///runs/kws.db' or 'postgresql://user@host/db'; got {url!r}")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        # several processes on one SQLite file wait for the write lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    import sqlalchemy.exc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat options are marked experimental in optuna
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=options.heartbeat_interval,
                    grace_period=options.grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=options.max_retry),
                )
            except ImportError as e:
                raise ConfigError(f"no database driver for {_redact(url)!r}: {e}") from e
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
                # Workers starting together on an empty database race to create optuna's tables and
                # types; the loser sees them half-created. They exist on the next attempt.
                if attempt == 4:
                    raise ConfigError(f"cannot create the study tables in {_redact(url)!r}: {str(e).splitlines()[0]}") from e
                time.sleep(0.5 * (attempt + 1))
            except Exception as e:
                raise ConfigError(f"cannot open the study store {_redact(url)!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def _make_sampler(kind: str, seed: int):
    # Constraints reach the samplers through trial.set_constraint (optuna >= 5), stored with each trial.
    import optuna

    if kind == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `group` is marked experimental
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler must be one of tpe, nsga2, random; got {kind!r}")


def _seeded_per_trial_sampler(kind: str, seed: int):
    """A sampler re-created for each trial with a seed derived from (seed, trial number).

    Why: workers sharing a study would otherwise draw the same "random" start-up points from
    identically seeded samplers, while an unseeded sampler makes a single-worker search
    irreproducible. Trial numbers are unique across workers, so this is both. The samplers are
    stateless apart from their random state (they read history from the storage), so re-creating
    them loses nothing.
    """
    import optuna

    class PerTrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self._inner = _make_sampler(kind, seed)

        def before_trial(self, study, trial):
            self._inner = _make_sampler(kind, (seed * 1_000_003 + trial.number) % (2**31))
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self._inner.reseed_rng()

    return PerTrialSeeded()


def _set_constraints(trial, values: Sequence[float]) -> None:
    for name, value in zip(CONSTRAINT_NAMES, values):
        trial.set_constraint(name, value)


class _SurplusTrial(Exception):
    """Raised when a worker claims a trial after the study already holds the requested number."""


# ------------------------------------------------------------------------------------------------
# Loading results
# ------------------------------------------------------------------------------------------------

def load_result(storage: Any, study_name: str = "edgeopt") -> SearchResult:
    """Rebuild a :class:`SearchResult` from the stored trial records of a study."""
    import optuna

    from ..target import Target

    if isinstance(storage, str) or storage is None:
        url = storage
        storage = make_storage(storage, SearchOptions())
    else:
        url = getattr(storage, "url", None)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as e:
        raise ConfigError(f"no study named {study_name!r} in {_redact(url)!r}") from e
    meta = study.user_attrs.get(META_KEY)
    if not meta:
        raise ConfigError(f"study {study_name!r} was not created by edgeopt (no search settings stored)")
    records = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
    directions = tuple(meta["directions"])
    front, best = pick(records, directions)
    return SearchResult(
        best=best, pareto=front, trials=records, objectives=tuple(meta["objectives"]), directions=directions,
        target=Target.parse(meta["target"]), max_drop=meta["max_drop"], metric=meta.get("metric"),
        baseline=TrialMetrics.from_dict(meta["baseline"]) if meta.get("baseline") else None,
        study_name=study_name, storage_url=url, requested_trials=meta.get("trials"),
        drop_bound=meta.get("drop_bound", "estimate"),
    )


# ------------------------------------------------------------------------------------------------
# The search
# ------------------------------------------------------------------------------------------------

def _counts(study) -> dict[str, int]:
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL", "duplicates")}
    for t in study.get_trials(deepcopy=False):
        if _is_duplicate(t):
            counts["duplicates"] += 1
        else:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    counts["finished"] = counts["COMPLETE"] + counts["PRUNED"]
    return counts


def _is_duplicate(trial) -> bool:
    """A re-proposed recipe, pruned unevaluated: it does not use up the trial budget."""
    return "duplicate_of" in trial.user_attrs


def _budgeted(study) -> list:
    """Trials that count toward the budget: finished (not duplicates), running or queued."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return [t for t in study.get_trials(deepcopy=False, states=states) if not _is_duplicate(t)]


def _check_args(objectives, max_drop, trials, time_budget, drop_bound="upper") -> tuple[str, ...]:
    check_drop_bound(drop_bound)
    objectives = tuple(objectives)
    if not objectives:
        raise ConfigError(f"give at least one objective; choose from {', '.join(OBJECTIVES)}")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives must be distinct; got {list(objectives)}")
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop < 1):
        raise ConfigError(f"max_drop must be a fraction in [0, 1) (0.01 = one point); got {max_drop!r}")
    if not (isinstance(trials, int) and trials >= 1):
        raise ConfigError(f"trials must be a positive integer; got {trials!r}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget > 0):
        raise ConfigError(f"time_budget must be a positive number of seconds; got {time_budget!r}")
    return objectives


def run_search(
    model: Any,
    *,
    data_splits: Mapping[str, Any] | None = None,
    target: Any = "host",
    space: SearchSpace | Sequence[str] | None = None,
    objectives: Sequence[str] = ("latency", "size"),
    max_drop: float = 0.01,
    trials: int = 20,
    time_budget: float | None = None,
    storage: str | None = None,
    resume: bool = False,
    evaluate_trial: Callable[[Any], TrialMetrics] | None = None,
    seed: int = 0,
    metric: str | Callable = "top1",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    options: SearchOptions | None = None,
) -> SearchResult:
    """Search recipes for ``model`` on ``target``: multi-objective, constrained, resumable.

    ``trials`` counts finished trials in the whole study (all workers, all resumed runs);
    ``time_budget`` (seconds) bounds this call. ``storage`` is an optuna database URL (None: in
    memory, or ``sqlite:///<out_dir>/study.db`` when ``out_dir`` is given). Several processes
    given the same URL and ``resume=True`` share one study.

    Raises BudgetError (exit code 2) when no candidate meets every constraint, after writing the
    report to ``out_dir``; the error names the budget and the closest candidate, and carries the
    result as ``.result``.

    >>> from edgeopt.search import run_search   # doctest: +SKIP
    >>> res = run_search("kws.onnx", data_splits=splits, target="cortex-m7", trials=30)   # doctest: +SKIP
    >>> res.best.label(), [t.number for t in res.pareto]   # doctest: +SKIP
    """
    import optuna
    from optuna.trial import TrialState

    from ..evaluation import metric_spec
    from ..target import Target

    options = options or SearchOptions()
    objectives = _check_args(objectives, max_drop, trials, time_budget, options.drop_bound)
    target = Target.parse(target)
    if space is None or (isinstance(space, (list, tuple)) and not isinstance(space, SearchSpace)):
        space = SearchSpace.from_names(space)
    if not space.passes:
        raise ConfigError("the search space holds no passes; register passes in edgeopt/passes or name techniques to search")
    space = space.for_target(target)
    spec = metric_spec(metric) if not callable(metric) or evaluate_trial is None else None
    higher_is_better = spec.higher_is_better if spec else True
    directions = _directions(objectives, higher_is_better)

    baseline: TrialMetrics | None = None
    if evaluate_trial is None:
        evaluator = CandidateEvaluator(model, data_splits=data_splits or {}, target=target, metric=metric,
                                       max_drop=max_drop, seed=seed, screen_rows=options.screen_rows,
                                       latency_rounds=options.latency_rounds, latency=options.latency,
                                       output=options.output)
        try:
            baseline = evaluator.baseline_metrics()
        except ScreenedOut as e:   # the unmodified model may itself be over budget: that is a finding
            baseline = e.metrics
        evaluate_trial = evaluator

    if storage is None and out_dir is not None:
        storage = f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"
    store = make_storage(storage, options)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(store, include_best_trial=False)} if storage else {}
    if options.study_name in existing and existing[options.study_name] and not resume:
        raise ConfigError(f"study {options.study_name!r} in {_redact(storage)!r} already holds {existing[options.study_name]} "
                          "trials; pass resume=True (--resume) to continue it or choose another --study / study name")
    sampler = _seeded_per_trial_sampler(options.sampler, seed)
    study = optuna.create_study(study_name=options.study_name, storage=store, directions=list(directions),
                                sampler=sampler, load_if_exists=True)
    meta = {"objectives": list(objectives), "directions": list(directions), "target": target.to_dict(),
            "max_drop": float(max_drop), "trials": trials, "metric": spec.name if spec else None,
            "baseline": baseline.to_dict() if baseline else None, "space": space.describe(), "seed": seed,
            "drop_bound": options.drop_bound}
    stored = study.user_attrs.get(META_KEY)
    if stored is None:
        study.set_user_attr(META_KEY, to_jsonable(meta))
    elif stored["objectives"] != list(objectives) or stored["target"]["name"] != target.name:
        raise ConfigError(f"study {options.study_name!r} was searching {stored['objectives']} on {stored['target']['name']!r}; "
                          f"cannot resume it with {list(objectives)} on {target.name!r}")
    elif (rule := stored.get("drop_bound", "estimate")) != options.drop_bound:
        # the stored trials' constraints were judged by the other rule: mixing them would be a silent lie
        raise ConfigError(f"study {options.study_name!r} judged the accuracy budget on the drop's {rule!r}; "
                          f"resume it with --drop-bound {rule} or start a new study")
    elif stored.get("trials") != trials:
        study.set_user_attr(META_KEY, {**stored, "trials": trials})   # a resumed search may extend the budget
    if resume:
        _requeue_interrupted(study)

    threshold_expensive = math.ceil(options.screen_fraction * trials)
    seeded_phase2 = {"done": False}

    def objective(trial):
        # Exactly `trials` budgeted trials across all workers: a claim ranked past the budget
        # (another worker took the last slot between our check and our claim) is given back.
        live = sorted(t.number for t in _budgeted(study))
        if live.index(trial.number) >= trials:
            trial.set_user_attr("reason", f"surplus claim: the study already holds its {trials} trials")
            raise _SurplusTrial()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        finished = _counts(study)["finished"]
        expensive_now = space.has_expensive and finished >= threshold_expensive
        if expensive_now:
            # probes (once per reference, recorded in the study) go first in the queue
            _seek_dominance(study, space, directions)
            if not seeded_phase2["done"]:
                seeded_phase2["done"] = True
                # once per study (a late-joining worker sees the mark); a rare double enqueue by two
                # workers at once only yields a duplicate, which is pruned unevaluated
                if not study.user_attrs.get("promising_enqueued"):
                    study.set_user_attr("promising_enqueued", True)
                    _enqueue_promising(study, directions, options.promising)
        fixed_train = any(k.startswith("train__") for k in trial.params)
        try:
            recipe = space.suggest(trial, allow_expensive=expensive_now or fixed_train, seed=seed)
        except EdgeOptError as e:
            trial.set_user_attr("reason", f"recipe cannot be built: {type(e).__name__}: {e}")
            raise optuna.TrialPruned(str(e)) from e
        recipe_dict = to_jsonable(recipe.to_dict())
        key = json.dumps(recipe_dict["steps"], sort_keys=True)
        trial.set_user_attr("recipe", recipe_dict)
        trial.set_user_attr("recipe_key", key)
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            # finished (evaluated, screened out or unbuildable) or running in another worker as an
            # earlier trial: either way this recipe's outcome is, or will be, on record
            earlier = other.state != TrialState.RUNNING or other.number < trial.number
            if (other.number != trial.number and earlier and not _is_duplicate(other)
                    and other.user_attrs.get("recipe_key") == key):
                trial.set_user_attr("reason", f"duplicate of trial {other.number}: not evaluated again")
                trial.set_user_attr("duplicate_of", other.number)
                raise optuna.TrialPruned("duplicate")
        try:
            metrics = evaluate_trial(recipe)
        except ScreenedOut as e:
            trial.set_user_attr("metrics", to_jsonable(e.metrics.to_dict()))
            _set_constraints(trial, constraint_values(e.metrics, target, max_drop, options.drop_bound))
            trial.set_user_attr("reason", e.reason)
            raise optuna.TrialPruned(e.reason) from None
        except EdgeOptError as e:
            trial.set_user_attr("reason", f"candidate cannot be built or run: {type(e).__name__}: {e}")
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        if not isinstance(metrics, TrialMetrics):
            raise ConfigError(f"evaluate_trial must return TrialMetrics; got {type(metrics).__name__}")
        trial.set_user_attr("metrics", to_jsonable(metrics.to_dict()))
        _set_constraints(trial, constraint_values(metrics, target, max_drop, options.drop_bound))
        return tuple(objective_value(metrics, name) for name in objectives)

    deadline = None if time_budget is None else time.monotonic() + time_budget
    bar = _Progress(trials, objectives, enabled=progress)
    heartbeat = storage is not None
    try:
        while True:
            counts = _counts(study)
            bar.update(counts["finished"], study, directions)
            if counts["finished"] >= trials:
                break
            if counts["duplicates"] > 3 * trials:
                break   # the sampler keeps re-proposing evaluated recipes: the space is exhausted
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            if counts["finished"] + counts["RUNNING"] >= trials and counts["WAITING"] == 0:
                # The remaining trials are running elsewhere, or in a dead process: wait for them
                # to finish or for their heartbeat to go stale (then they are retried here).
                if not heartbeat:
                    break
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
                if _counts(study)["WAITING"] == 0:
                    time.sleep(min(options.heartbeat_interval, max(remaining or 1.0, 0.1), 1.0))
                continue
            study.optimize(objective, n_trials=1, catch=(_SurplusTrial,))
    finally:
        bar.close()

    result = load_result(store, options.study_name)
    result.storage_url = storage
    if out_dir is not None:
        result.save(out_dir)
    if result.best is None:
        err = BudgetError(_budget_message(result, time_budget))
        err.result = result
        raise err
    return result


def _requeue_interrupted(study) -> None:
    """Trials a Ctrl-C interrupted are FAIL (not stale): queue their parameters once more."""
    import optuna

    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in retried and t.params:
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, t)


def probe_reference(records: Sequence[TrialRecord], directions: Sequence[str], probed: Sequence[int]) -> TrialRecord | None:
    """The single-technique trial to probe next (see :func:`_seek_dominance`): the best single
    technique so far, unless it was probed already, ``MAX_PROBE_ROUNDS`` references were, or a
    combination of techniques on the front is already at least as good as it on every objective."""
    ref = best_single_technique(records, directions)
    if ref is None or ref.number in probed or len(probed) >= MAX_PROBE_ROUNDS:
        return None
    if any(len(techniques_of(t)) > 1 and no_worse(t.values, ref.values, directions) for t in pareto_front(records, directions)):
        return None
    return ref


def _seek_dominance(study, space: SearchSpace, directions) -> None:
    """Queue the best single technique combined with each expensive pass of the space at that pass's
    mild settings (:meth:`Pass.mild_settings`), keeping the single technique's own parameters.

    The search's pick must be at least as good as the best single technique on every objective.
    Left to the sampler, whether a mild enough combination is ever tried on top of it is chance
    (DS-CNN/KWS: 2 of 3 fresh searches found one; docs/search.md). Called before every trial of the
    expensive phase: when a luckier single-technique variant becomes the reference later and no
    combination beats it, it is probed too (at most ``MAX_PROBE_ROUNDS`` references per study).
    """
    from ..recipe import step_name

    probed = list(study.user_attrs.get("probed_references", []))
    if len(probed) >= MAX_PROBE_ROUNDS:
        return   # called before every trial: do not read every trial record once the rounds are spent
    records = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
    ref = probe_reference(records, directions, probed)
    if ref is None:
        return
    study.set_user_attr("probed_references", probed + [ref.number])
    own = {family_of(p) for p in techniques_of(ref)}
    families = space.families()
    only_ref = {**ref.params, **{f"train__{fam}": NONE for fam, slots in families.items() if slots["train"]}}
    for fam, slots in families.items():
        if fam in own:
            continue   # its expensive pass would replace the technique being combined with
        for cls in slots["train"]:
            step = step_name(cls.name)
            for setting in cls.mild_settings():
                params = {**only_ref, f"train__{fam}": cls.name, **{f"{step}__{k}": v for k, v in setting.items()}}
                study.enqueue_trial(params, user_attrs={"probe_of": ref.number})


def _enqueue_promising(study, directions, count: int) -> None:
    """Re-queue the best cheap recipes so the sampler adds training passes to them."""
    records = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
    for r in pareto_front(records, directions)[:count]:
        if not any(k.startswith("train__") for k in r.params):
            # skip_if_exists would skip it: the cheap trial with these parameters exists by design
            study.enqueue_trial(dict(r.params), user_attrs={"requeued_from": r.number})


def _budget_message(result: SearchResult, time_budget) -> str:
    from ..target import format_bytes

    t = result.target
    measured = [r for r in result.trials if r.metrics is not None and r.constraints is not None]
    if not measured:
        reasons = sorted({r.reason for r in result.trials if r.reason})[:3]
        why = f"; reasons: {'; '.join(reasons)}" if reasons else ""
        limit = f" within the time budget of {time_budget:.0f} s" if time_budget else ""
        return f"no candidate could be evaluated{limit} ({len(result.trials)} trials){why}"

    def excess(r):
        return sum(max(0.0, c) for c in r.constraints)

    closest = min(measured, key=excess)
    worst = max(range(len(CONSTRAINT_NAMES)), key=lambda i: closest.constraints[i])
    m = closest.metrics
    if CONSTRAINT_NAMES[worst] == "ram":
        budget = f"RAM budget of {t.name} ({format_bytes(t.ram_bytes)})"
        has = f"needs {format_bytes(m.ram_bytes)} of RAM ({closest.constraints[worst]:.0%} over)"
    elif CONSTRAINT_NAMES[worst] == "storage":
        budget = f"storage budget of {t.name} ({format_bytes(t.storage_bytes)})"
        has = f"needs {format_bytes(m.size_bytes)} of storage ({closest.constraints[worst]:.0%} over)"
    elif CONSTRAINT_NAMES[worst] == "accuracy_drop":
        budget = f"accuracy budget (max drop {result.max_drop:.4f} {result.metric or ''})".rstrip()
        has = f"drops {m.metric_drop:.4f} on {m.samples} tune rows"
        if result.drop_bound == "upper" and m.metric_drop_ci is not None:
            has += (f" (95% CI upper end {m.metric_drop_ci[1]:.4f}, which the budget is judged on; "
                    "more tune rows narrow the CI, or --drop-bound estimate judges the point estimate)")
    else:
        budget = f"supported ops/dtypes of {t.name}"
        has = f"uses {', '.join(m.unsupported)}"
    recipe = closest.label() if closest.steps else "the unchanged model"
    return (f"no candidate meets the {budget}: the closest, trial {closest.number} ({recipe}), {has}; "
            f"{len(result.trials)} trials are in the report")


class _Progress:
    """Live progress on stderr: trial n/N and the best feasible trial so far."""

    def __init__(self, total: int, objectives, enabled: bool):
        self.total, self.objectives, self.enabled = total, objectives, enabled
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from ..cli._common import console

            self._progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=console(stderr=True), transient=False)
            self._task = self._progress.add_task("", total=total)
            self._progress.start()

    def update(self, finished: int, study, directions) -> None:
        if not self._progress:
            return
        records = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
        best = pick(records, directions)[1]
        text = "no feasible trial yet"
        if best is not None:
            parts = [f"{name}={_fmt(name, v)}" for name, v in zip(self.objectives, best.values)]
            text = f"best: trial {best.number} {' '.join(parts)}"
        self._progress.update(self._task, completed=min(finished, self.total), description=text)

    def close(self) -> None:
        if self._progress:
            self._progress.stop()


def _fmt(name: str, value: float) -> str:
    from ..target import format_bytes

    if name in ("size", "ram"):
        return format_bytes(value)
    if name == "latency":
        return f"{value:.3g} ms"
    if name == "energy":
        return f"{value:.3g} uJ"
    return f"{value:.4g}"
