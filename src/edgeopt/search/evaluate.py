"""Evaluating one search candidate: apply its recipe, screen it cheaply, then measure it.

``evaluate_trial(recipe) -> TrialMetrics`` is the pluggable step of the search. The default,
:class:`CandidateEvaluator`, does it in order of cost so that hopeless candidates stop early:

1. apply the recipe (a pass that fails raises PassError: the trial is pruned, not a crash);
2. static figures from the graph (bytes on disk, peak RAM, MACs): a candidate over the target's
   storage or RAM budget is screened out (:class:`ScreenedOut`) before any inference;
3. the task metric on a screening subset of the tune split: a candidate whose accuracy drop is
   above the allowed drop even at the optimistic end of its 95% interval is screened out;
4. the metric on the whole tune split, latency (measured on the host target, else estimated from
   the target's cost model) and energy (estimated).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from .._json import to_jsonable
from ..errors import ConfigError, DataError
from ._static import StaticFigures, static_figures, unsupported_on


@dataclass(frozen=True)
class TrialMetrics:
    """What one candidate achieved. Fields a stage did not reach are None.

    ``metric_drop`` is oriented so that positive means worse than the baseline (for accuracy:
    baseline - candidate; for an error metric: candidate - baseline).
    """

    size_bytes: int
    ram_bytes: int
    metric: str | None = None
    metric_value: float | None = None
    metric_drop: float | None = None
    metric_drop_ci: tuple[float, float] | None = None
    samples: int | None = None
    latency_ms: float | None = None
    latency_method: str | None = None      # "measured" (host, ONNX Runtime) or "estimated" (cost model)
    energy_uj: float | None = None          # always an estimate
    macs: Mapping[str, int] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()
    stage: str = "full"                     # "static" / "screen" / "full": how far evaluation got
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs"] = dict(self.macs)
        d["unsupported"] = list(self.unsupported)
        d["metric_drop_ci"] = list(self.metric_drop_ci) if self.metric_drop_ci else None
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialMetrics":
        d = dict(d)
        if d.get("metric_drop_ci"):
            d["metric_drop_ci"] = tuple(d["metric_drop_ci"])
        d["unsupported"] = tuple(d.get("unsupported") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class ScreenedOut(Exception):
    """A candidate stopped by a cheap check; the search records it as a pruned trial with its figures."""

    def __init__(self, reason: str, metrics: TrialMetrics):
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics


def _drop(candidate, baseline, higher_is_better: bool) -> tuple[float, tuple[float, float] | None]:
    from ..evaluation import paired_difference

    sign = -1.0 if higher_is_better else 1.0
    if candidate.per_sample is not None and baseline.per_sample is not None:
        diff = paired_difference(candidate, baseline)
        lo, hi = sorted((sign * diff.ci_low, sign * diff.ci_high))
        return sign * diff.value, (lo, hi)
    return sign * (candidate.value - baseline.value), None


class CandidateEvaluator:
    """The default ``evaluate_trial``: see the module docstring for its stages.

    ``screen_rows``: rows of the tune split used for the cheap accuracy screen (0 disables it).
    """

    def __init__(self, model, *, data_splits: Mapping[str, Any], target, metric: str | Callable = "top1",
                 max_drop: float = 0.01, seed: int = 0, screen_rows: int | None = None, latency_rounds: int = 5,
                 latency: str = "inprocess", output: str | int | None = None):
        from ..data import fit_to_model
        from ..evaluation import metric_spec
        from ..model import load
        from ..target import Target

        self.model = load(model)
        self.target = Target.parse(target)
        self.metric = metric
        self.max_drop = float(max_drop)
        self.seed = seed
        self.latency_rounds = latency_rounds
        if latency not in ("inprocess", "bench"):
            raise ConfigError(f"latency measurement must be 'inprocess' or 'bench'; got {latency!r}")
        self.latency = latency
        splits = dict(data_splits or {})
        if splits.get("tune") is None:
            raise ConfigError("the search needs a 'tune' split to compare candidates on (rows never used for "
                              f"calibration or final evaluation); got splits {sorted(k for k, v in splits.items() if v is not None)}")
        self.splits = {k: fit_to_model(v, self.model) for k, v in splits.items() if v is not None}
        self.tune = self.splits["tune"]
        self.spec = metric_spec(metric)
        if self.spec.needs_labels and not self.tune.has_labels:
            raise DataError(f"metric {self.spec.name!r} needs labels but the tune split has none; use metric='agreement'")
        n = len(self.tune)
        self.screen_rows = min(n, max(100, n // 4)) if screen_rows is None else min(screen_rows, n)
        # the scored output, by name (passes keep every output and its name)
        self.output = self.model.output_name(output)
        self._reference = self.model.predict(self.tune.x, outputs=[self.output])[0]
        self.baseline = self._score(self._reference, self.tune)
        self.baseline_static = static_figures(self.model)

    # -- helpers ---------------------------------------------------------------------------------
    def _score(self, outputs, data, reference=None):
        from ..evaluation import score

        ref = self._reference if reference is None else reference
        return score(self.metric, outputs, data.y, inputs=data.x, reference=ref[: len(outputs)])

    def context(self):
        from ..passes.base import PassContext

        # The tune split judges candidates, so passes never see it: fine-tuning passes train on
        # `train` (or fall back to the calibration rows), and distil from the original model.
        return PassContext(calib=self.splits.get("calib"), tune=None, train=self.splits.get("train"),
                           metric=self.metric, target=self.target, seed=self.seed, teacher=self.model,
                           options={"output": self.output})

    def measure_latency_ms(self, model) -> float:
        """Best over rounds of the per-round median latency, batch 1, the target's thread count.

        ``latency="bench"`` uses :func:`edgeopt.bench.benchmark` (fresh processes, the reference
        method, ~seconds per candidate); the default times candidates in this process, which costs
        milliseconds and treats every candidate alike, so their ranking is fair.
        """
        if self.latency == "bench":
            from ..bench import benchmark

            report = benchmark([model], threads=self.target.threads, rounds=self.latency_rounds)
            return float(report.results[0].best_round_median_ms)
        from ..model import make_session

        session = make_session(model.onnx_bytes, threads=self.target.threads)
        feeds = model.example_inputs(batch=1, seed=self.seed)
        for _ in range(5):
            session.run(None, feeds)
        medians = []
        for _ in range(self.latency_rounds):
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times))
        return min(medians) * 1e3

    # -- the stages ------------------------------------------------------------------------------
    def static_metrics(self, candidate, figures: StaticFigures | None = None) -> TrialMetrics:
        figures = figures or static_figures(candidate)
        return TrialMetrics(size_bytes=figures.size_bytes, ram_bytes=figures.ram_bytes(self.target.runtime),
                            macs=dict(figures.macs_by_dtype), unsupported=tuple(unsupported_on(self.target, figures)),
                            stage="static",
                            extra={"weight_bytes": figures.weight_bytes, "activation_peak_bytes": figures.activation_peak_bytes,
                                   "bytes_moved": figures.bytes_moved})

    def c_metrics(self, candidate, metrics: TrialMetrics) -> TrialMetrics:
        """For C targets the budgets are checked on the generated code: the firmware is generated
        and linked, and flash / RAM come from arm-none-eabi-size (not the graph estimate)."""
        from dataclasses import replace

        from ..codegen import c_budget_figures
        from ..errors import UnsupportedModelError

        try:
            c = c_budget_figures(candidate, self.target.cpu or "cortex-m4")
        except UnsupportedModelError as e:
            raise ScreenedOut(f"the C generator cannot compile it: {e}", metrics) from e
        extra = {**metrics.extra, "estimated_size_bytes": metrics.size_bytes, "estimated_ram_bytes": metrics.ram_bytes,
                 "c_arena_bytes": c["arena_bytes"], "budget_source": c["source"]}
        return replace(metrics, size_bytes=c["flash_bytes"], ram_bytes=c["ram_bytes"], extra=extra)

    def over_budget(self, metrics: TrialMetrics) -> str | None:
        t = self.target
        if metrics.unsupported:
            return f"{t.name} cannot run {', '.join(metrics.unsupported)}"
        if t.storage_bytes is not None and metrics.size_bytes > t.storage_bytes:
            return f"storage {metrics.size_bytes} B > budget {t.storage_bytes} B"
        if t.ram_bytes is not None and metrics.ram_bytes > t.ram_bytes:
            return f"RAM {metrics.ram_bytes} B > budget {t.ram_bytes} B"
        return None

    def __call__(self, recipe, *, screen: bool = True) -> TrialMetrics:
        """Apply ``recipe`` and measure the candidate; ``screen=False`` measures it fully even if a
        cheap check fails (used for the baseline, which the report always shows)."""
        from dataclasses import replace

        import numpy as np

        # seeded exactly as edgeopt.optimizer.replay does, so `edgeopt apply` rebuilds this candidate
        rng_state = np.random.get_state()
        np.random.seed(recipe.seed)
        try:
            candidate, stats = recipe.apply(self.model, self.context())
        finally:
            np.random.set_state(rng_state)
        figures = static_figures(candidate)
        metrics = self.static_metrics(candidate, figures)
        if self.target.runtime == "c" and screen and not metrics.unsupported:
            metrics = self.c_metrics(candidate, metrics)
        reason = self.over_budget(metrics)
        if reason and screen:
            raise ScreenedOut(f"static estimate: {reason}", metrics)

        if screen and (self.spec.needs_labels or self.spec.name in ("agreement", "deviation")):
            if 0 < self.screen_rows < len(self.tune):
                sub = self.tune.take(0, self.screen_rows)
                outputs_screen = candidate.predict(sub.x, outputs=[self.output])[0]
                base_sub = self._score(self._reference[: self.screen_rows], sub)
                cand_sub = self._score(outputs_screen, sub)
                drop, ci = _drop(cand_sub, base_sub, self.spec.higher_is_better)
                if ci is not None and ci[0] > self.max_drop:
                    raise ScreenedOut(
                        f"screen: {self.spec.name} drop {drop:.4f} (95% CI {ci[0]:.4f}..{ci[1]:.4f}) on {self.screen_rows} "
                        f"tune rows is above the allowed {self.max_drop:.4f}",
                        replace(metrics, metric=self.spec.name, metric_value=cand_sub.value, metric_drop=drop,
                                metric_drop_ci=ci, samples=self.screen_rows, stage="screen"))

        outputs = candidate.predict(self.tune.x, outputs=[self.output])[0]
        evaluation = self._score(outputs, self.tune)
        drop, ci = _drop(evaluation, self.baseline, self.spec.higher_is_better)

        if self.target.measures_latency:
            latency, how = self.measure_latency_ms(candidate), "measured"
        else:
            # a dtype the target cannot run (the candidate is infeasible anyway) is estimated at the
            # fp32 rate, as if emulated, so the figure still exists for the report
            rates = self.target.cost.macs_per_second
            macs = {(d if d in rates else "fp32"): n for d, n in figures.macs_by_dtype.items()}
            latency, how = self.target.estimate_latency(macs, figures.bytes_moved).value, "estimated"
        energy = self.target.estimate_energy(figures.macs_by_dtype, figures.bytes_moved).value
        extra = dict(metrics.extra)
        extra["fidelity"] = dict(evaluation.fidelity)
        extra["pass_stats"] = to_jsonable(stats, strict=False)
        return replace(metrics, metric=self.spec.name, metric_value=float(evaluation.value), metric_drop=float(drop),
                       metric_drop_ci=ci, samples=len(self.tune), latency_ms=float(latency), latency_method=how,
                       energy_uj=float(energy), stage="full", extra=extra)

    def baseline_metrics(self) -> TrialMetrics:
        """The unmodified model measured exactly like a candidate (the reference point of the report)."""
        from ..recipe import Recipe

        return self(Recipe.of([]), screen=False)
