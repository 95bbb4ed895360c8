"""Target-aware multi-objective search over compression recipes (optuna).

>>> from edgeopt.search import run_search, SearchSpace   # doctest: +SKIP
>>> result = run_search(model, data_splits=splits, target="cortex-m7", max_drop=0.01, trials=40)   # doctest: +SKIP
>>> result.best.label(), len(result.pareto)   # doctest: +SKIP
"""

from .evaluate import CandidateEvaluator, ScreenedOut, TrialMetrics
from .space import SearchSpace
from .study import (SearchOptions, SearchResult, TrialRecord, constraint_values, load_result, make_storage,
                    pareto_front, run_search)

__all__ = ["CandidateEvaluator", "ScreenedOut", "TrialMetrics", "SearchSpace", "SearchOptions", "SearchResult",
           "TrialRecord", "constraint_values", "load_result", "make_storage", "pareto_front", "run_search"]
