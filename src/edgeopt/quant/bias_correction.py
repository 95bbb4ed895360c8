"""Empirical bias correction (Nagel et al. 2019; Finkelstein et al. 2019) for a QDQ graph.

Quantized weights shift each output channel's mean. Running the float and the quantized model on
calibration rows, the per-channel mean error of every quantized Conv/Gemm output is measured and
subtracted from that layer's float bias. ONNX Runtime's quantizer keeps Conv biases float in QDQ
form, so the correction is a plain edit of those initializers. Where the float graph has a ReLU
after the layer (ORT's QDQ graph folds it into the Q range), only positions where the float
activation is positive are compared: there the pre-activation values coincide.
"""

from __future__ import annotations

import numpy as np


def correct_biases(qdq_proto, float_model, x: np.ndarray | dict[str, np.ndarray]) -> int:
    """Edit float biases in ``qdq_proto`` in place; returns how many layers were corrected."""
    import onnx
    from onnx import numpy_helper

    float_proto = float_model.proto()
    producers = {o: n for n in float_proto.graph.node for o in n.output}
    inits = {i.name: i for i in qdq_proto.graph.initializer}
    q_producers = {o: n for n in qdq_proto.graph.node for o in n.output}
    targets = []
    for node in qdq_proto.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.output[0] not in producers:
            continue
        bias = _bias_storage(node.input[2], inits, q_producers)
        if bias is not None:
            targets.append((node, node.output[0], bias))
    if not targets:
        return 0
    names = [t for _, t, _ in targets]

    def run_with(proto, wanted: list[str]) -> list[np.ndarray]:
        """Values of graph tensors ``wanted`` over all rows (batched; samples on axis 0 for CNN activations)."""
        from ..model import make_session

        p = onnx.ModelProto()
        p.CopyFrom(proto)
        existing = {o.name for o in p.graph.output}
        for name in wanted:
            if name not in existing:
                p.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        session = make_session(p.SerializeToString(), threads=1)
        parts = [session.run(wanted, feeds) for feeds in batches]
        # a fixed batch pads the last batch: keep one row per sample
        return [np.concatenate([part[j] for part in parts], axis=0)[:count] for j in range(len(wanted))]

    from .calibration import feed_batches, sample_count

    batches, count = feed_batches(float_model, x, 64), sample_count(x)

    fp = run_with(float_proto, names)
    corrected = 0
    # Layer by layer, re-running the corrected graph each time: a layer's measured error includes what
    # upstream layers pass down, so correcting all at once would double-count (measured: worse accuracy).
    for index, ((node, tensor, (bias, scale)), a_fp) in enumerate(zip(targets, fp)):
        a_q = run_with(qdq_proto, [tensor])[0]
        axis = 1 if node.op_type == "Conv" else a_fp.ndim - 1
        fp_c = np.moveaxis(a_fp, axis, 0).reshape(a_fp.shape[axis], -1).astype(np.float64)
        q_c = np.moveaxis(a_q, axis, 0).reshape(a_q.shape[axis], -1).astype(np.float64)
        mask = fp_c > 0 if producers[tensor].op_type == "Relu" else np.ones_like(fp_c, dtype=bool)
        counts = mask.sum(axis=1)
        err = np.where(counts > 0, ((q_c - fp_c) * mask).sum(axis=1) / np.maximum(counts, 1), 0.0)
        stored = numpy_helper.to_array(bias)
        if stored.shape != err.shape:
            continue
        if scale is None:
            new = (stored.astype(np.float64) - err).astype(np.float32)
        else:  # int32 bias behind a DequantizeLinear (scale = input scale x weight scale)
            new = (stored.astype(np.int64) - np.round(err / scale)).clip(-(2**31), 2**31 - 1).astype(np.int32)
        bias.CopyFrom(numpy_helper.from_array(new, bias.name))
        corrected += 1
    return corrected


def _bias_storage(name, inits, producers):
    """(initializer holding the bias, its dequantization scale or None for a float bias)."""
    import onnx
    from onnx import numpy_helper

    if name in inits:
        return (inits[name], None) if inits[name].data_type == onnx.TensorProto.FLOAT else None
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
        return None
    if len(dq.input) > 2 and dq.input[2] in inits and np.any(numpy_helper.to_array(inits[dq.input[2]]) != 0):
        return None
    return inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
