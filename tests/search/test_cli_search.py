"""`edgeopt search` (alias of `edgeopt optimize --target`) end to end (in process, so the test passes can be registered): JSON output,
and exit code 2 with the budget named and the report written when nothing fits the target."""

from __future__ import annotations

import json

import pytest

from edgeopt.cli.main import run
from edgeopt.cli.cmd_search import parse_duration
from edgeopt.errors import ConfigError
from edgeopt.passes import base
from _passes import TEST_PASSES


@pytest.fixture
def registered(monkeypatch):
    base.available_passes()   # discover the project's own passes first
    for cls in TEST_PASSES:
        monkeypatch.setitem(base._REGISTRY, cls.name, cls)


def _args(dscnn_path, kws_data_path, out, target):
    return ["search", str(dscnn_path), "--data", str(kws_data_path), "--split", "tune=0:300,calib=300:500,eval=500:800",
            "--target", target, "--techniques", "quantize.dynamic_int8,prune.threshold", "--max-drop", "5%",
            "--trials", "4", "--sampler", "random", "--out", str(out)]


def test_search_command_json(registered, dscnn_path, kws_data_path, tmp_path, capsys):
    code = run(_args(dscnn_path, kws_data_path, tmp_path / "out", "rpi4") + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)["search"]
    assert data["target"]["name"] == "rpi4" and data["objectives"] == ["latency", "size"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in data["trials"]) == 4
    assert data["best"] in data["pareto"]
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"study.db", "model.onnx", "recipe.yaml", "report.json", "report.html"} <= written
    # the same study continues with --resume (and refuses to be overwritten without it)
    assert run(_args(dscnn_path, kws_data_path, tmp_path / "out", "rpi4")) == 1
    assert "resume" in capsys.readouterr().err


def test_search_command_budget_nobody_meets_exits_2(registered, dscnn_path, kws_data_path, tmp_path, capsys):
    board = tmp_path / "watch.yaml"
    board.write_text("runtime: c\ndtypes: [int8, fp32]\nram_bytes: 8 KiB\nstorage_bytes: 512 KiB\n"
                     "cost: {macs_per_second: {int8: 1.0e8, fp32: 2.0e7}, memory_bandwidth_bytes_per_s: 1.0e8}\n")
    code = run(_args(dscnn_path, kws_data_path, tmp_path / "out", str(board)))
    err = capsys.readouterr().err
    assert code == 2
    assert "BudgetError" in err and "RAM budget of watch (8.0 KiB)" in err and "the closest, trial" in err
    assert (tmp_path / "out" / "report.html").is_file() and not (tmp_path / "out" / "model.onnx").exists()


def test_parse_duration():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    for bad in ("soon", "5x", "-3", "0"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_a_held_out_drop_over_the_budget_is_a_warning_naming_the_remedy():
    from edgeopt.cli.cmd_optimize import held_out_warning

    # ResNet-8, study ic11: picked at -0.8 pt on 250 tune rows under --drop-bound estimate, +4.4 pt held out
    missed = {"drop": 0.044, "max_drop": 0.01, "within_budget": False}
    assert held_out_warning({**missed, "within_budget": True}, "estimate") is None
    text = held_out_warning(missed, "estimate")
    assert "0.0440 is over --max-drop 0.01" in text and "--drop-bound upper" in text
    assert "--drop-bound" not in held_out_warning(missed, "upper")
