"""Fixtures shared by the training-pass tests: a small MNIST MLP and its data context."""

import pytest
from training_models import FAST, mnist_rows, trained_mlp

from edgeopt.passes.base import PassContext


@pytest.fixture(scope="module")
def mlp(mnist_path):
    return trained_mlp(mnist_path)


@pytest.fixture(scope="module")
def mnist_ctx(mnist_path):
    return PassContext(train=mnist_rows(mnist_path, 1000, 1600), tune=mnist_rows(mnist_path, 1600, 1800),
                       options={"fine_tune": FAST})
