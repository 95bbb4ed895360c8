"""`edgeopt optimize` / `edgeopt apply` end to end on the bundled KWS example (small row ranges: fast)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeopt.cli.main import run

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "kws" / "dscnn_kws12.onnx"
DATA = ROOT / "examples" / "kws" / "speech_commands_mfcc_1000.npz"
COMMON = ["--split", "calib=0:128,eval=128:448", "--techniques", "int8", "--goal", "size", "--bench-rounds", "1", "--quick"]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    code = run(["optimize", str(MODEL), "--data", str(DATA), "--max-drop", "2pt", "--out", str(out), *COMMON])
    assert code == 0
    return out


def test_optimize_writes_the_four_files(optimized):
    assert sorted(p.name for p in optimized.iterdir()) == ["model.onnx", "recipe.yaml", "report.html", "report.json"]
    report = json.loads((optimized / "report.json").read_text())
    assert report["chosen"]["size_bytes"] == (optimized / "model.onnx").stat().st_size
    html = (optimized / "report.html").read_text()
    assert "plotly" in html and "<script" in html and "cdn.plot.ly" not in html.split("<body>")[1][:200]
    assert "Per-layer precision" in html


def test_apply_reproduces_the_model_byte_for_byte(optimized, tmp_path, capsys):
    again = tmp_path / "again"
    code = run(["apply", str(MODEL), "--recipe", str(optimized / "recipe.yaml"), "--data", str(DATA), "--out", str(again), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    original = (optimized / "model.onnx").read_bytes()
    assert (again / "model.onnx").read_bytes() == original
    assert summary["sha256"] == hashlib.sha256(original).hexdigest()


def test_recipe_records_seed_and_calibration_rows(optimized):
    import yaml

    recipe = yaml.safe_load((optimized / "recipe.yaml").read_text())
    assert recipe["seed"] == 0
    assert recipe["data"]["splits"]["calib"] == [0, 128]
    assert recipe["data"]["calibration_rows"][0] == 0 and recipe["data"]["calibration_rows"][1] <= 128
    assert [s["pass"] for s in recipe["steps"]][0] == "fold"


def test_json_output_is_the_report(tmp_path, capsys):
    out = tmp_path / "o"
    code = run(["optimize", str(MODEL), "--data", str(DATA), "--max-drop", "3pt", "--out", str(out), "--json",
                "--split", "calib=0:64,eval=64:192", "--techniques", "fp16", "--goal", "size", "--bench-rounds", "1"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0
    assert report["chosen"]["name"] == "fp16"
    assert "_reference_eval_outputs" not in report


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "150%"], "--max-drop"),
    (["--metric", "nosuchmetric"], "unknown metric"),
    (["--y-key", "no_labels_here"], "needs labels"),
])
def test_bad_input_is_one_line_error_and_no_output(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    code = run(["optimize", str(MODEL), "--data", str(DATA), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_apply_without_the_data_says_which_rows(optimized, tmp_path, capsys):
    code = run(["apply", str(MODEL), "--recipe", str(optimized / "recipe.yaml"), "--out", str(tmp_path / "x")])
    assert code == 1
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unlabelled_autoencoder_gets_dynamic_int8_and_a_table_without_intervals(ad_path, tmp_path, capsys):
    """The MLPerf Tiny anomaly autoencoder (Gemm layers only) scored by output cosine, no labels: the
    optimizer offers dynamic int8, which needs no calibration coverage; cosine has no per-row
    interval, and the table says nothing rather than 'nan'."""
    import numpy as np

    import edgeopt
    from edgeopt.evaluation import evaluate

    data = tmp_path / "frames.npz"
    np.savez(data, x=np.random.default_rng(3).standard_normal((400, 640)).astype(np.float32))
    out = tmp_path / "out"
    capsys.readouterr()
    code = run(["optimize", str(ad_path), "--data", str(data), "--metric", "cosine", "--max-drop", "0.005",
                "--techniques", "int8", "--goal", "size", "--bench-rounds", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "nan" not in printed.lower()
    # a reconstruction has no classes: the table gives SQNR, not an argmax "agreement"
    assert "SQNR vs original" in printed and "agreement" not in printed
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"]["name"] == "int8-dynamic" and report["chosen"]["size_ratio"] < 0.3
    emitted = edgeopt.load(out / "model.onnx")
    assert "MatMulInteger" in {n.op_type for n in emitted.proto().graph.node} or \
        "DynamicQuantizeMatMul" in {n.op_type for n in emitted.proto().graph.node}
    rows = np.load(data)["x"][200:]
    measured = evaluate(emitted, rows, "cosine", reference=edgeopt.load(ad_path))
    assert measured.value == pytest.approx(report["chosen"]["eval"]["value"], abs=1e-6)


def test_an_already_quantized_model_is_refused_with_the_fix(tmp_path, capsys):
    """The MLPerf int8 reference .tflite imports as int8 weights behind DequantizeLinear: the error
    says so and names the fix, instead of claiming the model has no weighted layers."""
    from shared_data import shared

    out = tmp_path / "o"
    code = run(["optimize", str(shared("mlperf_tiny/kws/kws_ref_model.tflite")), "--data", str(DATA),
                "--out", str(out), *COMMON])
    err = capsys.readouterr().err
    assert code == 1 and "already quantized" in err and "float model" in err and "Traceback" not in err
    assert not out.exists()


def test_techniques_dynamic_adds_dynamic_int8_to_a_conv_net(tmp_path, capsys):
    """By default a conv net gets no dynamic candidate (only its dense head would convert);
    `--techniques dynamic` asks for it anyway: Conv stays float, the head is int8."""
    out = tmp_path / "o"
    code = run(["optimize", str(MODEL), "--data", str(DATA), "--max-drop", "2pt", "--out", str(out), "--json",
                "--split", "calib=0:128,eval=128:448", "--techniques", "dynamic", "--goal", "size", "--bench-rounds", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and [c["name"] for c in report["candidates"]] == ["int8-dynamic", "int8-dynamic-per-channel"]
    assert 0.5 < report["chosen"]["size_ratio"] < 1  # the 64x12 head in int8, convolutions float
    dynamic = next(s for s in report["chosen"]["stats"] if s["pass"] == "quantize.dynamic")
    assert len(dynamic["quantized_layers"]) == 1
