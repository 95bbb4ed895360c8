"""Models like a voice-activity detector (the real Silero VAD has exactly this interface): a chunk of
samples whose length is a dynamic dimension, a scalar sample-rate input with no batch axis, and one
probability per row. Found running `edgeopt profile/optimize` on silero_vad_16k_op15.onnx: the rows'
sample rate could not be fed, the profile sized the chunk as 1 sample, and --metric agreement or
cosine scored every candidate as perfect (one value per row: argmax is always 0)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.errors import ConfigError, DataError
from edgeopt.evaluation import score


def _vad_like() -> edgeopt.ModelHandle:
    """y = sigmoid(mean over the chunk of (x @ w) * sr / 16000): a (batch, sequence) chunk and a
    scalar int64 ``sr``, output (batch, 1)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 8)).astype(np.float32)
    v = rng.standard_normal((8, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis2"], ["x3"]),                       # (b, seq, 1)
        helper.make_node("MatMul", ["x3", "w"], ["h"], name="frontend"),              # (b, seq, 8)
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("ReduceMean", ["hr"], ["pooled"], axes=[1], keepdims=0),     # (b, 8)
        helper.make_node("MatMul", ["pooled", "v"], ["logit"], name="head"),          # (b, 1)
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "k16"], ["rate"]),
        helper.make_node("Mul", ["logit", "rate"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2"), numpy_helper.from_array(np.float32(16000.0), "k16")])
    return edgeopt.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), name="vad_like")


@pytest.fixture(scope="module")
def vad():
    return _vad_like()


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    path = tmp_path_factory.mktemp("vad") / "chunks.npz"
    np.savez(path, x=x, sr=np.full(200, 16000, np.int64))
    return x, path


def test_a_scalar_input_takes_the_rows_common_value(vad, chunks):
    x, _ = chunks
    (prob,) = vad.predict({"x": x, "sr": np.full(len(x), 8000, np.int64)})
    (full,) = vad.predict({"x": x, "sr": np.full(len(x), 16000, np.int64)})
    assert prob.shape == (200, 1)
    assert not np.allclose(prob, full)  # the value reached the model
    (one,) = vad.run({"x": x[:3], "sr": np.array(16000, np.int64)})
    np.testing.assert_allclose(full[:3], one, rtol=1e-6)
    with pytest.raises(DataError, match="no batch axis.*same value"):
        vad.predict({"x": x[:4], "sr": np.array([16000, 16000, 8000, 16000], np.int64)})


def test_profile_sizes_dynamic_dimensions_from_the_data(vad, chunks):
    _, path = chunks
    without = edgeopt.profile(vad, measure=False)
    from edgeopt.data import load_data

    with_data = edgeopt.profile(vad, data=load_data(path, x_key="x,sr"), measure=False)
    assert without.macs_by_op_type["MatMul"] == 1 * 8 + 8       # the chunk counted as 1 sample
    assert with_data.macs_by_op_type["MatMul"] == 64 * 8 + 8    # 64 samples, as the data has them
    assert any("counted as 1" in n for n in without.notes)
    assert not any("counted as 1" in n for n in with_data.notes)


def test_row_comparing_metrics_refuse_one_value_per_row():
    out = np.random.default_rng(2).random((50, 1)).astype(np.float32)
    other = np.random.default_rng(3).random((50, 1)).astype(np.float32)
    for metric in ("agreement", "cosine"):
        with pytest.raises(ConfigError, match="one value per row.*deviation"):
            score(metric, out, None, reference=other)
    with pytest.raises(ConfigError, match="one value per row"):
        score("top1", out, np.zeros(50, np.int64))


def test_deviation_is_the_mean_absolute_difference_with_an_interval():
    rng = np.random.default_rng(4)
    ref = rng.random((400, 3))
    out = ref + rng.normal(0, 0.05, ref.shape)
    ev = score("deviation", out, None, reference=ref)
    assert ev.value == pytest.approx(np.abs(out - ref).mean(), rel=1e-9)
    assert ev.ci_low < ev.value < ev.ci_high and not ev.higher_is_better
    assert score("deviation", ref, None, reference=ref).value == 0.0


def test_optimize_a_single_probability_model_within_a_deviation_budget(vad, chunks, tmp_path):
    _, path = chunks
    result = edgeopt.optimize(vad, data=str(path), x_key="x,sr", y_key=None, metric="deviation", max_drop=0.02,
                              splits="calib=0:100,eval=100:", techniques="int8", progress=False, bench_rounds=1,
                              bench_iterations=5, goal="size", out=tmp_path / "out")
    drop = result.best.drop_eval
    assert result.best.technique == "int8" and 0 < drop.value <= 0.02
    emitted = edgeopt.load(tmp_path / "out" / "model.onnx")
    x = np.load(path)["x"][100:]
    measured = score("deviation", emitted.predict({"x": x, "sr": np.full(len(x), 16000, np.int64)})[0], None,
                     reference=vad.predict({"x": x, "sr": np.full(len(x), 16000, np.int64)})[0])
    assert measured.value == pytest.approx(result.best.eval.value, abs=1e-12)
    with pytest.raises(ConfigError, match="agreement.*one value per row"):
        edgeopt.optimize(vad, data=str(path), x_key="x,sr", y_key=None, metric="agreement", max_drop=0.01,
                         splits="calib=0:100,eval=100:", techniques="int8", progress=False)
    with pytest.raises(ConfigError, match="sqnr cannot be a budget"):
        edgeopt.optimize(vad, data=str(path), metric="sqnr", max_drop=3.0, progress=False)
