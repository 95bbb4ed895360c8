"""Seeded shuffling in split specs: class-sorted files (Speech Commands, MNIST) get representative
ranges, the same seed gives the same rows, and recipes replay on the same rows."""

import numpy as np
import pytest

from edgeopt.data import Dataset, parse_split_spec, split
from edgeopt.errors import ConfigError


def _sorted_by_class(n=120, classes=4):
    y = np.repeat(np.arange(classes), n // classes)
    return Dataset(np.arange(n, dtype=np.float32).reshape(n, 1), y, name="sorted")


def test_shuffle_gives_every_split_every_class_and_is_deterministic():
    data = _sorted_by_class()
    plain = split(data, parse_split_spec("calib=0:30,eval=30:"))
    assert set(plain["calib"].y) == {0}  # the trap: the first rows hold one class
    spec = parse_split_spec("shuffle=3,calib=0:30,eval=30:")
    a, b = split(data, spec), split(data, spec)
    assert set(a["calib"].y) == {0, 1, 2, 3} and set(a["eval"].y) == {0, 1, 2, 3}
    np.testing.assert_array_equal(a["calib"].x, b["calib"].x)
    # disjoint and complete: every original row lands in exactly one split
    rows = np.concatenate([a["calib"].x[:, 0], a["eval"].x[:, 0]])
    assert sorted(rows.tolist()) == list(range(120))
    assert a["calib"].rows == (0, 30)
    other = split(data, parse_split_spec("shuffle=4,calib=0:30,eval=30:"))
    assert not np.array_equal(other["calib"].x, a["calib"].x)


@pytest.mark.parametrize("seed", ["-1", "x", "1.5"])
def test_bad_shuffle_seed_is_a_typed_error(seed):
    with pytest.raises(ConfigError, match="shuffle"):
        split(_sorted_by_class(), parse_split_spec(f"shuffle={seed},calib=0:30,eval=30:"))


def test_ptq_recipe_records_the_shuffle_and_apply_reproduces_the_model(dscnn_path, kws_data_path, tmp_path):
    import edgeopt
    from edgeopt.optimizer import replay
    from edgeopt.recipe import Recipe

    out = tmp_path / "out"
    edgeopt.optimize(str(dscnn_path), data=str(kws_data_path), metric="top1", max_drop=0.02,
                     splits="shuffle=7,calib=0:200,eval=200:600", out=str(out), progress=False, goal="size")
    recipe = Recipe.load(out / "recipe.yaml")
    assert recipe.data["shuffle"] == 7
    again = replay(str(dscnn_path), recipe, data=str(kws_data_path))
    assert again.onnx_bytes == (out / "model.onnx").read_bytes()
