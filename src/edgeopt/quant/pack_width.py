"""Rewrite a Conv that reads 1-3 channels as a Conv over the input's row pixels packed into channels.

ONNX Runtime's fast int8 conv kernel needs a multiple of 4 input channels (see
:mod:`edgeopt.quant.thin_convs`). For a strided thin conv :mod:`edgeopt.quant.space_to_depth` gives
it 4+ channels with no extra work; a stride-1 conv (ResNet-8's RGB stem) has no such exact rewrite,
and padding it to 4 channels (:mod:`edgeopt.quant.pad_channels`) costs a MatMul on the float input.

This rewrite reads the input in channels-last order, where a row of W pixels of C channels is W*C
consecutive values, and regroups them 4 at a time: ``[N, H, W, C] -> [N, H, W*C/4, 4]`` is a free
Reshape. P = 4 / gcd(stride_w * C, 4) adjacent output pixels of a row start on a 4-value boundary,
so one Conv over the packed tensor with P*O output channels (one block of O per output phase),
width stride P*stride_w*C/4 and a kernel wide enough to cover the P outputs' receptive fields
computes all of them; its output ``[N, P*O, OH, OW/P]`` read channels-last is exactly
``[N, OH, OW, O]``, another free Reshape. Weights that would read values outside the original
receptive field are zero, so the result is exact in float (to summation order).

ORT's NHWC transformer cancels the Transposes around the packed conv against the graph's own
channels-last input (a TF/Keras export) and against the next int8 conv, leaving two Reshapes.
The cost is MACs: 4 * kw' / (C * kw) times the original (ResNet-8's 3x3 RGB stem: 2.2x), all on the
fast kernel. Measured on ResNet-8 (AMD EPYC Zen 4, ORT 1.32, 1 thread, one ``edgeopt bench`` run of
9 rounds): int8 with the stem packed 0.486-0.489x fp32's latency, with the stem padded to 4
channels 0.509x; the packed stem itself 9.3 us against 13.8 us + 3.8 us for the padding MatMul
(graph cuts). In fp32 the rewrite is slower (1.12x), so edgeopt pairs it with int8 only.
A conv followed only by Relu / LeakyRelu / Clip takes the activation along before unpacking, so
the quantizer still fuses it into the conv's output range. Written by hand: no converter does this.
"""

from __future__ import annotations

import math

import numpy as np

from .thin_convs import ALIGN, ThinConv, replace_conv, thin_convs

# elementwise activations that commute with the unpacking Transpose/Reshape and that ORT's
# quantizer folds into a conv's output range when they follow it directly
MOVABLE_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip")


def pack_width_plan(conv: ThinConv, align: int = ALIGN) -> dict | None:
    """The packed conv's geometry, or None when the rewrite does not apply: the input row's W*C values
    must split into groups of ``align`` and the output width must be a multiple of P."""
    o, c, kh, kw = conv.weight.shape
    sh, sw = conv.strides
    pt, pl, pb, pr = conv.pads
    out_h = (conv.height + pt + pb - kh) // sh + 1
    out_w = (conv.width + pl + pr - kw) // sw + 1
    phases = align // math.gcd(sw * c, align)  # P output pixels per group
    if out_h < 1 or out_w < 1 or (conv.width * c) % align or out_w % phases:
        return None
    groups = out_w // phases
    step = phases * sw * c // align  # packed pixels from one group to the next
    base = align * math.floor(-pl * c / align)  # first value a group's window reads, relative to the group's start
    last = ((phases - 1) * sw + kw - 1 - pl) * c + c - 1 - base
    kw2 = last // align + 1
    pl2 = -base // align
    w2 = conv.width * c // align
    pr2 = max(0, (groups - 1) * step + kw2 - w2 - pl2)
    if (w2 + pl2 + pr2 - kw2) // step + 1 != groups:
        return None
    return {"phases": phases, "base": base, "kernel": (kh, kw2), "strides": (sh, step), "pads": (pt, pl2, pb, pr2),
            "packed_width": w2, "out_hw": (out_h, out_w), "mac_ratio": align * kw2 / (c * kw)}


def pack_width_weight(w: np.ndarray, stride_w: int, pad_left: int, phases: int, base: int, kw2: int,
                      align: int = ALIGN) -> np.ndarray:
    """(O, C, kh, kw) -> (P*O, align, kh, kw2): output channel r*O + o computes output pixel r of
    each group; input value (r*stride_w + k - pad_left)*C + c - base of the window sits at packed
    pixel offset // align, channel offset % align."""
    o, c, kh, kw = w.shape
    out = np.zeros((phases * o, align, kh, kw2), dtype=w.dtype)
    for r in range(phases):
        for k in range(kw):
            for ch in range(c):
                offset = (r * stride_w + k - pad_left) * c + ch - base
                out[r * o:(r + 1) * o, offset % align, :, offset // align] = w[:, ch, :, k]
    return out


def pack_width_thin_convs(proto, align: int = ALIGN) -> list[str]:
    """Edit the float ``proto`` in place; returns the names of the Convs that were rewritten (thin
    convs, :func:`edgeopt.quant.thin_convs.thin_convs`, where :func:`pack_width_plan` applies)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    done = []
    for thin in thin_convs(proto, align):
        plan = pack_width_plan(thin, align)
        if plan is None:
            continue
        conv = thin.node
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and conv.input[2] not in inits:  # a computed bias cannot be tiled here: leave the conv
            continue
        o = thin.weight.shape[0]
        phases, (out_h, out_w) = plan["phases"], plan["out_hw"]
        tag = f"{thin.name}/pack_width"
        new_w = pack_width_weight(thin.weight, thin.strides[1], thin.pads[1], phases, plan["base"], plan["kernel"][1], align)
        graph.initializer.append(numpy_helper.from_array(new_w, f"{tag}/weight"))
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, thin.height, plan["packed_width"], align], np.int64), f"{tag}/packed_shape"))
        graph.initializer.append(numpy_helper.from_array(np.array([0, out_h, out_w, o], np.int64), f"{tag}/unpacked_shape"))
        conv_inputs = [f"{tag}/packed", f"{tag}/weight"]
        if has_bias:
            bias = np.tile(numpy_helper.to_array(inits[conv.input[2]]), phases)
            graph.initializer.append(numpy_helper.from_array(bias, f"{tag}/bias"))
            conv_inputs.append(f"{tag}/bias")
        users = [n for n in graph.node if conv.output[0] in n.input]
        act = (users[0] if len(users) == 1 and users[0].op_type in MOVABLE_ACTIVATIONS
               and conv.output[0] not in graph_outputs else None)
        nodes = [helper.make_node("Transpose", [conv.input[0]], [f"{tag}/nhwc"], name=f"{tag}/to_nhwc", perm=[0, 2, 3, 1]),
                 helper.make_node("Reshape", [f"{tag}/nhwc", f"{tag}/packed_shape"], [f"{tag}/packed_nhwc"], name=f"{tag}/pack"),
                 helper.make_node("Transpose", [f"{tag}/packed_nhwc"], [f"{tag}/packed"], name=f"{tag}/to_nchw", perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", conv_inputs, [f"{tag}/y"], name=conv.name, kernel_shape=list(plan["kernel"]),
                                  strides=list(plan["strides"]), pads=list(plan["pads"]), dilations=[1, 1], group=1)]
        y = f"{tag}/y"
        if act is not None:
            nodes.append(helper.make_node(act.op_type, [y, *act.input[1:]], [f"{tag}/y_act"], name=act.name))
            nodes[-1].attribute.extend(act.attribute)
            y = f"{tag}/y_act"
        final = act.output[0] if act is not None else conv.output[0]
        nodes += [helper.make_node("Transpose", [y], [f"{tag}/y_nhwc"], name=f"{tag}/y_to_nhwc", perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", [f"{tag}/y_nhwc", f"{tag}/unpacked_shape"], [f"{tag}/unpacked"], name=f"{tag}/unpack"),
                  helper.make_node("Transpose", [f"{tag}/unpacked"], [final], name=f"{tag}/y_to_nchw", perm=[0, 3, 1, 2])]
        replace_conv(proto, conv, nodes, removed=(act,) if act is not None else ())
        done.append(thin.name)
    return done
