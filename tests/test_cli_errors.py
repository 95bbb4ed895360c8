"""Malformed inputs: each gives a typed error, exit code 1, a one-line message, and writes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.cli.main import run
from edgeopt.errors import DataError, EdgeOptError, ModelLoadError
from shared_data import shared


def _evaluate(tmp_path, model, data, *extra):
    out = tmp_path / "result.json"
    code = run(["evaluate", str(model), "--data", str(data), "--out", str(out), *extra])
    return code, out


def _assert_clean_failure(code, out, capsys, *words):
    err = capsys.readouterr().err
    assert code == 1
    assert not out.exists(), "a failed command must not leave an output file"
    assert [p for p in out.parent.iterdir() if p.name.startswith(".result")] == [], "temporary file left behind"
    assert "Traceback" not in err
    assert err.strip().startswith("error:")
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


def test_truncated_onnx(tmp_path, resnet8_path, cifar_path, capsys):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(resnet8_path.read_bytes()[:50_000])
    with pytest.raises(ModelLoadError):
        edgeopt.load(bad)
    code, out = _evaluate(tmp_path, bad, cifar_path)
    _assert_clean_failure(code, out, capsys, "ModelLoadError", "truncated.onnx")


def test_text_file_named_onnx(tmp_path, cifar_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model, just some notes\n" * 20)
    with pytest.raises(ModelLoadError):
        edgeopt.load(bad)
    code, out = _evaluate(tmp_path, bad, cifar_path)
    _assert_clean_failure(code, out, capsys, "ModelLoadError", "not a valid ONNX model")


def test_zero_byte_model(tmp_path, cifar_path, capsys):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        edgeopt.load(bad)
    code, out = _evaluate(tmp_path, bad, cifar_path)
    _assert_clean_failure(code, out, capsys, "empty")


def test_npz_missing_key(tmp_path, resnet8_path, capsys):
    # no 'x' and two other arrays, neither named like the model's input: which one feeds it is unknown
    data = tmp_path / "data.npz"
    np.savez(data, images=np.zeros((4, 32, 32, 3), np.float32), masks=np.zeros((4, 32, 32, 3), np.float32),
             y=np.zeros(4, np.int64))
    code, out = _evaluate(tmp_path, resnet8_path, data)
    _assert_clean_failure(code, out, capsys, "DataError", "images", "masks", "--x-key")


def test_npz_with_one_unnamed_input_array_is_used(tmp_path, resnet8_path, capsys):
    data = tmp_path / "data.npz"
    x = np.load(shared("datasets/cifar10_test_first1000.npz"))["x"][:8].astype(np.float32)
    np.savez(data, images=x, y=np.zeros(8, np.int64))
    assert run(["evaluate", str(resnet8_path), "--data", str(data), "--metric", "agreement",
                "--reference", str(resnet8_path)]) == 0
    assert "1.0000" in capsys.readouterr().out


def test_wrong_shape_names_both_sides(tmp_path, resnet8_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4, np.int64))
    code, out = _evaluate(tmp_path, resnet8_path, data)
    _assert_clean_failure(code, out, capsys, "DataError", "(3, 32, 32)", "32, 32, 3", "nchw->nhwc")


def _model_with_external_data(folder, location: str):
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    weight.ClearField("raw_data")
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=k, value=v)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_external_data_path_traversal_is_refused(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    inner = tmp_path / "models"
    inner.mkdir()
    path = _model_with_external_data(inner, "../secret.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        edgeopt.load(path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((2, 2), np.float32), y=np.zeros(2, np.int64))
    code, out = _evaluate(tmp_path, path, data)
    _assert_clean_failure(code, out, capsys, "outside the model's folder")


def test_external_data_inside_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = _model_with_external_data(tmp_path, "w.bin")
    model = edgeopt.load(path)
    (y,) = model.run(np.ones((1, 2), np.float32))
    np.testing.assert_allclose(y, [[2.0, 4.0]])


def test_absolute_external_data_path_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
    path = _model_with_external_data(tmp_path, str((tmp_path / "w.bin").resolve()))
    with pytest.raises(ModelLoadError):
        edgeopt.load(path)


def test_pickled_checkpoint_is_refused_not_unpickled(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"\x80\x04 this would be a pickle")
    with pytest.raises(ModelLoadError, match="never unpickles"):
        edgeopt.load(ckpt)


def test_debug_flag_shows_traceback(tmp_path, cifar_path):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    with pytest.raises(EdgeOptError):
        run(["--debug", "evaluate", str(bad), "--data", str(cifar_path)])


def test_label_metric_without_labels(tmp_path, resnet8_path, capsys):
    data = tmp_path / "nolabels.npz"
    np.savez(data, x=np.zeros((4, 32, 32, 3), np.float32))
    code, out = _evaluate(tmp_path, resnet8_path, data)
    _assert_clean_failure(code, out, capsys, "needs labels", "agreement")
    assert issubclass(DataError, ValueError)


def test_unknown_drop_bound_is_refused_before_any_work(tmp_path, resnet8_path, cifar_path, capsys):
    out = tmp_path / "out"
    code = run(["optimize", str(resnet8_path), "--data", str(cifar_path), "--target", "cortex-m7",
                "--drop-bound", "lower", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.strip().startswith("error:")
    assert "--drop-bound must be one of ['upper', 'estimate']" in err and "'lower'" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["optimize", "m.onnx", "--data", "d.npz", "--bogus"], ["No such option: --bogus"]),
    (["optimize", "m.onnx", "--data", "d.npz", "--max-drop"], ["'--max-drop' requires an argument"]),
    (["nosuchcommand"], ["No such command 'nosuchcommand'"]),
])
def test_usage_errors_are_a_message_and_exit_code_2_not_a_traceback(argv, words, capsys):
    # typer >= 0.2x vendors click, so catching click's own exception class missed these (a traceback)
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "Error:" in err
    for w in words:
        assert w in err
