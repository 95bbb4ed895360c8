import numpy as np
import pytest

from edgeopt.passes import make_pass
from edgeopt.quant.equalize import equalizable_pairs
from edgeopt.testing import PassContract

from _ptq_fixtures import kws_ctx


class TestEqualize(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("equalize")

    @pytest.fixture
    def model(self, dscnn):
        return dscnn

    @pytest.fixture
    def ctx(self, kws_data):
        return kws_ctx(kws_data, 16)

    @pytest.fixture
    def bad_params(self):
        return [{"iterations": 0}, {"tolerance": 5}]


def test_depthwise_ranges_are_equalized_and_function_kept(dscnn, kws_data):
    from onnx import numpy_helper

    ctx = kws_ctx(kws_data, 32)
    folded = make_pass("fold")(dscnn, ctx).model
    pairs = equalizable_pairs(folded.proto())
    assert pairs, "DS-CNN has depthwise -> ReLU -> pointwise pairs"

    def spread(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.proto().graph.initializer}
        first = pairs[0][0]
        w = inits[first.input[1]].reshape(inits[first.input[1]].shape[0], -1)
        r = np.abs(w).max(axis=1)
        return r.max() / max(r.min(), 1e-12)

    result = make_pass("equalize")(folded, ctx)
    assert result.stats["pairs_equalized"] >= len(pairs)
    assert spread(result.model) < spread(folded)
    x = kws_data.x[100:164]
    np.testing.assert_allclose(result.model.predict(x)[0], folded.predict(x)[0], atol=1e-4)
