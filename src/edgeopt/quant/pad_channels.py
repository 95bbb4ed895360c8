"""Pad a quantized Conv's input channels to a multiple of 4 so ONNX Runtime uses its fast int8 kernel.

MLAS (ONNX Runtime's CPU kernels) runs QLinearConv with s8 weights and zero weight zero points
through its symmetric "indirect conv" kernels (AVX2 / AVX-VNNI / AVX512-VNNI), but only when the
per-group input channel count is a multiple of 4 (``MlasConvSymPackWSize``). A first layer that
reads RGB (3 channels) or a spectrogram (1 channel) falls back to im2col + generic QGEMM, which
on this machine made ResNet-8's RGB conv 2.7x slower than the same conv in fp32 (57 us vs 21 us,
graph-cut timing) while every other conv was faster in int8.

The fix here edits the QDQ graph: the float tensor that feeds the layer's QuantizeLinear is
widened with zero channels by a MatMul with a constant [I | 0] matrix on the channel axis, and
the int8 weight gets matching zero input channels (a ``Pad`` on the stored weight, which ORT
constant-folds at load, so the file does not grow). A zero weight times the padded channel's
quantized value contributes exactly nothing, so outputs are bit-identical. A MatMul was chosen
over ``Pad``: measured, ORT's ``Pad`` on the innermost axis cost 26-57 us for a 32x32x3 image
(it copies row by row), the MatMul about a third of that. ORT's layout optimizer does not see
through a MatMul, so the widening is placed on the channels-last side of the graph's own
NHWC -> NCHW Transpose when there is one (no extra Transpose at run time).
"""

from __future__ import annotations

import numpy as np

ALIGN = 4


def _perm(node) -> list[int] | None:
    from onnx import helper

    for a in node.attribute:
        if a.name == "perm":
            return list(helper.get_attribute_value(a))
    return None


def pad_thin_conv_inputs(proto, align: int = ALIGN) -> list[str]:
    """Edit the QDQ ``proto`` in place; returns the names of the Convs that were widened.

    Only a Conv with group 1 whose activation comes straight from a QuantizeLinear -> DequantizeLinear
    pair on a float tensor (the graph input, usually behind a layout op) and whose int8 weight sits
    in an initializer behind a DequantizeLinear is changed; anything else is left as it was.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_inputs = {i.name for i in graph.input if i.name not in inits}
    done = []
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        if any(a.name == "group" and helper.get_attribute_value(a) != 1 for a in conv.attribute):
            continue
        dq_x, dq_w = producers.get(conv.input[0]), producers.get(conv.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        q_x = producers.get(dq_x.input[0])
        if q_x is None or q_x.op_type != "QuantizeLinear" or dq_w.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[dq_w.input[0]])
        if weight.dtype != np.int8 or weight.ndim != 4:
            continue
        channels = weight.shape[1]
        extra = (-channels) % align
        if extra == 0:
            continue
        # the padded weight must be this Conv's alone, and the quantized input must feed only it
        if len(consumers.get(dq_w.input[0], [])) != 1 or len(consumers.get(q_x.output[0], [])) != 1 \
                or len(consumers.get(dq_x.output[0], [])) != 1:
            continue
        source = q_x.input[0]
        layout = producers.get(source)
        # where the float tensor is channels-last: before the graph's NHWC->NCHW Transpose, else around it
        if layout is not None and layout.op_type == "Transpose" and _perm(layout) == [0, 3, 1, 2] \
                and len(consumers.get(source, [])) == 1:
            widen_at, anchor, nchw_after = layout.input[0], layout, False
        elif source in graph_inputs or layout is not None:
            widen_at, anchor, nchw_after = source, q_x, True
        else:
            continue
        tag = f"{conv.output[0]}_pad{align}"
        eye = np.zeros((channels, channels + extra), dtype=np.float32)
        eye[np.arange(channels), np.arange(channels)] = 1.0
        graph.initializer.append(numpy_helper.from_array(eye, f"{tag}_eye"))
        new_nodes = []
        if nchw_after:
            # NCHW tensor: to channels-last, widen, back (ORT cancels adjacent inverse Transposes)
            new_nodes.append(helper.make_node("Transpose", [widen_at], [f"{tag}_nhwc"], perm=[0, 2, 3, 1]))
            new_nodes.append(helper.make_node("MatMul", [f"{tag}_nhwc", f"{tag}_eye"], [f"{tag}_wide_nhwc"]))
            new_nodes.append(helper.make_node("Transpose", [f"{tag}_wide_nhwc"], [f"{tag}_wide"], perm=[0, 3, 1, 2]))
            q_x.input[0] = f"{tag}_wide"
        else:
            new_nodes.append(helper.make_node("MatMul", [widen_at, f"{tag}_eye"], [f"{tag}_wide"]))
            anchor.input[0] = f"{tag}_wide"
        position = list(graph.node).index(anchor)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
        # The zero weight channels are made by a Pad on the stored int8 weight rather than stored: ORT
        # constant-folds it at session creation (before its QDQ fusion), so it costs nothing at run time,
        # and the file keeps the unpadded weight (padding a 1-channel 10x4 conv to 4 would store 4x its bytes).
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0] + [0] * (weight.ndim - 2) + [0, extra] + [0] * (weight.ndim - 2), dtype=np.int64), f"{tag}_wpads"))
        graph.node.insert(list(graph.node).index(dq_w), helper.make_node(
            "Pad", [dq_w.input[0], f"{tag}_wpads"], [f"{tag}_w"], mode="constant"))
        dq_w.input[0] = f"{tag}_w"
        # shape hints for the old channel count would now be wrong; ORT re-infers them
        stale = {q_x.output[0], dq_x.output[0], source}
        kept = [vi for vi in graph.value_info if vi.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        done.append(conv.name or conv.output[0])
    return done
