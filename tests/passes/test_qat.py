"""quantize.qat: contract + the export is an int8 QDQ model matching the fake-quant outputs."""

import collections

import numpy as np
import onnx
import pytest
from training_models import kws_ctx

from edgeopt.passes.qat import QuantAwareTraining
from edgeopt.testing import PassContract


@pytest.fixture(scope="module")
def ctx(kws_data):
    return kws_ctx(kws_data)


class TestQatContract(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return QuantAwareTraining(epochs=1, calibration_samples=128)

    @pytest.fixture
    def model(self, dscnn):
        return dscnn

    @pytest.fixture
    def ctx(self, ctx):
        return ctx

    @pytest.fixture
    def bad_params(self):
        return [{"epochs": -1}, {"calibration_samples": 0}, {"lr": 0}]


def test_exported_qdq_has_ptq_semantics(dscnn, ctx, kws_data):
    result = QuantAwareTraining(epochs=0, calibration_samples=256)(dscnn, ctx)
    proto = result.model.proto()
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] >= 9 and ops["DequantizeLinear"] >= 18
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) == result.stats["int8_weights"] >= 9  # int8 weights, per channel
    tensors = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    tensors.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                    if n.op_type == "Constant" and n.attribute[0].name == "value"})
    activation_types = {tensors[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_types == {np.dtype(np.uint8)}  # U8 activations, S8 weights: the PTQ path's U8S8
    assert result.stats["qdq_reference_max_abs"] <= 1e-2
    assert result.stats["qdq_reference_top1_agreement"] >= 0.99
    assert result.stats["ort_int8_kernels_top1_agreement"] >= 0.95
    assert result.model.size_bytes < 0.7 * dscnn.size_bytes
    x, y = kws_data.x[::10], kws_data.y[::10]
    fp32 = np.mean(dscnn.predict(x)[0].argmax(1) == y)
    int8 = np.mean(result.model.predict(x)[0].argmax(1) == y)
    assert int8 >= fp32 - 0.03
