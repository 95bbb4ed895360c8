"""lowrank: contract + the chosen rank is reached (energy threshold and MAC budget), Conv and Linear."""

import numpy as np
import pytest
from training_models import onnx_weight_arrays, trained_mlp

from edgeopt.passes.base import PassContext
from edgeopt.passes.lowrank import LowRank, budget_rank, energy_rank
from edgeopt.testing import PassContract


@pytest.fixture(scope="module")
def mlp(mnist_path):
    return trained_mlp(mnist_path, hidden=(128, 64))


class TestLowRankContract(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return LowRank(energy=0.6, epochs=1)

    @pytest.fixture
    def model(self, mlp):
        return mlp

    @pytest.fixture
    def ctx(self, mnist_ctx):
        return mnist_ctx

    @pytest.fixture
    def bad_params(self):
        return [{"energy": 0.0}, {"energy": 1.5}, {"mac_fraction": 1.0}, {"mac_fraction": "half"}, {"epochs": -2},
                {"reconstruct": "yes"}, {"calibration_samples": 0}]


def test_energy_rank():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 3
    assert budget_rank(100, 100, 0.5) == 25


def test_linear_rank_reached_in_onnx(mlp, mnist_ctx):
    result = LowRank(energy=0.8, epochs=3, lr=2e-3)(mlp, mnist_ctx)
    ranks = result.stats["ranks"]
    assert ranks, "no layer was factorized"
    inner = sorted(min(w.shape) for w in onnx_weight_arrays(result.model).values())
    for r in ranks.values():
        assert r["rank"] < r["full_rank"]
        assert r["rank"] in inner  # the factor matrices really have the chosen inner dimension
    assert result.stats["macs_after"] < result.stats["macs_before"]
    acc = np.mean(result.model.predict(mnist_ctx.tune.x)[0].argmax(1) == mnist_ctx.tune.y)
    assert acc > 0.6


def test_conv_mac_budget_on_resnet8(resnet8, cifar):
    result = LowRank(mac_fraction=0.5, epochs=0)(resnet8, PassContext())
    assert result.stats["layers_factorized"] >= 3
    assert result.stats["macs_after"] < 0.8 * result.stats["macs_before"]
    out = result.model.run(cifar.x[:2].astype(np.float32))[0]
    assert out.shape == (2, 10)


def test_least_squares_refit_recovers_a_factorized_resnet8(resnet8, cifar):
    """No training: keeping 95% of each kernel's energy costs ResNet-8 ~44 pt of agreement with the
    original; refitting every layer (each pair's second factor to the original layer's output) on
    300 rows brings it back to within a few points (measured on rows 500-999: 44.4 pt -> 1.8 pt top-1)."""
    from dataclasses import replace

    tune = replace(cifar, x=cifar.x[:300], y=cifar.y[:300], name="cifar[0:300]", rows=None)
    held_out = cifar.x[500:800]
    reference = resnet8.predict(held_out)[0].argmax(1)

    def agreement(reconstruct):
        result = LowRank(energy=0.95, epochs=0, reconstruct=reconstruct)(resnet8, PassContext(tune=tune, seed=0))
        assert result.stats["layers_factorized"] >= 5
        return float(np.mean(result.model.predict(held_out)[0].argmax(1) == reference)), result

    plain, _ = agreement(False)
    refit, result = agreement(True)
    assert result.stats["reconstructed_layers"] > result.stats["layers_factorized"]
    assert refit > 0.9 and refit > plain + 0.2, (plain, refit)


def test_an_energy_that_factorizes_no_layer_is_refused_before_training(mlp, mnist_ctx):
    """Keeping all of each layer's energy leaves every layer whole: the result would be the input
    fine-tuned, which a search would count as a second technique; the pass says so instead."""
    from edgeopt.errors import PassError

    with pytest.raises(PassError, match="factorizes no layer.*lower energy"):
        LowRank(energy=1.0, epochs=3)(mlp, mnist_ctx)
