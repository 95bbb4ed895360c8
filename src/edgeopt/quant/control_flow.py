"""int8 weight-only storage for weights that live in control-flow bodies.

ONNX Runtime's static quantizer does not enter ``If``/``Loop``/``Scan`` bodies, so a model whose
recurrent layer sits in an ``If`` branch (Silero VAD picks its LSTM by sample rate) kept those
weights float: the file barely shrank. This stores each such float weight as int8 with one scale per
row (axis 0, symmetric, zero point 0) and a ``DequantizeLinear`` that recreates the float tensor
under its old name, where the weight is defined: the computation stays float, only the stored
weight is rounded (the per-row rounding error is at most scale / 2 = max|row| / 254).

Not free: ONNX Runtime then dequantizes the weight on every run and cannot pre-pack it (Silero
VAD, 1 thread: 0.193 ms -> 0.344 ms per chunk for 0.49x the int8 file), so it is off by default in
``quantize.int8`` and the optimizer offers it as a candidate of its own (``int8-control-flow-weights``)
for models that have such weights; a size goal picks it, a latency goal does not.

Which weights: float initializers of at least ``min_elements`` values that the static quantizer
could not have reached, i.e. initializers of a body graph, and initializers of the main graph that
only bodies use (outer-scope references). Written by hand: ORT's ``EnableSubgraph`` option exists
for dynamic quantization only, and it rewrites MatMuls, not an LSTM's weight inputs.
"""

from __future__ import annotations

import numpy as np


def _bodies(graph):
    """The graphs held by ``graph``'s nodes (If branches, Loop/Scan bodies), one level down."""
    for node in graph.node:
        for attr in node.attribute:
            yield from ([attr.g] if attr.HasField("g") else list(attr.graphs))


def _nested_uses(graph) -> set[str]:
    """Every tensor name read by a node inside the bodies of ``graph``'s nodes (any depth)."""
    used: set[str] = set()
    for body in _bodies(graph):
        for inner in body.node:
            used.update(inner.input)
        used |= _nested_uses(body)
    return used


def _store_int8(graph, init) -> None:
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(init).astype(np.float32)
    per_row = w.ndim >= 2
    rows = w.reshape(w.shape[0], -1) if per_row else w.reshape(1, -1)
    scale = np.abs(rows).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    name = init.name
    scale = scale if per_row else scale[:1].reshape(())
    tensors = [numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_int8_scale"),
               numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_int8_zero_point")]
    graph.initializer.remove(init)
    graph.initializer.extend(tensors)
    node = helper.make_node("DequantizeLinear", [t.name for t in tensors], [name], name=f"{name}_int8_dequantize",
                            **({"axis": 0} if per_row else {}))
    graph.node.insert(0, node)


def _reachable_only_by_bodies(proto, min_elements: int):
    """``(graph, initializer)`` pairs of the float weights described in the module docstring."""
    from onnx import TensorProto

    found = []

    def visit(graph, is_body: bool) -> None:
        direct = {name for node in graph.node for name in node.input}
        nested = _nested_uses(graph)
        inputs = {i.name for i in graph.input}
        for init in graph.initializer:
            if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements or init.name in inputs:
                continue
            if is_body or (init.name in nested and init.name not in direct):
                found.append((graph, init))
        for body in _bodies(graph):
            visit(body, True)

    visit(proto.graph, False)
    return found


def control_flow_weights(proto, min_elements: int = 1024) -> list[str]:
    """Names of the float weights only control-flow bodies use (what the function below would store
    as int8); empty for a graph without ``If``/``Loop``/``Scan``."""
    return [init.name for _, init in _reachable_only_by_bodies(proto, min_elements)]


def quantize_control_flow_weights(proto, min_elements: int = 1024) -> list[str]:
    """Store the float weights only control-flow bodies use as per-row int8, in place; returns their
    names. The model must be at opset >= 13 (per-axis DequantizeLinear)."""
    found = _reachable_only_by_bodies(proto, min_elements)
    for graph, init in found:
        _store_int8(graph, init)
    return [init.name for _, init in found]
