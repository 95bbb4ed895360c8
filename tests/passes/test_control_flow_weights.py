"""Weights only If/Loop bodies use (ORT's static quantizer does not enter bodies): stored as per-row
int8 by ``quantize.int8(control_flow_weights=True)``, the optimizer's ``int8-control-flow-weights``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.data import Dataset
from edgeopt.passes import PassContext, make_pass
from edgeopt.quant.control_flow import control_flow_weights


def _if_model():
    """cond = sum(x) > 0; then: x @ w_then (an outer-scope weight); else: x @ w_else (the body's own
    initializer); then the main graph's y @ w_out."""
    rng = np.random.default_rng(0)
    w_then = rng.standard_normal((16, 64)).astype(np.float32)
    w_then[3] *= 4    # rows of different scales: one scale per row keeps the small ones
    w_else = rng.standard_normal((16, 64)).astype(np.float32)
    w_out = rng.standard_normal((64, 8)).astype(np.float32) * 0.1
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w_then"], ["h_then"], name="then_mm")], "then", [],
                               [helper.make_tensor_value_info("h_then", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "w_else"], ["h_else"], name="else_mm")], "else", [],
                               [helper.make_tensor_value_info("h_else", TensorProto.FLOAT, None)],
                               [numpy_helper.from_array(w_else, "w_else")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["h"], then_branch=then_g, else_branch=else_g, name="branch"),
             helper.make_node("MatMul", ["h", "w_out"], ["y"], name="out_mm")]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w_then, "w_then"), numpy_helper.from_array(w_out, "w_out"),
                               numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return edgeopt.load(model, name="if_model"), w_then


def test_weights_only_bodies_use_are_stored_int8_and_outputs_stay_close():
    model, w_then = _if_model()
    # both branch weights, not the main graph's own MatMul weight (the static quantizer handles that one)
    assert sorted(control_flow_weights(model.proto())) == ["w_else", "w_then"]
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    ctx = PassContext(calib=Dataset(x[:32]))
    plain = make_pass("quantize.int8", {"samples": 32})(model, ctx)
    small = make_pass("quantize.int8", {"samples": 32, "control_flow_weights": True})(model, ctx)
    assert "control_flow_weights_int8" not in plain.stats            # off by default: ORT runs it slower
    assert sorted(small.stats["control_flow_weights_int8"]) == ["w_else", "w_then"]
    proto = small.model.proto()
    stored = {i.name: i for i in proto.graph.initializer}
    assert "w_then" not in stored and stored["w_then_int8"].data_type == TensorProto.INT8
    scales = numpy_helper.to_array(stored["w_then_int8_scale"])
    assert scales.shape == (16,) and scales[3] > 3 * np.median(scales)    # one scale per row
    body = next(a.g for n in proto.graph.node if n.op_type == "If" for a in n.attribute if a.name == "else_branch")
    assert {i.name for i in body.initializer} >= {"w_else_int8", "w_else_int8_scale"}
    assert small.model.size_bytes < plain.model.size_bytes - 2 * 16 * 64 * 2   # two 16x64 weights, 4 -> 1 byte
    # what was stored is the weight rounded per row: error at most half a step of that row's scale
    q = numpy_helper.to_array(stored["w_then_int8"]).astype(np.float32)
    assert (np.abs(q * scales[:, None] - w_then).max(axis=1) <= scales / 2 + 1e-6).all()
    # end to end: the two models differ only by that rounding (same calibration, same activation
    # scales), and it moves the outputs by little
    reference = model.predict(x[32:])[0]
    moved = np.abs(small.model.predict(x[32:])[0] - plain.model.predict(x[32:])[0]).max()
    assert moved < 0.05 * np.abs(reference).max()
    # both signs of the condition ran (each branch's weights were exercised)
    assert (x[32:].sum(1) > 0).any() and (x[32:].sum(1) <= 0).any()


def test_a_graph_without_bodies_has_no_control_flow_weights(dscnn):
    assert control_flow_weights(dscnn.proto()) == []


def test_control_flow_weights_must_be_a_flag():
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="control_flow_weights"):
        make_pass("quantize.int8", {"control_flow_weights": "yes"})


def test_the_optimizer_offers_it_and_a_size_goal_takes_it(tmp_path):
    """The candidate exists only for models with such weights; it is the smallest int8 file here."""
    model, _ = _if_model()
    x = np.random.default_rng(1).standard_normal((120, 16)).astype(np.float32)
    result = edgeopt.optimize(model, data=x, metric="deviation", max_drop=1.0, goal="size", techniques="int8",
                              splits="calib=0:60,eval=60:", progress=False, bench_rounds=1, bench_iterations=20,
                              calibration_samples=32)
    names = {c.name: c for c in result.candidates}
    assert "int8-control-flow-weights" in names
    assert result.best.name == "int8-control-flow-weights"
    assert result.best.model.size_bytes < names["int8-minmax"].model.size_bytes
