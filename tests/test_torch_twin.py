"""The trainable twin: onnx2torch conversion without torchvision, verified, NHWC kept, back to ONNX."""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgeopt
from edgeopt.errors import UnsupportedModelError
from edgeopt.torch_twin import TOLERANCE, export, to_torch, verify


@pytest.mark.parametrize("fixture", ["dscnn", "resnet8"])
def test_mlperf_twin_matches_onnxruntime_in_nhwc(request, fixture):
    import torch

    handle = request.getfixturevalue(fixture)
    twin = to_torch(handle)
    assert "torchvision" not in sys.modules  # the import stub is gone again
    feeds = handle.example_inputs(batch=3, seed=5)
    assert verify(twin, handle, feeds, what="test") <= TOLERANCE
    # trainable: the dense layer became an nn.Linear with gradients
    assert any(isinstance(m, torch.nn.Linear) for m in twin.modules())
    assert all(p.requires_grad for p in twin.parameters())
    back = export(twin, handle, None)
    assert back.inputs[0].shape[1:] == handle.inputs[0].shape[1:]  # NHWC in, as the original
    np.testing.assert_allclose(back.run(feeds)[0], handle.run(feeds)[0], atol=1e-4)


def test_real_accuracy_is_kept(resnet8, cifar):
    from edgeopt.training import predict

    twin = to_torch(resnet8)
    x = cifar.x[:200].astype(np.float32)
    assert np.array_equal(predict(twin, x).argmax(1), resnet8.predict(x)[0].argmax(1))


def test_nms_model_is_refused_clearly():
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"])], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])])
    handle = edgeopt.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(UnsupportedModelError, match="torchvision"):
        to_torch(handle)


def test_torch_module_twin_is_copied_not_shared():
    import torch

    net = torch.nn.Linear(3, 2)
    handle = edgeopt.load(net, example_inputs=torch.zeros(1, 3))
    twin = to_torch(handle)
    with torch.no_grad():
        twin.weight.zero_()
    assert float(net.weight.abs().sum()) > 0
