"""Quantization-aware training: fake-quant fine-tuning, exported as an int8 QDQ ONNX model.

The int8 semantics are those of the post-training path (ONNX Runtime ``quantize_static`` QDQ,
U8S8): activations are uint8, asymmetric, one scale per tensor, quantized at the input of every
Conv/Gemm; weights are int8, symmetric (zero point 0), one scale per output channel, stored as
int8 initializers feeding a DequantizeLinear. Activation ranges come from the calibration data
(min/max) and stay fixed while the weights are fine-tuned through the fake quantizers
(straight-through estimator). Biases stay fp32 (the PTQ path stores them as int32 with scale
``s_input * s_weight``; the difference is below one output quantization step).

The exported model is checked before it is returned: run by ONNX Runtime with graph optimizations
off (every QuantizeLinear/DequantizeLinear executed as written, i.e. the QDQ reference semantics)
it must match the fake-quant PyTorch outputs within :data:`TOLERANCE` (max abs, relative to
max(1, |output|); a float rounding tie in one activation moves it by one quantization step) with
top-1 agreement >= :data:`MIN_AGREEMENT`. With optimizations on, ONNX Runtime fuses the QDQ pattern into its integer
kernels (QLinearConv), whose requantization rounds differently at near-ties; that agreement is
measured and reported in the stats (``ort_int8_kernels_*``), not hidden.
"""

from __future__ import annotations

import io
import warnings
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, VerificationError
from ..training import fine_tune_config, recover
from .base import IntRange, Pass, PassContext, PassResult

TOLERANCE = 1e-2
MIN_AGREEMENT = 0.99
_QUANT_LAYERS = ("Conv1d", "Conv2d", "Linear")


def _make_wrapper():
    import torch
    from torch import nn

    class FakeQuantLayer(nn.Module):
        """A Conv/Linear with a uint8 per-tensor fake quantizer on its input and int8 per-channel weights."""

        def __init__(self, layer):
            super().__init__()
            self.layer = layer
            self.register_buffer("input_min", torch.tensor(float("inf")))
            self.register_buffer("input_max", torch.tensor(float("-inf")))
            self.observing = False
            self.frozen_weight_scale = None

        def freeze(self) -> None:
            """Fix the weight scales as constants (for export: no scale arithmetic in the graph)."""
            self.frozen_weight_scale = self.weight_qparams()

        def input_qparams(self):
            low = float(torch.clamp(self.input_min, max=0.0))
            high = float(torch.clamp(self.input_max, min=0.0))
            scale = max((high - low) / 255.0, 1e-8)
            zero_point = int(np.clip(round(-low / scale), 0, 255))
            return scale, zero_point

        def weight_qparams(self):
            w = self.layer.weight.detach()
            absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
            scale = torch.clamp(absmax / 127.0, min=1e-12).float()
            return scale, torch.zeros(w.shape[0], dtype=torch.int32)

        def forward(self, x):
            if self.observing:
                with torch.no_grad():
                    self.input_min.copy_(torch.minimum(self.input_min, x.min()))
                    self.input_max.copy_(torch.maximum(self.input_max, x.max()))
                return self.layer(x)
            scale, zero_point = self.input_qparams()
            x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
            w_scale, w_zero = self.frozen_weight_scale or self.weight_qparams()
            w = torch.fake_quantize_per_channel_affine(self.layer.weight, w_scale, w_zero, 0, -128, 127)
            if isinstance(self.layer, nn.Linear):
                return nn.functional.linear(x, w, self.layer.bias)
            return self.layer._conv_forward(x, w, self.layer.bias)

    return FakeQuantLayer


def insert_fake_quant(module) -> list:
    """Wrap every Conv/Linear of ``module`` in place; returns the wrappers."""
    wrapper_type = _make_wrapper()
    from .lowrank import _replace

    targets = [(n, m) for n, m in module.named_modules() if type(m).__name__ in _QUANT_LAYERS]
    wrappers = []
    for name, layer in targets:
        wrapper = wrapper_type(layer)
        _replace(module, name, wrapper)
        wrappers.append(wrapper)
    if hasattr(module, "recompile"):
        module.recompile()
    return wrappers


def fold_weight_quantizers(proto) -> int:
    """Store weights as int8 initializers: QuantizeLinear(constant) -> DequantizeLinear becomes int8 -> DQ.

    Returns the number of folded weights. (The exporter writes float weights and a QuantizeLinear;
    the PTQ path, and every int8 runtime, expects the int8 tensor itself.)
    """
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    constants = {}
    for node in proto.graph.node:  # the exporter may emit scales/zero points as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return constants.get(name)

    folded = 0
    remove = []
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or value(node.input[0]) is None:
            continue
        w = value(node.input[0]).astype(np.float32)
        scale = value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 else None
        if scale is None or zero is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if np.ndim(scale) == 1 and w.ndim > 0:
            shape[axis] = -1
        q = np.round(w / scale.reshape(shape)) + zero.astype(np.float32).reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.clip(q, info.min, info.max).astype(zero.dtype)
        name = node.output[0]
        proto.graph.initializer.append(numpy_helper.from_array(q, name))
        remove.append(node)
        folded += 1
    for node in remove:
        proto.graph.node.remove(node)
    # Drop initializers nobody reads any more (the fp32 weights).
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    onnx.checker.check_model(proto)
    return folded


class QuantAwareTraining(Pass):
    """Fake-quant (U8 activations, S8 per-channel weights) fine-tuning; exports an int8 QDQ model."""

    name: ClassVar[str] = "quantize.qat"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "quantization-aware training exported as int8 QDQ (PTQ-compatible semantics)"

    def __init__(self, *, epochs: int = 2, lr: float = 1e-4, calibration_samples: int = 512):
        self.epochs = epochs
        self.lr = lr
        self.calibration_samples = calibration_samples

    @classmethod
    def search_space(cls):
        return {"epochs": IntRange(0, 5)}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ConfigError(f"{self.name}: parameter 'calibration_samples' must be an int >= 1; got {self.calibration_samples!r}")
        fine_tune_config(self.epochs, self.lr).validate()

    def run(self, model, ctx: PassContext) -> PassResult:
        import torch

        from ..data import fit_to_model
        from ..model import make_session
        from ..errors import DataError
        from ..torch_twin import example_input, to_torch
        from ..training import predict

        module = to_torch(model)
        wrappers = insert_fake_quant(module)
        if not wrappers:
            raise ConfigError(f"{self.name}: the model has no Conv/Linear layer to quantize")
        calib = ctx.calib or ctx.train or ctx.tune
        if calib is None:
            raise DataError(f"{self.name} needs calibration data for the activation ranges (PassContext.calib, train or tune)")
        calib = fit_to_model(calib, model)
        for w in wrappers:
            w.observing = True
        predict(module, calib.x[: self.calibration_samples].astype(np.float32))
        for w in wrappers:
            w.observing = False
        report = recover(module, model, ctx, fine_tune_config(self.epochs, self.lr, **ctx.options.get("fine_tune", {})))
        module.eval()
        for w in wrappers:
            w.freeze()
        proto = self._export(module, model, example_input(model, batch=2, seed=ctx.seed))
        folded = fold_weight_quantizers(proto)
        new = model.derive(proto, self.record(), torch_module=None)
        check = calib.x[: min(len(calib), 256)].astype(np.float32)
        fake = predict(module, check)
        reference = make_session(new.onnx_bytes, optimize=False).run(None, {model.inputs[0].name: check})[0]
        max_err = float(np.max(np.abs(fake - reference)))
        scale = max(1.0, float(np.max(np.abs(fake))))
        reference_agreement = float(np.mean(fake.argmax(-1) == reference.argmax(-1))) if fake.ndim == 2 else 1.0
        if max_err > TOLERANCE * scale or reference_agreement < MIN_AGREEMENT:
            raise VerificationError(
                f"{self.name}: the exported QDQ model (ONNX Runtime, QDQ ops run as written) deviates from the "
                f"fake-quant PyTorch model by {max_err:.3g} (tolerance {TOLERANCE:g} x {scale:.3g}), top-1 agreement "
                f"{reference_agreement:.4f} (need >= {MIN_AGREEMENT})")
        fused = new.predict(check)[0]
        agreement = float(np.mean(fake.argmax(-1) == fused.argmax(-1))) if fake.ndim == 2 and fake.shape[1] > 1 else 1.0
        return PassResult(new, {
            "quantized_layers": len(wrappers), "int8_weights": folded,
            "qdq_reference_max_abs": max_err, "qdq_reference_top1_agreement": reference_agreement,
            "ort_int8_kernels_top1_agreement": agreement,
            "ort_int8_kernels_max_abs": float(np.max(np.abs(fake - fused))),
            "activation_scales": [w.input_qparams()[0] for w in wrappers], "fine_tune": report.to_dict(),
        })

    @staticmethod
    def _export(module, model, example):
        import onnx
        import torch

        buffer = io.BytesIO()
        first = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else None
        input_names = [s.name for s in model.inputs]
        output_names = [s.name for s in model.outputs]
        dynamic = None if isinstance(first, int) else {n: {0: "batch"} for n in input_names + output_names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buffer, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)
        return onnx.load_from_string(buffer.getvalue())
