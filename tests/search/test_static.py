"""Static figures used for screening and estimates: MACs agree with the published model figures,
activation liveness is right on graphs checked by hand, QDQ models are counted as int8."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.passes.base import PassContext
from edgeopt.search._static import static_figures, unsupported_on
from edgeopt.target import Target
from _passes import StaticInt8


def test_macs_match_published_figures(dscnn, resnet8):
    # MLPerf Tiny: DS-CNN ~2.7 M MACs, ResNet-8 ~12.5 M MACs per inference
    assert static_figures(dscnn).macs_by_dtype == {"fp32": 2_656_768}
    assert static_figures(resnet8).macs_by_dtype == {"fp32": 12_501_632}


def _chain(n_relu: int, width: int = 1000):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info(f"t{n_relu}", TensorProto.FLOAT, [1, width])
    nodes = [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}"]) for i in range(n_relu)]
    g = helper.make_graph(nodes, "chain", [x], [y])
    return edgeopt.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_liveness_of_a_chain_keeps_two_tensors():
    f = static_figures(_chain(4))
    assert f.activation_peak_bytes == 2 * 4000       # one input and one output of each step
    assert f.activation_total_bytes == 4 * 4000
    assert f.macs == 0 and f.weight_bytes == 0


def test_liveness_keeps_a_skip_connection_alive():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    model = edgeopt.load(helper.make_model(helper.make_graph(nodes, "skip", [x], [out]), opset_imports=[helper.make_opsetid("", 17)]))
    # at the third Relu: x (graph input, freed after first use), a (kept for the Add), b, c
    assert static_figures(model).activation_peak_bytes == 3 * 400


def test_qdq_model_counts_as_int8(dscnn, kws_data):
    q = StaticInt8()(dscnn, PassContext(calib=kws_data.take(0, 64))).model
    f, base = static_figures(q), static_figures(dscnn)
    assert f.macs_by_dtype == {"int8": base.macs}
    assert f.activation_peak_bytes == base.activation_peak_bytes // 4   # int8 activations, float ones fused away
    assert f.weight_bytes < base.weight_bytes / 3


def test_ram_depends_on_runtime(dscnn):
    f = static_figures(dscnn)
    assert f.ram_bytes("c") == f.activation_peak_bytes                   # weights stay in flash
    assert f.ram_bytes("onnxruntime") == f.activation_peak_bytes + f.weight_bytes


def test_unsupported_ops_and_dtypes():
    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Erf", ["m"], ["y"])],
                          "g", [x], [y], [w])
    model = edgeopt.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    f = static_figures(model)
    assert f.macs_by_dtype == {"fp16": 16}
    assert unsupported_on(Target.parse("cortex-m4"), f) == ["op:Erf", "dtype:fp16"]
    assert unsupported_on(Target.parse("host"), f) == []
