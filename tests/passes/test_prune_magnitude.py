"""prune.magnitude: contract + the requested sparsity is reached and kept through fine-tuning."""

import numpy as np
import pytest
from training_models import onnx_weight_arrays

from edgeopt.passes.base import PassContext
from edgeopt.passes.prune_magnitude import PruneMagnitude, cubic_sparsity
from edgeopt.testing import PassContract


class TestPruneMagnitudeContract(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return PruneMagnitude(sparsity=0.8, epochs=1)

    @pytest.fixture
    def model(self, mlp):
        return mlp

    @pytest.fixture
    def ctx(self, mnist_ctx):
        return mnist_ctx

    @pytest.fixture
    def bad_params(self):
        return [{"sparsity": 1.0}, {"sparsity": -0.1}, {"schedule": "sometimes"}, {"scope": "x"},
                {"schedule": "gradual", "epochs": 0}]


def _sparsity(handle):
    weights = onnx_weight_arrays(handle)
    return sum(int((w == 0).sum()) for w in weights.values()) / sum(w.size for w in weights.values())


@pytest.mark.parametrize("schedule", ["one_shot", "gradual"])
def test_sparsity_reached_in_exported_onnx(mlp, mnist_ctx, schedule):
    result = PruneMagnitude(sparsity=0.85, schedule=schedule, epochs=2)(mlp, mnist_ctx)
    assert _sparsity(result.model) == pytest.approx(0.85, abs=0.01)
    assert result.stats["sparse_bytes"] < 0.5 * result.stats["dense_bytes"]
    assert "do not run this model faster" in result.stats["note"]
    x = mnist_ctx.tune.x
    acc = np.mean(result.model.predict(x)[0].argmax(1) == mnist_ctx.tune.y)
    assert acc > 0.6  # fine-tuned with the zeros held: still a working classifier


def test_layer_scope_prunes_every_layer_equally(mlp):
    result = PruneMagnitude(sparsity=0.5, scope="layer", epochs=0)(mlp, PassContext())
    for name, share in result.stats["layer_sparsity"].items():
        assert share == pytest.approx(0.5, abs=0.01), name


def test_cubic_schedule_ends_at_target():
    values = [cubic_sparsity(0.9, e, 4) for e in range(4)]
    assert values == sorted(values) and values[-1] == pytest.approx(0.9)
