"""Cheap screening before expensive passes: training passes are offered only after the first
share of trials, and first on top of the best cheap recipes (re-queued with their parameters)."""

from __future__ import annotations

from edgeopt.search import SearchOptions, SearchSpace, run_search
from _passes import DynamicInt8, ThresholdPrune, TrainCalibratedInt8, TrainedThresholdPrune


def test_training_passes_only_after_cheap_screening(dscnn, kws_data):
    splits = kws_data.splits(tune="0:300", calib="300:400", eval="400:500")
    splits["train"] = kws_data.take(500, 700)
    space = SearchSpace((DynamicInt8, ThresholdPrune, TrainCalibratedInt8))
    options = SearchOptions(sampler="random", screen_fraction=0.5, promising=2)
    result = run_search(dscnn, data_splits=splits, target="host", space=space, max_drop=0.05, trials=8,
                        progress=False, options=options, seed=4)
    trials = sorted(result.trials, key=lambda t: t.number)
    first = trials[:4]
    assert all(not any(k.startswith("train__") for k in t.params) for t in first)
    later = [t for t in trials if any(k.startswith("train__") for k in t.params)]
    assert later, "no trial was offered the training pass after screening"
    # the best cheap recipes (feasible after screening) were re-queued: their exact cheap
    # parameters reappear, now with a train__ choice
    cheap_feasible = [dict(t.params) for t in first if t.feasible]
    assert cheap_feasible
    requeued = [{k: v for k, v in t.params.items() if not k.startswith(("train__", "quantize_train"))} for t in later]
    assert any(c in requeued for c in cheap_feasible)


def test_best_single_technique_is_probed_with_each_expensive_pass_at_its_mild_settings(dscnn, kws_data):
    from edgeopt.search.study import best_single_technique

    splits = kws_data.splits(tune="0:300", calib="300:400", eval="400:500")
    splits["train"] = kws_data.take(500, 700)
    space = SearchSpace((DynamicInt8, TrainedThresholdPrune))
    options = SearchOptions(sampler="random", screen_fraction=0.5, promising=1)
    result = run_search(dscnn, data_splits=splits, target="host", space=space, max_drop=0.05, trials=6,
                        progress=False, options=options, seed=2)
    trials = sorted(result.trials, key=lambda t: t.number)
    cheap = [t for t in trials if not any(k.startswith("train__") for k in t.params)]
    ref = best_single_technique(cheap[:3], result.directions)
    assert ref is not None and ref.steps == ["quantize.dynamic_int8"]
    # the first trial of the expensive phase is the probe: the reference's own parameters, plus the
    # structural pass at its mild setting
    probe = next(t for t in trials if t.params.get("train__prune") == "prune.trained_threshold")
    assert probe.params["prune_trained_threshold__sparsity"] == 0.05
    assert {k: v for k, v in probe.params.items() if k in ref.params} == dict(ref.params)
    assert probe.steps == ["prune.trained_threshold", "quantize.dynamic_int8"]
    assert probe.state == "COMPLETE" and probe.feasible
    assert probe.origin.startswith(f"probe: trial {ref.number} ")   # the report says why it ran
