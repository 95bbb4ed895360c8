"""Profile a model: parameters, weight bytes, MACs, peak activation memory, op mix, latency share.

Static figures come from the ONNX graph after shape inference with every dynamic dimension set
to 1, so counts are *per sample* when the batch is dynamic. The measured figures (per-node share
of latency) come from ONNX Runtime's own profiler on this machine with a fixed thread count.

>>> import edgeopt                                                                # doctest: +SKIP
>>> p = edgeopt.profile("../shared/data/mlperf_tiny/ic/resnet8_cifar10.onnx")    # doctest: +SKIP
>>> p.macs, p.parameters, p.activation_peak_bytes                                  # doctest: +SKIP

Counting conventions (stated in ``Profile.to_dict()["conventions"]``): a MAC is one multiply-
accumulate; ops that do not multiply-accumulate count one operation per unit of work and are
reported in the same column: pooling one per window element, elementwise ops one per output
element, BatchNormalization one per element (scale and shift fuse into one MAC), Softmax three
per element (exp, sum, divide). Data movement (Reshape, Transpose, Concat...) counts zero.

QDQ graphs are counted as the int8 kernels runtimes make of them: a Conv/MatMul fed by
DequantizeLinear multiply-accumulates in int8 (``Profile.macs_by_dtype``), and the activation
liveness plan holds the int8 tensors (1 byte per element) instead of the float ones around them.
``graph_counts`` is the single implementation; the search's static screening reads it too.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError, first_line

# Ops whose cost is one operation per output element.
_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod", "Relu", "LeakyRelu", "PRelu",
    "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Sqrt", "Reciprocal",
    "Exp", "Log", "Abs", "Neg", "Erf", "Gelu", "Softplus", "Softsign", "Mish", "Sign", "Floor", "Ceil",
    "Round", "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or",
    "Xor", "Cos", "Sin", "ThresholdedRelu", "QuantizeLinear", "DequantizeLinear", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "Cast",
})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceSumSquare", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool",
                     "QLinearGlobalAveragePool", "GlobalLpPool"})
_WINDOW_POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"})
# Pure data movement / metadata: zero arithmetic by definition.
_ZERO_COST = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Shape", "Size", "Identity", "Constant", "ConstantOfShape", "Expand",
    "Tile", "Pad", "Dropout", "DepthToSpace", "SpaceToDepth", "Range", "NonZero", "ScatterND",
    "ScatterElements", "OneHot", "TopK", "ArgMax", "ArgMin", "CastLike", "Resize", "Upsample",
})
# Inputs (by op type and position) that carry metadata or quantization parameters rather than
# learned weights; constants feeding only these do not count as parameters.
_METADATA_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}), "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}), "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}), "TopK": frozenset({1}), "Split": frozenset({1}),
    "Gather": frozenset({1}), "ConstantOfShape": frozenset({0}), "Range": frozenset({0, 1, 2}),
    "Clip": frozenset({1, 2}), "QuantizeLinear": frozenset({1, 2}), "DequantizeLinear": frozenset({1, 2}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}), "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "ConvInteger": frozenset({2, 3}), "MatMulInteger": frozenset({2, 3}), "MatMulNBits": frozenset({2, 3, 4, 5}),
    "ReduceMean": frozenset({1}), "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}), "ReduceProd": frozenset({1}), "ReduceL2": frozenset({1}),
}
# Position of the weight input of ops that have one, for per-layer precision.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
                 "QLinearConv": 3, "QLinearMatMul": 3, "MatMulNBits": 1, "LSTM": 1, "GRU": 1, "RNN": 1,
                 "Gather": 0}
# Ops whose work is multiply-accumulates: what published MAC counts and the targets' cost models
# mean by MACs (``Profile.macs`` also counts the operations of the other ops, see above).
_MULTIPLY_ACCUMULATE = frozenset({
    "Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger", "QLinearMatMul",
    "DynamicQuantizeMatMul", "FusedMatMul", "MatMulNBits", "LSTM", "GRU", "RNN",
})
# ... of which these multiply-accumulate in integer arithmetic whatever their float inputs.
_INTEGER_MAC_OPS = frozenset({"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul"})
# Bits per element of sub-byte types (the rest take numpy's itemsize).
_SUB_BYTE_BITS = {21: 4, 22: 4, 23: 4}  # UINT4, INT4, FLOAT4E2M1


# ------------------------------------------------------------------------------------------------
# Result types
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeProfile:
    """One graph node: its cost, weights, precision, activation memory and (if measured) latency."""

    index: int
    name: str
    op_type: str
    output_shapes: tuple[tuple[int, ...] | None, ...]
    macs: int
    parameters: int
    weight_bytes: int
    precision: str
    live_bytes: int
    latency_share: float | None = None
    latency_us: float | None = None
    fused_into: str | None = None

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "op_type": self.op_type,
            "output_shapes": [list(s) if s is not None else None for s in self.output_shapes],
            "macs": self.macs, "parameters": self.parameters, "weight_bytes": self.weight_bytes,
            "precision": self.precision, "live_bytes": self.live_bytes, "latency_share": self.latency_share,
            "latency_us": self.latency_us, "fused_into": self.fused_into,
        }


@dataclass(frozen=True)
class TensorLife:
    """An activation tensor's size and the node steps (inclusive) over which it is live."""

    name: str
    bytes: int
    first: int
    last: int


@dataclass(frozen=True)
class Liveness:
    """Execution-order liveness plan of the activation tensors (weights excluded).

    Nodes run in graph (topological) order; a tensor is live from the step of its producer to the
    step of its last consumer; graph inputs are live from the first step, graph outputs to the last.
    ``live_bytes[i]`` is the total size of tensors live while node ``i`` runs (its inputs and
    outputs included). Tensors whose shape stays unknown count 0 bytes and are listed in
    ``unknown_size``. In a QDQ graph the float tensors that int8 kernels never materialize are
    not in ``tensors``; ``int8_stand_ins`` maps each to the int8 tensor(s) held in its place.
    """

    order: tuple[str, ...]
    live_bytes: tuple[int, ...]
    tensors: Mapping[str, TensorLife]
    unknown_size: tuple[str, ...] = ()
    int8_stand_ins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def peak_index(self) -> int:
        return max(range(len(self.live_bytes)), key=self.live_bytes.__getitem__) if self.live_bytes else -1

    @property
    def peak_bytes(self) -> int:
        return self.live_bytes[self.peak_index] if self.live_bytes else 0

    @property
    def peak_node(self) -> str | None:
        return self.order[self.peak_index] if self.live_bytes else None

    def live_at(self, step: int) -> tuple[str, ...]:
        """Names of the tensors live while node ``step`` runs."""
        return tuple(t.name for t in self.tensors.values() if t.first <= step <= t.last)

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_node": self.peak_node, "peak_index": self.peak_index,
                "live_bytes": dict(zip(self.order, self.live_bytes)),
                "tensors": {k: {"bytes": t.bytes, "first": t.first, "last": t.last} for k, t in self.tensors.items()},
                "unknown_size": list(self.unknown_size),
                "int8_stand_ins": {k: list(v) for k, v in self.int8_stand_ins.items()}}


@dataclass(frozen=True)
class LatencyProfile:
    """Per-node latency shares from ONNX Runtime's profiler (optimized graph, fixed threads)."""

    threads: int
    runs: int
    warmup: int
    run_us_median: float
    shares: Mapping[str, float]
    node_us: Mapping[str, float]
    unmatched: Mapping[str, float]
    fused: Mapping[str, str]
    ort_nodes: int

    def to_dict(self) -> dict:
        return {"threads": self.threads, "runs": self.runs, "warmup": self.warmup,
                "run_us_median": self.run_us_median, "shares": dict(self.shares), "node_us": dict(self.node_us),
                "unmatched_by_op_type": dict(self.unmatched), "fused_into": dict(self.fused),
                "ort_kernels": self.ort_nodes,
                "method": "ONNX Runtime profiler (SessionOptions.enable_profiling), CPU execution provider, "
                          "all graph optimizations on; share = a node's median kernel time per run / the sum of "
                          "all kernels' medians (warm-up runs dropped). ORT kernels that fuse several original "
                          "nodes are credited to the main node; the others name it in fused_into (for elementwise nodes "
                          "with no kernel of their own this is inferred from the graph: their latest producer). Kernels that "
                          "match no original node (e.g. layout reorders) are aggregated by op type in "
                          "unmatched_by_op_type."}


@dataclass(frozen=True)
class Profile:
    """Everything ``profile()`` found about one model; ``to_dict()`` is JSON-able, ``table()`` prints."""

    model: str
    parameters: int
    weight_bytes: int
    weight_bytes_by_dtype: Mapping[str, int]
    macs: int
    macs_by_op_type: Mapping[str, int]
    macs_by_dtype: Mapping[str, int]
    per_sample: bool
    activation_peak_bytes: int
    activation_peak_node: str | None
    op_histogram: Mapping[str, int]
    nodes: tuple[NodeProfile, ...]
    inputs: tuple[dict, ...] = ()
    latency: LatencyProfile | None = None
    evaluation: Any = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "totals": {
                "parameters": self.parameters, "weight_bytes": self.weight_bytes,
                "weight_bytes_by_dtype": dict(self.weight_bytes_by_dtype), "macs": self.macs,
                "macs_by_op_type": dict(self.macs_by_op_type), "macs_by_dtype": dict(self.macs_by_dtype),
                "per_sample": self.per_sample,
                "activation_peak_bytes": self.activation_peak_bytes,
                "activation_peak_node": self.activation_peak_node, "nodes": len(self.nodes),
            },
            "inputs": list(self.inputs),
            "op_histogram": dict(self.op_histogram),
            "latency": self.latency.to_dict() if self.latency else None,
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
            "nodes": [n.to_dict() for n in self.nodes],
            "notes": list(self.notes),
            "conventions": {
                "macs": "multiply-accumulates of Conv/Gemm/MatMul/RNN; other ops count one operation per unit: "
                        "pooling per window element, elementwise per output element, BatchNormalization 1 and "
                        "Softmax 3 per element; data movement 0",
                "per_sample": "dynamic dimensions set to 1 (figures are per sample)" if self.per_sample
                              else "static input shapes as declared",
                "macs_by_dtype": "multiply-accumulates only (Conv/Gemm/MatMul/RNN), by arithmetic type; a QDQ "
                                 "layer (input from DequantizeLinear) counts as int8",
                "activation_peak_bytes": "execution-order liveness plan, graph order, no in-place reuse; "
                                         "weights excluded; in QDQ graphs the int8 tensors count, not the float "
                                         "tensors int8 kernels never materialize",
            },
        }

    def table(self, top: int = 20, sort: str | None = None):
        """A rich renderable: the totals, the op histogram and the top-``top`` nodes.

        ``sort`` is "macs" or "latency" (default: latency when measured, else MACs).
        """
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        sort = sort or ("latency" if self.latency else "macs")
        if sort not in ("macs", "latency"):
            raise ConfigError(f"sort must be 'macs' or 'latency'; got {sort!r}")
        if sort == "latency" and not self.latency:
            raise ConfigError("sort='latency' needs a measured profile; profile with measure=True or sort by 'macs'")
        scope = " per sample" if self.per_sample else ""
        summary = Table(title=f"profile of {self.model}", show_header=False, title_justify="left")
        summary.add_column("figure", style="bold", no_wrap=True)
        summary.add_column("value")
        summary.add_row("parameters", f"{self.parameters:,}")
        summary.add_row("weight bytes", f"{self.weight_bytes:,} ("
                        + ", ".join(f"{k}: {v:,}" for k, v in self.weight_bytes_by_dtype.items()) + ")")
        summary.add_row(f"MACs{scope}", f"{self.macs:,}")
        if self.macs_by_dtype:
            summary.add_row("multiply-accumulates by type",
                            ", ".join(f"{k}: {v:,}" for k, v in self.macs_by_dtype.items()))
        summary.add_row(f"peak activations{scope}",
                        f"{self.activation_peak_bytes:,} bytes at {self.activation_peak_node}")
        summary.add_row("ops", ", ".join(f"{k} {v}" for k, v in self.op_histogram.items()))
        if self.latency:
            summary.add_row("latency", f"{self.latency.run_us_median / 1000:.3f} ms median per run (ORT profiler, "
                            f"{self.latency.threads} thread(s), {self.latency.runs} runs)")
        if self.evaluation is not None:
            summary.add_row("quality", str(self.evaluation))

        key = (lambda n: n.latency_share or 0.0) if sort == "latency" else (lambda n: n.macs)
        rows = sorted(self.nodes, key=key, reverse=True)[:top]
        prefix = _common_scope([n.name for n in self.nodes])
        nodes = Table(title=f"top {len(rows)} nodes by {'latency share' if sort == 'latency' else 'MACs'}",
                      title_justify="left", caption=f"node names without the prefix {prefix!r}" if prefix else None,
                      caption_justify="left")
        for col, justify in (("#", "right"), ("node", "left"), ("op", "left"), ("precision", "left"),
                             ("MACs", "right"), ("params", "right"), ("live bytes", "right"), ("latency", "right")):
            if col == "node":
                # min_width: on an 80-column terminal the numeric columns would otherwise squeeze a
                # transformer's long node names into a column 2-3 characters wide
                nodes.add_column(col, justify=justify, overflow="fold", ratio=1, min_width=16)
            else:
                nodes.add_column(col, justify=justify, no_wrap=True)
        for n in rows:
            if n.latency_share is not None:
                latency = f"{n.latency_share:.1%}"
            elif n.fused_into:
                latency = "fused"
            else:
                latency = "-"
            nodes.add_row(str(n.index), n.name[len(prefix):] if n.name.startswith(prefix) else n.name, n.op_type, n.precision, f"{n.macs:,}",
                          f"{n.parameters:,}", f"{n.live_bytes:,}", latency)
        notes = Text("\n".join(f"note: {note}" for note in self.notes), style="dim")
        return Group(summary, nodes, notes)


def _common_scope(names: list[str]) -> str:
    """The longest '/'-terminated prefix shared by every name (exporters scope all nodes alike)."""
    scoped = [n for n in names if "/" in n]
    prefix = os.path.commonprefix(scoped) if len(scoped) > 1 else ""
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


# ------------------------------------------------------------------------------------------------
# Graph analysis
# ------------------------------------------------------------------------------------------------

def _onnx_model(model):
    from .model import load

    handle = load(model)
    return handle, handle.proto()


def unique_node_names(graph) -> list[str]:
    """A unique name per node in graph order (ONNX allows empty or repeated names): the node's own
    name when it is unique, else ``<op_type>_<index>``. Every profile key uses these names."""
    counts = Counter(n.name for n in graph.node)
    return [n.name if n.name and counts[n.name] == 1 else f"{n.op_type}_{i}" for i, n in enumerate(graph.node)]


def _elem_bits(elem_type: int) -> int | None:
    import numpy as np
    import onnx

    if elem_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[elem_type]
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except Exception:
        return None
    if dtype == np.dtype(object):  # strings have no fixed size
        return None
    return dtype.itemsize * 8


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _nbytes(numel: int, elem_type: int) -> int:
    bits = _elem_bits(elem_type)
    return 0 if bits is None else (numel * bits + 7) // 8


@dataclass
class _Constant:
    dims: tuple[int, ...]
    elem_type: int
    source: str  # "initializer" or "Constant node"

    @property
    def numel(self) -> int:
        return math.prod(self.dims)


def _constants(graph) -> dict[str, _Constant]:
    """Initializers and Constant-node outputs (some exporters store all weights as Constant nodes)."""
    import onnx

    out: dict[str, _Constant] = {}
    for t in graph.initializer:
        out[t.name] = _Constant(tuple(t.dims), t.data_type, "initializer")
    for t in graph.sparse_initializer:
        out[t.values.name] = _Constant(tuple(t.dims), t.values.data_type, "initializer")
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value":
                out[node.output[0]] = _Constant(tuple(attr.t.dims), attr.t.data_type, "Constant node")
            elif attr.name == "sparse_value":
                out[node.output[0]] = _Constant(tuple(attr.sparse_tensor.dims), attr.sparse_tensor.values.data_type,
                                                "Constant node")
            elif attr.name in ("value_float", "value_int"):
                out[node.output[0]] = _Constant((), onnx.TensorProto.FLOAT if attr.name == "value_float"
                                                else onnx.TensorProto.INT64, "Constant node")
            elif attr.name in ("value_floats", "value_ints"):
                values = attr.floats if attr.name == "value_floats" else attr.ints
                out[node.output[0]] = _Constant((len(values),), onnx.TensorProto.FLOAT if attr.name == "value_floats"
                                                else onnx.TensorProto.INT64, "Constant node")
    return out


@dataclass
class _Shapes:
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, int]
    per_sample: bool
    notes: list[str]


def _static_shapes(proto, dims: Mapping[str, int] | None = None) -> _Shapes:
    """Shapes of every tensor with the dynamic batch set to 1 and other dynamic dimensions set to
    ``dims[name]`` (e.g. {"sequence": 128}) or 1.

    ONNX shape inference first (with data propagation, so Reshape targets computed in the graph
    resolve); ONNX Runtime's symbolic shape inference for whatever is still unknown.
    """
    import copy

    import onnx

    work = copy.deepcopy(proto)
    graph = work.graph
    initializer_names = {t.name for t in graph.initializer}
    per_sample = False
    notes: list[str] = []
    # A recurrent state carries the batch on axis 1; see model.batch_symbol.
    from .model import batch_symbol as find_batch_symbol

    batch_symbol = find_batch_symbol([tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                            for d in v.type.tensor_type.shape.dim)
                                      for v in graph.input if v.name not in initializer_names])
    for value in graph.input:
        if value.name in initializer_names:
            continue
        params = [d.dim_param for d in value.type.tensor_type.shape.dim]
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                size = 1
                # axis 0 is the batch unless this input carries the batch symbol elsewhere (time-major)
                if (batch_symbol and dim.dim_param == batch_symbol) or (
                        axis == 0 and batch_symbol not in params and not (dims and dim.dim_param in dims)):
                    per_sample = True
                elif dims and dim.dim_param in dims:
                    size = int(dims[dim.dim_param])
                else:
                    notes.append(f"input {value.name!r} axis {axis} ({dim.dim_param or 'unnamed'}) is dynamic; "
                                 "counted as 1" + (f" (set it with dims={{{dim.dim_param!r}: n}} / --dim "
                                                   f"{dim.dim_param}=n)" if dim.dim_param else ""))
                dim.Clear()
                dim.dim_value = size
    # Stale symbolic shapes from an earlier inference would be merged back in; start clean.
    del graph.value_info[:]
    for value in graph.output:
        tt = value.type.tensor_type
        if value.type.HasField("tensor_type") and not all(d.HasField("dim_value") for d in tt.shape.dim):
            tt.ClearField("shape")
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    except Exception as e:  # inference is a help: fall through to the symbolic pass
        notes.append(f"ONNX shape inference failed ({first_line(e, 120)})")
    shapes, types = _collect_shapes(work.graph)
    missing = _missing_outputs(work.graph, shapes)
    symbolic_failure = None
    if missing:
        try:
            symbolic = _symbolic_shape_inference(work)
            more_shapes, more_types = _collect_shapes(symbolic.graph)
            for k, v in more_shapes.items():
                shapes.setdefault(k, v)
            for k, v in more_types.items():
                types.setdefault(k, v)
        except Exception as e:
            symbolic_failure = f"ONNX Runtime symbolic shape inference failed ({first_line(e, 120)})"
        missing = _missing_outputs(work.graph, shapes)
    if missing:
        measured = _measured_shapes(work, missing)
        if measured:
            for name, (shape, elem_type) in measured.items():
                shapes[name] = shape
                types.setdefault(name, elem_type)
            notes.append(f"{len(measured)} tensor shape(s) that shape inference could not resolve were measured by "
                         "running the model once on ONNX Runtime at batch 1 (other dynamic dimensions as profiled)")
        missing = _missing_outputs(work.graph, shapes)
    if missing and symbolic_failure:
        notes.append(symbolic_failure)
    if missing:
        notes.append(f"{len(missing)} tensor(s) have no static shape ({', '.join(missing[:3])}"
                     f"{'...' if len(missing) > 3 else ''}); their MACs and bytes count as 0")
    for name, const in _constants(proto.graph).items():
        shapes[name] = const.dims
        types[name] = const.elem_type
    return _Shapes(shapes, types, per_sample, notes)


def _symbolic_shape_inference(proto):
    """ONNX Runtime's symbolic shape inference, without its side effect.

    ``SymbolicShapeInference.infer_shapes`` saves ``sym_shape_infer_temp.onnx`` (plus external
    data files) into the current directory whenever some shape stays unknown, then raises; profiling
    a model must not litter the user's folder. These are the steps of that method minus the save;
    if a future ONNX Runtime renames them, the AttributeError lands in the caller's fallback
    (shapes measured by running the model), which a note then reports.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    complete = False
    inference._preprocess(proto)
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise RuntimeError("incomplete symbolic shape inference")
    return inference.out_mp_


def _measured_shapes(work, missing: list[str]) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shapes and element types of ``missing`` tensors, from one ONNX Runtime run on example inputs.

    Static inference gives up on graphs whose shapes are computed at run time (the Shape -> Slice
    -> Concat -> Reshape chains exported for multi-head attention with a dynamic batch); running
    the graph once with those tensors exposed as outputs settles them. Empty if the run fails.
    """
    import copy

    import numpy as np
    import onnx

    from .model import ModelHandle, make_session

    try:
        probe = copy.deepcopy(work)
        present = {o.name for o in probe.graph.output}
        for name in missing:
            if name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
        feeds = ModelHandle.from_proto(work).example_inputs(batch=1)
        session = make_session(probe.SerializeToString(), threads=1, optimize=False)
        values = session.run(missing, feeds)
    except Exception:  # measuring is a help; without it the notes say what was not counted
        return {}
    return {name: (tuple(int(d) for d in np.shape(v)), int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)))
            for name, v in zip(missing, values)}


def _collect_shapes(graph) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        if tt.elem_type:
            types[value.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in graph.initializer:
        shapes[t.name] = tuple(t.dims)
        types[t.name] = t.data_type
    return shapes, types


def _missing_outputs(graph, shapes) -> list[str]:
    return [o for n in graph.node for o in n.output if o and o not in shapes]


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(node, shapes: Mapping[str, tuple[int, ...]], constants: Mapping[str, _Constant]) -> int | None:
    """MACs (or operations, see the module docstring) of one node; None when it cannot be counted."""
    op = node.op_type

    def shape(i: int) -> tuple[int, ...] | None:
        return shapes.get(node.input[i]) if len(node.input) > i and node.input[i] else None

    out = shapes.get(node.output[0]) if node.output else None
    out_numel = math.prod(out) if out is not None else None
    if op in _ZERO_COST:
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        # weight is (Cout, Cin/groups, *kernel): each output element needs Cin/groups * prod(kernel) MACs
        return None if w is None or out_numel is None else out_numel * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        # weight is (Cin, Cout/groups, *kernel): each input element scatters into Cout/groups * prod(kernel)
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul", "DynamicQuantizeMatMul"):
        a = shape(0)
        if a is None or out_numel is None:
            return None
        k = a[-2] if _attr(node, "transA", 0) else a[-1]  # Gemm's / FusedMatMul's transposed A
        return out_numel * k
    if op == "MatMulNBits":
        return None if out_numel is None else out_numel * int(_attr(node, "K"))
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = shape(0), shape(1), shape(2)
        if x is None or w is None or r is None:
            return None
        seq, batch = (x[1], x[0]) if _attr(node, "layout", 0) else (x[0], x[1])
        # W is (directions, gates*hidden, input), R is (directions, gates*hidden, hidden)
        return seq * batch * (math.prod(w) + math.prod(r))
    if op in _WINDOW_POOL:
        kernel = _attr(node, "kernel_shape")
        return None if out_numel is None or not kernel else out_numel * math.prod(kernel)
    if op in _REDUCE:
        x = shape(0)
        return None if x is None else math.prod(x)
    if op in ("DequantizeLinear", "QuantizeLinear") and node.input and node.input[0] in constants:
        return 0  # quantized weights are decoded once when the runtime loads the model
    if op in _ELEMENTWISE or op in ("BatchNormalization", "InstanceNormalization"):
        return out_numel
    if op in ("Softmax", "LogSoftmax"):
        return None if out_numel is None else 3 * out_numel
    if op in ("LayerNormalization",):
        return None if out_numel is None else 5 * out_numel  # mean, variance, normalize, scale, shift
    return None


def _parameter_inputs(graph, constants: Mapping[str, _Constant]) -> dict[int, list[str]]:
    """For each node index, the constant inputs it uses as weights (not as metadata)."""
    out: dict[int, list[str]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        skip = _METADATA_INPUTS.get(node.op_type, frozenset())
        for pos, name in enumerate(node.input):
            if name and name in constants and pos not in skip:
                out[i].append(name)
    return out


def _precision(node, producers: Mapping[str, Any], constants: Mapping[str, _Constant],
               types: Mapping[str, int]) -> str:
    """The weight dtype of a layer with weights (following DequantizeLinear back to its int
    initializer for QDQ graphs), else the dtype of its first output."""
    pos = _WEIGHT_INPUT.get(node.op_type)
    if node.op_type == "MatMulNBits":
        return f"int{_attr(node, 'bits', 4)}"
    if pos is not None and len(node.input) > pos:
        candidates = [node.input[pos]]
        if node.op_type == "MatMul":
            candidates.append(node.input[0])
        for name in candidates:
            if name in constants:
                return _dtype_name(constants[name].elem_type)
            source = producers.get(name)
            # weight -> (Transpose|Reshape)? -> DequantizeLinear(int initializer): a QDQ layer
            hops = 0
            while source is not None and source.op_type in ("Transpose", "Reshape", "Identity") and hops < 2:
                source = producers.get(source.input[0])
                hops += 1
            if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in constants:
                return _dtype_name(constants[source.input[0]].elem_type)
    if node.output and node.output[0] in types:
        return _dtype_name(types[node.output[0]])
    return "unknown"


def _mac_dtype(node, producers: Mapping[str, Any], types: Mapping[str, int]) -> str:
    """Arithmetic type of a multiply-accumulate node, named as targets name them (fp32, int8...).

    A float Conv/MatMul whose input comes from DequantizeLinear is a QDQ layer: runtimes run it as
    an integer kernel on the tensor behind the DequantizeLinear, so its MACs have that type.
    """
    from .target import canonical_dtype

    if node.op_type in _INTEGER_MAC_OPS:
        return "int8"
    name = node.input[0] if node.input else ""
    source = producers.get(name)
    default = "fp32"
    if source is not None and source.op_type == "DequantizeLinear":
        name, default = source.input[0], "int8"
    elem_type = types.get(name)
    if not elem_type:
        return default
    try:
        return canonical_dtype(_dtype_name(elem_type))
    except ConfigError:  # e.g. float64: no target's cost model has a figure for it; the nearest is used
        return default


@dataclass(frozen=True)
class GraphCounts:
    """The static counts of one graph, computed once for both :func:`profile` and the search's
    screening and estimates (``edgeopt.search._static``), so the two never disagree.

    ``macs`` is per node (MACs, or operations for ops that do not multiply-accumulate; see the
    module docstring); ``mac_dtypes`` names the arithmetic type of each multiply-accumulate node
    (QDQ layers are int8); ``uncounted`` the nodes whose count is unknown (op or shape).
    """

    names: tuple[str, ...]
    shapes: _Shapes
    constants: Mapping[str, _Constant]
    macs: Mapping[str, int]
    uncounted: tuple[str, ...]
    mac_dtypes: Mapping[str, str]
    liveness: Liveness

    @property
    def macs_by_dtype(self) -> dict[str, int]:
        """Multiply-accumulates only (no elementwise or pooling operations), by arithmetic type."""
        out: dict[str, int] = defaultdict(int)
        for name, dtype in self.mac_dtypes.items():
            if name not in self.uncounted:
                out[dtype] += self.macs[name]
        return dict(out)

    @property
    def weight_bytes(self) -> int:
        """Bytes of every constant: initializers and Constant-node tensors."""
        return sum(_nbytes(c.numel, c.elem_type) for c in self.constants.values())


def graph_counts(model, dims: Mapping[str, int] | None = None) -> GraphCounts:
    """Shapes, per-node MACs and their arithmetic types, constants and the activation liveness plan of
    ``model`` (a path or a ModelHandle) with dynamic dimensions at 1 (or ``dims[name]``)."""
    handle, proto = _onnx_model(model)
    return _graph_counts(proto, _check_dims(handle, dims))


def _graph_counts(proto, dims: Mapping[str, int] | None) -> GraphCounts:
    graph = proto.graph
    shapes = _static_shapes(proto, dims)
    constants = _constants(graph)
    names = unique_node_names(graph)
    macs, uncounted = _count_macs(proto, shapes, constants)
    producers = {o: node for node in graph.node for o in node.output if o}
    mac_dtypes = {name: _mac_dtype(node, producers, shapes.types)
                  for name, node in zip(names, graph.node) if node.op_type in _MULTIPLY_ACCUMULATE}
    return GraphCounts(tuple(names), shapes, constants, macs, tuple(uncounted), mac_dtypes,
                       _liveness(proto, shapes, constants))


def count_macs(model, dims: Mapping[str, int] | None = None) -> dict[str, int]:
    """MACs per node (unique node name -> count; see the module docstring for non-MAC ops).

    Dynamic dimensions count as 1 (or as ``dims[name]``, e.g. ``{"sequence": 128}``), so with a
    dynamic batch the figures are per sample.
    """
    handle, proto = _onnx_model(model)
    return _count_macs(proto, _static_shapes(proto, _check_dims(handle, dims)), _constants(proto.graph))[0]


def _dims_from_data(handle, dataset) -> dict[str, int]:
    """Sizes of the model's dynamic input dimensions (the batch excluded) as the data's rows have them."""
    import numpy as np

    arrays = dataset.x if dataset.is_multi_input else {handle.inputs[0].name: dataset.x}
    found: dict[str, int] = {}
    for spec in handle.inputs:
        arr = arrays.get(spec.name)
        if arr is None:
            continue
        per_sample = [d for i, d in enumerate(spec.shape) if i != spec.batch_axis]
        have = np.shape(arr)[1:] if spec.batch_axis is not None or np.ndim(arr) > len(spec.shape) else np.shape(arr)
        for d, size in zip(per_sample, have):
            if isinstance(d, str):
                found.setdefault(d, int(size))
    return found


def _check_dims(handle, dims: Mapping[str, int] | None) -> dict[str, int] | None:
    """``dims`` checked against the model's symbolic input dimensions (the batch excluded)."""
    if not dims:
        return None
    symbols = {d for s in handle.inputs for i, d in enumerate(s.shape) if isinstance(d, str) and i != s.batch_axis}
    for name, size in dims.items():
        if name not in symbols:
            raise ConfigError(f"dimension {name!r} is not a dynamic input dimension of model {handle.name!r}; "
                              f"its dynamic dimensions (batch excluded) are {sorted(symbols) or 'none'}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"dimension {name!r} must be a positive integer size; got {size!r}")
    return dict(dims)


def total_macs(model) -> int:
    """Total MACs of the model per sample (dynamic batch = 1)."""
    return sum(count_macs(model).values())


def _count_macs(proto, shapes: _Shapes, constants) -> tuple[dict[str, int], list[str]]:
    names = unique_node_names(proto.graph)
    macs: dict[str, int] = {}
    uncounted: list[str] = []
    for name, node in zip(names, proto.graph.node):
        value = _node_macs(node, shapes.shapes, constants)
        if value is None:
            uncounted.append(name)
            value = 0
        macs[name] = int(value)
    return macs, uncounted


def activation_liveness(model, dims: Mapping[str, int] | None = None) -> Liveness:
    """The execution-order liveness plan of ``model``'s activations (see :class:`Liveness`).

    >>> live = activation_liveness("../shared/data/mlperf_tiny/ic/resnet8_cifar10.onnx")  # doctest: +SKIP
    >>> live.peak_bytes, live.peak_node  # doctest: +SKIP
    """
    handle, proto = _onnx_model(model)
    return _liveness(proto, _static_shapes(proto, _check_dims(handle, dims)), _constants(proto.graph))


def _int8_stand_ins(graph, constants: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The float tensors of a QDQ graph that never exist in memory, and what stands in for them.

    Runtimes (ONNX Runtime's QDQ fusion, our C generator) run a QDQ graph as int8 kernels, so two
    kinds of float tensors are never materialized: a DequantizeLinear output (the kernel reads the
    int8 tensor behind it, which therefore stays live until the kernel's step) and a float output
    that only QuantizeLinear nodes consume (the kernel writes the int8 result directly, at its own
    step). Counting them would make every quantized model look larger in RAM than the float one.

    Returns ``(dequantized, requantized)``: DequantizeLinear output -> the int8 tensor it reads
    (activations, or weights that stay int8 in storage), and float tensor consumed only by
    QuantizeLinear -> the int8 tensors written in its place. Graph outputs are always real.
    """
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    dequantized: dict[str, str] = {}
    requantized: dict[str, list[str]] = {}
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if not out or out in outputs or out in constants:
            continue
        if node.op_type == "DequantizeLinear":
            dequantized[out] = node.input[0]
            continue
        users = consumers.get(out, [])
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            requantized[out] = [u.output[0] for u in users]
    return dequantized, requantized


def _liveness(proto, shapes: _Shapes, constants: Mapping[str, _Constant]) -> Liveness:
    graph = proto.graph
    names = unique_node_names(graph)
    n = len(graph.node)
    last_step = max(n - 1, 0)
    dequantized, requantized = _int8_stand_ins(graph, constants)
    written_early = {q for qs in requantized.values() for q in qs}

    def in_memory(name: str) -> str:
        while name in dequantized:
            name = dequantized[name]
        return name

    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for value in graph.input:
        if value.name not in constants:
            first[value.name] = 0
            last[value.name] = 0
    for i, node in enumerate(graph.node):
        for name in node.input:
            name = in_memory(name)
            if name in first:
                last[name] = i
        for name in node.output:
            if not name or name in constants or name in dequantized or name in written_early:
                continue
            for real in requantized.get(name, [name]):
                first[real] = i
                last[real] = i
    for value in graph.output:
        if value.name in first:
            last[value.name] = last_step
    tensors: dict[str, TensorLife] = {}
    unknown: list[str] = []
    for name, start in first.items():
        shape = shapes.shapes.get(name)
        elem_type = shapes.types.get(name)
        if shape is None or elem_type is None:
            unknown.append(name)
            size = 0
        else:
            size = _nbytes(math.prod(shape), elem_type)
        tensors[name] = TensorLife(name, size, start, last[name])
    # Difference array: add at first step, remove after last step.
    delta = [0] * (n + 1)
    for t in tensors.values():
        delta[t.first] += t.bytes
        delta[t.last + 1] -= t.bytes
    live, running = [], 0
    for i in range(n):
        running += delta[i]
        live.append(running)
    stand_ins = {name: (in_memory(name),) for name in dequantized if in_memory(name) in tensors}
    stand_ins.update({name: tuple(qs) for name, qs in requantized.items()})
    return Liveness(tuple(names), tuple(live), tensors, tuple(unknown), stand_ins)


# ------------------------------------------------------------------------------------------------
# Measured latency shares
# ------------------------------------------------------------------------------------------------

def measure_latency(model, inputs: Mapping[str, Any] | None = None, *, threads: int = 1, runs: int = 50,
                    warmup: int = 5, dims: Mapping[str, int] | None = None) -> LatencyProfile:
    """Per-node latency shares from ONNX Runtime's profiler (the trace file goes to a temp dir)."""
    from .model import make_session

    handle, proto = _onnx_model(model)
    if threads < 1:
        raise ConfigError(f"threads must be >= 1; got {threads}")
    if runs < 1:
        raise ConfigError(f"runs must be >= 1; got {runs}")
    feeds = dict(inputs) if inputs is not None else handle.example_inputs(batch=1, dims=_check_dims(handle, dims))
    feeds = handle._feeds(feeds)
    with tempfile.TemporaryDirectory(prefix="edgeopt-profile-") as tmp:
        session = make_session(handle.onnx_bytes, threads=threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(warmup + runs):
            session.run(None, feeds)
        trace_path = session.end_profiling()
        with open(trace_path) as f:
            events = json.load(f)
    return _parse_trace(events, proto, threads=threads, runs=runs, warmup=warmup)


def _parse_trace(events: list[dict], proto, *, threads: int, runs: int, warmup: int) -> LatencyProfile:
    graph = proto.graph
    names = unique_node_names(graph)
    run_events = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    measured_runs = run_events[warmup:] if len(run_events) > warmup else run_events
    starts = [e["ts"] for e in measured_runs]
    # Kernel time per (kernel, run); a kernel's figure is its median over runs, so one preempted
    # run (other processes share these cores) does not skew the shares.
    per_run: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * len(measured_runs))
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or not starts or e["ts"] < starts[0]:
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        key = (e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"))
        per_run[key][run] += float(e["dur"])
    kernel_us = {k: float(statistics.median(v)) for k, v in per_run.items()}
    total = sum(kernel_us.values()) or 1.0
    mapper = _KernelMapper(graph, names)
    node_us: dict[str, float] = defaultdict(float)
    unmatched: dict[str, float] = defaultdict(float)
    fused: dict[str, str] = {}
    for (kernel, op_name), us in kernel_us.items():
        anchor, absorbed = mapper.map(kernel, op_name)
        if anchor is None:
            unmatched[op_name] += us
            continue
        node_us[anchor] += us
        for other in absorbed:
            fused[other] = anchor
    mapper.credit_kernelless(node_us, fused)
    return LatencyProfile(
        threads=threads, runs=len(measured_runs), warmup=warmup,
        run_us_median=float(statistics.median(e["dur"] for e in measured_runs)) if measured_runs else math.nan,
        shares={k: v / total for k, v in node_us.items()},
        node_us=dict(node_us),
        unmatched={k: v / total for k, v in sorted(unmatched.items(), key=lambda kv: -kv[1])},
        fused=fused, ort_nodes=len(kernel_us),
    )


class _KernelMapper:
    """Map ONNX Runtime kernel names back to original nodes.

    ORT keeps a node's name unless it fuses or re-lays it out: NCHWc kernels are named after the
    fused group's output tensor plus ``_nchwc`` (``model/act/Relu:0_nchwc`` is Conv+Relu), other
    fusions append a suffix (``model/dense/MatMul/MatMulAddFusion``, ``X_token_3``). No ORT API
    reports the mapping, so it is reconstructed from these naming rules; what stays unmatched is
    reported by op type.
    """

    def __init__(self, graph, names: list[str]):
        self.nodes = {name: node for name, node in zip(names, graph.node)}
        self.by_name = {node.name: name for name, node in zip(names, graph.node) if node.name}
        self.producer = {o: name for name, node in zip(names, graph.node) for o in node.output if o}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for name, node in zip(names, graph.node):
            for i in node.input:
                self.consumers[i].append(name)

    def map(self, kernel: str, op_name: str) -> tuple[str | None, list[str]]:
        if kernel in self.by_name:
            return self.by_name[kernel], []
        base = kernel[: -len("_nchwc")] if kernel.endswith("_nchwc") else kernel
        if base in self.producer:
            return self._walk_back(self.producer[base], op_name)
        # longest original node name that prefixes the kernel name at a separator
        best = None
        for original in self.by_name:
            if kernel.startswith(original) and len(kernel) > len(original) and kernel[len(original)] in "/_:":
                if best is None or len(original) > len(best):
                    best = original
        if best is not None:
            anchor = self.by_name[best]
            absorbed = []
            if kernel.endswith("MatMulAddFusion"):  # MatMul + bias Add became one Gemm
                absorbed = [c for c in self.consumers.get(self.nodes[anchor].output[0], [])
                            if self.nodes[c].op_type == "Add"][:1]
            return anchor, absorbed
        return None, []

    def credit_kernelless(self, node_us: Mapping[str, float], fused: dict[str, str]) -> None:
        """Elementwise nodes that ran no kernel of their own (e.g. a residual Add and Relu folded into
        an NCHWc Conv as its Sum input) are marked fused into the kernel of their latest producer.
        This is inferred from the topology, since ORT's kernel names do not say it."""
        order = {name: i for i, name in enumerate(self.nodes)}
        for name, node in self.nodes.items():
            if name in node_us or name in fused or node.op_type not in _ELEMENTWISE:
                continue
            upstream = [self.producer[i] for i in node.input if i in self.producer]
            if not upstream:
                continue
            latest = max(upstream, key=order.__getitem__)
            anchor = fused.get(latest, latest if latest in node_us else None)
            if anchor is not None:
                fused[name] = anchor

    def _walk_back(self, name: str, op_name: str) -> tuple[str, list[str]]:
        """From the node producing a fused group's output, walk up single-consumer links to the node
        whose op type the kernel runs (Conv for Conv+Add+Relu); the rest were fused into it."""
        chain = [name]
        node = self.nodes[name]
        while node.op_type != op_name and len(chain) < 4:
            upstream = [self.producer[i] for i in node.input if i in self.producer]
            candidates = [u for u in upstream if self.nodes[u].op_type == op_name] or upstream
            if not candidates:
                break
            parent = candidates[0]
            chain.append(parent)
            node = self.nodes[parent]
        if node.op_type != op_name:
            return name, []
        anchor = chain[-1]
        return anchor, chain[:-1]


# ------------------------------------------------------------------------------------------------
# The profile
# ------------------------------------------------------------------------------------------------

def profile(model, data=None, *, metric=None, measure: bool = True, threads: int = 1, runs: int = 50,
            dims: Mapping[str, int] | None = None) -> Profile:
    """Profile ``model`` (a path or a ModelHandle).

    Static: parameters (initializers and Constant-node tensors), weight bytes by dtype, MACs per
    node, per-layer precision, peak activation memory under an execution-order liveness plan,
    op histogram. With ``measure``: per-node latency share from ONNX Runtime's profiler with
    ``threads`` threads over ``runs`` runs at batch 1. With ``data`` and ``metric``: the metric
    with its 95% CI and sample count. ``dims`` sizes dynamic dimensions other than the batch
    (``{"sequence": 128}``) for the static figures and the latency input; they count as 1 otherwise.
    """
    handle, proto = _onnx_model(model)
    graph = proto.graph
    if metric is not None and data is None:
        raise ConfigError("metric needs data: give data= (e.g. an .npz path) or drop metric")
    dataset = None
    if data is not None:
        from .data import fit_to_model, load_data

        dataset = fit_to_model(load_data(data), handle)
        # dynamic dimensions the user did not size take the data's sizes (a 512-sample audio chunk)
        dims = {**_dims_from_data(handle, dataset), **(dims or {})} or None
    dims = _check_dims(handle, dims)
    counts = _graph_counts(proto, dims)
    shapes, constants, names, macs, liveness = counts.shapes, counts.constants, counts.names, counts.macs, counts.liveness
    op_of = dict(zip(names, (node.op_type for node in graph.node)))
    uncounted = [f"{name} ({op_of[name]})" for name in counts.uncounted]
    parameter_inputs = _parameter_inputs(graph, constants)
    producers = {o: node for node in graph.node for o in node.output if o}

    weight_bytes_by_dtype: dict[str, int] = defaultdict(int)
    for const in constants.values():
        weight_bytes_by_dtype[_dtype_name(const.elem_type)] += _nbytes(const.numel, const.elem_type)
    counted: set[str] = set()
    node_parameters: list[int] = []
    node_weight_bytes: list[int] = []
    for i, node in enumerate(graph.node):
        params = wbytes = 0
        for name in parameter_inputs.get(i, []):
            if name in counted:  # a shared weight counts once, at its first user
                continue
            counted.add(name)
            const = constants[name]
            params += (int(_attr(node, "K")) * int(_attr(node, "N"))
                       if node.op_type == "MatMulNBits" and name == node.input[1] else const.numel)
            wbytes += _nbytes(const.numel, const.elem_type)
        node_parameters.append(params)
        node_weight_bytes.append(wbytes)

    evaluation = None
    latency = None
    notes = list(shapes.notes)
    if uncounted:
        notes.append(f"MACs not counted (unknown op or shape) for {len(uncounted)} node(s): "
                     + ", ".join(uncounted[:5]) + ("..." if len(uncounted) > 5 else ""))
    if liveness.unknown_size:
        notes.append(f"{len(liveness.unknown_size)} activation tensor(s) of unknown size count 0 bytes")
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        notes.append("subgraphs (If/Loop/Scan bodies) are not analysed")
    if measure:
        sample = handle.feeds_from_samples(dataset.take(0, 1).x) if data is not None else None
        latency = measure_latency(handle, sample, threads=threads, runs=runs, dims=dims)
        silent = [n for n in names if n not in latency.shares and n not in latency.fused]
        if silent:
            notes.append(f"{len(silent)} node(s) ran no ONNX Runtime kernel of their own (folded or fused by ORT's "
                         "optimizer into a kernel whose name does not reveal it); their latency share shows as '-'")
        if latency.unmatched:
            notes.append("latency of ORT kernels matching no original node (layout reorders, etc.) is "
                         "aggregated by op type: " + ", ".join(f"{k} {v:.1%}" for k, v in latency.unmatched.items()))
    if data is not None and metric is not None:
        from .evaluation import evaluate

        evaluation = evaluate(handle, dataset, metric)

    types = shapes.types
    rows = []
    for i, (name, node) in enumerate(zip(names, graph.node)):
        rows.append(NodeProfile(
            index=i, name=name, op_type=node.op_type,
            output_shapes=tuple(shapes.shapes.get(o) for o in node.output),
            macs=macs[name], parameters=node_parameters[i], weight_bytes=node_weight_bytes[i],
            precision=_precision(node, producers, constants, types), live_bytes=liveness.live_bytes[i],
            latency_share=latency.shares.get(name) if latency else None,
            latency_us=latency.node_us.get(name) if latency else None,
            fused_into=latency.fused.get(name) if latency else None,
        ))
    macs_by_op: dict[str, int] = defaultdict(int)
    for row in rows:
        macs_by_op[row.op_type] += row.macs
    return Profile(
        model=handle.name,
        parameters=sum(node_parameters),
        weight_bytes=sum(weight_bytes_by_dtype.values()),
        weight_bytes_by_dtype=dict(sorted(weight_bytes_by_dtype.items(), key=lambda kv: -kv[1])),
        macs=sum(macs.values()),
        macs_by_op_type=dict(sorted(macs_by_op.items(), key=lambda kv: -kv[1])),
        macs_by_dtype=counts.macs_by_dtype,
        per_sample=shapes.per_sample,
        activation_peak_bytes=liveness.peak_bytes,
        activation_peak_node=liveness.peak_node,
        op_histogram=dict(Counter(n.op_type for n in graph.node).most_common()),
        nodes=tuple(rows),
        inputs=tuple(s.to_dict() for s in handle.inputs),
        latency=latency,
        evaluation=evaluation,
        notes=tuple(notes),
    )


def matmul_dominated(proto) -> bool:
    """Whether most weights sit in layers dynamic int8 converts (MatMul/Gemm/LSTM/Attention, embedding
    tables) rather than in convolutions: a CNN's dense head alone is not worth a candidate."""
    from .passes.quantize_int8 import constant_node_tensors

    sizes = {i.name: math.prod(i.dims) for i in proto.graph.initializer}
    sizes.update({name: math.prod(t.dims) for name, t in constant_node_tensors(proto).items()})
    dense = conv = 0
    for node in proto.graph.node:
        if node.op_type in ("MatMul", "Gemm", "LSTM", "Attention") and len(node.input) > 1:
            dense += sizes.get(node.input[1], 0)
        elif node.op_type == "Gather" and node.input:
            dense += sizes.get(node.input[0], 0)
        elif node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            conv += sizes.get(node.input[1], 0)
    return dense > 0 and dense >= conv
