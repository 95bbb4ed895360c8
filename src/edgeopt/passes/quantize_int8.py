"""int8 static quantization (QDQ or QOperator) through ``onnxruntime.quantization``.

Per-channel int8 weights; activations calibrated on the first ``samples`` rows of the calibration
split with MinMax, Entropy, Percentile or Distribution. The activation type is chosen for the
runtime: ONNX Runtime's CPU kernels fuse only u8 activations x s8 weights (measured on this
machine, ResNet-8 1 thread: S8S8 QDQ runs ~1.3-1.9x slower than fp32, U8S8 faster), so ``"auto"``
means u8 for ONNX Runtime and s8 elsewhere (TFLite/CMSIS-style runtimes want symmetric s8).
``exclude_nodes`` keeps the named nodes in float (mixed precision, chosen by the optimizer from
per-layer sensitivity); ``float_layers`` = k keeps the k most sensitive weighted layers in float,
ranked by this pass itself (one probe per layer on the calibration rows: the SQNR of the scored
output with only that layer int8), which is how the search reaches mixed precision on any model.
Float weights that only ``If``/``Loop``/``Scan`` bodies use, which ORT's quantizer does not enter,
can be stored as per-row int8 (``control_flow_weights``: smaller, but slower on ONNX Runtime,
see :mod:`edgeopt.quant.control_flow`).
``pad_channels`` widens a Conv that reads 1-3 channels (an RGB or spectrogram first layer) to 4
with zero weights, so ONNX Runtime runs it with its fast symmetric int8 kernel instead of im2col +
generic GEMM (see :mod:`edgeopt.quant.pad_channels`; outputs are
bit-identical). ``space_to_depth`` rewrites such a layer, when it has a stride >= 2, as SpaceToDepth +
a stride-1 conv on 4+ channels before quantizing: the fast kernel with no extra MACs (see
:mod:`edgeopt.quant.space_to_depth`; exact in float). ``pack_width`` rewrites it (any stride) as a
conv over the input rows' pixels packed 4 values to a channel, via free channels-last Reshapes: the
fast kernel at some extra MACs (see :mod:`edgeopt.quant.pack_width`; exact in float). ``float_tail``
lets a classifier's last Gemm output float and the ops after it (Softmax...) run float: faster on
ONNX Runtime and more exact (see :mod:`edgeopt.quant.float_tail`). The output graph is compacted (see :mod:`edgeopt.quant.compact`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import ConfigError, UnsupportedModelError
from ..quant import calibration
from ..quant.compact import compact as compact_graph
from .base import Choice, FloatRange, IntRange, Pass, PassContext, PassResult

# ops whose weights carry almost all of a CNN's bytes and MACs; without one, int8 buys nothing
QUANTIZABLE_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# "all": every op ORT can quantize (Add, pooling, Softmax... too: a CNN runs int8 end to end);
# "weighted": only the layers with constant weights and embedding tables (Gather from a constant),
# their inputs and outputs quantized, everything between them float. A transformer's residual
# stream, LayerNorm, GELU output and attention products carry outlier channels that one per-tensor
# scale cannot hold: the real all-MiniLM-L6-v2 kept 0.80 cosine with "all" and 0.93 with
# "weighted" (0.99 with its six FFN output layers float as well).
OPS_MODES = ("all", "weighted")


def constant_node_tensors(proto) -> dict:
    """``{output name: TensorProto}`` of the main graph's tensor-valued ``Constant`` nodes (some
    exporters store every weight that way)."""
    return {n.output[0]: n.attribute[0].t for n in proto.graph.node
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"}


def hoist_constants(proto) -> int:
    """Move tensor-valued ``Constant`` nodes of the main graph into initializers, in place; returns
    how many moved. ORT's quantizer only quantizes initializer weights. (ORT's own graph optimizer
    does this too, inside ``fold``; this covers ``quantize.int8`` run without it. Written here
    because it is a few lines on the proto.)"""
    tensors = constant_node_tensors(proto)
    for node in [n for n in proto.graph.node if n.op_type == "Constant" and n.output[0] in tensors]:
        tensor = proto.graph.initializer.add()
        tensor.CopyFrom(tensors[node.output[0]])
        tensor.name = node.output[0]
        proto.graph.node.remove(node)
    return len(tensors)


def upgrade_opset(proto, minimum: int = 13):
    """``(proto, old opset)``: the model converted to at least ``minimum`` of the default domain (onnx's
    version converter), or unchanged with None. Per-channel Quantize/DequantizeLinear carry an ``axis``
    from opset 13; ORT's quantizer writes it whatever the model's opset, and an opset-11 model came
    back unloadable ("Unrecognized attribute: axis for operator DequantizeLinear")."""
    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= minimum:
        return proto, None
    try:
        return version_converter.convert_version(proto, minimum), current
    except Exception as e:  # onnx raises RuntimeError/ValidationError with an adapter name
        raise UnsupportedModelError(
            f"the model uses ONNX opset {current}; int8 quantization needs opset {minimum} or later and onnx's "
            f"version converter could not upgrade it ({str(e).splitlines()[0][:200]}). Re-export the model "
            f"with opset_version={minimum} or later") from e


def masked_paths(proto, max_hops: int = 12) -> list[str]:
    """Nodes that carry an attention mask's infinities, to keep in float: from each node reading a
    constant with non-finite or huge (> 1e30, e.g. float32's min) values, along its consumers up to
    and including the Softmax that absorbs them (at most ``max_hops`` nodes deep). Quantizing such a
    tensor gives an infinite scale: a 4-layer transformer encoder's static int8 lost 0.085 cosine
    (0.915) with its mask path quantized and 0.0008 (0.9992) without. Written here because ORT's
    quantizer has no notion of it; ``float_masks=False`` turns it off."""
    import numpy as np
    from onnx import numpy_helper

    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # Clip/Min/Max with an infinite bound (ReLU written as Clip(0, FLT_MAX)) only bound values, and a
    # layer's weights are not masks: those constants are never decoded (a transformer's megabytes)
    not_masks = set(QUANTIZABLE_WEIGHT_OPS) | {"Clip", "Min", "Max"}
    infinite = set()
    for init in proto.graph.initializer:
        if init.data_type in (1, 10, 11, 16) and any(c.op_type not in not_masks for c in consumers.get(init.name, [])):
            values = numpy_helper.to_array(init)  # float, float16, double, bfloat16
            if values.size and (not np.all(np.isfinite(values)) or np.max(np.abs(values)) > 1e30):
                infinite.add(init.name)
    if not infinite:
        return []
    keep: dict[str, None] = {}
    seeds = [n for n in proto.graph.node if set(n.input) & infinite and n.op_type not in not_masks]
    for seed in seeds:
        path: dict[str, str] = {}
        frontier = [(seed, 0)]
        while frontier:
            node, depth = frontier.pop(0)
            if not node.name or node.name in path or node.name in keep:
                continue
            path[node.name] = node.op_type
            if node.op_type == "Softmax" or depth + 1 >= max_hops:
                continue
            frontier += [(c, depth + 1) for out in node.output for c in consumers.get(out, [])]
        if "Softmax" in path.values():  # a mask; anything else keeps its int8 coverage
            keep.update(dict.fromkeys(path))
    return list(keep)


def quantizable_nodes(proto) -> list[str]:
    """Names of nodes with a constant weight the int8 quantizer will convert (in graph order); a
    weight may be an initializer or a tensor ``Constant`` node."""
    inits = {i.name for i in proto.graph.initializer} | set(constant_node_tensors(proto))
    out = []
    for node in proto.graph.node:
        if node.op_type in QUANTIZABLE_WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            out.append(node.name)
    return out


def resolve_activations(activations: str, target=None) -> str:
    if activations != "auto":
        return activations
    runtime = getattr(target, "runtime", "onnxruntime") if target is not None else "onnxruntime"
    return "u8" if runtime in ("onnxruntime", None) else "s8"


class QuantizeInt8(Pass):
    """Static int8 quantization with per-channel weights, calibrated on the calibration split."""

    name = "quantize.int8"
    requires = frozenset({"calib"})
    description = "static int8 (QDQ) quantization via onnxruntime.quantization, per-channel weights"

    def __init__(
        self,
        *,
        calibration: str = "minmax",
        samples: int = 256,
        percentile: float = 99.999,
        per_channel: bool = True,
        activations: str = "auto",
        format: str = "qdq",
        exclude_nodes: tuple | list = (),
        compact: bool = True,
        bias_correction: bool = False,
        pad_channels: bool = False,
        space_to_depth: bool = False,
        pack_width: bool = False,
        float_tail: bool = False,
        float_masks: bool = True,
        ops: str = "all",
        float_layers: int = 0,
        control_flow_weights: bool = False,
    ):
        self.calibration = calibration
        self.samples = samples
        self.percentile = percentile
        self.per_channel = per_channel
        self.activations = activations
        self.format = format
        # a list, as it reads back from recipe YAML (a tuple would not compare equal after the round trip)
        self.exclude_nodes = list(exclude_nodes) if not isinstance(exclude_nodes, str) else exclude_nodes
        self.compact = compact
        self.bias_correction = bias_correction
        self.pad_channels = pad_channels
        self.space_to_depth = space_to_depth
        self.pack_width = pack_width
        self.float_tail = float_tail
        self.float_masks = float_masks
        self.ops = ops
        self.float_layers = float_layers
        self.control_flow_weights = control_flow_weights

    @classmethod
    def search_space(cls):
        # ORT's "distribution" method sizes ranges for float8: on int8 it lost 72-86 pt in every
        # search trial that drew it (KWS and ResNet-8), so the search never offers it.
        return {
            "calibration": Choice(tuple(m for m in calibration.METHODS if m != "distribution")),
            "samples": IntRange(32, 1024, log=True),
            "percentile": FloatRange(99.9, 99.9999),
            "per_channel": Choice((True, False)),
            "activations": Choice(("auto", "u8", "s8")),
            "format": Choice(("qdq", "qoperator")),
            "bias_correction": Choice((False, True)),
            "pad_channels": Choice((False, True)),
            # the search fixes "all" for conv nets and C targets (edgeopt.search.outcome, targets/*.yaml)
            "ops": Choice(OPS_MODES),
            # mixed precision: 0-3 most sensitive weighted layers float (fixed 0 on int8-only C targets)
            "float_layers": IntRange(0, 3),
        }

    @classmethod
    def param_applies(cls, name, chosen):
        if name == "percentile":
            return chosen.get("calibration", "minmax") == "percentile"
        if name in ("bias_correction", "pad_channels"):  # both edit the QDQ form
            return chosen.get("format", "qdq") == "qdq"
        return True

    def validate(self) -> None:
        super().validate()
        if self.bias_correction is True and self.format != "qdq":
            raise ConfigError("quantize.int8: bias_correction=True edits the float biases of the QDQ form; "
                              f"use format='qdq' (got format={self.format!r}) or bias_correction=False")
        if self.pad_channels is True and self.format != "qdq":
            raise ConfigError("quantize.int8: pad_channels=True edits the QDQ form (QuantizeLinear/DequantizeLinear "
                              f"around each Conv); use format='qdq' (got format={self.format!r}) or pad_channels=False")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or not 1 <= self.samples <= 100_000:
            raise ConfigError(f"quantize.int8: parameter 'samples' must be an integer in 1..100000; got {self.samples!r}")
        if not isinstance(self.percentile, (int, float)) or not 50 < self.percentile < 100:
            raise ConfigError(f"quantize.int8: parameter 'percentile' must be in (50, 100); got {self.percentile!r}")
        if isinstance(self.exclude_nodes, str) or not all(isinstance(n, str) for n in self.exclude_nodes):
            raise ConfigError(f"quantize.int8: parameter 'exclude_nodes' must be a list of node names; got {self.exclude_nodes!r}")
        if not isinstance(self.float_layers, int) or isinstance(self.float_layers, bool) or not 0 <= self.float_layers <= 10_000:
            raise ConfigError(f"quantize.int8: parameter 'float_layers' must be an integer >= 0 (how many of the most "
                              f"sensitive weighted layers stay float); got {self.float_layers!r}")
        if self.ops not in OPS_MODES:
            raise ConfigError(f"quantize.int8: parameter 'ops' must be one of {list(OPS_MODES)}; got {self.ops!r}")
        for flag in ("per_channel", "compact", "bias_correction", "pad_channels", "space_to_depth", "pack_width",
                     "float_tail", "control_flow_weights"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"quantize.int8: parameter {flag!r} must be true or false; got {getattr(self, flag)!r}")

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        proto, old_opset = upgrade_opset(model.proto())
        hoist_constants(proto)
        rewritten = []
        if self.space_to_depth:
            from ..quant.space_to_depth import space_to_depth_thin_convs

            rewritten = space_to_depth_thin_convs(proto)  # (model.proto() is a fresh copy)
        packed = []
        if self.pack_width:  # after space_to_depth: a conv that one rewrote has 4+ channels, the other skips it
            from ..quant.pack_width import pack_width_thin_convs

            packed = pack_width_thin_convs(proto)
        candidates = quantizable_nodes(proto)
        if not candidates:
            raise UnsupportedModelError(
                "quantize.int8: the model has no Conv/Gemm/MatMul with constant weights, so int8 quantization "
                "cannot make it smaller or faster; try --techniques fp16")
        names = {n.name for n in proto.graph.node}
        unknown = [n for n in self.exclude_nodes if n not in names]
        if unknown:
            raise ConfigError(f"quantize.int8: exclude_nodes names nodes not in the graph: {unknown[:5]}")
        excluded = set(self.exclude_nodes)
        tails = []
        if self.float_tail:  # the ops after the last Gemm stay float; the Gemm itself outputs float (below)
            from ..quant.float_tail import tail_chains

            tails = [(t, nodes) for t, nodes in tail_chains(proto)
                     if next(n.name for n in proto.graph.node if t in n.output) not in excluded]
            excluded |= {name for _, nodes in tails for name in nodes}
        if all(n in excluded for n in candidates):
            raise ConfigError("quantize.int8: exclude_nodes keeps every weighted layer in float; nothing would be quantized")
        x, rows = calibration.calibration_rows(ctx.calib, self.samples)
        sensitive = []
        if self.float_layers:
            left = [n for n in candidates if n not in excluded]
            if self.float_layers >= len(left):
                raise ConfigError(f"quantize.int8: float_layers={self.float_layers} would keep every weighted layer float "
                                  f"(the model has {len(left)} to quantize); use a smaller value")
            from ..quant.sensitivity import most_sensitive

            ctx.report(f"int8: ranking {len(left)} layers by sensitivity", 0.05)
            sensitive = most_sensitive(model, ctx, count=self.float_layers, x=x, candidates=left,
                                       output=ctx.options.get("output", 0), samples=self.samples,
                                       calibration=self.calibration, percentile=self.percentile,
                                       per_channel=self.per_channel, activations=self.activations, ops=self.ops)
            excluded |= {r["layer"] for r in sensitive}

        masks = masked_paths(proto) if self.float_masks else []
        op_types, unweighted, tables = None, [], []
        if self.ops == "weighted":
            # embedding tables count as weights: a Gather from a constant float table (all-MiniLM-L6-v2's
            # word embeddings are half its bytes)
            inits = {i.name: i.data_type for i in proto.graph.initializer}
            tables = [n.name for n in proto.graph.node if n.op_type == "Gather" and inits.get(n.input[0]) == 1]
            weighted = set(candidates) | set(tables)
            op_types = sorted({n.op_type for n in proto.graph.node if n.name in weighted})
            # a MatMul of two activations (attention scores) has no weight: it stays float too
            unweighted = [n.name for n in proto.graph.node if n.op_type in op_types and n.name not in weighted]
        act = resolve_activations(self.activations, ctx.target)
        reader = calibration.reader_for(model, x)
        extra = {"CalibPercentile": float(self.percentile), "CalibMovingAverage": False}
        cache = calibration.cache_path(ctx.options.get("calibration_cache_dir"), model.onnx_bytes, x,
                                       method=self.calibration, percentile=float(self.percentile),
                                       # "weighted" calibrates only the weighted layers' inputs: its own cache entry
                                       **({"ops": self.ops} if self.ops != "all" else {}),
                                       # the rewritten graph has tensors the plain one lacks: its own entry
                                       **({"space_to_depth": True} if rewritten else {}),
                                       **({"pack_width": True} if packed else {}))
        ctx.report(f"int8: calibrating on {calibration.sample_count(x)} rows ({self.calibration})", 0.1)
        from ..quant import quiet

        with tempfile.TemporaryDirectory(prefix="edgeopt-int8-") as tmp, quiet(), calibration.finite_histograms():
            out = Path(tmp) / "int8.onnx"
            quantize_static(
                proto, out, reader,
                quant_format=QuantFormat.QDQ if self.format == "qdq" else QuantFormat.QOperator,
                per_channel=self.per_channel,
                activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(excluded | set(masks) | set(unweighted)) or None,
                op_types_to_quantize=op_types,
                calibrate_method=calibration.ort_method(self.calibration),
                extra_options=extra,
                calibration_cache_path=cache,
            )
            quantized = onnx.load(str(out))
        stats = {"activations": act, "weights": "s8", "opset_upgraded_from": old_opset,
                 "calibration_rows": list(rows) if rows else [0, calibration.sample_count(x)],
                 "quantized_layers": [n for n in candidates if n not in excluded],
                 "float_layers": [n for n in candidates if n in excluded], "float_mask_nodes": masks,
                 "ops": self.ops, **({"space_to_depth_layers": rewritten} if self.space_to_depth else {}),
                 **({"pack_width_layers": packed} if self.pack_width else {}),
                 **({"quantized_tables": tables} if self.ops == "weighted" else {}),
                 **({"most_sensitive": [{"layer": r["layer"], "sqnr_db": r["sqnr_db"]} for r in sensitive]} if sensitive else {})}
        if self.float_tail:
            from ..quant.float_tail import float_gemm_outputs

            stats["float_tail"] = float_gemm_outputs(quantized, [t for t, _ in tails])
        if self.control_flow_weights:
            from ..quant.control_flow import quantize_control_flow_weights

            moved = quantize_control_flow_weights(quantized)
            if moved:
                stats["control_flow_weights_int8"] = moved
        if self.bias_correction:
            if self.format != "qdq":
                raise ConfigError("quantize.int8: bias_correction edits the float biases of the QDQ form; use format='qdq'")
            from ..quant.bias_correction import correct_biases

            ctx.report("int8: bias correction", 0.8)
            stats["bias_corrected_layers"] = correct_biases(quantized, model, x)
        if self.pad_channels:
            if self.format != "qdq":
                raise ConfigError("quantize.int8: pad_channels edits the QDQ form (QuantizeLinear/DequantizeLinear around each Conv); "
                                  "use format='qdq'")
            from ..quant.pad_channels import pad_thin_conv_inputs

            stats["padded_layers"] = pad_thin_conv_inputs(quantized)
        if self.compact:
            stats["compaction"] = compact_graph(quantized)
        return PassResult(model.derive(quantized, self.record()), stats)
