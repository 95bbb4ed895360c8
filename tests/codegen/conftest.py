"""Quantized MLPerf Tiny models for the codegen tests (ORT's static quantizer, calibration rows 0-499)."""

from __future__ import annotations

import numpy as np
import pytest



def _quantize(tmp_path_factory, fp32_path, calib, activation: str):
    from edgeopt.codegen.quantize_ref import quantize_qdq

    out = tmp_path_factory.mktemp("q") / f"{fp32_path.stem}_{activation}.onnx"
    quantize_qdq(fp32_path, calib, activation=activation, out_path=out)
    return out


@pytest.fixture(scope="session")
def kws_arrays(kws_data_path):
    with np.load(kws_data_path, allow_pickle=False) as d:
        return d["x"].astype(np.float32), d["y"].astype(np.int64)


@pytest.fixture(scope="session")
def cifar_arrays(cifar_path):
    with np.load(cifar_path, allow_pickle=False) as d:
        return d["x"].astype(np.float32), d["y"].astype(np.int64)


@pytest.fixture(scope="session", params=["int8", "uint8"])
def kws_q(request, tmp_path_factory, dscnn_path, kws_arrays):
    """DS-CNN KWS quantized with int8 and with uint8 activations (calibrated on rows 0-499)."""
    return _quantize(tmp_path_factory, dscnn_path, kws_arrays[0][:500], request.param)


@pytest.fixture(scope="session")
def kws_q_int8(tmp_path_factory, dscnn_path, kws_arrays):
    return _quantize(tmp_path_factory, dscnn_path, kws_arrays[0][:500], "int8")


@pytest.fixture(scope="session")
def ic_q_int8(tmp_path_factory, resnet8_path, cifar_arrays):
    return _quantize(tmp_path_factory, resnet8_path, cifar_arrays[0][:500], "int8")
