"""Find the Convs that read too few channels for ONNX Runtime's fast int8 kernel.

MLAS (ONNX Runtime's CPU kernels) runs an int8 Conv on its symmetric "indirect conv" kernels only
when the per-group input channel count is a multiple of 4 (``MlasConvSymPackWSize``); a first layer
reading one spectrogram channel or three RGB channels falls back to im2col + generic QGEMM, slower
than the same layer in fp32. Two exact float rewrites put such a layer on the fast kernel:
:mod:`edgeopt.quant.space_to_depth` (strided convs) and :mod:`edgeopt.quant.pack_width` (the
width's pixels packed into channels). Both start from :func:`thin_convs`, so they agree on what
"thin" means and ONNX shape inference runs once per graph. (:mod:`edgeopt.quant.pad_channels`
works on the quantized QDQ graph instead, where the weight sits behind a DequantizeLinear.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALIGN = 4


def attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def static_hw(proto) -> dict[str, tuple[int, int]]:
    """Known (height, width) of every 4-D tensor ONNX shape inference can size."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # an inference failure only means nothing is rewritten
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
            out[vi.name] = (dims[2].dim_value, dims[3].dim_value)
    return out


@dataclass
class ThinConv:
    """A 2-D, group-1, undilated Conv with explicit pads whose constant weight has 1..align-1 input
    channels and whose input's height and width are known."""

    node: object  # onnx NodeProto
    weight: np.ndarray  # (O, C, kh, kw)
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    height: int
    width: int

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def thin_convs(proto, align: int = ALIGN) -> list[ThinConv]:
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        dims = inits[conv.input[1]].dims
        if len(dims) != 4 or not 0 < dims[1] < align or attr(conv, "group", 1) != 1:
            continue
        strides = list(attr(conv, "strides", [1, 1]))
        if len(strides) != 2 or any(d != 1 for d in attr(conv, "dilations", [1, 1])):
            continue
        auto_pad = attr(conv, "auto_pad", b"NOTSET")
        if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
            continue
        found.append(conv)
    if not found:
        return []
    hw = static_hw(proto)  # only once a candidate is seen: inference costs time on a large graph
    return [ThinConv(conv, numpy_helper.to_array(inits[conv.input[1]]), tuple(attr(conv, "strides", [1, 1])),
                     tuple(attr(conv, "pads", [0, 0, 0, 0])), *hw[conv.input[0]])
            for conv in found if conv.input[0] in hw]


def replace_conv(proto, conv, nodes: list, removed: tuple = ()) -> None:
    """Put ``nodes`` where ``conv`` (and the ``removed`` nodes right after it) were, and drop the
    initializers only the removed nodes used. Shape hints go too: ORT re-infers them."""
    graph = proto.graph
    position = list(graph.node).index(conv)
    gone = [conv, *removed]
    inputs = {name for node in gone for name in node.input}
    for node in gone:
        graph.node.remove(node)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    still_used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name in inputs and i.name not in still_used]:
        graph.initializer.remove(init)
    del graph.value_info[:]
