"""edgeopt.profiling and `edgeopt profile`: MACs against independent counts, liveness on a graph with
a known peak, Constant-node weights, QDQ precision, measured latency shares, the CLI on real data."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.errors import ConfigError
from edgeopt.profiling import activation_liveness, count_macs, profile, total_macs


# ------------------------------------------------------------------------------------------------
# MACs
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_torch_net():
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
            self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.dw(x))
            x = self.pool(self.grouped(x))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(1, 3, 16, 16)


def test_conv_and_gemm_macs_match_torch_flop_counter(tiny_torch_net):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net, x = tiny_torch_net
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    torch_macs = {name.split(".", 1)[1]: sum(ops.values()) // 2
                  for name, ops in counter.get_flop_counts().items() if name.startswith("TinyNet.")}
    handle = edgeopt.load(net, example_inputs=x)
    macs = count_macs(handle)
    proto = handle.proto()
    ours = {}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            module = node.name.strip("/").split("/")[0]  # torch.onnx names nodes "/<module>/<Op>"
            ours[module] = macs[node.name]
    assert ours == torch_macs
    # and by hand: N*Cout*Hout*Wout*(Cin/groups)*kh*kw
    assert ours["stem"] == 1 * 8 * 16 * 16 * 3 * 3 * 3
    assert ours["dw"] == 1 * 8 * 16 * 16 * 1 * 3 * 3
    assert ours["grouped"] == 1 * 16 * 8 * 8 * (8 // 4) * 3 * 3
    assert ours["fc"] == 256 * 10
    pool = next(n.name for n in proto.graph.node if n.op_type == "AveragePool")
    assert macs[pool] == 16 * 4 * 4 * 2 * 2  # one add per window element
    assert total_macs(handle) == sum(macs.values())


def test_resnet8_macs_by_hand(resnet8):
    macs = count_macs(resnet8)
    # first conv: 32x32 output, 16 filters of 3x3x3 (stride 1, same padding)
    assert macs["model/conv2d/BiasAdd"] == 32 * 32 * 16 * 3 * 3 * 3 == 442_368
    # every conv of the three stacks, from the MLPerf Tiny ResNet-8 definition
    by_hand = (442_368
               + 2 * 32 * 32 * 16 * 16 * 9                      # stack 1: two 3x3 16->16 at 32x32
               + 16 * 16 * 32 * 16 * 9 + 16 * 16 * 32 * 32 * 9   # stack 2: 3x3 s2 16->32, 3x3 32->32
               + 16 * 16 * 32 * 16                               # stack 2 shortcut 1x1 s2
               + 8 * 8 * 64 * 32 * 9 + 8 * 8 * 64 * 64 * 9       # stack 3
               + 8 * 8 * 64 * 32)                                # stack 3 shortcut
    proto = resnet8.proto()
    conv_total = sum(macs[n.name] for n in proto.graph.node if n.op_type == "Conv")
    assert conv_total == by_hand == 12_500_992
    assert macs["model/dense/MatMul"] == 64 * 10
    assert total_macs(resnet8) > conv_total  # elementwise, pooling and softmax add a little


def test_dscnn_depthwise_convs_count_groups(dscnn):
    proto = dscnn.proto()
    macs = count_macs(dscnn)
    depthwise = [n for n in proto.graph.node if n.op_type == "Conv" and
                 next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    assert len(depthwise) == 4
    for node in depthwise:
        # 64 channels at 25x5, one 3x3 filter each (a dense conv would be 64x more)
        assert macs[node.name] == 25 * 5 * 64 * 3 * 3


# ------------------------------------------------------------------------------------------------
# Liveness, Constant-node weights, QDQ precision (hand-built graphs)
# ------------------------------------------------------------------------------------------------

def _liveness_graph():
    f32 = TensorProto.FLOAT
    bias = numpy_helper.from_array(np.linspace(0, 1, 100, dtype=np.float32).reshape(1, 100), "bias")
    nodes = [
        helper.make_node("Constant", [], ["bias"], name="bias_const", value=bias),
        helper.make_node("Relu", ["X"], ["A"], name="relu_a"),
        helper.make_node("Relu", ["A"], ["B"], name="relu_b"),
        helper.make_node("Concat", ["A", "B"], ["C"], name="cat", axis=1),
        helper.make_node("ReduceSum", ["C", "axes"], ["D"], name="sum", keepdims=1),
        helper.make_node("Mul", ["X", "D"], ["Y"], name="scale"),
        helper.make_node("Add", ["Y", "bias"], ["Z"], name="add_bias"),
    ]
    graph = helper.make_graph(
        nodes, "liveness", [helper.make_tensor_value_info("X", f32, ["batch", 100])],
        [helper.make_tensor_value_info("Z", f32, ["batch", 100])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_liveness_peak_on_hand_built_graph():
    live = activation_liveness(edgeopt.load(_liveness_graph()))
    # X (400 B) lives from the start to 'scale'; A to 'cat'; C (800 B) to 'sum'; the Constant's
    # output is a weight, not an activation.
    assert live.order == ("bias_const", "relu_a", "relu_b", "cat", "sum", "scale", "add_bias")
    assert live.live_bytes == (400, 800, 1200, 2000, 1204, 804, 800)
    assert live.peak_bytes == 2000
    assert live.peak_node == "cat"
    assert set(live.live_at(3)) == {"X", "A", "B", "C"}
    assert "bias" not in live.tensors


def test_constant_node_weights_count_as_parameters():
    p = profile(edgeopt.load(_liveness_graph()), measure=False)
    # the Constant node's 100 floats are parameters; the ReduceSum axes initializer is metadata
    assert p.parameters == 100
    assert dict(p.weight_bytes_by_dtype) == {"float32": 400, "int64": 8}
    assert p.per_sample
    assert p.activation_peak_bytes == 2000 and p.activation_peak_node == "cat"


def test_conv_with_constant_node_weight():
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=weight),
         helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])],
        "constconv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    p = profile(edgeopt.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])), measure=False)
    assert p.parameters == 4 * 3 * 3 * 3
    conv = next(n for n in p.nodes if n.op_type == "Conv")
    assert conv.name == "Conv_1"  # unnamed nodes get <op>_<index>
    assert conv.macs == 4 * 8 * 8 * 3 * 3 * 3
    assert not p.per_sample


def test_qdq_conv_reports_int8_precision():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (8, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(8, 0.02, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8, dtype=np.int8), "w_zp"),
        numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(np.uint8(128), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zp"], ["Xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["Xq", "x_scale", "x_zp"], ["Xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["Wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["Xd", "Wd"], ["Y"], name="conv"),
        helper.make_node("Relu", ["Y"], ["Z"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, 8, 8, 8])], initializer=inits)
    p = profile(edgeopt.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])), measure=False)
    rows = {n.name: n for n in p.nodes}
    assert rows["conv"].precision == "int8"
    assert rows["relu"].precision == "float32"
    assert p.parameters == 8 * 3 * 3 * 3  # scales and zero points are not parameters
    assert rows["dq_w"].macs == 0  # weights are dequantized once at load time
    assert rows["q_x"].macs == 3 * 10 * 10
    assert p.macs_by_dtype == {"int8": rows["conv"].macs}  # a Conv fed by DequantizeLinear is an int8 kernel


def test_symbolic_shape_fallback_for_contrib_ops():
    """ONNX shape inference knows no com.microsoft ops; ORT's symbolic inference fills the gap."""
    k, n, block = 64, 16, 32
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(0, 255, (n, k // block, block // 2)).astype(np.uint8), "B"),
             numpy_helper.from_array(np.full(n * k // block, 0.1, dtype=np.float32), "scales")]
    nodes = [helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], name="matmul4", domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=block),
             helper.make_node("Relu", ["Y"], ["Z"], name="relu")]
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", "n"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert not onnx.shape_inference.infer_shapes(model).graph.value_info  # the gap is real
    p = profile(edgeopt.load(model), measure=False)
    rows = {r.name: r for r in p.nodes}
    assert rows["matmul4"].macs == k * n and rows["matmul4"].precision == "int4"
    assert rows["matmul4"].parameters == k * n
    assert rows["relu"].output_shapes == ((1, n),) and rows["relu"].macs == n
    assert (p.activation_peak_bytes, p.activation_peak_node) == ((k + n) * 4, "matmul4")  # A and Y
    assert not p.notes


def test_qdq_int8_model_profile_and_search_screening_agree(dscnn, kws_data):
    """quantize.int8 on real data: `edgeopt profile` and the search's static screening read one
    implementation, count the QDQ convolutions as int8 MACs and the int8 activations at 1 byte."""
    from edgeopt.data import fit_to_model
    from edgeopt.passes.base import PassContext, make_pass
    from edgeopt.search._static import static_figures

    quantized = make_pass("quantize.int8", {})(dscnn, PassContext(calib=fit_to_model(kws_data, dscnn).take(0, 64))).model
    proto = quantized.proto()
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) > 10  # a real QDQ graph

    p, screened = profile(quantized, measure=False), static_figures(quantized)
    float_p = profile(dscnn, measure=False)
    assert p.macs_by_dtype == screened.macs_by_dtype == {"int8": float_p.macs_by_dtype["fp32"]} == {"int8": 2_656_768}
    assert p.activation_peak_bytes == screened.activation_peak_bytes
    assert p.weight_bytes == screened.weight_bytes
    # DS-CNN's peak: two 64-channel 25x5 feature maps, 4 bytes each as float, 1 byte each as int8
    assert float_p.activation_peak_bytes == 2 * 64 * 25 * 5 * 4
    assert p.activation_peak_bytes == 2 * 64 * 25 * 5

    live = activation_liveness(quantized)
    quantized_tensors = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    graph_outputs = {o.name for o in proto.graph.output}  # the caller receives these as float
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"} - graph_outputs
    assert quantized_tensors <= set(live.tensors)
    for name in quantized_tensors:
        tensor = live.tensors[name]
        shape = next(v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info if v.name == name)
        assert tensor.bytes == math.prod(d.dim_value or 1 for d in shape.type.tensor_type.shape.dim)  # 1 byte each
    assert not dequantized & set(live.tensors)  # the float copies int8 kernels never make
    weights = {t.name for t in proto.graph.initializer}
    activations = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in weights}
    assert activations - graph_outputs <= set(live.int8_stand_ins)


def test_shapes_no_inference_resolves_leave_no_files_behind(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves sym_shape_infer_temp.onnx into the working directory
    when it gives up; profiling (and the search's screening, which reads the same counts) must not."""
    nodes = [helper.make_node("Relu", ["X"], ["A"], name="relu_a"),
             helper.make_node("Foo", ["A"], ["B"], name="custom", domain="my.domain"),
             helper.make_node("Relu", ["B"], ["Y"], name="relu_y")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    monkeypatch.chdir(tmp_path)
    p = profile(edgeopt.load(model), measure=False)
    assert list(tmp_path.iterdir()) == []
    assert any("symbolic shape inference failed" in note for note in p.notes)
    assert {n.name: n.macs for n in p.nodes}["relu_a"] == 4  # what can be counted still is


def test_shapes_missing_after_inference_are_learned_by_running(dscnn):
    from edgeopt.profiling import _measured_shapes

    proto = dscnn.proto()
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    measured = _measured_shapes(proto, [conv.output[0]])  # as if shape inference had given up on it
    shape, elem_type = measured[conv.output[0]]
    inferred = onnx.shape_inference.infer_shapes(dscnn.proto())
    reference = next(v for v in inferred.graph.value_info if v.name == conv.output[0])
    assert shape[0] == 1 and list(shape[1:]) == [d.dim_value for d in reference.type.tensor_type.shape.dim][1:]
    assert elem_type == TensorProto.FLOAT


# ------------------------------------------------------------------------------------------------
# Measured latency shares and the whole profile
# ------------------------------------------------------------------------------------------------

def test_resnet8_latency_shares_cover_heavy_nodes(resnet8):
    p = profile(resnet8, measure=True, threads=1, runs=10)
    latency = p.latency
    assert latency is not None and latency.threads == 1 and latency.runs == 10
    total = sum(latency.shares.values()) + sum(latency.unmatched.values())
    assert math.isclose(total, 1.0, abs_tol=1e-9)
    heavy = [n for n in p.nodes if n.macs >= 100_000]
    assert len(heavy) == 9  # all convolutions
    for node in heavy:
        assert node.latency_share is not None and node.latency_share > 0, node.name
    # ORT fuses Conv+Relu into one NCHWc kernel named after the Relu output: credited to the Conv
    assert latency.fused["model/activation/Relu"] == "model/conv2d/BiasAdd"
    # every node is accounted for: its own kernel, or fused into another node's
    assert all(n.latency_share is not None or n.fused_into for n in p.nodes)
    assert set(latency.unmatched) <= {"ReorderInput", "ReorderOutput"}
    assert sum(n.latency_share or 0 for n in p.nodes if n.op_type == "Conv") + sum(
        latency.unmatched.values()) <= 1.0


def test_profile_totals_and_json_roundtrip(resnet8):
    p = profile(resnet8, measure=False)
    assert p.parameters == 77_706  # the Keras model's 78,666 minus the 960 BatchNorm values folded into convs
    assert p.macs == sum(n.macs for n in p.nodes)
    assert p.op_histogram["Conv"] == 9
    assert p.activation_peak_bytes == max(n.live_bytes for n in p.nodes)
    # the peak: two 32x32x16 float tensors plus the skip branch kept for the residual Add
    assert p.activation_peak_bytes == 3 * 32 * 32 * 16 * 4
    data = json.loads(json.dumps(p.to_dict()))
    assert data["totals"]["macs"] == p.macs and data["latency"] is None
    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(p.table(top=5))
    assert "12,608,168" in console.export_text()


def test_profile_rejects_metric_without_data(resnet8):
    with pytest.raises(ConfigError, match="metric needs data"):
        profile(resnet8, metric="top1", measure=False)


def test_public_name():
    from edgeopt import profiling

    assert edgeopt.profile is profiling.profile


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def test_cli_profile_json_with_metric(resnet8_path, cifar_path, capsys):
    from edgeopt.cli.main import run

    code = run(["profile", str(resnet8_path), "--data", str(cifar_path), "--metric", "top1",
                "--runs", "5", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["macs"] == 12_608_168
    assert data["totals"]["parameters"] == 77_706
    assert data["totals"]["activation_peak_node"]
    assert data["evaluation"]["metric"] == "top1"
    assert data["evaluation"]["samples"] == 1000
    assert data["evaluation"]["value"] == pytest.approx(0.881, abs=1e-9)
    low, high = data["evaluation"]["ci95"]
    assert low < 0.881 < high
    assert len(data["nodes"]) == 25


def test_cli_profile_table_and_errors(dscnn_path, capsys):
    from edgeopt.cli.main import run

    assert run(["profile", str(dscnn_path), "--no-measure", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 nodes by MACs" in out and "2,736,816" in out
    assert run(["profile", str(dscnn_path), "--no-measure", "--sort", "latency"]) == 1
    assert "--sort latency needs" in capsys.readouterr().err
    assert run(["profile", str(dscnn_path), "--metric", "top1"]) == 1
    assert "--metric needs --data" in capsys.readouterr().err


def test_cli_profile_table_piped_is_not_cropped(tmp_path, capsys, monkeypatch):
    """Piped output (not a terminal) used to be rendered 80 columns wide: long node names squeezed the
    numeric columns off the right edge, cutting numbers short ('33,96' for 33,960)."""
    from edgeopt.cli.main import run

    monkeypatch.delenv("COLUMNS", raising=False)
    rng = np.random.default_rng(0)
    name = "model/encoder/layer.0/attention/output/dense/MatMul_with_a_long_exported_name"
    w = numpy_helper.from_array(rng.standard_normal((64, 1234)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name=name)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1234])], [w])
    path = tmp_path / "long_names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert run(["profile", str(path), "--no-measure"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "MatMul " in line and "78,976" in line)
    assert "5,192" in row and row.rstrip().endswith("- │"), row  # live bytes (x + y) and the latency column, whole
    assert "attention" in out
