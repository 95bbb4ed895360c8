import numpy as np
import pytest

from edgeopt.passes import make_pass
from edgeopt.testing import PassContract

from _ptq_fixtures import kws_ctx


@pytest.fixture(scope="module")
def int8_dscnn(dscnn, kws_data):
    return make_pass("quantize.int8", {"samples": 32})(dscnn, kws_ctx(kws_data, 32)).model


class TestOrtOptimize(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("ort.optimize")

    @pytest.fixture
    def model(self, int8_dscnn):
        return int8_dscnn

    @pytest.fixture
    def ctx(self, kws_data):
        return kws_ctx(kws_data, 8)

    @pytest.fixture
    def bad_params(self):
        return [{"level": "all"}, {"level": "turbo"}]


def test_qdq_is_fused_into_qlinear_ops_with_equal_outputs(int8_dscnn, kws_data):
    result = make_pass("ort.optimize")(int8_dscnn, kws_ctx(kws_data, 8))
    ops = [n.op_type for n in result.model.proto().graph.node]
    before = [n.op_type for n in int8_dscnn.proto().graph.node]
    assert "QLinearConv" in ops
    assert ops.count("DequantizeLinear") < before.count("DequantizeLinear")
    x = kws_data.x[:64]
    np.testing.assert_allclose(result.model.predict(x)[0], int8_dscnn.predict(x)[0], atol=1e-5)
    assert result.model.size_bytes <= int8_dscnn.size_bytes
