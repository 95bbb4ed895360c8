"""Export real quantized models to C, build with the host gcc (-Werror), compare with ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeopt.codegen import build_and_run, export_c
from edgeopt.codegen.api import compare_lsb, reference_int8
from edgeopt.codegen.lower import lower

EVAL = slice(500, 700)  # never the calibration rows 0-499


def test_kws_export_is_bit_exact_with_ort_integer_kernels(kws_q, kws_arrays, tmp_path):
    x, y = kws_arrays[0][EVAL], kws_arrays[1][EVAL]
    exp = export_c(kws_q, tmp_path / "c", target="host", samples=x[:16])
    assert exp.verification["max_abs_lsb"] == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(exp.files)
    mem = json.loads((tmp_path / "c" / "memory.json").read_text())
    assert mem["arena_bytes"] == exp.arena_bytes == 16000
    assert mem["peak_op"].startswith("conv")

    ours = build_and_run(tmp_path / "c", "host", x).outputs
    proto = onnx.load(str(kws_q))
    lowered = lower(proto)
    exact = compare_lsb(ours, reference_int8(proto, lowered, x, integer_kernels=True))
    assert exact["max_abs_lsb"] == 0, exact
    default = reference_int8(proto, lowered, x)  # ORT's default session (int8: partly float kernels)
    assert compare_lsb(ours, default)["max_abs_lsb"] <= 1
    # the task accuracy is ORT's, sample for sample
    assert np.array_equal(ours.argmax(1), default.argmax(1))
    assert (ours.argmax(1) == y).mean() > 0.85


def test_sanitizers_find_nothing(kws_q_int8, kws_arrays, tmp_path):
    export_c(kws_q_int8, tmp_path / "c", target="host", verify=False)
    x = kws_arrays[0][EVAL][:3]
    plain = build_and_run(tmp_path / "c", "host", x).outputs
    checked = build_and_run(tmp_path / "c", "host", x, sanitize=True).outputs  # -fsanitize=address,undefined
    assert np.array_equal(plain, checked)


def test_generated_code_has_no_malloc_and_const_weights(kws_q_int8, tmp_path):
    export_c(kws_q_int8, tmp_path / "c", target="cortex-m4", verify=False)
    code = (tmp_path / "c" / "model.c").read_text() + (tmp_path / "c" / "edgeopt_kernels.c").read_text()
    assert "malloc(" not in code and "free(" not in code
    assert "static const int8_t op1_w[" in code
    assert code.count("static union") == 1  # one arena


@pytest.mark.slow
def test_kws_full_evaluation_accuracy_equals_ort(kws_q_int8, kws_arrays, tmp_path):
    x, y = kws_arrays[0][500:], kws_arrays[1][500:]  # rows 500-4889
    export_c(kws_q_int8, tmp_path / "c", target="host", samples=x[:16])
    ours = build_and_run(tmp_path / "c", "host", x).outputs
    proto = onnx.load(str(kws_q_int8))
    lowered = lower(proto)
    assert compare_lsb(ours, reference_int8(proto, lowered, x, integer_kernels=True))["max_abs_lsb"] == 0
    ort = reference_int8(proto, lowered, x)
    assert (ours.argmax(1) == y).mean() == (ort.argmax(1) == y).mean()


@pytest.mark.slow
def test_ic_evaluation_accuracy_equals_ort(ic_q_int8, cifar_arrays, tmp_path):
    x, y = cifar_arrays[0][500:], cifar_arrays[1][500:]  # rows 500-999
    export_c(ic_q_int8, tmp_path / "c", target="host", samples=x[:16])
    ours = build_and_run(tmp_path / "c", "host", x).outputs
    proto = onnx.load(str(ic_q_int8))
    lowered = lower(proto)
    assert compare_lsb(ours, reference_int8(proto, lowered, x, integer_kernels=True))["max_abs_lsb"] == 0
    ort = reference_int8(proto, lowered, x)
    assert (ours.argmax(1) == y).mean() == (ort.argmax(1) == y).mean()
    assert (ours.argmax(1) == y).mean() > 0.8
