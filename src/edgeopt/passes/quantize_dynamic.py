"""Dynamic int8 quantization of fully connected layers (``onnxruntime.quantization.quantize_dynamic``).

Weights are stored in int8; each activation is quantized at run time from its own range, so no
calibration rows are needed and nothing depends on how well calibration rows cover the inputs.
That suits transformers, recurrent nets and MLPs, whose activations (attention scores, masked
-inf, gate values) are what static int8 calibrates badly: measured on a one-layer transformer
encoder, static QDQ int8 agreed with fp32 on 87-91% of rows, dynamic on 99.5%.

Only MatMul-like layers are converted (Gemm is first rewritten as MatMul + Add, which ORT's dynamic
quantizer needs; LSTM, Attention and, with ``embeddings``, Gather tables). Conv is left float on
purpose: ORT's ConvInteger ran 5.8x slower than fp32 here. The optimizer measures the result like
every other candidate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import UnsupportedModelError
from .base import Choice, Pass, PassContext, PassResult

_WEIGHT_OPS = ("MatMul", "LSTM", "Attention")


def dynamic_layers(proto, embeddings: bool) -> list[str]:
    """Names of nodes the dynamic quantizer will convert: a constant weight on input 1 (MatMul,
    LSTM, Attention) or, with ``embeddings``, a constant table on input 0 of a Gather."""
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            out.append(node.name)
        elif embeddings and node.op_type == "Gather" and node.input and node.input[0] in inits:
            out.append(node.name)
    return out


class QuantizeDynamic(Pass):
    """int8 weights for MatMul/Gemm/LSTM (and embedding tables); activations quantized at run time."""

    name = "quantize.dynamic"
    description = "dynamic int8 (weights int8, activations quantized per run) for MatMul/Gemm/LSTM layers"

    def __init__(self, *, per_channel: bool = False, embeddings: bool = True):
        self.per_channel = per_channel
        self.embeddings = embeddings

    @classmethod
    def search_space(cls):
        return {"per_channel": Choice((False, True)), "embeddings": Choice((True, False))}

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from ..quant import quiet
        from ..quant.compact import compact as compact_graph
        from .quantize_int4 import gemm_to_matmul
        from .quantize_int8 import hoist_constants, upgrade_opset

        proto, old_opset = upgrade_opset(model.proto())
        hoist_constants(proto)
        rewritten = gemm_to_matmul(proto)
        layers = dynamic_layers(proto, self.embeddings)
        if not layers:
            raise UnsupportedModelError(
                "quantize.dynamic: the model has no MatMul/Gemm/LSTM with constant weights"
                + (" or embedding table" if self.embeddings else "")
                + "; dynamic int8 is for fully connected, recurrent and transformer layers (try quantize.int8)")
        op_types = [*_WEIGHT_OPS, "Gather"] if self.embeddings else list(_WEIGHT_OPS)
        with tempfile.TemporaryDirectory(prefix="edgeopt-dynamic-") as tmp, quiet():
            out = Path(tmp) / "dynamic.onnx"
            # ORT's own fused ops (SkipLayerNormalization, FusedGemm after ort.optimize) have no ONNX type
            # inference, so tensors behind them have no known type: they are float in a float model
            quantize_dynamic(proto, out, op_types_to_quantize=op_types, per_channel=self.per_channel,
                             weight_type=QuantType.QInt8, nodes_to_quantize=layers,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            quantized = onnx.load(str(out))
        compaction = compact_graph(quantized)
        stats = {"quantized_layers": layers, "gemm_rewritten": rewritten, "opset_upgraded_from": old_opset,
                 "compaction": compaction}
        return PassResult(model.derive(quantized, self.record()), stats)
