"""The SpaceToDepth rewrite of strided thin-input convs (edgeopt.quant.space_to_depth): exact in
float, and only where it can prove the shapes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.quant.space_to_depth import space_to_depth_thin_convs, space_to_depth_weight


def conv_model(channels, height, width, kernel, stride, pads, *, out=16, dynamic_hw=False, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(out, channels, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=out).astype(np.float32), "b"))
        inputs.append("b")
    hw = ["h", "w_dim"] if dynamic_hw else [height, width]
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["y0"], name="conv0", kernel_shape=list(kernel), strides=list(stride), pads=list(pads)),
         helper.make_node("Relu", ["y0"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out, "ho", "wo"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("channels,height,width,kernel,stride,pads", [
    (1, 49, 10, (10, 4), (2, 2), (4, 1, 5, 1)),   # DS-CNN's first layer
    (3, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1)),    # an RGB stem, odd kernel
    (3, 33, 31, (7, 7), (2, 2), (3, 3, 3, 3)),    # ResNet-style 7x7/2 stem on odd sizes
    (1, 40, 40, (4, 4), (4, 4), (0, 0, 0, 0)),    # patchify (kernel = stride), no padding
    (2, 17, 9, (5, 3), (2, 2), (0, 2, 1, 0)),     # 2 channels, asymmetric pads
])
def test_rewrite_computes_the_same_conv_on_more_channels(channels, height, width, kernel, stride, pads):
    original = conv_model(channels, height, width, kernel, stride, pads)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert space_to_depth_thin_convs(rewritten) == ["conv0"]
    onnx.checker.check_model(rewritten)
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    w = next(numpy_helper.to_array(i) for i in rewritten.graph.initializer if i.name == conv.input[1])
    s = stride[0]
    assert w.shape[1] == channels * s * s and w.shape[1] % 4 == 0
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "strides")) == [1, 1]
    assert "w" not in {i.name for i in rewritten.graph.initializer}  # the old weight is gone, not stored twice
    assert_same_outputs(original, rewritten, (3, channels, height, width))


def assert_same_outputs(original, rewritten, shape, atol=1e-5):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    want, got = run(original, x), run(rewritten, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("why,kwargs", [
    ("stride 1", dict(channels=3, height=32, width=32, kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1))),
    ("already 4 channels", dict(channels=4, height=32, width=32, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))),
    ("unequal strides", dict(channels=1, height=32, width=32, kernel=(3, 3), stride=(2, 1), pads=(1, 1, 1, 1))),
    ("3 x 3 x 3 = 27 channels, not a multiple of 4", dict(channels=3, height=30, width=30, kernel=(3, 3), stride=(3, 3), pads=(0, 0, 0, 0))),
    ("height and width unknown", dict(channels=1, height=0, width=0, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dynamic_hw=True)),
])
def test_rewrite_leaves_convs_it_cannot_improve_or_prove(why, kwargs):
    model = conv_model(**kwargs)
    before = model.SerializeToString()
    assert space_to_depth_thin_convs(model) == [], why
    assert model.SerializeToString() == before


def test_weight_layout_follows_onnx_space_to_depth_channel_order():
    """SpaceToDepth puts input channel c at block offset (sy, sx) in channel (sy*s + sx)*C + c."""
    w = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    moved = space_to_depth_weight(w, 2)
    assert moved.shape == (2, 12, 2, 2)
    for sy in range(2):
        for sx in range(2):
            for c in range(3):
                np.testing.assert_array_equal(moved[:, (sy * 2 + sx) * 3 + c], w[:, c, sy::2, sx::2])
