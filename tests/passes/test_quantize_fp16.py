import numpy as np
import pytest

from edgeopt.passes import PassContext, make_pass
from edgeopt.testing import PassContract


class TestQuantizeFp16(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("quantize.fp16")

    @pytest.fixture
    def model(self, dscnn):
        return dscnn

    @pytest.fixture
    def ctx(self):
        return PassContext()

    @pytest.fixture
    def bad_params(self):
        return [{"keep_io_types": "yes"}, {"op_block_list": "Conv"}]


def test_fp16_halves_weights_and_keeps_predictions(dscnn, kws_data):
    result = make_pass("quantize.fp16")(dscnn, PassContext())
    assert result.model.size_bytes < 0.55 * dscnn.size_bytes
    assert result.model.inputs[0].dtype == "float32"
    x = kws_data.x[:200]
    agree = (result.model.predict(x)[0].argmax(1) == dscnn.predict(x)[0].argmax(1)).mean()
    assert agree >= 0.99
