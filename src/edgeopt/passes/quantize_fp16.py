"""fp16 weights and activations (ONNX Runtime's float16 converter), I/O kept float32.

Halves the file; whether it is faster depends on the runtime (ORT's CPU provider mostly casts
back to float32, GPUs and some NPUs run fp16 natively), which is why the optimizer measures it.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..model import check_loads_isolated
from ..quant.compact import compact as compact_graph
from .base import Choice, Pass, PassContext, PassResult


class QuantizeFp16(Pass):
    """Convert float32 weights and activations to float16, keeping float32 inputs and outputs."""

    name = "quantize.fp16"
    description = "float16 weights/activations with float32 I/O"

    def __init__(self, *, keep_io_types: bool = True, op_block_list: tuple | list = ()):
        self.keep_io_types = keep_io_types
        self.op_block_list = list(op_block_list) if not isinstance(op_block_list, str) else op_block_list

    @classmethod
    def search_space(cls):
        return {"keep_io_types": Choice((True, False))}

    def validate(self) -> None:
        super().validate()
        if isinstance(self.op_block_list, str) or not all(isinstance(o, str) for o in self.op_block_list):
            raise ConfigError(f"quantize.fp16: parameter 'op_block_list' must be a list of op types; got {self.op_block_list!r}")

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        proto = model.proto()
        # LayerNormalization stays float32: its variance loses precision in fp16, and ONNX Runtime 1.32
        # crashed (SIGSEGV) creating sessions for fp16 transformer encoders until it was kept float (measured).
        blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | {"LayerNormalization"} | set(self.op_block_list))
        from ..quant import quiet

        with quiet():  # the converter logs whole NodeProtos at INFO level
            converted = convert_float_to_float16(proto, keep_io_types=self.keep_io_types, op_block_list=blocked,
                                                 disable_shape_infer=False)
        # Keep the shape hints: without them ONNX Runtime 1.32 crashes (SIGSEGV, no exception) creating a
        # session for an fp16 transformer (LayerNormalization fed by an fp16 Add whose shape it must infer).
        stats = {"compaction": compact_graph(converted, keep_shapes=True)}
        result = model.derive(converted, self.record())
        check_loads_isolated(result.onnx_bytes, "quantize.fp16")  # the converter's output can crash ORT (see there)
        return PassResult(result, stats)
