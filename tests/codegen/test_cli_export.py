"""`edgeopt export MODEL --format c`: JSON output, files written, typed errors."""

from __future__ import annotations

import json

from edgeopt.cli.main import run


def test_export_c_json(kws_q_int8, tmp_path, capsys):
    out = tmp_path / "kws"
    assert run(["export", str(kws_q_int8), "--format", "c", "--target", "cortex-m4", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arena_bytes"] == 16000
    assert result["verification"]["max_abs_lsb"] == 0
    # the Cortex-M firmware was linked and measured during the export
    assert result["firmware"]["measured"] and result["firmware"]["flash_bytes"] > 23_000
    assert (out / "model.c").is_file() and (out / "memory.json").is_file()


def test_export_rejects_unknown_format_and_target(kws_q_int8, tmp_path, capsys):
    assert run(["export", str(kws_q_int8), "--format", "tflite", "--out", str(tmp_path / "a")]) == 1
    assert "--format" in capsys.readouterr().err
    assert run(["export", str(kws_q_int8), "--format", "c", "--target", "avr", "--out", str(tmp_path / "b")]) == 1
    assert "--target" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bench_c_folder_reports_linked_sizes_and_instructions(kws_q_int8, tmp_path, capsys):
    out = tmp_path / "kws"
    assert run(["export", str(kws_q_int8), "--format", "c", "--target", "cortex-m4", "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert run(["bench", str(out), "--target", "cortex-m4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["arena_bytes"] == exported["arena_bytes"]
    assert result["flash_bytes"] == exported["firmware"]["flash_bytes"]
    assert result["instructions"] > 2_736_816  # DS-CNN does 2,736,816 MACs: at least one instruction each
    assert "not cycles" in result["instructions_note"]


def test_bench_rejects_folder_without_memory_json(tmp_path, capsys):
    assert run(["bench", str(tmp_path)]) == 1
    assert "memory.json" in capsys.readouterr().err
