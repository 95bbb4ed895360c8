"""int4 weight-only quantization of large MatMul layers (ONNX Runtime ``MatMulNBits``).

Meant for big fully connected layers (language models, large MLP heads), where weight bytes
dominate and activations stay float. Small CNN heads do not qualify: the pass then raises
UnsupportedModelError saying which layer was largest, and the optimizer records that honestly.
"""

from __future__ import annotations

from ..errors import ConfigError, UnsupportedModelError
from .base import Choice, IntRange, Pass, PassContext, PassResult


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
        names, largest = eligible_matmuls(proto, self.block_size, self.min_weight_elements)
        if not names:
            raise UnsupportedModelError(
                f"quantize.int4: no MatMul has a constant weight of >= {self.min_weight_elements} elements "
                f"(largest: {largest}); int4 weight-only quantization is for large fully connected layers")
        all_matmuls = {n.name for n in proto.graph.node if n.op_type == "MatMul"}
        config = RTNWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(proto, block_size=self.block_size, is_symmetric=self.symmetric,
                                         nodes_to_exclude=sorted(all_matmuls - set(names)), algo_config=config)
        quantizer.process()
        out = quantizer.model.model
        return PassResult(model.derive(out, self.record()), {"quantized_matmuls": names, "largest_weight_elements": largest})
