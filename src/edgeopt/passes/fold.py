"""Graph cleanup before quantization: BatchNorm folding, constant folding, shape inference.

Uses ONNX Runtime's own quantization pre-processing (``quant_pre_process``: symbolic + ONNX shape
inference and ORT's basic graph optimizations, which fold BatchNorm into Conv and fold constants),
so the quantizer later sees the graph it expects. The result must equal the original within
``tolerance`` on real rows, or the pass fails and nothing is emitted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..quant.verify import check_close, sample_inputs
from .base import Choice, Pass, PassContext, PassResult


class Fold(Pass):
    """Fold BatchNorm and constants, infer shapes (ORT ``quant_pre_process``), verify outputs."""

    name = "fold"
    description = "BatchNorm/constant folding and shape inference before quantization (outputs equal within tolerance)"

    def __init__(self, *, symbolic_shapes: bool = True, tolerance: float = 1e-5):
        self.symbolic_shapes = symbolic_shapes
        self.tolerance = tolerance

    @classmethod
    def search_space(cls):
        return {"symbolic_shapes": Choice((True, False))}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.tolerance, (int, float)) or isinstance(self.tolerance, bool) or not 0 < self.tolerance <= 1e-2:
            raise ConfigError(f"fold: parameter 'tolerance' must be a number in (0, 0.01]; got {self.tolerance!r}")

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        proto = model.proto()
        before = _op_counts(proto)
        from ..quant import quiet

        with tempfile.TemporaryDirectory(prefix="edgeopt-fold-") as tmp, quiet():
            out = Path(tmp) / "folded.onnx"
            # A file path, not the ModelProto: given a proto and skip_symbolic_shape=True, ORT's
            # quant_pre_process moves the initializers out to "external data" in place, then its
            # optimizer and ONNX shape inference look for a data file that does not exist
            # (ValidationError "... should be stored in .../foo.bin"). From a file both steps work.
            source = Path(tmp) / "input.onnx"
            onnx.save(proto, str(source))
            try:
                quant_pre_process(str(source), out, skip_symbolic_shape=not self.symbolic_shapes)
            except Exception:
                if not self.symbolic_shapes:
                    raise
                # symbolic shape inference rejects some graphs (custom ops); ONNX's own inference still runs
                quant_pre_process(str(source), out, skip_symbolic_shape=True)
            folded = onnx.load(str(out))
        folded.doc_string = ""
        new = model.derive(folded, self.record())
        worst = check_close(model, new, sample_inputs(model, ctx), atol=self.tolerance, what="fold")
        after = _op_counts(folded)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        return PassResult(new, {"max_abs_error": worst, "removed_ops": removed,
                                "nodes_before": sum(before.values()), "nodes_after": sum(after.values())})


def _op_counts(proto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
