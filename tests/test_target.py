"""Targets: bundled profiles parse and validate, user YAML files work, bad YAML names the field,
estimates are labelled and follow the cost/energy models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.errors import ConfigError
from edgeopt.target import Target, bundled_target_files, parse_size

ROOT = Path(__file__).resolve().parents[1]

BUNDLED = ["cortex-m4", "cortex-m7", "host", "jetson-orin-nano", "rpi4", "x86-avx512"]


def test_every_bundled_target_parses():
    assert sorted(bundled_target_files()) == BUNDLED
    for name in BUNDLED:
        t = Target.parse(name)
        assert t.name == name
        assert t.runtime in ("onnxruntime", "c")
        assert set(t.dtypes) <= set(t.cost.macs_per_second)


def test_microcontroller_budgets_as_specified():
    m4, m7 = Target.parse("cortex-m4"), Target.parse("cortex-m7")
    assert (m4.ram_bytes, m4.storage_bytes) == (256 * 1024, 1024 * 1024)
    assert (m7.ram_bytes, m7.storage_bytes) == (512 * 1024, 2 * 1024 * 1024)
    assert m4.runtime == m7.runtime == "c"
    assert Target.parse("host").measures_latency and not m7.measures_latency


def test_target_is_frozen():
    t = Target.parse("rpi4")
    with pytest.raises(Exception):
        t.threads = 2  # type: ignore[misc]
    assert Target.parse(t) is t


def test_latency_estimate_follows_cost_model_and_is_labelled():
    m7 = Target.parse("cortex-m7")
    est = m7.estimate_latency({"int8": 3.24e8}, bytes_moved=0)
    assert est.method == "estimated" and est.unit == "ms"
    assert est.value == pytest.approx(1000.0)  # one second of int8 MACs at the stated rate
    # in-order MCU: compute and memory time add up
    both = m7.estimate_latency({"int8": 3.24e8}, bytes_moved=4.32e8)
    assert both.value == pytest.approx(2000.0)
    # out-of-order core: roofline max
    pi = Target.parse("rpi4")
    assert pi.estimate_latency({"fp32": 1.2e10}, bytes_moved=4.5e9).value == pytest.approx(1000.0)
    # int8 is faster than fp32 for the same work on every bundled target
    for name in BUNDLED:
        t = Target.parse(name)
        assert t.estimate_latency({"int8": 1e6}, 0).value < t.estimate_latency({"fp32": 1e6}, 0).value


def test_energy_estimate_uses_horowitz_figures():
    m4 = Target.parse("cortex-m4")
    e = m4.estimate_energy({"int8": 1_000_000}, bytes_moved=4000)
    # 1e6 MACs x (0.2 pJ int8 mult + 0.1 pJ int32 add) + 1000 words x 5 pJ SRAM = 305,000 pJ
    assert e.value == pytest.approx(0.305)
    assert e.unit == "uJ" and e.method == "estimated" and "Horowitz" in e.basis
    fp32 = m4.estimate_energy({"fp32": 1_000_000}, 0).value
    assert fp32 == pytest.approx(4.6)  # 3.7 + 0.9 pJ per MAC
    dram = Target.parse("rpi4").estimate_energy({}, bytes_moved=4).value
    assert dram == pytest.approx(640e-6)


def test_unsupported_dtype_in_estimate_is_config_error():
    with pytest.raises(ConfigError, match="fp16"):
        Target.parse("cortex-m4").estimate_latency({"fp16": 10}, 0)


def test_user_yaml_file(tmp_path):
    path = tmp_path / "my_board.yaml"
    path.write_text(
        "runtime: c\ndtypes: [int8]\nram_bytes: 64 KiB\nstorage_bytes: 0.5 MiB\n"
        "cost: {macs_per_second: {int8: 1.0e7}, memory_bandwidth_bytes_per_s: 5.0e7, overlap_compute_and_memory: false}\n"
        "energy: {memory: sram}\n"
    )
    t = Target.parse(str(path))
    assert t.name == "my_board"
    assert t.ram_bytes == 65536 and t.storage_bytes == 524288
    assert t.source == str(path)


@pytest.mark.parametrize(
    "body, field",
    [
        ("runtime: tensorrt\ndtypes: [int8]\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: 1}\n", "runtime"),
        ("runtime: c\ndtypes: [int8]\nram_bytes: lots\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: 1}\n", "ram_bytes"),
        ("runtime: c\ndtypes: [int7]\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: 1}\n", "dtypes"),
        ("runtime: c\ndtypes: [int8, fp32]\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: 1}\n", "fp32"),
        ("runtime: c\ndtypes: [int8]\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: -3}\n", "memory_bandwidth"),
        ("runtime: c\ndtypes: [int8]\nthreds: 2\ncost: {macs_per_second: {int8: 1}, memory_bandwidth_bytes_per_s: 1}\n", "threds"),
        ("runtime: c\ndtypes: [int8]\n", "cost"),
        ("runtime: [c\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=field):
        Target.parse(path)


def test_unknown_name_lists_bundled_targets():
    with pytest.raises(ConfigError, match="cortex-m7"):
        Target.parse("cortex-m99")
    with pytest.raises(ConfigError, match="does not exist"):
        Target.parse("nowhere/board.yaml")


def test_parse_size():
    assert parse_size("256 KiB") == 262144
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size(12) == 12
    with pytest.raises(ValueError):
        parse_size("big")


def test_headroom():
    m4 = Target.parse("cortex-m4")
    assert m4.headroom(ram_bytes=200 * 1024, storage_bytes=2 * 1024 * 1024) == {"ram": 56 * 1024, "storage": -1024 * 1024}
    assert Target.parse("host").headroom(ram_bytes=1, storage_bytes=1) == {"ram": None, "storage": None}


def test_cli_targets_json():
    env = {"PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "edgeopt", "targets", "--json"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == BUNDLED
    table = subprocess.run([sys.executable, "-m", "edgeopt", "targets"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=60)
    assert table.returncode == 0 and "cortex-m7" in table.stdout and "512.0 KiB" in table.stdout


def test_microcontroller_ops_are_what_the_c_generator_compiles():
    from edgeopt.codegen.lower import SUPPORTED_OPS

    for name in ("cortex-m4", "cortex-m7"):
        t = Target.parse(name)
        assert sorted(t.ops) == sorted(SUPPORTED_OPS) and t.dtypes == ("int8",)
