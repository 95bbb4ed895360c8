"""optimize(): the loop, its choice rules, its report, and its errors (small real subsets: fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeopt
from edgeopt.errors import ConfigError, DataError, UnsupportedModelError

SPLITS = "calib=0:128,eval=128:528"


@pytest.fixture(scope="module")
def result(dscnn_path, kws_data):
    data = kws_data.take(0, 528, name="kws")
    return edgeopt.optimize(dscnn_path, data=data, metric="top1", max_drop=0.02, splits=SPLITS, techniques="int8,int4",
                            goal="size", progress=False, bench_rounds=1, bench_iterations=20, calibration_samples=64,
                            quick=True)


def test_chooses_a_small_int8_model_within_budget_on_held_out_rows(result, dscnn_path):
    best = result.best
    assert best is not None and best.status == "chosen"
    assert best.technique in ("int8", "mixed")
    assert best.size_bytes < 0.4 * dscnn_path.stat().st_size
    drop = -best.drop_eval.value
    assert drop <= 0.02
    assert best.eval.samples == 400  # the eval rows, never the 128 calibration rows
    assert best.drop_eval.ci_low <= best.drop_eval.value <= best.drop_eval.ci_high


def test_pareto_front_of_the_candidate_loop(result):
    front = result.pareto
    assert result.best in front
    for c in front:   # no front member is beaten on both latency and size by another accurate candidate
        assert -c.drop_eval.value <= 0.02
        assert not any(o.latency_ratio < c.latency_ratio and o.size_bytes < c.size_bytes for o in front)


def test_every_candidate_has_a_status_and_a_reason(result):
    assert len(result.candidates) >= 2
    for c in result.candidates:
        assert c.status in ("chosen", "kept", "dropped", "failed")
        if c.status != "chosen" and c.status != "kept":
            assert c.reason
    int4 = next(c for c in result.candidates if c.technique == "int4")
    assert int4.status == "failed" and "largest" in int4.reason  # DS-CNN's head is too small: said honestly


def test_report_holds_baseline_chosen_layers_and_measurement(result):
    from edgeopt.report import to_json

    r = json.loads(to_json(result.report_data))
    for key in ("baseline", "chosen", "candidates", "layers", "recipe", "measurement"):
        assert r[key], key
    assert r["chosen"]["bench"]["best_round_median_ms"] > 0
    assert r["chosen"]["eval"]["ci95"][0] <= r["chosen"]["eval"]["value"]
    assert "top1_agreement" in r["chosen"]["fidelity_eval"]
    assert {row["precision"] for row in r["layers"]} <= {"int8", "fp32"}
    assert all("sqnr_db" in row for row in r["layers"])
    assert "calib" in r["data"]["tuning_note"]  # no tune split given: stated


def test_slower_candidate_is_never_chosen_for_latency(result):
    from edgeopt.optimizer import _choose

    for c in result.candidates:
        if c.status in ("chosen", "kept"):
            c.status = "kept"
            c.latency_ratio = 1.3
    assert _choose(result.candidates, 0.02, "latency") is None
    assert all("slower than the input" in c.reason for c in result.candidates if c.latency_ratio == 1.3)


def test_save_is_atomic_on_interrupt(result, tmp_path, monkeypatch):
    import edgeopt.report as report

    def boom(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_html", boom)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        result.save(out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_max_drop_out_of_range(dscnn_path, kws_data, tmp_path):
    with pytest.raises(ConfigError, match="max_drop"):
        edgeopt.optimize(dscnn_path, data=kws_data.take(0, 40), max_drop=1.5, out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_unknown_metric(dscnn_path, kws_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown metric"):
        edgeopt.optimize(dscnn_path, data=kws_data.take(0, 40), metric="accuracy@7", out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_label_metric_on_unlabelled_data(dscnn_path, kws_data, tmp_path):
    with pytest.raises(DataError, match="agreement"):
        edgeopt.optimize(dscnn_path, data=kws_data.x[:40], metric="top1", out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_model_without_quantizable_ops(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "passes"))
    from _ptq_fixtures import no_weights_model

    with pytest.raises(UnsupportedModelError, match="nothing to quantize"):
        edgeopt.optimize(no_weights_model(), data=np.zeros((20, 8), np.float32), metric="agreement",
                         out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_a_torch_module_without_example_inputs_is_traced_on_the_data(cifar, tmp_path):
    """The three-line API with a PyTorch model: no example_inputs needed, the data's rows trace it."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    x = cifar.x[:96].astype(np.float32) / 255  # NHWC rows; the module wants NCHW
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    result = edgeopt.optimize(net, data=x, metric="agreement", max_drop=0.05, techniques="int8,fp16",
                              goal="size", bench_rounds=1, quick=True)
    assert result.best is not None and result.best.size_ratio < 1
    result.save(tmp_path / "out")
    emitted = edgeopt.load(tmp_path / "out" / "model.onnx")
    with torch.no_grad():
        reference = net(torch.from_numpy(x[48:])).numpy()
    assert np.mean(emitted.predict(x[48:])[0].argmax(1) == reference.argmax(1)) >= 0.9


def test_a_torch_module_that_rejects_the_data_rows_gets_a_typed_error(cifar):
    import torch

    from edgeopt.errors import ModelLoadError

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten()).eval()
    raw = np.ascontiguousarray(cifar.x[:16].transpose(0, 3, 1, 2))  # uint8 pixels, the module wants float
    with pytest.raises(ModelLoadError, match=r"uint8\[3, 32, 32\].*float32.*example_inputs"):
        edgeopt.optimize(net, data=raw, metric="agreement", max_drop=0.05, quick=True, progress=False)


def test_overlapping_splits_are_refused(dscnn_path, kws_data):
    with pytest.raises(ConfigError, match="overlap"):
        edgeopt.optimize(dscnn_path, data=kws_data.take(0, 40), splits="calib=0:30,eval=20:", progress=False)


@pytest.mark.slow
def test_issue_bar_resnet8(resnet8_path, cifar_path, tmp_path):
    """Issue 4 on ResNet-8 / CIFAR (calib 0-499, eval 500-999): drop <= 0.5 pt at <= 0.30x the fp32 file.
    (goal size: a latency goal would make the test's outcome depend on a timing on a shared VM; that
    the latency goal never picks a slower model is test_slower_candidate_is_never_chosen_for_latency.)"""
    result = edgeopt.optimize(resnet8_path, data=cifar_path, max_drop=0.005, splits="calib=0:500,eval=500:",
                              progress=False, goal="size", out=tmp_path / "out")
    best = result.best
    assert -best.drop_eval.value <= 0.005
    assert best.size_ratio <= 0.30


# The issue's latency bars (ResNet-8 <= 0.50x, DS-CNN <= 0.75x fp32) are timings, so no test asserts
# them: benchmarks/ptq_bar.py and benchmarks/ptq_latency.py measure them (docs/ptq-latency.md).


@pytest.mark.slow
def test_issue_bar_dscnn_accuracy_and_size(dscnn_path, kws_data_path, tmp_path):
    """DS-CNN / Speech Commands (calib 0-499, eval 500-4889): drop <= 0.5 pt at <= 0.30x the fp32 file."""
    result = edgeopt.optimize(dscnn_path, data=kws_data_path, max_drop=0.005, splits="calib=0:500,eval=500:",
                              progress=False, goal="size", out=tmp_path / "out")
    best = result.best
    assert -best.drop_eval.value <= 0.005
    assert best.size_ratio <= 0.30


def cifar_as_vww_inputs(cifar_x: np.ndarray) -> np.ndarray:
    """VWW ships no labelled data: CIFAR-10 test images resized to 96x96 (bilinear), RGB / 255, NHWC."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((96, 96), Image.BILINEAR), dtype=np.float32) / 255.0
                     for im in cifar_x])


@pytest.mark.slow
def test_vww_fidelity_without_labels(vww_path, cifar, tmp_path):
    """MobileNetV1 VWW quantized with top-1 agreement >= 99% vs fp32 (--metric agreement, no labels)."""
    x = cifar_as_vww_inputs(cifar.x)
    result = edgeopt.optimize(vww_path, data=x, metric="agreement", max_drop=0.01, splits="calib=0:500,eval=500:",
                              goal="size", progress=False, out=tmp_path / "out")
    assert result.best.eval.value >= 0.99
    assert result.best.size_ratio < 0.35


def test_latency_ratio_pairs_rounds_so_one_lucky_baseline_round_does_not_decide():
    """Round medians as measured once on this VM: the baseline had one fast round among slow ones."""
    from types import SimpleNamespace

    from edgeopt.optimizer import paired_latency_ratio

    baseline = SimpleNamespace(round_medians_ms=(0.517, 0.294, 0.490, 0.518, 0.451, 0.440, 0.386, 0.400, 0.477, 0.445),
                               best_round_median_ms=0.294)
    candidate = SimpleNamespace(round_medians_ms=(0.452, 0.421, 0.374, 0.446, 0.416, 0.359, 0.414, 0.424, 0.369, 0.443),
                                best_round_median_ms=0.359)
    assert candidate.best_round_median_ms / baseline.best_round_median_ms > 1.2  # best-round ratio: "slower"
    assert 0.8 < paired_latency_ratio(candidate, baseline) < 1.0  # faster in 7 of the 10 same-round pairs


def test_confirmation_remeasures_every_candidate_screened_close_to_the_fastest():
    """Top 3 by screening, plus any other within 15% of the fastest (at most 6): a graph that one noisy
    screening run puts fourth, a few percent behind, still gets its longer second measurement."""
    from types import SimpleNamespace

    from edgeopt.optimizer import Candidate, _contenders

    def cand(name, ratio, drop=0.0, size=1000):
        return Candidate(name, "int8", model=SimpleNamespace(size_bytes=size), status="kept", latency_ratio=ratio,
                         eval=SimpleNamespace(higher_is_better=True), drop_eval=SimpleNamespace(value=-drop))

    pool = [cand("a", 0.80, size=900), cand("b", 0.78), cand("c", 0.79), cand("d", 0.84), cand("e", 0.95),
            cand("f", 0.60, drop=0.02), cand("g", 0.85)]
    assert [c.name for c in _contenders(pool, 0.005, "latency")] == ["b", "c", "a", "d", "g"]  # f is inaccurate
    many = [cand(str(i), 0.70 + i / 1000) for i in range(10)]
    assert len(_contenders(many, 0.005, "latency")) == 6
    assert [c.name for c in _contenders(pool, 0.005, "size")] == ["a", "b", "c"]  # size goal: the 3 smallest


def test_latency_ratios_come_from_the_interleaved_run_unless_the_models_are_too_big(result, dscnn_path, kws_data, monkeypatch):
    """Every benchmarked candidate's ratio is the in-process alternating one (its fresh-process ratio is
    kept beside it); models too large to load side by side keep the fresh-process ratios, with a note."""
    timed = [c for c in result.candidates if c.bench]
    assert timed and all("interleaved_cycle_ratio" in c.bench and "fresh_process_ratio" in c.bench for c in timed)
    assert result.report_data["measurement"]["bench_settings"]["interleaved"]["cycles"] >= 1
    import edgeopt.optimizer as optimizer_module

    monkeypatch.setattr(optimizer_module, "INTERLEAVE_MAX_BYTES", 0)
    small = edgeopt.optimize(dscnn_path, data=kws_data.take(0, 528, name="kws"), metric="top1", max_drop=0.02,
                             splits=SPLITS, techniques="int8", goal="size", progress=False, bench_rounds=1,
                             bench_iterations=20, calibration_samples=64, quick=True)
    assert any("too much to load side by side" in n for n in small.report_data["settings"]["notes"])
    assert all("interleaved_cycle_ratio" not in c.bench for c in small.candidates if c.bench)
    assert "interleaved" not in small.report_data["measurement"]["bench_settings"]
