"""TFLite flatbuffer -> ONNX graph, keeping the user's input layout.

Written by hand because the one maintained converter we measured (tflite2onnx 0.4.1) emits an
invalid graph for hybrid models (float models whose weights are stored as int8), refuses int8
models and silently changes the input layout from NHWC to NCHW, which breaks the user's data.

The ONNX model keeps the TFLite input/output names and shapes (NHWC stays NHWC; a batch of 1
becomes a dynamic ``batch`` dimension). Inside, 4-D activations live in NCHW, which is what ONNX
Conv wants and what ONNX Runtime and its int8 quantizer run fastest: one Transpose after the
input, and layout changes only where TFLite semantics depend on NHWC order (a RESHAPE that
flattens spatial data, SOFTMAX over channels of a 4-D tensor, ...).

Float models, and hybrid ones (weights stored as int8, computed in float), become float graphs:
the int8 weights are dequantized with their scales and zero points. Fully int8 (or uint8) models
become QDQ graphs with float inputs and outputs: int8 weights and int32 biases behind
DequantizeLinear (per channel where TFLite is), and QuantizeLinear -> DequantizeLinear on every
activation with its TFLite scale and zero point, so ONNX Runtime runs integer kernels and the
outputs match LiteRT's int8 interpreter (bit-exact on the MLPerf Tiny KWS, VWW and AD models).

>>> from edgeopt.tflite_import import tflite_to_onnx                      # doctest: +SKIP
>>> proto = tflite_to_onnx(Path("kws_ref_model_float32.tflite"))          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import EdgeOptError, ModelLoadError, UnsupportedModelError

OPSET = 17
# TFLite TensorType -> numpy dtype (the types a constant or an activation can have)
_TFL_DTYPES = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
    9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16,
}
_TFL_TYPE_NAMES = {
    0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL", 7: "INT16",
    8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 17: "INT4",
}
_QUANTIZED_TYPES = {3, 7, 9}  # UINT8, INT16, INT8

# NHWC axis -> NCHW axis, and the permutations between the two layouts
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------
# Reading the flatbuffer into plain Python objects (every parse error surfaces here, nowhere later)
# ------------------------------------------------------------------------------------------------

@dataclass
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    type: int
    data: np.ndarray | None  # constant contents (raw dtype), None for activations
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0
    is_variable: bool = False

    @property
    def type_name(self) -> str:
        return _TFL_TYPE_NAMES.get(self.type, str(self.type))


@dataclass
class _Op:
    index: int
    name: str  # BuiltinOperator name, e.g. CONV_2D
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Graph:
    tensors: list[_Tensor]
    ops: list[_Op]
    inputs: list[int]
    outputs: list[int]
    subgraph_count: int


def _read_options(op, tflite) -> dict[str, Any]:
    """All scalar/array fields of an operator's builtin options table, by accessor name."""
    kind = op.BuiltinOptionsType()
    if kind == 0 or op.BuiltinOptions() is None:
        return {}
    names = {v: k for k, v in vars(tflite.BuiltinOptions).items() if not k.startswith("_")}
    cls = getattr(tflite, names.get(kind, ""), None)
    if cls is None:
        return {}
    table = op.BuiltinOptions()
    options = cls()
    options.Init(table.Bytes, table.Pos)
    values = {}
    for attr, fn in vars(cls).items():
        if attr.startswith(("Init", "GetRoot", "_")) or attr.endswith(("IsNone", "Length", "BufferHasIdentifier")):
            continue
        if not callable(fn) or len(inspect.signature(fn).parameters) != 1:
            continue
        values[attr] = getattr(options, attr)()
    return values


def _read_model(path: Path) -> _Graph:
    import tflite

    raw = path.read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        head = raw[:64]
        looks_text = bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        raise ModelLoadError(
            f"{str(path)!r} is not a TFLite model: it lacks the 'TFL3' flatbuffer identifier"
            + (" (it looks like a text file)" if looks_text else "")
            + "; give a .tflite file written by the TensorFlow Lite / LiteRT converter"
        )
    try:
        model = tflite.Model.GetRootAsModel(raw, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("the model has no subgraph")
        graph = model.Subgraphs(0)
        buffers = []
        for b in range(model.BuffersLength()):
            buf = model.Buffers(b)
            if buf.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer
                buffers.append(np.frombuffer(raw, np.uint8, count=buf.Size(), offset=buf.Offset()))
            elif buf.DataLength():
                buffers.append(buf.DataAsNumpy())
            else:
                buffers.append(None)
        tensors = []
        for t in range(graph.TensorsLength()):
            tt = graph.Tensors(t)
            shape = tuple(int(d) for d in tt.ShapeAsNumpy()) if tt.ShapeLength() else ()
            signature = tuple(int(d) for d in tt.ShapeSignatureAsNumpy()) if tt.ShapeSignatureLength() else None
            data = buffers[tt.Buffer()] if 0 <= tt.Buffer() < len(buffers) else None
            if data is not None:
                dtype = _TFL_DTYPES.get(tt.Type())
                if dtype is None:
                    raise UnsupportedModelError(
                        f"constant tensor {tt.Name().decode(errors='replace')!r} has TFLite type "
                        f"{_TFL_TYPE_NAMES.get(tt.Type(), tt.Type())}, which edgeopt cannot import"
                    )
                data = np.frombuffer(data.tobytes(), dtype=dtype).reshape(shape).copy()
            tensor = _Tensor(t, tt.Name().decode(errors="replace"), shape, signature, tt.Type(), data,
                             is_variable=bool(tt.IsVariable()))
            q = tt.Quantization()
            if q is not None and q.ScaleLength():
                tensor.scale = q.ScaleAsNumpy().astype(np.float32)
                tensor.zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
                tensor.quantized_dimension = int(q.QuantizedDimension())
            tensors.append(tensor)
        from tflite.utils import BUILTIN_OPCODE2NAME

        ops = []
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == 32:  # CUSTOM
                name = f"CUSTOM:{(code.CustomCode() or b'?').decode(errors='replace')}"
            else:
                name = BUILTIN_OPCODE2NAME.get(builtin, f"BUILTIN_{builtin}")
            ops.append(_Op(o, name, [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else [],
                           [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else [],
                           _read_options(op, tflite)))
        inputs = [int(i) for i in graph.InputsAsNumpy()]
        outputs = [int(i) for i in graph.OutputsAsNumpy()]
        for t in inputs + outputs:
            tensors[t]  # an out-of-range index means a corrupt file
        return _Graph(tensors, ops, inputs, outputs, model.SubgraphsLength())
    except UnsupportedModelError:
        raise
    except Exception as e:  # flatbuffers raises struct.error, IndexError, ValueError... on bad bytes
        raise ModelLoadError(
            f"{str(path)!r} cannot be parsed as a TFLite flatbuffer (truncated or corrupt file: "
            f"{type(e).__name__}: {str(e)[:120]}); re-export it with the TFLite / LiteRT converter"
        ) from e


# ------------------------------------------------------------------------------------------------
# Building the ONNX graph
# ------------------------------------------------------------------------------------------------

def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding for one spatial axis: the extra pixel, if any, goes after (bottom/right)."""
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, graph: _Graph):
        self.g = graph
        self.nodes: list = []
        self.initializers: list = []
        self.names: set[str] = set()
        # tensor index -> {layout: onnx value name}; layout "nhwc" = TFLite order, "nchw" = transposed 4-D
        self.values: dict[int, dict[str, str]] = {}
        self.batched: set[int] = set()  # tensors whose first axis is the (dynamic) batch
        self.op: _Op | None = None
        # fully quantized model: int8 weights stay int8 behind DequantizeLinear, and every int8
        # activation gets QuantizeLinear -> DequantizeLinear with its TFLite scale and zero point
        self.qdq = any(t.data is None and t.type in (3, 9) and t.scale is not None for t in graph.tensors)

    # -- naming and emitting --------------------------------------------------------------------
    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}__{k}", k + 1
        self.names.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        from onnx import helper

        tag = f"{self.op.name}_{self.op.index}" if self.op else "io"
        outputs = outputs or [self.unique(f"{tag}/{op_type}")]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.unique(f"{tag}/{op_type}#node"), **attrs))
        return outputs[0]

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.unique(hint)
        array = np.asarray(array)  # np.ascontiguousarray would turn a scalar into shape (1,)
        self.initializers.append(numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(), name))
        return name

    def tensor(self, index: int) -> _Tensor:
        return self.g.tensors[index]

    def is_const(self, index: int) -> bool:
        return index >= 0 and self.tensor(index).data is not None and not self.tensor(index).is_variable

    def float_const(self, index: int) -> np.ndarray:
        """A constant as float32; int8/uint8 weights of hybrid models are dequantized here."""
        t = self.tensor(index)
        data = t.data
        if t.scale is not None and data.dtype.kind in "iu":
            shape = [1] * data.ndim
            if t.scale.size > 1:
                shape[t.quantized_dimension] = -1
            scale = t.scale.reshape(shape)
            zero = t.zero_point.reshape(shape) if t.zero_point.size == t.scale.size else t.zero_point.reshape(-1)[:1]
            return ((data.astype(np.int64) - zero) * scale).astype(np.float32)
        return data.astype(np.float32) if data.dtype != np.float32 else data

    def value(self, index: int, layout: str = "nhwc") -> str:
        """The ONNX name of a tensor in the requested layout (a Transpose is added once if needed)."""
        if self.is_const(index):
            t = self.tensor(index)
            data = self.float_const(index) if t.type in (0, 1, 10) or t.scale is not None else t.data
            if layout == "nchw" and data.ndim == 4:
                data = data.transpose(_TO_NCHW)
            key = f"const:{layout}"
            cached = self.values.setdefault(index, {})
            if key not in cached:
                cached[key] = self.const(data, self.tensor(index).name or f"t{index}")
            return cached[key]
        have = self.values.get(index)
        if not have:
            raise UnsupportedModelError(f"tensor {self.tensor(index).name!r} is used before any op produces it")
        if layout in have:
            return have[layout]
        if len(self.tensor(index).shape) != 4:
            return next(iter(have.values()))
        src = next(iter(have.values()))
        perm = _TO_NCHW if layout == "nchw" else _TO_NHWC
        have[layout] = self.node("Transpose", [src], perm=list(perm))
        return have[layout]

    def layout_of(self, index: int) -> str:
        if self.is_const(index) or len(self.tensor(index).shape) != 4:
            return "nhwc"
        return "nchw" if "nchw" in self.values.get(index, {}) else "nhwc"

    def set_output(self, index: int, name: str, layout: str = "nhwc") -> None:
        if len(self.tensor(index).shape) != 4:
            layout = "nhwc"
        self.values[index] = {layout: name}

    def weight(self, index: int, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a,
               axes: dict[int, int] | None = None) -> str:
        """A constant weight or bias in ONNX layout (``transform``); ``axes`` maps TFLite axes to ONNX ones.

        In a fully quantized model the stored integers are kept (int8 weights, int32 biases) behind a
        DequantizeLinear, the QDQ form ONNX Runtime fuses into integer kernels.
        """
        t = self.tensor(index)
        if self.qdq and t.scale is not None and t.data.dtype in (np.int8, np.uint8, np.int32):
            zero = np.broadcast_to(t.zero_point, t.scale.shape).astype(t.data.dtype)
            scale = t.scale.astype(np.float32)
            if scale.size == 1:  # per-tensor: scalar scale and zero point, no axis
                scale, zero = scale.reshape(()), zero.reshape(())
            inputs = [self.const(transform(t.data), t.name), self.const(scale, f"{t.name}/scale"),
                      self.const(zero, f"{t.name}/zero_point")]
            if scale.ndim == 0:
                return self.node("DequantizeLinear", inputs)
            axis = (axes or {d: d for d in range(t.data.ndim)}).get(t.quantized_dimension)
            if axis is None:
                raise UnsupportedModelError(
                    f"{self.op.name} node #{self.op.index}: tensor {t.name!r} is quantized per channel along axis "
                    f"{t.quantized_dimension}, which this op's ONNX form has no axis for"
                )
            return self.node("DequantizeLinear", inputs, axis=axis)
        return self.const(transform(self.float_const(index)), t.name)

    def fake_quantize(self, name: str, tensor: _Tensor) -> str:
        """QuantizeLinear -> DequantizeLinear with the tensor's per-tensor scale and zero point."""
        dtype = np.int8 if tensor.type == 9 else np.uint8
        scale = self.const(np.float32(tensor.scale[0]), f"{tensor.name}/scale")
        zero = self.const(np.array(tensor.zero_point[0], dtype), f"{tensor.name}/zero_point")
        quantized = self.node("QuantizeLinear", [name, scale, zero])
        return self.node("DequantizeLinear", [quantized, scale, zero])

    def activation(self, name: str, fused: int) -> str:
        if fused == 0:
            return name
        if fused == 1:
            return self.node("Relu", [name])
        if fused in (2, 3):  # RELU_N1_TO_1, RELU6
            low, high = (-1.0, 1.0) if fused == 2 else (0.0, 6.0)
            return self.node("Clip", [name, self.const(np.float32(low), "clip_min"), self.const(np.float32(high), "clip_max")])
        if fused == 4:
            return self.node("Tanh", [name])
        raise UnsupportedModelError(f"fused activation {fused} (SIGN_BIT) of {self.op.name} node {self.op.index} is not supported")

    # -- batch handling -------------------------------------------------------------------------
    def propagate_batch(self, op: _Op) -> None:
        if any(i >= 0 and i in self.batched for i in op.inputs):
            for o in op.outputs:
                if self.tensor(o).shape[:1] == (1,) or (self.tensor(o).signature or (0,))[0] == -1:
                    self.batched.add(o)

    def target_shape(self, index: int, source: int) -> list[int]:
        """A Reshape target for tensor ``index``: the batch axis copied from ``source`` (0), others fixed."""
        shape = list(self.tensor(index).shape)
        if index in self.batched and source in self.batched and shape:
            shape[0] = 0
        return shape

    # -- conversion -----------------------------------------------------------------------------
    def convert(self):
        from onnx import TensorProto, helper

        graph_inputs = []
        for i in self.g.inputs:
            t = self.tensor(i)
            quantized_input = t.type in (3, 9) and t.scale is not None
            if t.type != 0 and not quantized_input:
                raise UnsupportedModelError(f"graph input {t.name!r} has type {t.type_name}; only FLOAT32 and quantized INT8/UINT8 inputs are supported")
            dims: list[int | str] = list(t.shape)
            if dims and dims[0] == 1 and (t.signature is None or t.signature[0] in (-1, 1)):
                dims[0] = "batch"
                self.batched.add(i)
            name = self.unique(t.name)
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
            # a quantized input is taken as float and quantized in the graph, as TFLite's own QUANTIZE would
            self.values[i] = {"nhwc": self.fake_quantize(name, t) if quantized_input else name}
        for op in self.g.ops:
            self.op = op
            self.propagate_batch(op)  # before the handler: Reshape targets depend on it
            try:
                HANDLERS[op.name](self, op)
            except EdgeOptError:
                raise
            except Exception as e:  # a shape or option combination the handler does not cover
                out = self.tensor(op.outputs[0]).name if op.outputs else "?"
                raise UnsupportedModelError(
                    f"cannot convert TFLite {op.name} node #{op.index} (output {out!r}): {type(e).__name__}: {str(e)[:200]}"
                ) from e
            if self.qdq and op.name not in _LAYOUT_ONLY:
                for o in op.outputs:
                    t = self.tensor(o)
                    if t.type in (3, 9) and t.scale is not None:
                        self.values[o] = {layout: self.fake_quantize(v, t) for layout, v in self.values[o].items()}
        self.op = None
        graph_outputs = []
        for o in self.g.outputs:
            t = self.tensor(o)
            name = self.unique(t.name)
            self.node("Identity", [self.value(o, "nhwc")], [name])
            dims = list(t.shape)
            if dims and o in self.batched:
                dims[0] = "batch"
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        onnx_graph = helper.make_graph(self.nodes, "tflite", graph_inputs, graph_outputs, self.initializers)
        model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeopt.tflite_import")
        model.ir_version = 8  # the IR version of opset 17: readable by every runtime we target
        return model


# ------------------------------------------------------------------------------------------------
# Op handlers: one function per TFLite builtin, registered in HANDLERS
# ------------------------------------------------------------------------------------------------

HANDLERS: dict[str, Callable[[_Converter, _Op], None]] = {}
# ops that only move data: TFLite keeps the input's quantization, so no requantization follows them
_LAYOUT_ONLY = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def _handles(*names: str):
    def register(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


def _spatial_pads(c: _Converter, op: _Op, kernel_h: int, kernel_w: int) -> list[int]:
    o = op.options
    if o.get("Padding", 0) == 1:  # VALID
        return [0, 0, 0, 0]
    _, h, w, _ = c.tensor(op.inputs[0]).shape
    top, bottom = _same_pads(h, kernel_h, o.get("StrideH", 1), o.get("DilationHFactor", 1))
    left, right = _same_pads(w, kernel_w, o.get("StrideW", 1), o.get("DilationWFactor", 1))
    return [top, left, bottom, right]


def _require_const(c: _Converter, op: _Op, position: int, what: str) -> None:
    if not c.is_const(op.inputs[position]):
        raise UnsupportedModelError(f"{op.name} node {op.index} has a non-constant {what}; only constant {what}s are supported")


@_handles("CONV_2D", "DEPTHWISE_CONV_2D")
def _conv(c: _Converter, op: _Op) -> None:
    _require_const(c, op, 1, "filter")
    shape = c.tensor(op.inputs[1]).shape
    in_channels = c.tensor(op.inputs[0]).shape[3]
    if op.name == "CONV_2D":  # [Cout, KH, KW, Cin/groups] -> [Cout, Cin/groups, KH, KW]
        to_onnx = lambda w: w.transpose(0, 3, 1, 2)  # noqa: E731
        axes = {0: 0, 1: 2, 2: 3, 3: 1}
        groups = in_channels // shape[3]
    else:  # [1, KH, KW, Cin*multiplier]; output channel c*m+k reads input channel c, as in ONNX groups
        to_onnx = lambda w: w[0].transpose(2, 0, 1)[:, None]  # noqa: E731
        axes = {3: 0}
        groups = in_channels
    kernel_hw = (shape[1], shape[2])
    o = op.options
    inputs = [c.value(op.inputs[0], "nchw"), c.weight(op.inputs[1], to_onnx, axes)]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(c.weight(op.inputs[2]))
    out = c.node("Conv", inputs, kernel_shape=list(kernel_hw), strides=[o.get("StrideH", 1), o.get("StrideW", 1)],
                 dilations=[o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)],
                 pads=_spatial_pads(c, op, *kernel_hw), group=groups)
    c.set_output(op.outputs[0], c.activation(out, o.get("FusedActivationFunction", 0)), "nchw")


@_handles("AVERAGE_POOL_2D", "MAX_POOL_2D")
def _pool(c: _Converter, op: _Op) -> None:
    o = op.options
    kh, kw = o["FilterHeight"], o["FilterWidth"]
    pads = _spatial_pads(c, op, kh, kw)
    kind = "AveragePool" if op.name == "AVERAGE_POOL_2D" else "MaxPool"
    # TFLite averages only over the valid pixels under a SAME window: count_include_pad=0 (the default)
    out = c.node(kind, [c.value(op.inputs[0], "nchw")], kernel_shape=[kh, kw],
                 strides=[o.get("StrideH", 1), o.get("StrideW", 1)], pads=pads)
    if c.qdq and kind == "AveragePool" and c.tensor(op.outputs[0]).scale is not None:
        out = _round_like_tflite_average(c, out, c.tensor(op.outputs[0]))
    c.set_output(op.outputs[0], c.activation(out, o.get("FusedActivationFunction", 0)), "nchw")


def _round_like_tflite_average(c: _Converter, mean: str, tensor: _Tensor) -> str:
    """Snap an int8 average to the code TFLite's integer kernel picks.

    TFLite divides the sum of the stored codes by the window size rounding halves away from zero;
    QuantizeLinear rounds halves to even. Windows of even size hit exact halves often (41% of CIFAR
    images differ in the ResNet's 8x8 pool otherwise), so the tie rule is reproduced here.
    """
    scale, zero = float(tensor.scale[0]), float(tensor.zero_point[0])
    codes = c.node("Add", [c.node("Mul", [mean, c.const(np.float32(1.0 / scale), "inv_scale")]), c.const(np.float32(zero), "zero")])
    magnitude = c.node("Floor", [c.node("Add", [c.node("Abs", [codes]), c.const(np.float32(0.5), "half")])])
    rounded = c.node("Mul", [c.node("Sign", [codes]), magnitude])
    return c.node("Mul", [c.node("Sub", [rounded, c.const(np.float32(zero), "zero")]), c.const(np.float32(scale), "scale")])


@_handles("FULLY_CONNECTED")
def _fully_connected(c: _Converter, op: _Op) -> None:
    o = op.options
    if o.get("WeightsFormat", 0) != 0:
        raise UnsupportedModelError(f"FULLY_CONNECTED node {op.index} uses shuffled weights, which are not supported")
    source, weight_index = op.inputs[0], op.inputs[1]
    in_shape = c.tensor(source).shape
    units = c.tensor(weight_index).shape[0]
    depth = c.tensor(weight_index).shape[-1]
    # TFLite flattens NHWC order; an NCHW value with 1x1 spatial dims flattens identically
    if c.layout_of(source) == "nchw" and in_shape[1] == in_shape[2] == 1:
        x = c.value(source, "nchw")
    else:
        x = c.value(source, "nhwc")
    if len(in_shape) != 2:
        x = c.node("Reshape", [x, c.const(np.array([-1, depth], np.int64), "fc_shape")])
    weight = c.weight(weight_index) if c.is_const(weight_index) else c.value(weight_index)
    inputs = [x, weight]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(c.weight(op.inputs[2]) if c.is_const(op.inputs[2]) else c.value(op.inputs[2]))
    out = c.node("Gemm", inputs, transB=1)
    out = c.activation(out, o.get("FusedActivationFunction", 0))
    out_shape = c.tensor(op.outputs[0]).shape
    if len(out_shape) != 2:
        batch_dims = list(in_shape[:-1])
        if source in c.batched and batch_dims:
            batch_dims[0] = -1
        out = c.node("Reshape", [out, c.const(np.array(batch_dims + [units], np.int64), "fc_out_shape")])
    c.set_output(op.outputs[0], out)


def _elementwise_layout(c: _Converter, op: _Op) -> str:
    """NCHW when every 4-D activation input is already NCHW and no other activation needs NHWC broadcasting."""
    activations = [i for i in op.inputs if i >= 0 and not c.is_const(i)]
    if len(c.tensor(op.outputs[0]).shape) != 4:
        return "nhwc"
    if all(len(c.tensor(i).shape) == 4 and c.layout_of(i) == "nchw" for i in activations) and activations:
        return "nchw"
    return "nhwc"


def _operand(c: _Converter, index: int, layout: str) -> str:
    """An elementwise operand; constants of lower rank are broadcast-aligned before an NCHW transpose."""
    if layout == "nchw" and c.is_const(index) and c.tensor(index).data.ndim < 4:
        data = c.float_const(index)
        data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(_TO_NCHW)
        return c.const(data, c.tensor(index).name)
    return c.value(index, layout)


@_handles("ADD", "SUB", "MUL", "DIV")
def _binary(c: _Converter, op: _Op) -> None:
    layout = _elementwise_layout(c, op)
    kind = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div"}[op.name]
    out = c.node(kind, [_operand(c, i, layout) for i in op.inputs[:2]])
    c.set_output(op.outputs[0], c.activation(out, op.options.get("FusedActivationFunction", 0)), layout)


@_handles("RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH")
def _unary(c: _Converter, op: _Op) -> None:
    layout = c.layout_of(op.inputs[0])
    x = c.value(op.inputs[0], layout)
    fused = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}.get(op.name)
    if fused is not None:
        out = c.activation(x, fused)
    else:
        out = c.node("Sigmoid" if op.name == "LOGISTIC" else "Tanh", [x])
    c.set_output(op.outputs[0], out, layout)


@_handles("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
def _reshape(c: _Converter, op: _Op) -> None:
    source = op.inputs[0]
    in_shape, out_shape = c.tensor(source).shape, c.tensor(op.outputs[0]).shape
    # dropping 1x1 spatial axes of an NCHW tensor keeps the NHWC flatten order: no transpose needed
    if c.layout_of(source) == "nchw" and in_shape[1] == in_shape[2] == 1 and len(out_shape) == 2 and out_shape[-1] == in_shape[3]:
        x = c.value(source, "nchw")
    else:
        x = c.value(source, "nhwc")
    target = c.target_shape(op.outputs[0], source)
    out = c.node("Reshape", [x, c.const(np.array(target, np.int64), "shape")])
    c.set_output(op.outputs[0], out)


@_handles("SOFTMAX")
def _softmax(c: _Converter, op: _Op) -> None:
    x = c.value(op.inputs[0], "nhwc")
    beta = float(op.options.get("Beta", 1.0))
    if beta != 1.0:
        x = c.node("Mul", [x, c.const(np.float32(beta), "beta")])
    c.set_output(op.outputs[0], c.node("Softmax", [x], axis=-1))


@_handles("PAD", "PADV2")
def _pad(c: _Converter, op: _Op) -> None:
    _require_const(c, op, 1, "padding")
    paddings = c.tensor(op.inputs[1]).data.astype(np.int64)
    layout = c.layout_of(op.inputs[0])
    if layout == "nchw":
        paddings = paddings[list(_TO_NCHW)]
    inputs = [c.value(op.inputs[0], layout), c.const(np.concatenate([paddings[:, 0], paddings[:, 1]]), "pads")]
    if op.name == "PADV2" and len(op.inputs) > 2:
        inputs.append(c.const(c.float_const(op.inputs[2]).reshape(()), "pad_value"))
    c.set_output(op.outputs[0], c.node("Pad", inputs, mode="constant"), layout)


@_handles("MEAN")
def _mean(c: _Converter, op: _Op) -> None:
    _require_const(c, op, 1, "axis")
    rank = len(c.tensor(op.inputs[0]).shape)
    axes = sorted({int(a) % rank for a in np.atleast_1d(c.tensor(op.inputs[1]).data)})
    keep = bool(op.options.get("KeepDims", False))
    layout = c.layout_of(op.inputs[0])
    # without keep_dims the remaining axes must come out in NHWC order; spatial-only reductions do
    if layout == "nchw" and not (keep or set(axes) == {1, 2}):
        layout = "nhwc"
    onnx_axes = [_NHWC_TO_NCHW_AXIS[a] for a in axes] if layout == "nchw" else axes
    out = c.node("ReduceMean", [c.value(op.inputs[0], layout)], axes=onnx_axes, keepdims=int(keep))
    c.set_output(op.outputs[0], out, layout if keep else "nhwc")


@_handles("CONCATENATION")
def _concat(c: _Converter, op: _Op) -> None:
    layout = _elementwise_layout(c, op)
    rank = len(c.tensor(op.outputs[0]).shape)
    axis = int(op.options.get("Axis", 0)) % rank
    if layout == "nchw":
        axis = _NHWC_TO_NCHW_AXIS[axis]
    out = c.node("Concat", [c.value(i, layout) for i in op.inputs], axis=axis)
    c.set_output(op.outputs[0], c.activation(out, op.options.get("FusedActivationFunction", 0)), layout)


@_handles("DEQUANTIZE", "QUANTIZE")
def _dequantize(c: _Converter, op: _Op) -> None:
    source = op.inputs[0]
    if c.is_const(source):  # float16 / int8 weights stored compressed: fold to float
        c.set_output(op.outputs[0], c.const(c.float_const(source), c.tensor(source).name))
        return
    # activations are held as floats on the int8 grid: DEQUANTIZE is a no-op, and QUANTIZE's
    # requantization to the output's scale is added by the converter after every op
    layout = c.layout_of(source)
    c.set_output(op.outputs[0], c.node("Identity", [c.value(source, layout)]), layout)


@_handles("UNIDIRECTIONAL_SEQUENCE_LSTM")
def _lstm(c: _Converter, op: _Op) -> None:
    """TFLite's fused LSTM (no peephole, projection, layer norm, CIFG) as ONNX LSTM, zero initial state.

    TFLite keeps the state in variable tensors that persist between invocations; a Keras model
    converted with stateful=False starts each sequence from zeros, which is what the ONNX graph does.
    """
    ins = op.inputs + [-1] * (24 - len(op.inputs))
    present = lambda k: ins[k] >= 0  # noqa: E731
    for k, what in [(9, "peephole"), (10, "peephole"), (11, "peephole"), (16, "projection"), (20, "layer norm"),
                    (21, "layer norm"), (22, "layer norm"), (23, "layer norm")]:
        if present(k):
            raise UnsupportedModelError(f"UNIDIRECTIONAL_SEQUENCE_LSTM node {op.index} uses {what} weights, which are not supported")
    if not present(1):
        raise UnsupportedModelError(f"UNIDIRECTIONAL_SEQUENCE_LSTM node {op.index} is a CIFG LSTM (no input gate), which is not supported")
    for k in (18, 19):
        t = c.tensor(ins[k]) if present(k) else None
        if t is not None and t.data is not None and np.any(t.data):
            raise UnsupportedModelError(f"UNIDIRECTIONAL_SEQUENCE_LSTM node {op.index} starts from a non-zero state, which is not supported")
    for k in range(1, 16):
        if present(k) and not c.is_const(ins[k]):
            raise UnsupportedModelError(f"UNIDIRECTIONAL_SEQUENCE_LSTM node {op.index} has non-constant weights")
    # ONNX gate order is input, output, forget, cell; TFLite's tensors are input, forget, cell, output
    order = (0, 3, 1, 2)
    w = np.concatenate([c.float_const(ins[1 + g]) for g in order])[None]
    r = np.concatenate([c.float_const(ins[5 + g]) for g in order])[None]
    hidden = r.shape[-1]
    bias = np.concatenate([c.float_const(ins[12 + g]) if present(12 + g) else np.zeros(hidden, np.float32) for g in order])
    b = np.concatenate([bias, np.zeros_like(bias)])[None]
    o = op.options
    time_major = bool(o.get("TimeMajor", False))
    x = c.value(ins[0], "nhwc")
    if not time_major:
        x = c.node("Transpose", [x], perm=[1, 0, 2])
    attrs: dict[str, Any] = {"hidden_size": hidden}
    act = o.get("FusedActivationFunction", 4)
    if act != 4:
        names = {0: "Affine", 1: "Relu", 3: None}
        if act not in (0, 1):
            raise UnsupportedModelError(f"UNIDIRECTIONAL_SEQUENCE_LSTM node {op.index} uses activation {act}, which is not supported")
        attrs["activations"] = ["Sigmoid", names[act], names[act]]
    if o.get("CellClip", 0.0) > 0:
        attrs["clip"] = float(o["CellClip"])
    y = c.node("LSTM", [x, c.const(w, "lstm_W"), c.const(r, "lstm_R"), c.const(b, "lstm_B")], **attrs)
    y = c.node("Squeeze", [y, c.const(np.array([1], np.int64), "axes")])  # [T, 1, B, H] -> [T, B, H]
    if not time_major:
        y = c.node("Transpose", [y], perm=[1, 0, 2])
    c.set_output(op.outputs[0], y)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------

# ops whose int8 TFLite kernels are not a float op followed by requantization (int16 state, LUTs)
_FLOAT_ONLY = {"UNIDIRECTIONAL_SEQUENCE_LSTM"}


def _check_supported(path: Path, graph: _Graph) -> None:
    unsupported: dict[str, list[str]] = {}
    for op in graph.ops:
        if op.name not in HANDLERS:
            out = graph.tensors[op.outputs[0]].name if op.outputs else "?"
            unsupported.setdefault(op.name, []).append(f"#{op.index} ({out})")
    if unsupported:
        listing = "; ".join(f"{name} at node(s) {', '.join(nodes[:5])}{' ...' if len(nodes) > 5 else ''}"
                            for name, nodes in unsupported.items())
        raise UnsupportedModelError(
            f"{str(path)!r} uses TFLite op(s) edgeopt cannot convert yet: {listing}. "
            f"Supported: {', '.join(sorted(HANDLERS))}; or convert the source model to ONNX directly (e.g. tf2onnx)"
        )
    quantized = [t for t in graph.tensors if t.data is None and t.type in _QUANTIZED_TYPES]
    if quantized:
        unsupported_int8 = sorted({op.name for op in graph.ops if op.name in _FLOAT_ONLY})
        if unsupported_int8:
            raise UnsupportedModelError(
                f"{str(path)!r} is a fully quantized TFLite model using {', '.join(unsupported_int8)}, whose integer "
                "kernels edgeopt cannot reproduce: such fully int8 TFLite models are not supported yet; "
                "give the float .tflite (edgeopt quantizes it itself)"
            )
    odd = [t for t in quantized if t.type == 7 or t.scale is None or t.scale.size != 1]
    if odd:
        reason = "is INT16" if odd[0].type == 7 else "has no per-tensor scale"
        raise UnsupportedModelError(
            f"{str(path)!r} has activation {odd[0].name!r} that {reason}: only int8/uint8 activations with one "
            "scale each are supported; give the float .tflite (edgeopt quantizes it itself)"
        )
    if graph.subgraph_count > 1:
        raise UnsupportedModelError(f"{str(path)!r} has {graph.subgraph_count} subgraphs (control flow); only single-subgraph models are supported")


def tflite_to_onnx(path: Path) -> "onnx.ModelProto":  # noqa: F821
    """Convert a float TFLite file (hybrid int8-weight models included) to an ONNX model.

    Inputs and outputs keep their TFLite names and shapes (NHWC stays NHWC); a leading batch of 1
    becomes the dynamic dimension ``batch``. Raises :class:`ModelLoadError` for files that are not
    TFLite flatbuffers and :class:`UnsupportedModelError` naming any op that cannot be converted.
    """
    path = Path(path)
    graph = _read_model(path)
    _check_supported(path, graph)
    return _Converter(graph).convert()
