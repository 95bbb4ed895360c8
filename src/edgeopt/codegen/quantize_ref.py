"""Reference int8 QDQ quantization used until edgeopt's own PTQ pass lands.

Kept in one function so it can be swapped for ``edgeopt``'s pass without touching the generator:
the generator only needs *some* int8 QDQ ONNX graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def quantize_qdq(model_path: str | os.PathLike, calib_inputs: np.ndarray, *, activation: str = "int8",
                 out_path: str | os.PathLike | None = None) -> bytes:
    """Quantize an fp32 ONNX model to int8 QDQ with ONNX Runtime's static quantizer.

    Weights are per-channel QInt8; activations are QInt8 (``activation="int8"``) or QUInt8
    (``"uint8"``). ``calib_inputs`` is an array of calibration samples (first axis = sample).
    Returns the quantized model's bytes (and writes them to ``out_path`` if given).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    act_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation]
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    calib = np.asarray(calib_inputs, dtype=np.float32)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory(prefix="edgeopt-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "q.onnx"
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=act_type)
        data = out.read_bytes()
    if out_path is not None:
        from .._io import write_bytes_atomic

        write_bytes_atomic(out_path, data)
    return data
