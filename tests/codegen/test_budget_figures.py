"""MCU budgets are checked on the generated code's real numbers: the planner's arena and the linker's sizes."""

from __future__ import annotations

import json

import pytest

from edgeopt.codegen import c_budget_figures
from edgeopt.errors import UnsupportedModelError
from edgeopt.cli.main import run


def test_budget_figures_equal_the_exported_firmware(kws_q_int8, tmp_path, capsys):
    figures = c_budget_figures(kws_q_int8, "cortex-m4")
    assert run(["export", str(kws_q_int8), "--format", "c", "--target", "cortex-m4", "--out", str(tmp_path / "c"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert figures["arena_bytes"] == exported["arena_bytes"]
    assert figures["flash_bytes"] == exported["firmware"]["flash_bytes"]
    assert figures["ram_bytes"] == exported["firmware"]["ram_bytes"]
    # RAM holds at least the activation arena; flash at least the constants
    assert figures["ram_bytes"] >= figures["arena_bytes"] and figures["flash_bytes"] > figures["constants_bytes"]
    assert "arm-none-eabi-size" in figures["source"]


def test_budget_figures_refuse_a_float_model(dscnn_path):
    with pytest.raises(UnsupportedModelError):
        c_budget_figures(dscnn_path, "cortex-m7")
