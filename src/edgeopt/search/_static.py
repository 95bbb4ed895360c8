"""Static figures of a candidate graph, computed without running it: bytes on disk, MACs per data
type, peak activation memory (tensor liveness), bytes moved, ops the target cannot run.

These feed the cheap screening step (a candidate over a budget here is pruned before it is
evaluated or benchmarked) and the cost/energy estimates for targets we cannot measure on.
Written here because the search needs them per trial in milliseconds; ``edgeopt.profiling``
gives the per-layer view for reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Ops whose multiply-accumulates run in integer arithmetic whatever their float inputs.
_INTEGER_MAC_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul"}
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "FusedMatMul"}

_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_ELEM_DTYPE = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp32", 2: "int8", 3: "int8"}


@dataclass(frozen=True)
class StaticFigures:
    size_bytes: int
    weight_bytes: int
    activation_peak_bytes: int
    activation_total_bytes: int
    macs_by_dtype: dict = field(default_factory=dict)
    op_types: tuple = ()
    unknown_shapes: int = 0

    @property
    def macs(self) -> int:
        return int(sum(self.macs_by_dtype.values()))

    @property
    def bytes_moved(self) -> int:
        # every weight read once, every activation written once and read once (estimate)
        return self.weight_bytes + 2 * self.activation_total_bytes

    def ram_bytes(self, runtime: str) -> int:
        """Peak RAM: generated C keeps weights in flash; ONNX Runtime loads them into RAM."""
        return self.activation_peak_bytes + (0 if runtime == "c" else self.weight_bytes)


def _dims(value_info) -> list | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]  # symbolic dims: batch 1


def static_figures(model) -> StaticFigures:
    """Figures of ``model`` (a ModelHandle) at batch 1."""
    import onnx

    proto = model.proto()
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # shape inference is best effort: unknown shapes are counted, not fatal
        pass
    _fill_shapes_by_running(model, proto)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    weight_bytes = int(sum(int(np.prod(i.dims, dtype=np.int64)) * _ELEM_BYTES.get(i.data_type, 4) for i in graph.initializer))
    shapes: dict[str, tuple[list | None, int]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[vi.name] = (_dims(vi), vi.type.tensor_type.elem_type)
    for name, init in inits.items():
        shapes[name] = (list(init.dims), init.data_type)

    def nbytes(name: str) -> int | None:
        dims, elem = shapes.get(name, (None, 0))
        if dims is None:
            return None
        return int(np.prod(dims, dtype=np.int64)) * _ELEM_BYTES.get(elem, 4)

    producer = {o: n.op_type for n in graph.node for o in n.output}
    macs: dict[str, int] = {}
    unknown = 0
    for node in graph.node:
        if node.op_type not in _CONV_OPS and node.op_type not in _MATMUL_OPS:
            continue
        out = shapes.get(node.output[0], (None, 0))[0]
        if out is None:
            unknown += 1
            continue
        if node.op_type in _CONV_OPS:
            w_index = 3 if node.op_type == "QLinearConv" else 1
            w = shapes.get(node.input[w_index], (None, 0))[0]
            per_output = int(np.prod(w[1:])) if w else None
        else:
            a = shapes.get(node.input[0], (None, 0))[0]
            per_output = a[-1] if a else None
            if node.op_type == "Gemm" and a and any(at.name == "transA" and at.i for at in node.attribute):
                per_output = a[0]
        if per_output is None:
            unknown += 1
            continue
        # QDQ graphs: a float Conv/MatMul fed by DequantizeLinear is executed as an int8 kernel
        if node.op_type in _INTEGER_MAC_OPS or producer.get(node.input[0]) == "DequantizeLinear":
            dtype = "int8"
        else:
            dtype = _ELEM_DTYPE.get(shapes.get(node.input[0], (None, 1))[1], "fp32")
        macs[dtype] = macs.get(dtype, 0) + int(np.prod(out, dtype=np.int64)) * int(per_output)

    # Liveness over graph order (ONNX requires topological order): a tensor lives from its
    # producer until its last consumer; graph inputs from the start, outputs to the end.
    #
    # A QDQ graph runs as int8 kernels, so two kinds of float tensors never exist in memory:
    # a DequantizeLinear output (the kernel reads the int8 tensor behind it, which therefore
    # lives until the kernel's step) and a float output that only QuantizeLinear consumes (the
    # kernel writes the int8 result directly, at its own step). Counting them would make every
    # quantized model look larger in RAM than the float one.
    outputs = {o.name for o in graph.output}
    graph_inputs = {gi.name for gi in graph.input if gi.name not in inits}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    alias: dict[str, str] = {}        # fused DequantizeLinear output -> the int8 tensor it reads
    written_early: dict[str, list[str]] = {}   # float tensor only requantized -> the int8 tensors
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if not out or out in outputs:
            continue
        if node.op_type == "DequantizeLinear":   # of an activation, or of int8 weights kept in storage
            alias[out] = node.input[0]
        users = consumers.get(out, [])
        if node.op_type != "DequantizeLinear" and users and all(u.op_type == "QuantizeLinear" for u in users):
            written_early[out] = [u.output[0] for u in users]
    preallocated = {q for qs in written_early.values() for q in qs}

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in inits:
                last_use[root(name)] = i
    live: dict[str, int] = {name: nbytes(name) or 0 for name in graph_inputs}
    peak = sum(live.values())
    total = 0
    for i, node in enumerate(graph.node):
        for name in node.output:
            if not name or name in alias or name in preallocated:
                continue
            for real in written_early.get(name, [name]):
                size = nbytes(real)
                if size is None:
                    unknown += 1
                    size = 0
                live[real] = size
                total += size
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if name not in outputs and last_use.get(name, -1) <= i:
                del live[name]
    return StaticFigures(
        size_bytes=model.size_bytes, weight_bytes=weight_bytes, activation_peak_bytes=int(peak),
        activation_total_bytes=int(total), macs_by_dtype=macs,
        op_types=tuple(sorted({n.op_type for n in graph.node})), unknown_shapes=unknown,
    )


def _fill_shapes_by_running(model, proto) -> None:
    """Where ONNX shape inference leaves tensors without a shape or type (it gives up on some
    rewritten graphs), learn them by running the model once at batch 1 with those tensors exposed
    as outputs, and record them in ``proto.graph.value_info``."""
    import onnx
    from onnx import helper

    graph = proto.graph
    known = {v.name for v in list(graph.value_info) + list(graph.output) + list(graph.input)
             if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type}
    missing = [o for n in graph.node for o in n.output if o and o not in known]
    if not missing:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.value_info[:]
    probe.graph.output.extend(helper.ValueInfoProto(name=name) for name in missing)
    try:
        from ..model import make_session

        session = make_session(probe.SerializeToString(), optimize=False)
        values = session.run(missing, model.example_inputs(batch=1))
    except Exception:  # best effort: the figures then count these tensors as unknown
        return
    to_onnx = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int16): 5,
               np.dtype(np.int32): 6, np.dtype(np.int64): 7, np.dtype(np.bool_): 9, np.dtype(np.float16): 10,
               np.dtype(np.float64): 11}
    graph.value_info.extend(
        helper.make_tensor_value_info(name, to_onnx.get(np.asarray(v).dtype, 1), list(np.asarray(v).shape))
        for name, v in zip(missing, values))


def unsupported_on(target, figures: StaticFigures) -> list[str]:
    """Ops and MAC data types in the candidate that the target does not list."""
    problems = []
    if target.ops is not None:
        problems += [f"op:{op}" for op in figures.op_types if op not in set(target.ops)]
    problems += [f"dtype:{d}" for d, n in figures.macs_by_dtype.items() if n and d not in target.dtypes]
    return problems
