"""Save ONNX Runtime's own graph optimizations offline (``SessionOptions.optimized_model_filepath``).

For an int8 QDQ graph this stores the fused QLinearConv/QGemm form, so the runtime skips the fusion
at load and the file sheds its DequantizeLinear nodes. Only the portable levels are offered:
"all" also bakes in CPU-specific layouts (NCHWc blocks sized for this CPU's vector width), so a file
optimized at that level is only valid on the machine that wrote it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..quant.compact import compact as compact_graph
from .base import Choice, Pass, PassContext, PassResult


class OrtOptimize(Pass):
    """Apply and store ONNX Runtime graph optimizations (basic or extended level)."""

    name = "ort.optimize"
    description = "ONNX Runtime graph optimizations saved offline (portable levels only)"

    def __init__(self, *, level: str = "extended"):
        self.level = level

    @classmethod
    def search_space(cls):
        return {"level": Choice(("basic", "extended"))}

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx
        import onnxruntime as ort

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
        with tempfile.TemporaryDirectory(prefix="edgeopt-ortopt-") as tmp:
            out = Path(tmp) / "optimized.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = levels[self.level]
            so.optimized_model_filepath = str(out)
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            ort.InferenceSession(model.onnx_bytes, so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(str(out))
        before = len(model.proto().graph.node)
        stats = {"nodes_before": before, "nodes_after": len(optimized.graph.node), "compaction": compact_graph(optimized)}
        return PassResult(model.derive(optimized, self.record()), stats)
