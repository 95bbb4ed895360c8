"""Lower an int8 QDQ ONNX graph into a list of integer ops (the generator's IR).

A QDQ graph keeps float ops and wraps each in DequantizeLinear (inputs) and QuantizeLinear
(output). ONNX Runtime fuses every ``DQ -> op -> Q`` group into an integer kernel (QLinearConv,
QGemm, QLinearAdd, ...); we recognise the same groups and emit the same arithmetic, so the C
code can match ORT's int8 results bit for bit.

Conventions: activations are 8-bit (all int8 or all uint8, as the quantizer writes them),
tensors keep ONNX's logical layout (NCHW for convolutions), batch is fixed to 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError

# ops that only move bytes: the output is the input's quantized bytes, reinterpreted or permuted
_LAYOUT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
SUPPORTED_OPS = sorted({
    "Conv", "Gemm", "MatMul", "Add", "Mul", "AveragePool", "GlobalAveragePool", "MaxPool", "Concat",
    "Softmax", "Sigmoid", "Tanh", "Relu", "Clip",
} | _LAYOUT_OPS | {"QuantizeLinear", "DequantizeLinear"})


@dataclass
class QTensor:
    """An 8-bit activation tensor: logical shape (batch 1), scale and zero point."""

    name: str
    shape: tuple[int, ...]
    scale: np.float32
    zero_point: int
    alias_of: str | None = None  # a reshape shares its input's bytes

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Op:
    kind: str            # conv, gemm, add, mul, avgpool, maxpool, softmax, lut, concat, transpose, reshape
    name: str            # the ONNX node name, for messages and comments
    inputs: list[str]    # activation tensor names
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoweredModel:
    tensors: dict[str, QTensor]
    ops: list[Op]
    input_name: str          # the quantized model input (C side)
    output_name: str         # the quantized model output (C side)
    onnx_input: str          # float graph input
    onnx_output: str         # float graph output
    signed: bool             # activations int8 (True) or uint8 (False)

    @property
    def input(self) -> QTensor:
        return self.tensors[self.input_name]

    @property
    def output(self) -> QTensor:
        return self.tensors[self.output_name]


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_label(node) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def check_supported(proto) -> None:
    """Raise UnsupportedModelError naming the first op the generator cannot compile."""
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            raise UnsupportedModelError(
                f"the C generator does not support op {node.op_type!r} (domain {node.domain or 'ai.onnx'!r}) "
                f"used by node {node.name or '(unnamed)'!r}; supported ops: {', '.join(SUPPORTED_OPS)}"
            )


def lower(proto) -> LoweredModel:
    """Turn a QDQ ``onnx.ModelProto`` into integer ops; raises UnsupportedModelError before any output."""
    import onnx
    from onnx import numpy_helper

    check_supported(proto)
    graph = proto.graph
    if len(graph.input) - len({i.name for i in graph.initializer} & {i.name for i in graph.input}) != 1 or len(graph.output) != 1:
        raise UnsupportedModelError("the C generator supports models with exactly one input and one output")
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes are folded by the quantizer; accept them anyway
        if node.op_type == "Constant":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - shapes are re-derived below where inference fails
        inferred = proto
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = tuple(int(d) for d in dims)

    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    graph_input = next(i for i in graph.input if i.name not in inits)
    graph_output = graph.output[0].name
    tensors: dict[str, QTensor] = {}
    ops: list[Op] = []
    # float tensor name -> quantized tensor name it dequantizes (activations only)
    dq_of: dict[str, str] = {}
    signed_flags: set[bool] = set()

    def qparams(node):
        scale = np.float32(inits[node.input[1]].reshape(-1)[0]) if inits[node.input[1]].size == 1 else None
        if scale is None:
            raise UnsupportedModelError(f"{_node_label(node)} quantizes an activation per channel; only per-tensor activations are supported")
        zp_arr = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.uint8)
        if zp_arr.dtype not in (np.int8, np.uint8):
            raise UnsupportedModelError(f"{_node_label(node)} quantizes to {zp_arr.dtype}; only int8/uint8 activations are supported")
        signed_flags.add(zp_arr.dtype == np.int8)
        return scale, int(zp_arr.reshape(-1)[0])

    def const_of(name: str):
        """(int values, per-channel scales float32, zero points, axis) of a DQ'd initializer, or None."""
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        q = inits[node.input[0]]
        scale = inits[node.input[1]].astype(np.float32)
        zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, dtype=q.dtype)
        return q, scale, zp.astype(np.int64), int(_attr(node, "axis", 1))

    def act_in(node, name: str) -> str:
        if name in dq_of:
            return dq_of[name]
        raise UnsupportedModelError(
            f"{_node_label(node)} reads {name!r}, which is not a dequantized 8-bit activation; "
            "the model is not fully quantized in QDQ form (quantize it first)"
        )

    def out_q(node) -> tuple[str, Any]:
        """The single QuantizeLinear after ``node`` (through an optional Relu/Clip) and the fused clamp."""
        cur = node
        clamp = None
        while True:
            users = consumers.get(cur.output[0], [])
            if len(users) != 1:
                raise UnsupportedModelError(f"{_node_label(node)} output is not followed by one QuantizeLinear; cannot requantize it")
            nxt = users[0]
            if nxt.op_type in ("Relu", "Clip") and cur is node:
                lo, hi = 0.0, np.inf
                if nxt.op_type == "Clip":
                    lo = float(inits[nxt.input[1]]) if len(nxt.input) > 1 and nxt.input[1] else _attr(nxt, "min", -np.inf)
                    hi = float(inits[nxt.input[2]]) if len(nxt.input) > 2 and nxt.input[2] else _attr(nxt, "max", np.inf)
                clamp = (lo, hi)
                cur = nxt
                continue
            if nxt.op_type != "QuantizeLinear":
                raise UnsupportedModelError(f"{_node_label(node)} output is not requantized (found {nxt.op_type}); the C generator "
                                            "needs every layer int8 in QDQ form: quantize with quantize.int8 format=qdq, "
                                            "float_tail=false, and no float layers")
            return nxt, clamp

    def new_tensor(name, shape, scale, zp, alias_of=None) -> QTensor:
        t = QTensor(name, tuple(int(s) for s in shape), np.float32(scale), int(zp), alias_of)
        tensors[name] = t
        return t

    def clamp_range(scale, zp, clamp, signed):
        qmin, qmax = (-128, 127) if signed else (0, 255)
        if clamp is not None:
            lo, hi = clamp
            if np.isfinite(lo):
                qmin = max(qmin, int(np.clip(np.rint(np.float32(lo) / scale) + zp, qmin, qmax)))
            if np.isfinite(hi):
                qmax = min(qmax, int(np.clip(np.rint(np.float32(hi) / scale) + zp, qmin, qmax)))
        return qmin, qmax

    # Layout ops on the float graph input before its first QuantizeLinear commute with
    # quantization (they only move values), so they run on the quantized bytes instead.
    float_chain: list = []
    cur_name = graph_input.name
    while True:
        users = consumers.get(cur_name, [])
        if len(users) == 1 and users[0].op_type in _LAYOUT_OPS:
            float_chain.append(users[0])
            cur_name = users[0].output[0]
            continue
        break
    first_q = [u for u in consumers.get(cur_name, []) if u.op_type == "QuantizeLinear"]
    if len(consumers.get(cur_name, [])) != 1 or not first_q:
        raise UnsupportedModelError("the model input must be quantized by one QuantizeLinear (optionally after reshapes/transposes)")
    in_scale, in_zp = qparams(first_q[0])
    in_shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shapes.get(graph_input.name, ()))
    input_q = new_tensor("input", in_shape, in_scale, in_zp)
    prev = input_q.name
    for node in float_chain:
        out_shape = shapes[node.output[0]]
        _emit_layout(node, prev, node.output[0] + ":q", out_shape, tensors, ops, new_tensor, inits, in_scale, in_zp)
        prev = node.output[0] + ":q"
    tensors_of_q = {first_q[0].output[0]: prev}
    skip = set(id(n) for n in float_chain) | {id(first_q[0])}

    for node in graph.node:
        if id(node) in skip or node.op_type == "Constant":
            continue
        op = node.op_type
        if op == "QuantizeLinear":
            src = producers.get(node.input[0])
            if src is None or src.op_type not in ("Relu", "Clip") or id(src) not in skip:
                if node.output[0] not in tensors_of_q:
                    raise UnsupportedModelError(f"{_node_label(node)} quantizes a float tensor that no supported op produced")
            continue
        if op == "DequantizeLinear":
            if node.input[0] in inits:
                continue  # weights/bias: read by the consuming op
            q_name = tensors_of_q.get(node.input[0])
            if q_name is None:
                raise UnsupportedModelError(f"{_node_label(node)} dequantizes {node.input[0]!r}, which is not a quantized activation")
            dq_of[node.output[0]] = q_name
            continue
        if op in ("Relu", "Clip") and id(node) in skip:
            continue
        signed = True in signed_flags  # set by the input's QuantizeLinear
        # a standalone Relu/Clip (its input is a dequantized activation) becomes a lookup table
        qnode, clamp = out_q(node) if op not in ("Relu", "Clip") else (out_q_standalone(node, consumers), None)
        y_scale, y_zp = qparams(qnode)
        out_name = qnode.output[0]
        out_shape = shapes.get(out_name) or shapes.get(node.output[0])
        if out_shape is None:
            raise UnsupportedModelError(f"{_node_label(node)}: output shape unknown; run onnx shape inference on the model")
        out_shape = tuple(max(int(d), 1) for d in out_shape)
        qmin, qmax = clamp_range(y_scale, y_zp, clamp, signed)
        # a Relu/Clip fused into this op's clamp is not an op of its own
        for u in consumers.get(node.output[0], []):
            if u.op_type in ("Relu", "Clip") and u is not qnode:
                skip.add(id(u))
        tensors_of_q[out_name] = out_name

        if op in _LAYOUT_OPS:
            x = act_in(node, node.input[0])
            xt = tensors[x]
            if (xt.scale != y_scale) or xt.zero_point != y_zp:
                raise UnsupportedModelError(f"{_node_label(node)} changes the quantization scale; only pure layout changes are supported")
            _emit_layout(node, x, out_name, out_shape, tensors, ops, new_tensor, inits, y_scale, y_zp)
            continue

        y = new_tensor(out_name, out_shape, y_scale, y_zp)
        if op == "Conv":
            x = act_in(node, node.input[0])
            w = const_of(node.input[1])
            if w is None:
                raise UnsupportedModelError(f"{_node_label(node)} has non-constant or unquantized weights")
            wq, ws, wzp, _ = w
            if np.any(wzp != 0):
                raise UnsupportedModelError(f"{_node_label(node)} has asymmetric weights (zero point != 0); quantize weights symmetrically")
            if wq.ndim != 4:
                raise UnsupportedModelError(f"{_node_label(node)}: only 2-D convolutions are supported (weight rank {wq.ndim})")
            if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
                raise UnsupportedModelError(f"{_node_label(node)}: dilated convolutions are not supported")
            if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise UnsupportedModelError(f"{_node_label(node)}: auto_pad is not supported; export with explicit pads")
            bias = _bias(node, 2, const_of, inits, wq.shape[0])
            xt = tensors[x]
            ops.append(Op("conv", node.name, [x], out_name, dict(
                weight=wq.astype(np.int8), bias=bias, group=int(_attr(node, "group", 1)),
                strides=list(_attr(node, "strides", [1, 1])), pads=list(_attr(node, "pads", [0, 0, 0, 0])),
                requant=_requant(xt.scale, ws, y_scale, wq.shape[0]), qmin=qmin, qmax=qmax)))
        elif op in ("Gemm", "MatMul"):
            x = act_in(node, node.input[0])
            w = const_of(node.input[1])
            if w is None:
                raise UnsupportedModelError(f"{_node_label(node)} multiplies two activations; only constant weights are supported")
            wq, ws, wzp, axis = w
            if np.any(wzp != 0):
                raise UnsupportedModelError(f"{_node_label(node)} has asymmetric weights (zero point != 0)")
            if op == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
                raise UnsupportedModelError(f"{_node_label(node)}: only Gemm with transA=0, alpha=beta=1 is supported")
            wmat = wq.T if (op == "Gemm" and _attr(node, "transB", 0)) else wq  # now K x N
            k, n = wmat.shape
            if ws.size not in (1, n):
                raise UnsupportedModelError(f"{_node_label(node)}: weight scales must be per tensor or per output column")
            bias = _bias(node, 2, const_of, inits, n) if op == "Gemm" else np.zeros(n, np.int32)
            xt = tensors[x]
            if xt.size % k:
                raise UnsupportedModelError(f"{_node_label(node)}: input of {xt.size} values does not fit a {k}x{n} weight")
            ops.append(Op("gemm", node.name, [x], out_name, dict(
                weight=np.ascontiguousarray(wmat.T).astype(np.int8), bias=bias, rows=xt.size // k, k=k, n=n,
                requant=_requant(xt.scale, ws, y_scale, n), qmin=qmin, qmax=qmax)))
        elif op in ("Add", "Mul"):
            ins = []
            consts = []
            for name in node.input[:2]:
                if name in dq_of:
                    ins.append(dq_of[name])
                    consts.append(None)
                else:
                    c = const_of(name)
                    if c is None or c[1].size != 1:
                        raise UnsupportedModelError(f"{_node_label(node)}: operand {name!r} must be an activation or a per-tensor quantized constant")
                    cname = f"{out_name}:const{len(consts)}"
                    new_tensor(cname, c[0].shape, c[1].reshape(-1)[0], int(c[2].reshape(-1)[0]))
                    ins.append(cname)
                    consts.append(c[0])
            b_shape = tensors[ins[1]].shape
            a_shape = tensors[ins[0]].shape
            ops.append(Op(op.lower(), node.name, ins, out_name, dict(
                consts=consts, broadcast=_broadcast_kind(node, a_shape, b_shape, out_shape), qmin=qmin, qmax=qmax)))
        elif op in ("AveragePool", "GlobalAveragePool", "MaxPool"):
            x = act_in(node, node.input[0])
            xt = tensors[x]
            if len(xt.shape) != 4:
                raise UnsupportedModelError(f"{_node_label(node)}: only 2-D pooling on NCHW tensors is supported")
            if op == "GlobalAveragePool":
                kernel, strides, pads, include_pad = list(xt.shape[2:]), [1, 1], [0, 0, 0, 0], 0
            else:
                if _attr(node, "ceil_mode", 0) or any(d != 1 for d in _attr(node, "dilations", [1, 1])):
                    raise UnsupportedModelError(f"{_node_label(node)}: ceil_mode and dilations are not supported")
                kernel = list(_attr(node, "kernel_shape"))
                strides = list(_attr(node, "strides", [1, 1]))
                pads = list(_attr(node, "pads", [0, 0, 0, 0]))
                include_pad = int(_attr(node, "count_include_pad", 0))
            if op == "MaxPool" and (xt.scale != y_scale or xt.zero_point != y_zp):
                raise UnsupportedModelError(f"{_node_label(node)}: MaxPool must keep the input's quantization")
            ops.append(Op("maxpool" if op == "MaxPool" else "avgpool", node.name, [x], out_name, dict(
                kernel=kernel, strides=strides, pads=pads, count_include_pad=include_pad, qmin=qmin, qmax=qmax)))
        elif op == "Softmax":
            x = act_in(node, node.input[0])
            xt = tensors[x]
            axis = int(_attr(node, "axis", -1))
            if axis not in (-1, len(xt.shape) - 1):
                raise UnsupportedModelError(f"{_node_label(node)}: softmax only over the last axis is supported")
            ops.append(Op("softmax", node.name, [x], out_name, dict(depth=xt.shape[-1], qmin=qmin, qmax=qmax)))
        elif op in ("Sigmoid", "Tanh", "Relu", "Clip"):
            x = act_in(node, node.input[0])
            xt = tensors[x]
            ops.append(Op("lut", node.name, [x], out_name, dict(
                table=_lut(op, node, inits, xt, y, signed), qmin=qmin, qmax=qmax)))
        elif op == "Concat":
            ins = [act_in(node, n) for n in node.input]
            axis = int(_attr(node, "axis"))
            rank = len(out_shape)
            axis = axis + rank if axis < 0 else axis
            tables = []
            for name in ins:
                t = tensors[name]
                same = t.scale == y_scale and t.zero_point == y_zp
                tables.append(None if same else _requant_table(t, y, signed))
            ops.append(Op("concat", node.name, ins, out_name, dict(axis=axis, tables=tables)))
        else:  # pragma: no cover - check_supported filters these
            raise UnsupportedModelError(f"the C generator does not support op {op!r} used by node {node.name!r}")

    out_producer = producers.get(graph_output)
    if out_producer is None or out_producer.op_type != "DequantizeLinear" or out_producer.input[0] not in tensors:
        raise UnsupportedModelError("the model output must be a DequantizeLinear of a quantized activation")
    signed = True in signed_flags
    if len(signed_flags) > 1:
        raise UnsupportedModelError("the model mixes int8 and uint8 activations; quantize all activations to one type")
    return LoweredModel(tensors, ops, input_q.name, out_producer.input[0], graph_input.name, graph_output, signed)


def out_q_standalone(node, consumers):
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise UnsupportedModelError(f"{_node_label(node)} output is not followed by one QuantizeLinear")
    return users[0]


def _emit_layout(node, x, out_name, out_shape, tensors, ops, new_tensor, inits, scale, zp):
    xt = tensors[x]
    if node.op_type == "Transpose":
        perm = list(_attr(node, "perm", list(range(len(xt.shape)))[::-1]))
        y = new_tensor(out_name, out_shape, scale, zp)
        # a transpose that moves only size-1 axes keeps the byte order: alias it
        moved = [d for i, d in enumerate(perm) if xt.shape[d] != 1]
        if moved == sorted(moved):
            y.alias_of = x
            ops.append(Op("reshape", node.name, [x], out_name))
        else:
            ops.append(Op("transpose", node.name, [x], out_name, dict(perm=perm, in_shape=list(xt.shape))))
    else:
        y = new_tensor(out_name, out_shape, scale, zp, alias_of=x)
        if y.size != xt.size:
            raise UnsupportedModelError(f"{_node_label(node)}: reshape changes the element count ({xt.size} -> {y.size})")
        ops.append(Op("reshape", node.name, [x], out_name))


def _bias(node, index, const_of, inits, n) -> np.ndarray:
    if len(node.input) <= index or not node.input[index]:
        return np.zeros(n, np.int32)
    c = const_of(node.input[index])
    if c is None:
        raise UnsupportedModelError(f"{_node_label(node)}: bias is not a quantized int32 constant")
    q = c[0]
    if q.dtype != np.int32:
        raise UnsupportedModelError(f"{_node_label(node)}: bias is {q.dtype}, expected int32")
    return np.broadcast_to(q.reshape(-1), (n,)).astype(np.int32)


def _requant(x_scale, w_scales, y_scale, channels) -> np.ndarray:
    """Per-channel float32 multiplier exactly as ORT computes it: (x_scale * w_scale) / y_scale in float32."""
    ws = np.broadcast_to(np.asarray(w_scales, np.float32).reshape(-1), (channels,))
    return ((np.float32(x_scale) * ws).astype(np.float32) / np.float32(y_scale)).astype(np.float32)


def float_to_mant_exp(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split positive float32 values into a 24-bit integer mantissa and a power of two (value = m * 2**e)."""
    m, e = np.frexp(values.astype(np.float64))
    mant = np.rint(m * (1 << 24)).astype(np.int64)  # exact: float32 has a 24-bit significand
    return mant.astype(np.int32), (e - 24).astype(np.int32)


def _broadcast_kind(node, a_shape, b_shape, out_shape) -> str:
    a, b = int(np.prod(a_shape)), int(np.prod(b_shape))
    n = int(np.prod(out_shape))
    if a == n and b == n:
        return "same"
    if a == n and (b == 1 or tuple(b_shape[-len(out_shape):]) == tuple(out_shape[-len(b_shape):]) or _trailing(b_shape, out_shape)):
        return "b_tail" if b > 1 else "b_scalar"
    if b == n and (a == 1 or _trailing(a_shape, out_shape)):
        return "a_tail" if a > 1 else "a_scalar"
    raise UnsupportedModelError(f"{_node_label(node)}: broadcasting {list(a_shape)} with {list(b_shape)} is not supported")


def _trailing(small, full) -> bool:
    s = [d for d in small]
    while s and s[0] == 1:
        s.pop(0)
    return tuple(full[len(full) - len(s):]) == tuple(s)


def _lut(op, node, inits, xt: QTensor, yt: QTensor, signed: bool) -> np.ndarray:
    """256-entry table: dequantize every code, apply the function in float32, requantize (as ORT's QLinearLookup)."""
    codes = np.arange(-128, 128) if signed else np.arange(0, 256)
    x = (xt.scale * (codes - xt.zero_point).astype(np.float32)).astype(np.float32)
    if op == "Sigmoid":
        f = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    elif op == "Tanh":
        f = np.tanh(x).astype(np.float32)
    elif op == "Relu":
        f = np.maximum(x, 0)
    else:
        lo = float(inits[node.input[1]]) if len(node.input) > 1 and node.input[1] else _attr(node, "min", -np.inf)
        hi = float(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else _attr(node, "max", np.inf)
        f = np.clip(x, lo, hi)
    qmin, qmax = (-128, 127) if signed else (0, 255)
    return np.clip(np.rint(f / yt.scale) + yt.zero_point, qmin, qmax).astype(np.int32)


def _requant_table(xt: QTensor, yt: QTensor, signed: bool) -> np.ndarray:
    codes = np.arange(-128, 128) if signed else np.arange(0, 256)
    x = (xt.scale * (codes - xt.zero_point).astype(np.float32)).astype(np.float32)
    qmin, qmax = (-128, 127) if signed else (0, 255)
    return np.clip(np.rint(x / yt.scale) + yt.zero_point, qmin, qmax).astype(np.int32)


def fuse_residual_adds(model: LoweredModel) -> LoweredModel:
    """Fold each Add whose operand is a convolution used only by that Add into the convolution.

    The fused op computes exactly what the two ORT kernels compute (requantize, then the Add
    formula) but the convolution's output never exists as a tensor: in a residual block the
    Add writes over its other operand, so the block needs two live activations instead of three.
    """
    readers: dict[str, int] = {}
    for op in model.ops:
        for name in op.inputs:
            readers[name] = readers.get(name, 0) + 1
    producer = {op.output: op for op in model.ops}
    fused_convs: set[int] = set()
    new_ops: list[Op] = []
    for op in model.ops:
        if op.kind == "add" and op.attrs["broadcast"] == "same" and all(c is None for c in op.attrs["consts"]):
            for j, name in enumerate(op.inputs):
                conv = producer.get(name)
                other = op.inputs[1 - j]
                if (conv is None or conv.kind != "conv" or "add" in conv.attrs or readers.get(name) != 1
                        or name == model.output_name or other == name or model.tensors[other].size != model.tensors[name].size):
                    continue
                fused_convs.add(id(conv))
                attrs = dict(conv.attrs)
                attrs["add"] = {"other": other, "conv_is_a": j == 0, "conv_output": name,
                                "qmin": op.attrs["qmin"], "qmax": op.attrs["qmax"]}
                new_ops.append(Op("conv", f"{conv.name} + {op.name}", [conv.inputs[0], other], op.output, attrs))
                break
            else:
                new_ops.append(op)
            continue
        new_ops.append(op)
    kept = [op for op in new_ops if id(op) not in fused_convs]
    return LoweredModel(model.tensors, kept, model.input_name, model.output_name, model.onnx_input,
                        model.onnx_output, model.signed)
