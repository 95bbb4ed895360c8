"""Run Intel Neural Compressor's post-training quantization on an ONNX model (executed by ptq_vs_peers.py in its own venv).

Usage: python _inc_quantize.py MODEL.onnx CALIB.npy OUT.onnx
INC lives in a separate virtualenv (/work/venv-inc) with its own pins: 3.7.1 is the last release with the
ONNX Runtime path, and it breaks on onnx >= 1.19 (misleading "no config met the accuracy goal"). It needs
numpy < 2 and does not need torch (it must never pull torch in). The venv recipe:

    python3.11 -m venv /work/venv-inc
    /work/venv-inc/bin/pip install neural-compressor==3.7.1 onnx==1.17.0 onnxruntime==1.20.1 "numpy<2" six

(six is imported by neural_compressor.data but not declared; this resolved numpy 1.26.4 and protobuf 7.36.2,
and pulled in no torch.) The call is INC's 2.x-style API, ``neural_compressor.quantization.fit`` with
``PostTrainingQuantConfig(approach="static")`` and its defaults: backend "default" (ONNX Runtime CPU),
quant_format "default" (QOperator: QLinearConv etc.), quant_level "auto"; that gives U8S8 with per-channel
int8 weights. The one change is ``calibration_sampling_size``, set to all the given rows (default 100) as
NNCF's subset_size is. No eval_func / eval_dataloader is given, so INC quantizes once with its default
recipe: no accuracy-driven tuning loop, and it never sees the evaluation rows.
"""

import sys

import numpy as np
import onnx

import neural_compressor
from neural_compressor import PostTrainingQuantConfig, quantization
from neural_compressor.data import DataLoader


class CalibRows:
    """Map-style dataset of (row, dummy label); INC's DataLoader batches rows into N x ... arrays."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


model_path, calib_path, out_path = sys.argv[1:4]
model = onnx.load(model_path)
x = np.load(calib_path, allow_pickle=False).astype(np.float32)
loader = DataLoader(framework="onnxruntime", dataset=CalibRows(x), batch_size=1)
conf = PostTrainingQuantConfig(approach="static", calibration_sampling_size=[len(x)])
quantized = quantization.fit(model, conf, calib_dataloader=loader)
if quantized is None:
    raise SystemExit("neural_compressor.quantization.fit returned no model")
onnx.save(quantized.model, out_path)
print("neural-compressor", neural_compressor.__version__)
