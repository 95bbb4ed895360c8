"""Run NNCF's post-training quantization on an ONNX model (executed by ptq_vs_peers.py in its own venv).

Usage: python _nncf_quantize.py MODEL.onnx CALIB.npy OUT.onnx
NNCF lives in a separate virtualenv (/work/venv-nncf) so it can never pull torch into the main one.
"""

import sys

import numpy as np
import onnx

import nncf

model_path, calib_path, out_path = sys.argv[1:4]
model = onnx.load(model_path)
input_name = model.graph.input[0].name
x = np.load(calib_path, allow_pickle=False)
dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))], lambda item: {input_name: item})
quantized = nncf.quantize(model, dataset, subset_size=len(x))
onnx.save(quantized, out_path)
print("nncf", nncf.__version__)
