"""Two small, real passes for search tests (the project's own passes land on other branches).

- ``prune.threshold``: zeroes the smallest-magnitude weights of every Conv/MatMul/Gemm weight
  tensor (a real magnitude-pruning graph transform; continuous parameter ``sparsity``).
- ``quantize.dynamic_int8``: ONNX Runtime's dynamic int8 quantization (weights int8, activations
  quantized at run time).
- ``quantize.static_int8``: ONNX Runtime's static QDQ int8 quantization, calibrated on the
  ``calib`` split; it ``requires`` calib data, so a search given none gets a ConfigError from the
  pass contract for every recipe using it (a real "cannot be built" case).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeopt.passes.base import Choice, FloatRange, Pass, PassResult
from edgeopt.model import PassRecord, make_session


class ThresholdPrune(Pass):
    name = "prune.threshold"
    stage = "onnx"
    description = "zero the smallest-magnitude weights of Conv/MatMul/Gemm"

    def __init__(self, *, sparsity: float = 0.5):
        self.sparsity = sparsity

    @classmethod
    def search_space(cls):
        return {"sparsity": FloatRange(0.0, 0.9)}

    def validate(self):
        super().validate()
        from edgeopt.errors import ConfigError

        if not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise ConfigError(f"prune.threshold: parameter 'sparsity' must be in [0, 1); got {self.sparsity!r}")

    def run(self, model, ctx):
        from onnx import numpy_helper

        proto = model.proto()
        weight_names = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1}
        zeroed = total = 0
        for i, init in enumerate(proto.graph.initializer):
            if init.name not in weight_names:
                continue
            w = numpy_helper.to_array(init)
            if w.dtype != np.float32 or w.size < 16:
                continue
            cut = np.quantile(np.abs(w), self.sparsity)
            pruned = np.where(np.abs(w) <= cut, 0.0, w).astype(np.float32) if self.sparsity > 0 else w
            zeroed += int((pruned == 0).sum())
            total += w.size
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(pruned, init.name))
        out = model.derive(proto, PassRecord(self.name, self.get_params()))
        return PassResult(out, {"zeroed": zeroed, "weights": total})


class DynamicInt8(Pass):
    name = "quantize.dynamic_int8"
    stage = "onnx"
    description = "ONNX Runtime dynamic int8 quantization"

    def __init__(self, *, ops: str = "all", weight_type: str = "quint8"):
        self.ops = ops
        self.weight_type = weight_type

    @classmethod
    def search_space(cls):
        return {"ops": Choice(("all", "matmul")), "weight_type": Choice(("quint8", "qint8"))}

    def run(self, model, ctx):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ops = ["Conv", "MatMul", "Gemm"] if self.ops == "all" else ["MatMul", "Gemm"]
        wtype = QuantType.QUInt8 if self.weight_type == "quint8" else QuantType.QInt8
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(model.onnx_bytes)
            quantize_dynamic(str(src), str(dst), weight_type=wtype, op_types_to_quantize=ops)
            proto = onnx.load(str(dst))
        make_session(proto.SerializeToString())  # raises UnsupportedModelError if ORT has no kernel for it
        return PassResult(model.derive(proto, PassRecord(self.name, self.get_params())), {})


class StaticInt8(Pass):
    name = "quantize.static_int8"
    stage = "onnx"
    requires = frozenset({"calib"})
    description = "ONNX Runtime static QDQ int8 quantization"

    def __init__(self, *, per_channel: bool = False, samples: int = 128):
        self.per_channel = per_channel
        self.samples = samples

    @classmethod
    def search_space(cls):
        return {"per_channel": Choice((False, True))}

    def run(self, model, ctx):
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        name = model.inputs[0].name
        rows = ctx.calib.x[: self.samples].astype(np.float32)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(rows[i : i + 1] for i in range(len(rows)))

            def get_next(self):
                batch = next(self._it, None)
                return None if batch is None else {name: batch}

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(model.onnx_bytes)
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
            proto = onnx.load(str(dst))
        make_session(proto.SerializeToString())
        return PassResult(model.derive(proto, PassRecord(self.name, self.get_params())), {"calibration_rows": len(rows)})


TEST_PASSES = (ThresholdPrune, DynamicInt8, StaticInt8)


class TrainCalibratedInt8(StaticInt8):
    """Static int8 calibrated on the *train* split: declares ``requires={"train"}``, which makes the
    search treat it as an expensive pass (held back until cheap recipes have been screened)."""

    name = "quantize.train_calibrated_int8"
    requires = frozenset({"train"})

    def run(self, model, ctx):
        from dataclasses import replace as _replace

        return super().run(model, _replace(ctx, calib=ctx.train))


class TrainedThresholdPrune(ThresholdPrune):
    """``prune.threshold`` declared as needing *train* rows (an expensive structural pass) with one
    mild setting, for the search's probes of the best single technique combined with it."""

    name = "prune.trained_threshold"
    requires = frozenset({"train"})

    @classmethod
    def mild_settings(cls):
        return [{"sparsity": 0.05}]
