"""Graph cleanup before quantization: BatchNorm folding, constant folding, shape inference.

BatchNorm that an exporter wrote out as per-channel ``Mul``/``Add`` by constants after a
``Gemm``/``Conv`` (Keras/TensorFlow exports: the MLPerf Tiny AD autoencoder) is folded into that
layer's weights and bias as well (:func:`fold_scale_shift`): ORT fuses only real BatchNormalization
nodes, and a layer followed by an unfused scale cannot be channel-pruned (the scale keeps its old
width) nor lowered to integer C (the layer's output is not requantized).

Uses ONNX Runtime's own quantization pre-processing (``quant_pre_process``: symbolic + ONNX shape
inference and ORT's basic graph optimizations, which fold BatchNorm into Conv and fold constants),
so the quantizer later sees the graph it expects. The result must equal the original within
``tolerance`` on real rows (times the largest output magnitude where that exceeds 1: folding
reorders float32 arithmetic), or the pass fails and nothing is emitted.
"""

from __future__ import annotations

import contextlib
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
            # chdir: when symbolic shape inference is incomplete, ORT saves sym_shape_infer_temp.onnx
            # into the current directory before raising (seen on the PP-OCRv4 detector); keep it here
            with contextlib.chdir(tmp):
                try:
                    quant_pre_process(str(source), out, skip_symbolic_shape=not self.symbolic_shapes)
                except Exception:
                    if not self.symbolic_shapes:
                        raise
                    # symbolic shape inference rejects some graphs (custom ops); ONNX's own inference still runs
                    quant_pre_process(str(source), out, skip_symbolic_shape=True)
            folded = onnx.load(str(out))
        folded.doc_string = ""
        affine = fold_scale_shift(folded)
        new = model.derive(folded, self.record())
        worst = check_close(model, new, sample_inputs(model, ctx), atol=self.tolerance, what="fold", scaled=True)
        after = _op_counts(folded)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        return PassResult(new, {"max_abs_error": worst, "removed_ops": removed, "scale_shift_folded": affine,
                                "nodes_before": sum(before.values()), "nodes_after": sum(after.values())})


def _op_counts(proto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _channel_vector(const, rank: int, width: int):
    """``const`` as a vector of ``width`` if broadcasting it against a layer output of ``rank``
    dimensions (channels on axis 1) acts channel by channel: a scalar, or a constant whose only
    non-1 dimension lines up with axis 1. Otherwise None."""
    import numpy as np

    c = np.asarray(const, dtype=np.float64)
    if c.size == 1:
        return np.full(width, float(c.reshape(())))
    axis = c.ndim - rank + 1  # the output's axis 1, counted in the constant's own (right-aligned) axes
    if not rank - 1 <= c.ndim <= rank or c.shape[axis] != width or c.size != width:
        return None
    return c.reshape(width)


def fold_scale_shift(proto) -> int:
    """Fold a per-channel ``Mul``/``Add`` by a constant that alone consumes a Gemm's or Conv's output
    into that layer's weight and bias, in place; returns how many were folded. Written here because
    neither ORT's optimizer nor onnx's fuses a per-channel scale into Gemm (only real BatchNorm into Conv)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    folded = 0
    replaced: set[str] = set()  # initializers a fold stopped reading (dropped at the end if nothing else does)
    while True:
        inits = {i.name: i for i in graph.initializer}
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}
        match = None
        for node in graph.node:
            if node.op_type not in ("Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                           or attrs.get("beta", 1.0) != 1.0 or len(inits[node.input[1]].dims) != 2):
                continue
            if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
                continue
            users = consumers.get(node.output[0], [])
            if node.output[0] in outputs or len(users) != 1 or users[0].op_type not in ("Mul", "Add"):
                continue
            nxt = users[0]
            others = [x for x in nxt.input if x != node.output[0]]
            if len(others) != 1 or len(nxt.input) != 2 or others[0] not in inits:
                continue
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            width = weight.shape[0] if node.op_type == "Conv" or attrs.get("transB", 0) else weight.shape[1]
            rank = 2 if node.op_type == "Gemm" else weight.ndim
            vector = _channel_vector(numpy_helper.to_array(inits[others[0]]), rank, width)
            if vector is not None:
                match = (node, nxt, weight, width, vector, attrs)
                break
        if match is None:
            _drop_unread(graph, replaced)
            return folded
        node, nxt, weight, width, vector, attrs = match
        bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(-1) * np.ones(width)
                if len(node.input) > 2 and node.input[2] else np.zeros(width))
        if nxt.op_type == "Mul":
            if node.op_type == "Conv" or attrs.get("transB", 0):
                weight = weight * vector.reshape((width,) + (1,) * (weight.ndim - 1))
            else:
                weight = weight * vector.reshape(1, width)
            bias = bias * vector
        else:
            bias = bias + vector
        replaced |= {node.input[1], *node.input[2:3], *nxt.input}
        tag = f"{nxt.output[0]}_folded"
        graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), tag + "_w"),
                                  numpy_helper.from_array(bias.astype(np.float32), tag + "_b")])
        node.input[1] = tag + "_w"
        if len(node.input) > 2:
            node.input[2] = tag + "_b"
        else:
            node.input.append(tag + "_b")
        node.output[0] = nxt.output[0]
        graph.node.remove(nxt)
        folded += 1


def _drop_unread(graph, names: set[str]) -> None:
    """Remove the initializers in ``names`` that no node reads any more (ORT warns about each)."""
    from ..quant.compact import names_read_by_subgraphs

    read = {n for node in graph.node for n in node.input} | {o.name for o in graph.output} | names_read_by_subgraphs(graph)
    keep = [i for i in graph.initializer if i.name in read or i.name not in names]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)

