"""The search on a real model (DS-CNN / Speech Commands) with real passes: constraints are
constraints, unbuildable candidates are pruned trials, budgets nobody meets raise BudgetError
with the report written, screening stops over-budget candidates before evaluation."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import BudgetError, ConfigError
from edgeopt.passes.base import PassContext
from edgeopt.recipe import Recipe
from edgeopt.search import SearchOptions, SearchSpace, TrialMetrics, load_result, pareto_front, run_search
from _passes import TEST_PASSES, DynamicInt8, StaticInt8, ThresholdPrune

BY_NAME = {p.name: p for p in TEST_PASSES}
OPTS = SearchOptions(heartbeat_interval=1, grace_period=2)


@pytest.fixture(scope="module")
def splits(kws_data):
    # DATA.md convention: disjoint rows for tuning and calibration
    return kws_data.splits(tune="0:300", calib="300:500")


def _replay(record, model, splits):
    passes = [BY_NAME[s["pass"]](**s["params"]) for s in record.recipe["steps"]]
    out, _ = Recipe.of(passes, seed=record.recipe["seed"]).apply(model, PassContext(calib=splits["calib"], tune=splits["tune"]))
    return out


def _board(tmp_path, storage_kib: int, ram_kib: int = 512):
    # an ONNX Runtime device: budgets judged on the graph (runtime "c" would build real firmware)
    path = tmp_path / "tiny_board.yaml"
    path.write_text(
        f"runtime: onnxruntime\ndtypes: [int8, fp32]\nram_bytes: {ram_kib} KiB\nstorage_bytes: {storage_kib} KiB\n"
        "cost: {macs_per_second: {int8: 3.0e8, fp32: 1.0e8}, memory_bandwidth_bytes_per_s: 4.0e8, overlap_compute_and_memory: false}\n"
        "energy: {memory: sram}\n")
    return str(path)


def test_search_on_rpi4_records_constraints_and_a_pareto_front(dscnn, splits, tmp_path):
    out = tmp_path / "out"
    result = run_search(dscnn, data_splits=splits, target="rpi4", space=SearchSpace(TEST_PASSES),
                        objectives=("latency", "size"), max_drop=0.02, trials=8, out_dir=out, progress=False, options=OPTS)
    finished = [t for t in result.trials if t.state in ("COMPLETE", "PRUNED") and t.duplicate_of is None]
    assert len(finished) == 8   # re-proposed recipes are pruned unevaluated and do not use up the budget
    for t in result.trials:
        if t.duplicate_of is not None:
            assert result.trials[t.duplicate_of].params == t.params and t.metrics is None
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert complete, [t.reason for t in result.trials]
    for t in complete:
        m = t.metrics
        # objectives are the raw figures, never penalised; budgets live in the constraints
        assert t.values == (pytest.approx(m.latency_ms), pytest.approx(m.size_bytes))
        # the budget is judged on the drop's 95% CI upper end (the default drop_bound)
        assert t.constraints[0] == pytest.approx(m.metric_drop_ci[1] - 0.02)
        assert t.constraints[2] == pytest.approx(m.size_bytes / (8 * 1024**3) - 1)
        assert t.feasible == all(c <= 0 for c in t.constraints)
        assert m.latency_method == "estimated" and m.samples == 300
    for t in result.trials:
        if t.state == "PRUNED":
            assert t.reason
    # the front: feasible, and no feasible trial dominates a member
    feasible = [t for t in complete if t.feasible]
    for p in result.pareto:
        assert p.feasible
        assert not any(all(a <= b for a, b in zip(q.values, p.values)) and q.values != p.values for q in feasible)
    assert result.best in result.pareto
    # the stored recipe reproduces the recorded candidate
    replayed = _replay(result.best, dscnn, splits)
    assert replayed.size_bytes == result.best.metrics.size_bytes
    assert result.baseline.size_bytes == dscnn.size_bytes and result.baseline.metric_drop == 0
    # everything is read back from the study store
    again = load_result(result.storage_url)
    assert [(t.number, t.state, t.values) for t in again.trials] == [(t.number, t.state, t.values) for t in result.trials]
    summary = json.loads((out / "search.json").read_text())
    assert summary["best"] == result.best.number and len(summary["trials"]) == len(result.trials)
    assert (out / "search_report.html").stat().st_size > 100_000  # plotly.js is inlined
    # a finished study is not silently overwritten
    with pytest.raises(ConfigError, match="resume"):
        run_search(dscnn, data_splits=splits, target="rpi4", space=SearchSpace(TEST_PASSES), trials=8,
                   out_dir=out, progress=False, options=OPTS)


def test_candidate_that_cannot_be_built_is_a_pruned_trial(dscnn, splits):
    # no calibration split: the static quantizer's requirement is unmet for every recipe that uses it
    result = run_search(dscnn, data_splits={"tune": splits["tune"]}, target="host", space=SearchSpace((StaticInt8, ThresholdPrune)),
                        max_drop=0.5, trials=6, progress=False, options=SearchOptions(sampler="random"), seed=3)
    unbuildable = [t for t in result.trials if t.state == "PRUNED" and "calib" in (t.reason or "")]
    assert unbuildable, [(t.label(), t.reason) for t in result.trials]
    assert all("quantize.static_int8" in t.steps for t in unbuildable)
    assert result.best is not None and "quantize.static_int8" not in result.best.steps


def test_over_budget_candidates_are_screened_before_evaluation(dscnn, splits, tmp_path):
    # 80 KiB of storage: the fp32 model (98 KiB) is over, int8 candidates fit
    result = run_search(dscnn, data_splits=splits, target=_board(tmp_path, 80), space=SearchSpace((DynamicInt8, ThresholdPrune)),
                        max_drop=0.5, trials=6, progress=False, options=SearchOptions(sampler="random"), seed=1)
    screened = [t for t in result.trials if t.reason and t.reason.startswith("static estimate")]
    assert screened
    for t in screened:
        assert t.state == "PRUNED" and t.metrics.stage == "static"
        assert t.metrics.metric_value is None and t.metrics.latency_ms is None   # never run on data
        assert t.metrics.size_bytes > 80 * 1024 and t.constraints[2] > 0
    assert result.baseline.size_bytes > 80 * 1024


def test_budget_nothing_meets_raises_budget_error_with_report(dscnn, splits, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(BudgetError) as info:
        run_search(dscnn, data_splits=splits, target=_board(tmp_path, 20), space=SearchSpace((DynamicInt8,)),
                   max_drop=0.5, trials=3, out_dir=out, progress=False, options=OPTS)
    err = info.value
    assert err.exit_code == 2
    msg = str(err)
    assert "storage budget of tiny_board (20.0 KiB)" in msg and "the closest, trial" in msg
    closest = min((t for t in err.result.trials if t.metrics), key=lambda t: t.metrics.size_bytes)
    assert f"trial {closest.number} ({closest.label()})" in msg
    assert err.result.best is None and err.result.pareto == []
    assert (out / "search_report.html").is_file() and (out / "search.json").is_file()


def test_pluggable_evaluate_trial_without_data(dscnn):
    calls = []

    def size_only(recipe):
        model, _ = recipe.apply(dscnn)
        calls.append(len(recipe.passes))
        return TrialMetrics(size_bytes=model.size_bytes, ram_bytes=0)

    result = run_search(dscnn, target="host", space=SearchSpace((DynamicInt8,)), objectives=("size",), trials=3,
                        evaluate_trial=size_only, progress=False, options=SearchOptions(sampler="random"), seed=2)
    assert calls
    assert result.best.values[0] == min(t.values[0] for t in result.trials if t.values)
    assert result.baseline is None


def test_time_budget_stops_the_search(dscnn, splits):
    result = run_search(dscnn, data_splits=splits, target="rpi4", space=SearchSpace(TEST_PASSES), trials=500,
                        time_budget=1.0, max_drop=0.5, progress=False, options=OPTS)
    assert 0 < len(result.trials) < 500


def test_bad_arguments_are_config_errors(dscnn, splits):
    space = SearchSpace((DynamicInt8,))
    with pytest.raises(ConfigError, match="objective"):
        run_search(dscnn, data_splits=splits, space=space, objectives=("speed",), progress=False)
    with pytest.raises(ConfigError, match="max_drop"):
        run_search(dscnn, data_splits=splits, space=space, max_drop=1.5, progress=False)
    with pytest.raises(ConfigError, match="tune"):
        run_search(dscnn, data_splits={"calib": splits["calib"]}, space=space, progress=False)
    with pytest.raises(ConfigError, match="database URL"):
        run_search(dscnn, data_splits=splits, space=space, storage="runs/x.db", progress=False)


def test_pareto_front_helper_ignores_infeasible():
    from edgeopt.search import TrialRecord

    def rec(n, values, feasible=True):
        return TrialRecord(n, "COMPLETE", {}, None, None, (-1.0 if feasible else 1.0, -1.0, -1.0, 0.0), values)

    records = [rec(0, (1.0, 5.0)), rec(1, (2.0, 2.0)), rec(2, (3.0, 3.0)), rec(3, (0.5, 0.5), feasible=False)]
    assert [r.number for r in pareto_front(records, ("minimize", "minimize"))] == [0, 1]
    assert [r.number for r in pareto_front(records, ("minimize", "maximize"))] == [0]  # (1, 5) dominates both others


def test_microcontroller_target_screens_what_the_c_generator_cannot_compile(dscnn, splits):
    # cortex-m7 runs generated C: int8 QDQ graphs only. Dynamic quantization (ConvInteger, fp32
    # activations) is screened out unevaluated; static QDQ int8 is feasible. The fp32 baseline is
    # still measured in full for the report, and marked as not runnable there.
    result = run_search(dscnn, data_splits=splits, target="cortex-m7", space=SearchSpace((DynamicInt8, StaticInt8)),
                        max_drop=0.05, trials=6, progress=False, options=SearchOptions(sampler="random"), seed=5)
    assert "dtype:fp32" in result.baseline.unsupported and result.baseline.metric_value is not None
    assert result.baseline.latency_method == "estimated" and result.baseline.latency_ms > 0
    for t in result.trials:
        if "quantize.dynamic_int8" in t.steps and t.duplicate_of is None:
            assert t.state == "PRUNED" and "cannot run" in t.reason and "op:DynamicQuantizeLinear" in t.reason
    assert result.best is not None and result.best.steps == ["quantize.static_int8"]
    assert result.best.metrics.unsupported == () and result.best.metrics.macs == {"int8": 2_656_768}
    # MCU budgets are checked on the generated code's real numbers, not the graph estimate
    extra = result.best.metrics.extra
    assert "arm-none-eabi-size" in extra["budget_source"]
    assert result.best.metrics.ram_bytes >= extra["c_arena_bytes"] > 0
    assert result.best.metrics.size_bytes != extra["estimated_size_bytes"]  # linked firmware, not the ONNX file
