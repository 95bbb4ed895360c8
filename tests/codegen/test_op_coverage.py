"""Ops the MLPerf models do not use (MaxPool, Concat, ReLU6, Mul, Sigmoid, windowed AveragePool),
in a small synthetic network quantized by ORT: the export must match ORT's integer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.codegen import build_and_run, export_c
from edgeopt.codegen.api import compare_lsb, reference_int8
from edgeopt.codegen.lower import lower
from edgeopt.codegen.quantize_ref import quantize_qdq


def _float_model(path):
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),                      # ReLU6
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], group=4, pads=[0, 0, 1, 1], strides=[2, 2],
                         kernel_shape=[3, 3]),                                     # depthwise, asymmetric pad
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("AveragePool", ["p1"], ["a1"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Mul", ["s2", "a1"], ["m1"]),
        helper.make_node("Concat", ["m1", "a1"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "coverage", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 1, 3, 3), init("b2", 4), init("w3", 5, 32), init("b3", 5),
         numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_small_network_with_every_op_family_matches_ort(tmp_path, activation):
    _float_model(tmp_path / "f.onnx")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((96, 3, 8, 8)) * 2).astype(np.float32)
    q = tmp_path / "q.onnx"
    quantize_qdq(tmp_path / "f.onnx", x[:64], activation=activation, out_path=q)
    proto = onnx.load(str(q))
    kinds = {op.kind for op in lower(proto).ops}
    assert {"conv", "maxpool", "avgpool", "mul", "concat", "gemm", "lut"} <= kinds
    evals = x[64:]
    export_c(q, tmp_path / "c", target="host", samples=evals[:8])
    ours = build_and_run(tmp_path / "c", "host", evals).outputs
    result = compare_lsb(ours, reference_int8(proto, lower(proto), evals, integer_kernels=True))
    assert result["max_abs_lsb"] <= 1, result
