"""Reading npz / csv / image folders / iterables, preprocessing, and non-overlapping splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgeopt.data import Dataset, Preprocess, default_splits, fit_to_model, load_data, parse_split_spec
from edgeopt.errors import ConfigError, DataError


def test_npz_default_and_custom_keys(tmp_path, cifar):
    assert cifar.x.shape == (1000, 32, 32, 3) and cifar.y.shape == (1000,)
    assert cifar.label_names[0] == "airplane"
    path = tmp_path / "d.npz"
    np.savez(path, feats=np.ones((5, 3)), labels=np.arange(5))
    d = load_data(path, x_key="feats", y_key="labels")
    assert d.x.shape == (5, 3) and list(d.y) == [0, 1, 2, 3, 4]


def test_npz_without_x_takes_its_other_arrays_as_the_inputs(tmp_path):
    path = tmp_path / "tokens.npz"
    ids, mask = np.arange(12).reshape(4, 3), np.ones((4, 3), np.int64)
    np.savez(path, input_ids=ids, attention_mask=mask, y=np.arange(4))
    d = load_data(path)
    assert d.is_multi_input and sorted(d.x) == ["attention_mask", "input_ids"] and list(d.y) == [0, 1, 2, 3]
    np.testing.assert_array_equal(d.x["input_ids"], ids)
    one = tmp_path / "feats.npz"
    np.savez(one, feats=np.ones((5, 3)), y=np.arange(5))
    d = load_data(one)
    assert not d.is_multi_input and d.x.shape == (5, 3)
    # arrays that are not the model's inputs are named in the error, with the option that fixes it
    class Spec:
        def __init__(self, name):
            self.name, self.shape, self.batch_axis, self.dtype = name, ["batch", 3], 0, "int64"

    class TwoInputs:
        inputs = [Spec("input_ids"), Spec("token_type_ids")]

    with pytest.raises(DataError, match=r"missing \['token_type_ids'\].*--x-key"):
        fit_to_model(load_data(path), TwoInputs())


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        load_data(path)


def test_mnist_csv_gz_label_last_column_and_reshape(mnist_path):
    d = load_data(mnist_path, limit=50)
    assert d.x.shape == (50, 784) and d.y.dtype == np.int64
    assert set(np.unique(d.y)) <= set(range(10))
    assert d.x.max() <= 255 and d.x.min() >= 0


def test_csv_label_column_first(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,a,b\n1,0.5,0.25\n0,1.5,2.5\n")
    d = load_data(path, label_column=0)
    assert d.y.tolist() == [1, 0] and d.x.tolist() == [[0.5, 0.25], [1.5, 2.5]]
    with pytest.raises(DataError, match="label column"):
        load_data(path, label_column=7)


def test_image_folder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i + (label == "dog") * 100, np.uint8)).save(tmp_path / label / f"{i}.png")
    d = load_data(tmp_path)
    assert d.x.shape == (4, 8, 8, 3) and d.y.tolist() == [0, 0, 1, 1]
    assert d.label_names == ("cat", "dog")
    assert d.x[2, 0, 0, 0] == 100


def test_torch_dataloader_and_iterables():
    ds = torch.utils.data.TensorDataset(torch.arange(20, dtype=torch.float32).reshape(10, 2), torch.arange(10))
    d = load_data(torch.utils.data.DataLoader(ds, batch_size=4))
    assert d.x.shape == (10, 2) and d.y.tolist() == list(range(10))
    d2 = load_data([(np.zeros(3), 1), (np.ones(3), 0)])
    assert d2.x.shape == (2, 3) and d2.y.tolist() == [1, 0]


def test_preprocess_scale_mean_std_layout():
    x = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    out = Preprocess(scale=0.5, mean=(1.0, 2.0, 3.0), std=2.0, layout="nhwc->nchw").apply(x)
    assert out.shape == (2, 3, 2, 2) and out.dtype == np.float32
    expected = (x.astype(np.float32) * 0.5 - np.array([1, 2, 3], np.float32)) / 2
    np.testing.assert_allclose(out, np.moveaxis(expected, -1, 1))
    with pytest.raises(ConfigError, match="layout"):
        Preprocess(layout="hwc").apply(x)


def test_splits_are_disjoint_and_deterministic(cifar):
    parts = cifar.splits(calib="0:500", eval="500:")
    assert parts["calib"].rows == (0, 500) and parts["eval"].rows == (500, 1000)
    np.testing.assert_array_equal(parts["eval"].x[0], cifar.x[500])
    with pytest.raises(ConfigError, match="overlap"):
        cifar.splits(calib="0:600", eval="500:")
    with pytest.raises(ConfigError, match="empty or outside"):
        cifar.splits(calib="900:2000")
    assert parse_split_spec("calib=0:500,eval=500:") == {"calib": "0:500", "eval": "500:"}
    with pytest.raises(ConfigError):
        parse_split_spec("test=0:10")   # names: calib, train (fine-tuning), tune, eval
    d = default_splits(cifar)
    assert d["calib"].rows[1] == d["eval"].rows[0] == 500


def test_fit_to_model_reshapes_flat_vectors_and_rejects_mismatch(resnet8):
    flat = Dataset(np.zeros((3, 32 * 32 * 3), np.uint8), np.zeros(3, np.int64))
    fitted = fit_to_model(flat, resnet8)
    assert fitted.x.shape == (3, 32, 32, 3) and fitted.x.dtype == np.float32
    with pytest.raises(DataError, match=r"\(28, 28\)"):
        fit_to_model(Dataset(np.zeros((3, 28, 28))), resnet8)


def test_labels_count_mismatch():
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        Dataset(np.zeros((3, 2)), np.zeros(2))
