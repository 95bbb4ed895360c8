"""The accuracy budget is judged on the drop's 95% CI upper end by default (winner's-curse guard),
or on the point estimate when asked; a study keeps the rule it was started with."""

from __future__ import annotations

import pytest

from edgeopt.errors import BudgetError, ConfigError
from edgeopt.recipe import Recipe
from edgeopt.search import SearchOptions, SearchSpace, TrialMetrics, run_search
from edgeopt.search.study import constraint_values, judged_drop
from edgeopt.target import Target
from _passes import TEST_PASSES

HOST = Target.parse("host")


def _m(drop, ci, size=1000):
    return TrialMetrics(size_bytes=size, ram_bytes=100, latency_ms=1.0, metric_drop=drop,
                        metric_drop_ci=ci, samples=1000)


def test_upper_bound_rejects_a_lucky_estimate_that_the_estimate_rule_accepts():
    # KWS trial 29 of the shuffled 36-trial study: -0.2 pt on the tune rows, CI up to +1.2 pt
    # (it lost 1.94 pt on the held-out rows)
    lucky = _m(-0.002, (-0.016, 0.012))
    assert constraint_values(lucky, HOST, 0.01, "estimate")[0] == pytest.approx(-0.012)
    assert constraint_values(lucky, HOST, 0.01, "upper")[0] == pytest.approx(0.002)   # violated
    assert constraint_values(lucky, HOST, 0.01)[0] > 0                                 # upper is the default
    tight = _m(-0.002, (-0.015, 0.010))
    assert constraint_values(tight, HOST, 0.01)[0] <= 0


def test_without_per_sample_scores_the_estimate_is_all_there_is():
    m = _m(0.004, None)
    assert judged_drop(m, "upper") == judged_drop(m, "estimate") == pytest.approx(0.004)
    assert judged_drop(_m(None, None)) is None


def _fake_evaluator(by_pass):
    """Figures keyed by the recipe's first pass name; the unchanged recipe is the baseline."""
    def evaluate(recipe: Recipe) -> TrialMetrics:
        names = [p.name for p in recipe.passes]
        return by_pass.get(names[0] if names else "none", _m(0.0, (0.0, 0.0), size=4000))
    return evaluate


def _search(tmp_path, drop_bound, by_pass, resume=False, db="s.db"):
    return run_search("unused.onnx", space=SearchSpace(TEST_PASSES), objectives=("size",), max_drop=0.01,
                      trials=12, storage=f"sqlite:///{tmp_path / db}", resume=resume,
                      evaluate_trial=_fake_evaluator(by_pass), progress=False,
                      options=SearchOptions(sampler="random", drop_bound=drop_bound))


def test_search_picks_by_the_bound_and_refuses_to_resume_under_the_other_rule(tmp_path):
    # two techniques: the smaller one only looks within budget because of a lucky estimate
    names = sorted({p.name for p in TEST_PASSES})
    small, safe = names[0], names[1]
    by_pass = {small: _m(-0.002, (-0.016, 0.012), size=1000), safe: _m(0.001, (-0.004, 0.006), size=2000)}
    upper = _search(tmp_path, "upper", by_pass)
    estimate = _search(tmp_path, "estimate", by_pass, db="e.db")
    assert upper.drop_bound == "upper" and estimate.drop_bound == "estimate"
    firsts = {t.recipe["steps"][0]["pass"] for t in upper.pareto if t.recipe and t.recipe["steps"]}
    assert upper.best.metrics.size_bytes == 2000 and small not in firsts
    assert estimate.best.metrics.size_bytes == 1000
    with pytest.raises(ConfigError, match="drop-bound"):
        _search(tmp_path, "estimate", by_pass, resume=True)
    with pytest.raises(ConfigError, match="drop bound must be one of"):
        _search(tmp_path, "lower", by_pass, db="x.db")


def test_budget_error_names_the_upper_bound_it_judged(tmp_path):
    names = sorted({p.name for p in TEST_PASSES})
    by_pass = {n: _m(0.005, (-0.002, 0.013)) for n in names}
    by_pass["none"] = _m(0.005, (-0.002, 0.013))
    with pytest.raises(BudgetError, match="CI upper end 0.0130"):
        _search(tmp_path, "upper", by_pass)
