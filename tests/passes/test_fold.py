import numpy as np
import pytest

from edgeopt.passes import PassContext, make_pass
from edgeopt.testing import PassContract

from _ptq_fixtures import conv_bn_model, random_rows


class TestFold(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("fold")

    @pytest.fixture
    def model(self):
        return conv_bn_model()

    @pytest.fixture
    def ctx(self):
        return PassContext()

    @pytest.fixture
    def bad_params(self):
        return [{"tolerance": 0}, {"tolerance": 1.0}, {"symbolic_shapes": "maybe"}]


def test_batchnorm_is_folded_and_outputs_equal_within_1e5():
    from edgeopt.data import Dataset

    model = conv_bn_model()
    assert "BatchNormalization" in {n.op_type for n in model.proto().graph.node}
    x = random_rows(model, 32)
    result = make_pass("fold")(model, PassContext(calib=Dataset(x)))
    ops = {n.op_type for n in result.model.proto().graph.node}
    assert "BatchNormalization" not in ops
    np.testing.assert_allclose(result.model.predict(x)[0], model.predict(x)[0], atol=1e-5)
    assert result.stats["removed_ops"].get("BatchNormalization") == 1


def test_real_model_unchanged_within_tolerance(dscnn, kws_data):
    calib = kws_data.take(0, 32)
    result = make_pass("fold")(dscnn, PassContext(calib=calib))
    assert result.stats["max_abs_error"] <= 1e-5
    np.testing.assert_allclose(result.model.predict(calib.x)[0], dscnn.predict(calib.x)[0], atol=1e-5)


def test_keras_style_batchnorm_after_dense_layers_is_folded_into_them(ad_path):
    """The MLPerf AD autoencoder writes each BatchNorm as Mul + Add by constant vectors after its
    Dense layer; fold puts them into the Gemm weights and biases, within the scaled tolerance."""
    import edgeopt

    model = edgeopt.load(ad_path)
    x = np.random.default_rng(0).standard_normal((32, 640)).astype(np.float32)
    from edgeopt.data import Dataset

    result = make_pass("fold")(model, PassContext(calib=Dataset(x, None, name="noise")))
    ops = [n.op_type for n in result.model.proto().graph.node]
    assert result.stats["scale_shift_folded"] == 18 and "Mul" not in ops  # 9 norms: a Mul and an Add each
    proto = result.model.proto()
    read = {name for node in proto.graph.node for name in node.input}
    assert all(i.name in read for i in proto.graph.initializer)  # the replaced weights are gone
    ref, out = model.predict(x)[0], result.model.predict(x)[0]
    assert np.max(np.abs(ref - out)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("shape, rank, expected", [
    ((), 4, True), ((1, 8, 1, 1), 4, True), ((8, 1, 1), 4, True), ((1, 1, 8), 4, False), ((8,), 4, False),
    ((8,), 2, True), ((1, 8), 2, True), ((8, 1), 2, False), ((2, 8), 2, False),
])
def test_only_per_channel_constants_count_as_a_scale_or_shift(shape, rank, expected):
    from edgeopt.passes.fold import _channel_vector

    const = np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)
    assert (_channel_vector(const, rank, 8) is not None) == expected


def test_incomplete_symbolic_shapes_leave_no_file_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves sym_shape_infer_temp.onnx into the current directory
    when it cannot finish (it did on the PP-OCRv4 detector, inside a user's folder). Made to give up
    here, the pass still folds (ONNX's own inference) and the user's folder stays clean."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    monkeypatch.setattr(SymbolicShapeInference, "_infer_impl", lambda self: setattr(self, "run_", False) or False)
    monkeypatch.chdir(tmp_path)
    model = conv_bn_model()
    result = make_pass("fold")(model, PassContext())
    assert "BatchNormalization" not in {n.op_type for n in result.model.proto().graph.node}
    assert list(tmp_path.iterdir()) == []
