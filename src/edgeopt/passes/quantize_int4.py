"""int4 weight-only quantization of large MatMul layers (ONNX Runtime ``MatMulNBits``).

Meant for big fully connected layers (language models, large MLP heads), where weight bytes
dominate and activations stay float. Small CNN heads do not qualify: the pass then raises
UnsupportedModelError saying which layer was largest, and the optimizer records that honestly.
"""

from __future__ import annotations

from ..errors import ConfigError, UnsupportedModelError
from .base import Choice, IntRange, Pass, PassContext, PassResult


def gemm_to_matmul(proto) -> int:
    """Rewrite plain Gemm layers (constant 2-D weight, alpha=beta=1, no transA) as MatMul + Add.

    ORT's MatMulNBits quantizer only converts MatMul, but exporters (PyTorch's Linear, ORT's own
    MatMul+Add fusion) emit Gemm; the rewrite is exact. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    new_nodes, count = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or len(inits[node.input[1]].dims) != 2):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T.copy()
        w_name = node.input[1] + "_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=(node.name or f"gemm{count}") + "_matmul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=(node.name or f"gemm{count}") + "_bias"))
        count += 1
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    return count


def eligible_matmuls(proto, block_size: int, min_weight_elements: int) -> tuple[list[str], int]:
    """Names of MatMul nodes with a constant 2-D weight big enough, and the largest weight seen."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    names, largest = [], 0
    for node in proto.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if len(w.dims) != 2:
            continue
        elements = int(w.dims[0]) * int(w.dims[1])
        largest = max(largest, elements)
        if elements >= min_weight_elements and int(w.dims[0]) >= block_size:
            names.append(node.name)
    return names, largest


class QuantizeInt4(Pass):
    """Weight-only int4 (block-wise, symmetric) for MatMul layers with at least ``min_weight_elements`` weights."""

    name = "quantize.int4"
    description = "int4 weight-only MatMulNBits for large MatMul layers"

    def __init__(self, *, block_size: int = 32, symmetric: bool = True, min_weight_elements: int = 16384):
        self.block_size = block_size
        self.symmetric = symmetric
        self.min_weight_elements = min_weight_elements

    @classmethod
    def search_space(cls):
        return {"block_size": Choice((16, 32, 64, 128)), "symmetric": Choice((True, False)),
                "min_weight_elements": IntRange(256, 1 << 20, log=True)}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.min_weight_elements, int) or self.min_weight_elements < 1:
            raise ConfigError(f"quantize.int4: parameter 'min_weight_elements' must be a positive integer; got {self.min_weight_elements!r}")

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, RTNWeightOnlyQuantConfig

        proto = model.proto()
        rewritten = gemm_to_matmul(proto)
        names, largest = eligible_matmuls(proto, self.block_size, self.min_weight_elements)
        if not names:
            raise UnsupportedModelError(
                f"quantize.int4: no MatMul has a constant weight of >= {self.min_weight_elements} elements "
                f"(largest: {largest}); int4 weight-only quantization is for large fully connected layers")
        all_matmuls = {n.name for n in proto.graph.node if n.op_type == "MatMul"}
        config = RTNWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(proto, block_size=self.block_size, is_symmetric=self.symmetric,
                                         nodes_to_exclude=sorted(all_matmuls - set(names)), algo_config=config)
        from ..quant import quiet

        with quiet():
            quantizer.process()
        out = quantizer.model.model
        from ..quant.compact import compact as compact_graph

        compact_graph(out)
        return PassResult(model.derive(out, self.record()), {"quantized_matmuls": names, "largest_weight_elements": largest, "gemm_rewritten": rewritten})
