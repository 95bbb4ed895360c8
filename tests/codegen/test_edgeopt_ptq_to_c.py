"""The int8 model edgeopt's own PTQ pass emits (fold -> quantize.int8, QDQ) compiles to C bit-exactly."""

from __future__ import annotations

import numpy as np

from edgeopt.codegen import export_c
from edgeopt.passes import PassContext, make_pass


def test_edgeopt_quantized_dscnn_exports_to_c_bit_exact(dscnn, kws_data, tmp_path):
    ctx = PassContext(calib=kws_data.take(0, 500))
    folded = make_pass("fold", {})(dscnn, ctx).model
    quantized = make_pass("quantize.int8", {"samples": 128, "format": "qdq"})(folded, ctx).model
    result = export_c(quantized, tmp_path / "c", target="host", samples=kws_data.x[500:532].astype(np.float32))
    assert result.verification["max_abs_lsb"] == 0 and result.verification["samples"] == 32
    assert result.arena_bytes == 16_000   # int8 activations: a quarter of the fp32 peak (64,000 B)
    assert (tmp_path / "c" / "model.c").is_file()
