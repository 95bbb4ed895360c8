"""The integer requantization reproduces ORT's float32 multiply-and-round exactly (C vs numpy float32)."""

from __future__ import annotations

import subprocess
from importlib import resources

import numpy as np

from edgeopt.codegen.lower import float_to_mant_exp

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "edgeopt_kernels.h"
int main(void) {
    static int32_t bias[N], mant[N]; static int8_t expo[N], out[N], w[N];
    int8_t x = 0; int i; long b, m, e;
    for (i = 0; i < N; ++i) { if (scanf("%ld %ld %ld", &b, &m, &e) != 3) return 2;
        bias[i] = (int32_t)b; mant[i] = (int32_t)m; expo[i] = (int8_t)e; w[i] = 1; }
    eo_gemm(&x, 1, 1, N, 0, w, bias, out, mant, expo, -3, -128, 127);  /* x = 0: y = requant(bias) */
    for (i = 0; i < N; ++i) printf("%d\n", out[i]);
    return 0;
}
"""


def test_requantization_matches_float32_reference(tmp_path):
    rng = np.random.default_rng(1)
    n = 4000
    scales = (rng.uniform(0.5, 1.0, n) * 2.0 ** rng.integers(-30, -2, n)).astype(np.float32)
    acc = rng.integers(-(2**31) + 1, 2**31 - 1, n, dtype=np.int64)
    acc[: n // 2] = rng.integers(-(2**20), 2**20, n // 2)  # the usual range
    acc[:8] = [0, 1, -1, 2**24 + 1, -(2**24) - 3, 2**31 - 1, -(2**31) + 1, 123456789]
    # ties: acc * scale exactly k + 0.5
    scales[8:16] = np.float32(0.5)
    acc[8:16] = [1, 3, 5, -1, -3, 7, 255, -255]
    mant, expo = float_to_mant_exp(scales)
    src = resources.files("edgeopt.codegen").joinpath("runtime")
    (tmp_path / "model_config.h").write_text("#define EO_ACT_SIGNED 1\n")
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-ffp-contract=off", f"-DN={n}",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(tmp_path), "-I", str(src), str(tmp_path / "driver.c"), str(src / "edgeopt_kernels.c"),
                    "-o", str(exe), "-lm"], check=True)
    stdin = "\n".join(f"{a} {m} {e}" for a, m, e in zip(acc, mant, expo))
    got = np.array(subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.split(), int)
    # ORT: float(acc) * scale in float32, clamp, round half to even, + zero point
    prod = acc.astype(np.float32) * scales
    want = np.clip(np.rint(prod.astype(np.float64)) - 3, -128, 127)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:10]
