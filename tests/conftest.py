"""Shared fixtures: paths to the real models and data in ../shared/data (a missing file fails, never skips)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_data import ROOT, SHARED, shared  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def resnet8_path() -> Path:
    return shared("mlperf_tiny/ic/resnet8_cifar10.onnx")


@pytest.fixture(scope="session")
def dscnn_path() -> Path:
    return shared("mlperf_tiny/kws/dscnn_kws12.onnx")


@pytest.fixture(scope="session")
def vww_path() -> Path:
    return shared("mlperf_tiny/vww/mobilenetv1_vww96.onnx")


@pytest.fixture(scope="session")
def ad_path() -> Path:
    return shared("mlperf_tiny/ad/fc_autoencoder_ad01.onnx")


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    return shared("datasets/cifar10_test_first1000.npz")


@pytest.fixture(scope="session")
def kws_data_path() -> Path:
    return shared("datasets/speech_commands_test_v0.02_mlperf_mfcc.npz")


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    return shared("datasets/mnist_5k.csv.gz")


@pytest.fixture(scope="session")
def resnet8(resnet8_path):
    import edgeopt

    return edgeopt.load(resnet8_path)


@pytest.fixture(scope="session")
def dscnn(dscnn_path):
    import edgeopt

    return edgeopt.load(dscnn_path)


@pytest.fixture(scope="session")
def cifar(cifar_path):
    from edgeopt.data import load_data

    return load_data(cifar_path)


@pytest.fixture(scope="session")
def kws_data(kws_data_path):
    from edgeopt.data import load_data

    return load_data(kws_data_path)
