import numpy as np
import pytest

from edgeopt.errors import UnsupportedModelError
from edgeopt.passes import PassContext, make_pass
from edgeopt.testing import PassContract

from _ptq_fixtures import mlp_model


class TestQuantizeInt4(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("quantize.int4", {"min_weight_elements": 1024})

    @pytest.fixture
    def model(self):
        return mlp_model()

    @pytest.fixture
    def ctx(self):
        return PassContext()

    @pytest.fixture
    def bad_params(self):
        return [{"block_size": 7}, {"min_weight_elements": 0}, {"symmetric": "no"}]


def test_large_linear_layers_become_matmulnbits_and_shrink():
    model = mlp_model(512)
    result = make_pass("quantize.int4", {"min_weight_elements": 4096})(model, PassContext())
    ops = [n.op_type for n in result.model.proto().graph.node]
    assert "MatMulNBits" in ops
    assert result.model.size_bytes < 0.3 * model.size_bytes
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    ref, out = model.predict(x)[0], result.model.predict(x)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


def test_small_cnn_head_does_not_qualify_and_says_so(dscnn):
    with pytest.raises(UnsupportedModelError, match="largest"):
        make_pass("quantize.int4")(dscnn, PassContext())
