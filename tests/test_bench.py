"""edgeopt.bench: fresh-process benchmarking on ONNX Runtime and OpenVINO (structure, never timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeopt
from edgeopt.bench import BenchReport, BenchResult, benchmark, measure_inprocess
from edgeopt.errors import ConfigError, DataError, UnsupportedModelError
from edgeopt.model import ModelHandle

QUICK = dict(rounds=2, warmup=1, iterations=5)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def pair_report(dscnn_path, ad_path) -> BenchReport:
    return benchmark([dscnn_path, ad_path], **QUICK)


def _broken_model() -> ModelHandle:
    """A well-formed graph whose only node is an operator no runtime implements."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example.missing")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.missing", 1)])
    return ModelHandle(proto.SerializeToString(), name="broken_custom_op")


def test_results_have_sane_structure(pair_report, dscnn_path, ad_path):
    assert isinstance(pair_report.results[0], BenchResult)
    assert [r.name for r in pair_report.results] == ["dscnn_kws12", "fc_autoencoder_ad01"]
    for result, path in zip(pair_report.results, (dscnn_path, ad_path)):
        lat = result.latency_ms
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert lat["mean"] > 0
        assert result.best_round_median_ms == pytest.approx(lat["p50"])
        assert result.best_round_median_ms == min(result.round_medians_ms)
        assert len(result.round_medians_ms) == QUICK["rounds"]
        assert result.spread == pytest.approx(max(result.round_medians_ms) / min(result.round_medians_ms))
        assert result.spread >= 1.0
        assert result.load_ms > 0
        assert result.peak_rss_bytes > 0
        assert 0 < result.rss_increase_bytes < result.peak_rss_bytes
        assert result.size_bytes == os.path.getsize(path)
        assert (result.runtime, result.precision, result.threads, result.batch) == ("onnxruntime", "f32", 1, 1)
        assert result.iterations == QUICK["iterations"]


def test_ratios_are_against_the_first_model(pair_report):
    first, second = pair_report.ratios()
    assert {k: v for k, v in first.items() if k != "name"} == {
        "latency": 1.0, "size": 1.0, "memory": 1.0, "memory_increase": 1.0, "load": 1.0}
    a, b = pair_report.results
    assert second["size"] == pytest.approx(b.size_bytes / a.size_bytes)
    assert second["latency"] == pytest.approx(b.best_round_median_ms / a.best_round_median_ms)
    assert second["memory"] == pytest.approx(b.peak_rss_bytes / a.peak_rss_bytes)


def test_report_serializes_and_renders(pair_report):
    data = json.loads(json.dumps(pair_report.to_dict()))
    assert data["settings"]["rounds"] == QUICK["rounds"]
    assert len(data["results"]) == 2 and len(data["ratios"]) == 2
    assert data["results"][1]["round_medians_ms"] == list(pair_report.results[1].round_medians_ms)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(pair_report.table())
    text = console.export_text()
    assert "dscnn_kws12" in text and "fc_autoencoder_ad01" in text and "(x" in text


def test_every_round_runs_in_a_fresh_process(pair_report):
    pids = [pid for r in pair_report.results for pid in r.worker_pids]
    assert len(pids) == 2 * QUICK["rounds"]
    assert os.getpid() not in pids
    assert len(set(pids)) == len(pids)


def test_worker_memory_is_not_inflated_by_the_parent(dscnn_path):
    # Linux's ru_maxrss carries the parent's peak into a fork+exec'd child; a parent holding
    # 400 MB must not make a ~60 MB worker report 400 MB.
    ballast = np.ones(400 * 2**20, dtype=np.uint8)
    result = benchmark(dscnn_path, rounds=1, warmup=1, iterations=3).results[0]
    assert ballast.sum() > 0
    assert result.peak_rss_bytes < 300 * 2**20


def test_same_model_twice_gives_two_results(dscnn_path):
    report = benchmark([dscnn_path, dscnn_path], rounds=1, warmup=1, iterations=3)
    assert len(report.results) == 2
    assert report.results[0].name != report.results[1].name
    assert report.ratios()[1]["size"] == 1.0


def test_model_handle_and_explicit_inputs(dscnn, kws_data):
    report = benchmark(dscnn, inputs=kws_data.x[:4], rounds=1, warmup=1, iterations=3)
    result = report.results[0]
    assert result.size_bytes == dscnn.size_bytes
    assert result.batch == 4


def test_size_counts_external_data(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        initializer=[weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "mm.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="mm.weights", size_threshold=0)
    expected = path.stat().st_size + (tmp_path / "mm.weights").stat().st_size
    assert expected > path.stat().st_size + 64 * 32 * 4 - 1
    for runtime in ("onnxruntime", "openvino"):
        assert benchmark(path, runtime=runtime, rounds=1, warmup=1, iterations=2).results[0].size_bytes == expected


def test_batch_sets_the_random_input_batch(ad_path):
    assert benchmark(ad_path, batch=3, rounds=1, warmup=1, iterations=3).results[0].batch == 3


def test_inputs_that_do_not_fit_raise_data_error(dscnn_path):
    with pytest.raises(DataError, match="does not fit"):
        benchmark(dscnn_path, inputs=np.zeros((1, 10, 49, 1), np.float32), rounds=1, iterations=1)


def test_openvino_runs_dscnn_in_f32(dscnn_path):
    result = benchmark(dscnn_path, runtime="openvino", rounds=1, warmup=1, iterations=5).results[0]
    assert result.runtime == "openvino"
    assert result.precision == "f32"
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"]
    assert result.load_ms > 0 and result.peak_rss_bytes > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runtime": "tensorrt"}, r"runtime must be one of \['onnxruntime', 'openvino'\]; got 'tensorrt'"),
        ({"threads": 0}, "threads must be an integer >= 1; got 0"),
        ({"rounds": 0}, "rounds must be an integer >= 1; got 0"),
        ({"iterations": -1}, "iterations must be an integer >= 1"),
        ({"precision": "bf16"}, r"precision for runtime 'onnxruntime' must be one of \['f32'\]; got 'bf16'"),
    ],
)
def test_bad_settings_raise_config_error(dscnn_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        benchmark(dscnn_path, **kwargs)


def test_not_a_model_raises_config_error():
    with pytest.raises(ConfigError, match="model #1 is a int"):
        benchmark([42])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_model_the_runtime_cannot_load_is_named(dscnn_path, runtime):
    with pytest.raises(UnsupportedModelError, match=rf"{runtime} cannot load model 'broken_custom_op'"):
        benchmark([dscnn_path, _broken_model()], runtime=runtime, rounds=1, warmup=1, iterations=2)


def test_measure_inprocess_screens_quickly(dscnn_path):
    stats = measure_inprocess(dscnn_path, iterations=5, warmup=1)
    assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    assert stats["load"] > 0
    with pytest.raises(UnsupportedModelError, match="broken_custom_op"):
        measure_inprocess(_broken_model(), iterations=1)


def test_public_lazy_name():
    assert edgeopt.benchmark is benchmark


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "edgeopt", "bench", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_json_parses(dscnn_path, ad_path):
    proc = _cli(str(dscnn_path), str(ad_path), "--rounds", "1", "--iterations", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["name"] for r in data["results"]] == ["dscnn_kws12", "fc_autoencoder_ad01"]
    assert data["ratios"][0]["latency"] == 1.0
    assert data["results"][1]["size_bytes"] == os.path.getsize(ad_path)


def test_cli_table_and_errors(dscnn_path):
    proc = _cli(str(dscnn_path), "--rounds", "1", "--iterations", "3", "--runtime", "openvino")
    assert proc.returncode == 0, proc.stderr
    assert "dscnn_kws12" in proc.stdout and "p50 ms" in proc.stdout
    bad = _cli(str(dscnn_path), "--threads", "0")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: ConfigError: threads must be an integer >= 1; got 0"


def test_compare_interleaved_structure_and_cycle_budget(dscnn_path, ad_path):
    from edgeopt.bench import Interleaved, compare_interleaved

    result = compare_interleaved([dscnn_path, ad_path], block=3, budget_s=0.001, min_cycles=4, max_cycles=50, warmup=1)
    assert isinstance(result, Interleaved)
    assert result.names == ("dscnn_kws12", "fc_autoencoder_ad01")
    assert result.cycles == 4  # a budget too small for more still gets min_cycles
    assert result.ratios[0] == 1.0 and result.cycle_ratios[0] == 1.0 and result.ratio_iqr[0] == (1.0, 1.0)
    low, high = result.ratio_iqr[1]
    assert 0 < low <= result.cycle_ratios[1] <= high
    # each model's speed is a low quantile of its block medians: at most their median
    assert all(0 < quiet <= median for quiet, median in zip(result.quiet_ms, result.median_ms))
    assert result.ratios[1] == pytest.approx(result.quiet_ms[1] / result.quiet_ms[0])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["names"] == list(result.names) and data["cycles"] == 4 and "alternation" in data["method"]
    capped = compare_interleaved([dscnn_path, dscnn_path], block=2, budget_s=60.0, min_cycles=2, max_cycles=5, warmup=1)
    assert capped.cycles == 5 and capped.names[0] != capped.names[1]


def test_compare_interleaved_names_the_model_that_fails_and_checks_settings(dscnn_path):
    from edgeopt.bench import compare_interleaved

    with pytest.raises(UnsupportedModelError, match="onnxruntime cannot load model 'broken_custom_op'"):
        compare_interleaved([dscnn_path, _broken_model()], budget_s=0.01, min_cycles=1, warmup=1)
    for kwargs, message in (({"block": 0}, "block must be an integer >= 1"), ({"budget_s": 0}, "budget_s must be a positive"),
                            ({"precision": "bf16"}, "precision for runtime 'onnxruntime'")):
        with pytest.raises(ConfigError, match=message):
            compare_interleaved(dscnn_path, **kwargs)
    with pytest.raises(ConfigError, match="at least one model"):
        compare_interleaved([])


def test_cli_alternate_adds_interleaved_ratios(dscnn_path, ad_path):
    proc = _cli(str(dscnn_path), str(ad_path), "--rounds", "1", "--iterations", "3", "--warmup", "1", "--alternate", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["interleaved"]["names"] == ["dscnn_kws12", "fc_autoencoder_ad01"] and data["interleaved"]["ratios"][0] == 1.0
    table = _cli(str(dscnn_path), str(ad_path), "--rounds", "1", "--iterations", "3", "--alternate", "0.2")
    assert table.returncode == 0, table.stderr
    assert "timed in alternation" in table.stdout and "fc_autoencoder_ad01 x" in table.stdout
    bad = _cli(str(dscnn_path), "--rounds", "1", "--iterations", "2", "--alternate", "-1")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: ConfigError: --alternate takes a number of seconds > 0 (0 skips it); got -1"
