"""The width-packing rewrite of thin-input convs (edgeopt.quant.pack_width): exact in float on any
stride, only where it can prove the shapes, and the activation moves with the conv."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgeopt.quant.pack_width import pack_width_plan, pack_width_thin_convs, pack_width_weight
from edgeopt.quant.space_to_depth import space_to_depth_thin_convs
from edgeopt.quant.thin_convs import thin_convs

from test_space_to_depth import assert_same_outputs, conv_model


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@pytest.mark.parametrize("channels,height,width,kernel,stride,pads", [
    (3, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1)),    # ResNet-8's RGB stem: 4 output pixels per group
    (1, 28, 28, (5, 5), (1, 1), (0, 0, 0, 0)),    # a grayscale LeNet-style conv, no padding
    (2, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1)),    # 2 channels: 2 pixels per group
    (3, 64, 64, (7, 7), (1, 1), (3, 3, 3, 3)),    # a wide kernel
    (3, 32, 32, (3, 3), (1, 2), (0, 1, 2, 0)),    # width stride 2, asymmetric pads
    (1, 20, 12, (3, 5), (2, 1), (1, 2, 1, 2)),    # height stride only
])
def test_rewrite_computes_the_same_conv_on_four_channels(channels, height, width, kernel, stride, pads):
    original = conv_model(channels, height, width, kernel, stride, pads)
    rewritten = _copy(original)
    assert pack_width_thin_convs(rewritten) == ["conv0"]
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    # the Relu moved inside, before the unpacking: the quantizer still sees Conv -> Relu
    assert ops == ["Transpose", "Reshape", "Transpose", "Conv", "Relu", "Transpose", "Reshape", "Transpose"]
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    w = next(numpy_helper.to_array(i) for i in rewritten.graph.initializer if i.name == conv.input[1])
    assert w.shape[1] == 4 and w.shape[0] % 16 == 0
    assert "w" not in {i.name for i in rewritten.graph.initializer}  # the old weight is not stored twice
    assert_same_outputs(original, rewritten, (3, channels, height, width), atol=2e-5)


@pytest.mark.parametrize("why,kwargs", [
    ("already 4 channels", dict(channels=4, height=32, width=32, kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1))),
    ("a row of 3 x 31 values does not split into groups of 4", dict(channels=3, height=32, width=31, kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1))),
    ("5 output columns are not a multiple of 2 phases", dict(channels=1, height=49, width=10, kernel=(10, 4), stride=(2, 2), pads=(4, 1, 5, 1))),
    ("height and width unknown", dict(channels=3, height=0, width=0, kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dynamic_hw=True)),
])
def test_rewrite_leaves_convs_it_cannot_handle(why, kwargs):
    model = conv_model(**kwargs)
    before = model.SerializeToString()
    assert pack_width_thin_convs(model) == [], why
    assert model.SerializeToString() == before


def test_conv_without_bias_and_a_conv_output_read_twice_keep_their_activation_outside():
    """No bias: none is invented. The Relu only moves when it is the conv's one reader."""
    model = conv_model(3, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), bias=False)
    model.graph.output.append(helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, None))
    rewritten = _copy(model)
    assert pack_width_thin_convs(rewritten) == ["conv0"]
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 2
    assert [n.op_type for n in rewritten.graph.node][-1] == "Relu"
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_weight_layout_puts_each_output_phase_in_its_own_block():
    """Output channel r*O + o computes pixel r of each group; its taps sit where the input value they
    read lands in the packed row (value index (r + k - pad_left)*C + c - base, 4 to a pixel)."""
    w = np.arange(2 * 3 * 1 * 3, dtype=np.float32).reshape(2, 3, 1, 3) + 1
    plan = pack_width_plan(thin_convs(conv_model(3, 1, 8, (1, 3), (1, 1), (0, 1, 0, 1)))[0])
    assert plan["phases"] == 4 and plan["base"] == -4 and plan["kernel"] == (1, 5) and plan["strides"] == (1, 3)
    packed = pack_width_weight(w, 1, 1, 4, -4, 5)
    assert packed.shape == (8, 4, 1, 5)
    flat = packed.transpose(0, 3, 1, 2).reshape(8, 20)  # (out, packed pixel * 4 + channel)
    for r in range(4):
        for k in range(3):
            for c in range(3):
                np.testing.assert_array_equal(flat[r * 2:(r + 1) * 2, (r + k - 1) * 3 + c + 4], w[:, c, 0, k])
    assert np.count_nonzero(flat) == 4 * 2 * 9  # nothing else


def test_space_to_depth_first_then_packing_skips_what_it_rewrote():
    """Both rewrites read the same list of thin convs; after SpaceToDepth the conv has 12 channels."""
    model = conv_model(3, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1))
    assert pack_width_plan(thin_convs(model)[0]) is not None
    assert space_to_depth_thin_convs(model) == ["conv0"]
    assert thin_convs(model) == [] and pack_width_thin_convs(model) == []
