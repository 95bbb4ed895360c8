"""Loading real models into a ModelHandle: ONNX, PyTorch modules, torch.export archives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.errors import ConfigError, ModelLoadError
from edgeopt.model import ModelHandle


@pytest.mark.parametrize("fixture,shape,out_shape", [
    ("resnet8_path", (32, 32, 3), (10,)),
    ("dscnn_path", (49, 10, 1), (12,)),
    ("vww_path", (96, 96, 3), (2,)),
    ("ad_path", (640,), (640,)),
])
def test_mlperf_tiny_onnx_models_load_with_io_specs(request, fixture, shape, out_shape):
    model = edgeopt.load(request.getfixturevalue(fixture))
    (spec,) = model.inputs
    assert spec.shape[1:] == shape and spec.is_dynamic and spec.dtype == "float32"
    assert model.outputs[0].shape[1:] == out_shape
    (y,) = model.run(model.example_inputs(batch=3))
    assert y.shape == (3, *out_shape)


def test_resnet8_top1_matches_data_md(resnet8, cifar):
    result = edgeopt.evaluate(resnet8, cifar, "top1")
    assert result.samples == 1000
    assert abs(result.value - 0.881) <= 0.002
    assert result.ci_low < result.value < result.ci_high


def test_dscnn_top1_matches_data_md(dscnn, kws_data):
    result = edgeopt.evaluate(dscnn, kws_data, "top1")
    assert result.samples == 4890
    assert abs(result.value - 0.922) <= 0.003


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_torch_module_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    net = _Tiny()
    x = torch.randn(2, 3, 8, 8)
    model = edgeopt.load(net, example_inputs=x)
    assert model.torch_module is net and model.source_format == "torch"
    assert model.inputs[0].shape[1:] == (3, 8, 8)
    batch = torch.randn(7, 3, 8, 8)
    (y,) = model.run(batch.numpy())
    np.testing.assert_allclose(y, net(batch).detach().numpy(), atol=1e-5)


def test_torch_module_needs_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        edgeopt.load(_Tiny())


def test_torch_export_pt2_loads_without_pickle(tmp_path):
    torch.manual_seed(0)
    net = _Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    model = edgeopt.load(path)
    (y,) = model.run(x.numpy())
    np.testing.assert_allclose(y, net(x).detach().numpy(), atol=1e-5)


def test_corrupt_pt2_is_a_model_load_error(tmp_path):
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelLoadError):
        edgeopt.load(path)


def test_handle_is_immutable_from_outside(resnet8):
    proto = resnet8.proto()
    proto.graph.node.pop()
    assert len(resnet8.proto().graph.node) == len(proto.graph.node) + 1


def test_save_is_atomic_and_round_trips(tmp_path, dscnn):
    path = dscnn.save(tmp_path / "sub" / "m.onnx")
    again = edgeopt.load(path)
    assert isinstance(again, ModelHandle)
    feeds = dscnn.example_inputs(batch=2)
    np.testing.assert_array_equal(again.run(feeds)[0], dscnn.run(feeds)[0])
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        edgeopt.load(tmp_path / "nope.onnx")
    other = tmp_path / "model.xyz"
    other.write_bytes(b"1234")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        edgeopt.load(other)


def test_cli_help_is_fast_and_imports_no_heavy_module():
    code = ("import sys, time; t=time.perf_counter(); from edgeopt.cli.main import run; "
            "rc = run(['--help']); "
            "heavy=[m for m in ('torch','onnxruntime','onnx','openvino','optuna','sklearn') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "Usage" in proc.stdout


def test_negative_dims_from_converters_are_dynamic(tmp_path):
    """paddle2onnx writes a dynamic batch as dim_value -1 (the PP-OCR classifier: [-1, 3, ?, ?]); the
    profile crashed building example inputs ("negative dimensions are not allowed")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, "?", "?"])], [w])
    path = tmp_path / "paddle_like.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(proto, path)
    handle = edgeopt.load(path)
    edgeopt.load(proto)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1  # the caller's proto is not edited
    assert handle.inputs[0].shape == ("batch", 3, "?", "?") and handle.inputs[0].batch_axis == 0
    assert handle.outputs[0].shape[0] == "batch"
    feeds = handle.example_inputs(batch=2, dims={"?": 5})
    assert feeds["x"].shape == (2, 3, 5, 5)
    (y,) = handle.predict(np.ones((3, 3, 6, 6), np.float32))
    assert y.shape == (3, 4, 6, 6) and y[0, 0, 2, 2] == 27.0
    assert edgeopt.profile(handle, measure=False, dims={"?": 8}).macs == 4 * 27 * 64
