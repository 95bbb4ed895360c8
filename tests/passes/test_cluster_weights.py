"""cluster.weights: contract + at most N distinct values per layer, zeros kept, clusters survive fine-tuning."""

import numpy as np
import pytest
from training_models import onnx_weight_arrays

from edgeopt.passes.cluster_weights import ClusterWeights
from edgeopt.passes.prune_magnitude import PruneMagnitude
from edgeopt.testing import PassContract


class TestClusterWeightsContract(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return ClusterWeights(clusters=8, epochs=1)

    @pytest.fixture
    def model(self, mlp):
        return mlp

    @pytest.fixture
    def ctx(self, mnist_ctx):
        return mnist_ctx

    @pytest.fixture
    def bad_params(self):
        return [{"clusters": 1}, {"clusters": 1000}, {"codebook": "int4"}, {"epochs": -1}]


@pytest.mark.parametrize("epochs", [0, 2])
def test_at_most_n_distinct_values_per_layer(mlp, mnist_ctx, epochs):
    result = ClusterWeights(clusters=8, epochs=epochs)(mlp, mnist_ctx)
    for name, w in onnx_weight_arrays(result.model).items():
        assert np.unique(w).size <= 8, name
    assert result.stats["huffman_bytes"] <= result.stats["codebook_bytes"] < result.stats["dense_bytes"] / 8
    acc = np.mean(result.model.predict(mnist_ctx.tune.x)[0].argmax(1) == mnist_ctx.tune.y)
    assert acc > 0.6


def test_prune_then_cluster_keeps_zeros_and_int8_codebook(mlp, mnist_ctx):
    pruned = PruneMagnitude(sparsity=0.8, epochs=0)(mlp, mnist_ctx).model
    result = ClusterWeights(clusters=16, epochs=1, codebook="int8")(pruned, mnist_ctx)
    before, after = onnx_weight_arrays(pruned), onnx_weight_arrays(result.model)
    zeros_before = sum(int((w == 0).sum()) for w in before.values())
    zeros_after = sum(int((w == 0).sum()) for w in after.values())
    assert zeros_after >= zeros_before
    for w in after.values():
        values = np.unique(w)
        assert values.size <= 16
        scale = np.abs(values).max() / 127
        assert np.allclose(values / scale, np.round(values / scale), atol=1e-3)  # on the int8 grid
