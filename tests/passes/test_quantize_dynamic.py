import numpy as np
import pytest

import edgeopt
from edgeopt.errors import UnsupportedModelError
from edgeopt.passes import PassContext, make_pass
from edgeopt.testing import PassContract

from _ptq_fixtures import conv_bn_model, mlp_model


class TestQuantizeDynamic(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return make_pass("quantize.dynamic", {"per_channel": True})

    @pytest.fixture
    def model(self):
        return mlp_model()

    @pytest.fixture
    def ctx(self):
        return PassContext()

    @pytest.fixture
    def bad_params(self):
        return [{"per_channel": "yes"}, {"embeddings": "no"}]


def test_mlperf_autoencoder_gets_int8_weights_and_keeps_its_outputs(ad_path):
    """The MLPerf Tiny anomaly-detection autoencoder: ten Gemm layers, no calibration data at all."""
    model = edgeopt.load(ad_path)
    result = make_pass("quantize.dynamic")(model, PassContext())
    proto = model.proto()
    weighted = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(result.stats["quantized_layers"]) == len(weighted) >= 8
    ops = {n.op_type for n in result.model.proto().graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops
    assert result.model.size_bytes < 0.3 * model.size_bytes
    x = np.random.default_rng(0).standard_normal((64, 640)).astype(np.float32)
    ref, out = model.predict(x)[0], result.model.predict(x)[0]
    cosine = float(np.sum(ref * out) / np.linalg.norm(ref) / np.linalg.norm(out))
    assert cosine > 0.995  # measured 0.9985 per tensor, 0.9996 per channel
    per_channel = make_pass("quantize.dynamic", {"per_channel": True})(model, PassContext()).model.predict(x)[0]
    assert float(np.sum(ref * per_channel) / np.linalg.norm(ref) / np.linalg.norm(per_channel)) > cosine


def test_convolutions_stay_float(dscnn):
    """ORT's ConvInteger is several times slower than fp32 Conv: only DS-CNN's dense head converts."""
    result = make_pass("quantize.dynamic")(dscnn, PassContext())
    ops = [n.op_type for n in result.model.proto().graph.node]
    assert "ConvInteger" not in ops and ops.count("Conv") == sum(n.op_type == "Conv" for n in dscnn.proto().graph.node)
    assert len(result.stats["quantized_layers"]) == 1


def test_a_conv_only_model_is_refused_with_the_alternative():
    with pytest.raises(UnsupportedModelError, match="try quantize.int8"):
        make_pass("quantize.dynamic")(conv_bn_model(), PassContext())
