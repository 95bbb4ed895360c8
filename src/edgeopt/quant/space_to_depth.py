"""Rewrite a strided Conv that reads 1-3 channels as SpaceToDepth + a stride-1 Conv on 4+ channels.

ONNX Runtime's fast int8 conv kernels (MLAS's symmetric "indirect conv") need the input channel
count to be a multiple of 4; a first layer that reads one spectrogram channel or three RGB channels
falls back to im2col + generic QGEMM, which is slower than the same layer in fp32 (see
:mod:`edgeopt.quant.pad_channels` and docs/ptq-latency.md). Padding the channels to 4 keeps the
kernel fast but multiplies the layer's MACs by 4/C. When the conv has a stride s >= 2 there is an
exact rewrite with no wasted work: a stride-s conv over an input equals a stride-1 conv over that
input's s x s space-to-depth rearrangement (C*s*s channels), with kernel ceil(k/s) and the weights
moved to match (zeros where k is not a multiple of s). DS-CNN's 1-channel 10x4 stride-2 conv
becomes a 4-channel 5x2 conv with exactly the same number of MACs.

The rewrite is made on the float graph, before quantization: ``Pad`` (the conv's own padding, plus
the rows/columns that round the input up to whole s x s blocks; those only ever meet zero weights),
``SpaceToDepth(blocksize=s)``, then the new Conv, which keeps the old node's name and output. In
float it is exact to rounding (summation order). It needs the input's height and width to be known
(ONNX shape inference); anything it cannot prove is left as it was. Written by hand: no converter
does this (ORT's layout transformers and onnxruntime.quantization have no such rewrite).

Measured on DS-CNN (AMD EPYC Zen 4, ONNX Runtime 1.32, 1 thread, one ``edgeopt bench`` run of 15
rounds): int8 QOperator with the rewrite 0.74x fp32's latency and 0.29x its file; the best variant
without it (first layer kept fp32) 0.77x and 0.36x. In fp32 alone the rewrite is slower (1.03-1.1x),
so edgeopt only pairs it with int8.
"""

from __future__ import annotations

import numpy as np

from .thin_convs import ALIGN, ThinConv, replace_conv, thin_convs


def space_to_depth_weight(w: np.ndarray, stride: int) -> np.ndarray:
    """``w`` (O, C, kh, kw) of a stride-``stride`` conv -> (O, stride*stride*C, ceil(kh/s), ceil(kw/s)) of
    the equivalent stride-1 conv over ``SpaceToDepth(blocksize=stride)`` of the (padded) input, whose
    output channel ``(sy*s + sx)*C + c`` holds input channel c at offset (sy, sx) of each block."""
    o, c, kh, kw = w.shape
    s = stride
    kh2, kw2 = -(-kh // s), -(-kw // s)
    padded = np.zeros((o, c, kh2 * s, kw2 * s), dtype=w.dtype)
    padded[:, :, :kh, :kw] = w
    # (o, c, by, sy, bx, sx) -> (o, sy, sx, c, by, bx)
    return np.ascontiguousarray(padded.reshape(o, c, kh2, s, kw2, s).transpose(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, kh2, kw2))


def space_to_depth_plan(conv: ThinConv, align: int = ALIGN) -> tuple[int, int] | None:
    """(rows, columns) of zero padding to add below / right of the conv's own, or None when the
    rewrite does not apply: equal strides s >= 2 with C*s*s a multiple of ``align``, and no input
    row or column the conv ignores (that would need a crop)."""
    s = conv.strides[0]
    _, c, kh, kw = conv.weight.shape
    if conv.strides[1] != s or s < 2 or (c * s * s) % align:
        return None
    pt, pl, pb, pr = conv.pads
    out_h = (conv.height + pt + pb - kh) // s + 1
    out_w = (conv.width + pl + pr - kw) // s + 1
    if out_h < 1 or out_w < 1:
        return None
    kh2, kw2 = -(-kh // s), -(-kw // s)
    # whole blocks covering every input row/column an output reads; rows past the conv's own
    # bottom/right padding meet only the zero weights added above kh/kw
    pad_bottom = s * (out_h + kh2 - 1) - conv.height - pt
    pad_right = s * (out_w + kw2 - 1) - conv.width - pl
    if pad_bottom < 0 or pad_right < 0:
        return None
    return pad_bottom, pad_right


def space_to_depth_thin_convs(proto, align: int = ALIGN) -> list[str]:
    """Edit the float ``proto`` in place; returns the names of the Convs that were rewritten.

    A Conv is rewritten when it is thin (:func:`edgeopt.quant.thin_convs.thin_convs`: a constant
    4-D weight with fewer than ``align`` input channels, group 1, dilations 1, explicit pads, the
    input's height and width known) and :func:`space_to_depth_plan` applies.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    done = []
    for thin in thin_convs(proto, align):
        plan = space_to_depth_plan(thin, align)
        if plan is None:
            continue
        pad_bottom, pad_right = plan
        conv, s = thin.node, thin.strides[0]
        pt, pl, _, _ = thin.pads
        tag = f"{thin.name}/space_to_depth"
        new_w = space_to_depth_weight(thin.weight, s)
        graph.initializer.append(numpy_helper.from_array(new_w, f"{tag}/weight"))
        nodes = []
        source = conv.input[0]
        if any((pt, pl, pad_bottom, pad_right)):
            graph.initializer.append(numpy_helper.from_array(
                np.array([0, 0, pt, pl, 0, 0, pad_bottom, pad_right], dtype=np.int64), f"{tag}/pads"))
            nodes.append(helper.make_node("Pad", [source, f"{tag}/pads"], [f"{tag}/padded"], name=f"{tag}/pad", mode="constant"))
            source = f"{tag}/padded"
        nodes.append(helper.make_node("SpaceToDepth", [source], [f"{tag}/blocks"], name=f"{tag}/blocks", blocksize=s))
        nodes.append(helper.make_node("Conv", [f"{tag}/blocks", f"{tag}/weight", *conv.input[2:]], list(conv.output),
                                      name=conv.name, kernel_shape=list(new_w.shape[2:]), strides=[1, 1], pads=[0, 0, 0, 0],
                                      dilations=[1, 1], group=1))
        replace_conv(proto, conv, nodes)
        done.append(thin.name)
    return done
