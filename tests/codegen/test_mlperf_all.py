"""All four MLPerf Tiny models: export, host bit-exactness vs ORT integer kernels, Cortex-M4/M7 equal host."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeopt.codegen import build_and_run, export_c
from edgeopt.codegen.api import compare_lsb, reference_int8
from edgeopt.codegen.lower import lower
from edgeopt.codegen.quantize_ref import log_mel_frames, mlperf_calibration, quantize_qdq


@pytest.fixture(scope="module")
def shared_root(ad_path):
    return ad_path.parents[2]  # ../shared/data (the fixture already failed if it is missing)


@pytest.fixture(scope="module")
def ad_arrays(shared_root, kws_data_path):
    with np.load(shared_root / "datasets/speech_commands_test_v0.02_10perclass_int16.npz", allow_pickle=False) as d:
        frames = log_mel_frames(d["audio"])
    assert len(frames) >= 520
    return frames  # rows 0-499 calibrate; rows from 500 on check


def test_anomaly_detector_runs_on_cortex_m4_like_host(ad_path, ad_arrays, tmp_path):
    q = tmp_path / "ad_int8.onnx"
    quantize_qdq(ad_path, ad_arrays[:500], activation="int8", out_path=q)
    exp = export_c(q, tmp_path / "c", target="cortex-m4", samples=ad_arrays[500:516])
    assert exp.verification["max_abs_lsb"] == 0
    assert exp.arena_bytes == 640 + 128  # the widest layer's input and output, nothing else
    x = ad_arrays[500:502]
    host = build_and_run(tmp_path / "c", "host", x)
    m4 = build_and_run(tmp_path / "c", "cortex-m4", x)
    assert np.array_equal(host.outputs, m4.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_vww_exports_bit_exact_and_runs_on_cortex_m(vww_path, shared_root, tmp_path, activation):
    calib = mlperf_calibration("vww", shared_root)
    q = tmp_path / "vww.onnx"
    quantize_qdq(vww_path, calib[:100], activation=activation, out_path=q)
    x = calib[400:432]
    exp = export_c(q, tmp_path / "c", target="cortex-m4", samples=x)
    assert exp.verification["max_abs_lsb"] == 0
    proto = onnx.load(str(q))
    ours = build_and_run(tmp_path / "c", "host", x).outputs
    assert compare_lsb(ours, reference_int8(proto, lower(proto), x, integer_kernels=True))["max_abs_lsb"] == 0
    for target in ("cortex-m4", "cortex-m7"):
        assert np.array_equal(ours[:1], build_and_run(tmp_path / "c", target, x[:1]).outputs)
