"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) for depthwise nets.

A depthwise conv's output channels often span ranges 100x apart; one per-tensor activation scale
then crushes the small channels to a few levels. For DW conv -> ReLU -> 1x1 conv, scaling DW
channel i by 1/s_i and the next conv's input channel i by s_i leaves the function unchanged
(ReLU is positively homogeneous) and, with s_i = sqrt(r1_i / r2_i), equalizes the weight ranges.
ONNX Runtime's quantizer has no CLE for ONNX graphs (NNCF/AIMET do it inside their own flows), so
this is written here; it edits initializers only.
"""

from __future__ import annotations

import numpy as np

PASS_THROUGH = ("Relu",)


def equalizable_pairs(proto) -> list[tuple]:
    """(first_conv, second_conv) pairs: first is a Conv whose only consumer path is [Relu] -> Conv."""
    from onnx import helper

    inits = {i.name for i in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    pairs = []
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        tensor, via = node.output[0], None
        nxt = consumers.get(tensor, [])
        if len(nxt) == 1 and nxt[0].op_type in PASS_THROUGH and tensor not in outputs:
            via = nxt[0]
            tensor = via.output[0]
            nxt = consumers.get(tensor, [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or tensor in outputs:
            continue
        second = nxt[0]
        if len(second.input) < 2 or second.input[1] not in inits:
            continue
        group = next((helper.get_attribute_value(a) for a in second.attribute if a.name == "group"), 1)
        if group != 1:
            continue
        pairs.append((node, second))
    return pairs


def equalize(proto, iterations: int = 1, max_scale: float = 100.0) -> int:
    """Equalize every pair in place; returns how many pairs were rescaled."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    usage: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            usage[name] = usage.get(name, 0) + 1
    done = 0
    for _ in range(iterations):
        for first, second in equalizable_pairs(proto):
            w1_name, w2_name = first.input[1], second.input[1]
            b1_name = first.input[2] if len(first.input) > 2 and first.input[2] else None
            if usage.get(w1_name, 0) != 1 or usage.get(w2_name, 0) != 1 or (b1_name and usage.get(b1_name, 0) != 1):
                continue  # shared weights: rescaling would change another layer too
            w1 = numpy_helper.to_array(inits[w1_name]).astype(np.float64)
            w2 = numpy_helper.to_array(inits[w2_name]).astype(np.float64)
            channels = w1.shape[0]
            if w2.shape[1] != channels:
                continue
            r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
            r2 = np.abs(w2.transpose(1, 0, *range(2, w2.ndim)).reshape(channels, -1)).max(axis=1)
            s = np.sqrt(np.where((r1 > 0) & (r2 > 0), r1 / np.maximum(r2, 1e-12), 1.0))
            s = np.clip(s, 1 / max_scale, max_scale)
            shape1 = (channels,) + (1,) * (w1.ndim - 1)
            shape2 = (1, channels) + (1,) * (w2.ndim - 2)
            inits[w1_name].CopyFrom(numpy_helper.from_array((w1 / s.reshape(shape1)).astype(np.float32), w1_name))
            inits[w2_name].CopyFrom(numpy_helper.from_array((w2 * s.reshape(shape2)).astype(np.float32), w2_name))
            if b1_name:
                b1 = numpy_helper.to_array(inits[b1_name]).astype(np.float64)
                inits[b1_name].CopyFrom(numpy_helper.from_array((b1 / s).astype(np.float32), b1_name))
            done += 1
    return done
