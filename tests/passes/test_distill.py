"""distill: contract + a damaged student moves back toward its teacher, with unlabeled data."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from training_models import FAST, mnist_rows, trained_mlp

import edgeopt
from edgeopt.passes.base import PassContext
from edgeopt.passes.distill import Distill
from edgeopt.testing import PassContract
from edgeopt.training import distillation_loss


@pytest.fixture(scope="module")
def teacher(mnist_path):
    return trained_mlp(mnist_path)


@pytest.fixture(scope="module")
def damaged(teacher):
    """The teacher with noise added to every weight (what pruning or quantization does, roughly)."""
    import copy

    net = copy.deepcopy(teacher.torch_module)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.8)
    return edgeopt.load(net, example_inputs=torch.zeros(1, 784), name="damaged")


@pytest.fixture(scope="module")
def unlabeled_ctx(mnist_path, teacher):
    train = replace(mnist_rows(mnist_path, 1000, 1800), y=None)
    return PassContext(train=train, teacher=teacher, options={"fine_tune": FAST})


class TestDistillContract(PassContract):
    @pytest.fixture
    def pass_instance(self):
        return Distill(epochs=1)

    @pytest.fixture
    def model(self, damaged):
        return damaged

    @pytest.fixture
    def ctx(self, unlabeled_ctx):
        return unlabeled_ctx

    @pytest.fixture
    def bad_params(self):
        return [{"epochs": 0}, {"temperature": 0}, {"alpha": 1.5}, {"augment": "mixup"}]


def test_unlabeled_distillation_restores_agreement(damaged, teacher, unlabeled_ctx, mnist_path):
    held_out = mnist_rows(mnist_path, 2000, 2500).x
    ref = teacher.predict(held_out)[0].argmax(1)
    before = np.mean(damaged.predict(held_out)[0].argmax(1) == ref)
    result = Distill(epochs=4, lr=2e-3)(damaged, unlabeled_ctx)
    after = np.mean(result.model.predict(held_out)[0].argmax(1) == ref)
    assert after > before + 0.05, (before, after)
    assert result.stats["teacher"] == "ctx.teacher"


def test_kd_loss_zero_for_identical_and_handles_probabilities():
    logits = torch.randn(8, 5)
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    probs = torch.softmax(logits, -1)
    # softmax outputs (the MLPerf models end in Softmax) are read as log-probabilities: same loss
    other = torch.randn(8, 5)
    assert float(distillation_loss(other, probs)) == pytest.approx(float(distillation_loss(other, logits)), rel=1e-4)
    labels = torch.randint(0, 5, (8,))
    assert float(distillation_loss(other, logits, labels, alpha=0.5)) > 0
