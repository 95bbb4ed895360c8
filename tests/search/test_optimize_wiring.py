"""`edgeopt.optimize(..., target=...)` / `edgeopt optimize --target` runs the search and writes a
checked model (DS-CNN on a small Speech Commands subset, a handful of trials: fast)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

import edgeopt
from edgeopt.cli.main import run
from edgeopt.errors import BudgetError

SPLITS = "calib=0:200,tune=200:600,eval=600:1000"


@pytest.fixture(scope="module")
def searched(dscnn_path, kws_data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "out"
    result = edgeopt.optimize(dscnn_path, data=kws_data_path, target="rpi4", max_drop=0.02, trials=4, splits=SPLITS,
                              techniques="fold,quantize.int8", sampler="random", out=out, progress=False)
    return result, out


def test_writes_the_model_recipe_and_report_with_the_pareto_front(searched):
    result, out = searched
    assert {"model.onnx", "recipe.yaml", "report.json", "report.html", "study.db"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "search"
    assert report["pareto"] == [t.number for t in result.pareto] and report["pareto"]
    assert report["chosen"]["trial"] == result.best.number in report["pareto"]
    assert report["held_out"]["rows"] == [600, 1000] and report["held_out"]["samples"] == 400
    assert report["data"]["splits"] == {"calib": [0, 200], "tune": [200, 600], "eval": [600, 1000]}
    html = (out / "report.html").read_text()
    assert "pareto-plot" in html and "Held-out check" in html


def test_the_chosen_model_passes_the_constraints(searched):
    result, out = searched
    best = result.best
    assert best.feasible and all(c <= 0 for c in best.constraints)
    assert best.metrics.metric_drop <= 0.02
    target = result.search.target
    assert target.ram_bytes is None or best.metrics.ram_bytes <= target.ram_bytes
    # the written file is the searched candidate: same bytes as the size the search measured
    assert (out / "model.onnx").stat().st_size == best.metrics.size_bytes == result.model.size_bytes
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert [s["pass"] for s in recipe["steps"]] == best.steps
    assert recipe["data"]["context"] == "search" and recipe["data"]["target"]["name"] == "rpi4"


def test_apply_rebuilds_the_searched_model_byte_for_byte(searched, dscnn_path, kws_data_path, tmp_path, capsys):
    _, out = searched
    code = run(["apply", str(dscnn_path), "--recipe", str(out / "recipe.yaml"), "--data", str(kws_data_path),
                "--out", str(tmp_path / "again"), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def test_report_re_renders_from_the_study(searched, capsys):
    _, out = searched
    (out / "report.html").unlink()
    assert run(["report", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (out / "report.html").is_file() and info["trials"] == 4
    assert "Held-out check" in (out / "report.html").read_text()   # kept in the study beside the trials


def test_nothing_fits_exits_2_naming_the_budget_with_the_report_written(dscnn_path, kws_data_path, tmp_path, capsys):
    board = tmp_path / "tiny.yaml"
    board.write_text("runtime: c\ndtypes: [int8, fp32]\nram_bytes: 8 KiB\nstorage_bytes: 512 KiB\n"
                     "cost: {macs_per_second: {int8: 1.0e8, fp32: 2.0e7}, memory_bandwidth_bytes_per_s: 1.0e8}\n")
    out = tmp_path / "out"
    code = run(["optimize", str(dscnn_path), "--data", str(kws_data_path), "--split", SPLITS, "--target", str(board),
                "--trials", "2", "--techniques", "fold", "--max-drop", "2pt", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "RAM budget of tiny (8.0 KiB)" in err and "the closest, trial" in err
    assert (out / "report.html").is_file() and not (out / "model.onnx").exists()
    assert json.loads((out / "report.json").read_text())["chosen"] is None


def test_api_raises_budget_error_with_the_outcome(dscnn_path, kws_data_path, tmp_path):
    board = tmp_path / "tiny.yaml"
    board.write_text("runtime: c\ndtypes: [int8, fp32]\nram_bytes: 8 KiB\nstorage_bytes: 512 KiB\n"
                     "cost: {macs_per_second: {int8: 1.0e8, fp32: 2.0e7}, memory_bandwidth_bytes_per_s: 1.0e8}\n")
    with pytest.raises(BudgetError) as info:
        edgeopt.optimize(dscnn_path, data=kws_data_path, target=str(board), trials=1, splits=SPLITS, techniques="fold",
                         progress=False)
    assert info.value.result.best is None and info.value.result.pareto == []
