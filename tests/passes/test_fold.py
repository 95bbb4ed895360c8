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
