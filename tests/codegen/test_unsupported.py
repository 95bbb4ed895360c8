"""An op the generator cannot compile is named, with its node, before anything is written."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgeopt.codegen import export_c
from edgeopt.errors import ConfigError, UnsupportedModelError


def _qdq_model_with(op_type: str):
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node(op_type, ["xf"], ["yf"], name="the_bad_node"),
        helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_op_names_op_and_node_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModelError, match=r"'Erf'.*'the_bad_node'"):
        export_c(_qdq_model_with("Erf"), out, target="host")
    assert not out.exists()


def test_float_model_is_refused_with_a_hint(dscnn_path, tmp_path):
    with pytest.raises(UnsupportedModelError, match="quantize"):
        export_c(dscnn_path, tmp_path / "out", target="host")
    assert not (tmp_path / "out").exists()


def test_supported_single_op_model_exports(tmp_path):
    export_c(_qdq_model_with("Sigmoid"), tmp_path / "out", target="host")
    assert (tmp_path / "out" / "model.c").is_file()


def test_unknown_target_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cortex-m4"):
        export_c(_qdq_model_with("Relu"), tmp_path / "out", target="esp32")


def test_a_float_tail_model_is_refused_with_the_setting_to_change(dscnn, kws_data, tmp_path):
    """quantize.int8(float_tail=True) leaves the last Gemm's output float (good for ONNX Runtime); the
    C generator needs it requantized and says which setting to change, before writing anything."""
    from edgeopt.passes import PassContext, make_pass

    ctx = PassContext(calib=kws_data.take(0, 32), tune=kws_data.take(0, 32), seed=0)
    folded = make_pass("fold")(dscnn, ctx).model
    model = make_pass("quantize.int8", {"samples": 32, "float_tail": True, "activations": "s8"})(folded, ctx).model
    with pytest.raises(UnsupportedModelError, match=r"Gemm.*not requantized \(found Softmax\).*float_tail=false"):
        export_c(model, tmp_path / "out", target="host")
    assert not (tmp_path / "out").exists()
