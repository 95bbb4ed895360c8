"""Cortex-M builds (arm-none-eabi-gcc) run under QEMU with semihosting: outputs equal the host build's."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.codegen import bench_c_dir, build_and_run, export_c


@pytest.fixture(scope="module")
def kws_export(kws_q_int8, kws_arrays, tmp_path_factory):
    out = tmp_path_factory.mktemp("kws_c")
    export_c(kws_q_int8, out, target="cortex-m4", samples=kws_arrays[0][500:516])
    return out


def test_cortex_m4_matches_host_and_reports_size_and_instructions(kws_export, kws_arrays):
    x = kws_arrays[0][500:502]
    host = build_and_run(kws_export, "host", x)
    m4 = build_and_run(kws_export, "cortex-m4", x)
    assert np.array_equal(host.outputs, m4.outputs)
    # flash holds the int8 weights (~23 KB for DS-CNN) plus code; RAM holds the 16,000-byte arena
    assert 23_000 < m4.flash_bytes < 64_000
    assert m4.ram_bytes >= 16_000
    assert m4.instructions > 2_000_000  # at least one instruction per multiply-accumulate


def test_bench_c_dir_gives_the_bench_figures(kws_export):
    figures = bench_c_dir(kws_export, "cortex-m4")
    assert figures["arena_bytes"] == 16000
    assert figures["instructions"] > 0 and "not cycles" in figures["instructions_note"]
    # deterministic: the icount-based figure does not change between runs
    assert bench_c_dir(kws_export, "cortex-m4")["instructions"] == figures["instructions"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_ic_on_cortex_m_matches_host(ic_q_int8, cifar_arrays, tmp_path, target):
    out = tmp_path / "c"
    export_c(ic_q_int8, out, target=target, samples=cifar_arrays[0][500:516])
    x = cifar_arrays[0][500:503]
    assert np.array_equal(build_and_run(out, "host", x).outputs, build_and_run(out, target, x).outputs)


@pytest.mark.slow
def test_kws_on_cortex_m7_matches_host(kws_export, kws_arrays):
    x = kws_arrays[0][600:603]
    assert np.array_equal(build_and_run(kws_export, "host", x).outputs, build_and_run(kws_export, "cortex-m7", x).outputs)
