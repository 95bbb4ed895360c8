"""Datasets: read npz / csv / image folders / Python iterables, preprocess, split deterministically.

A :class:`Dataset` is a pair of arrays (``x`` inputs with the batch on the first axis, optional
``y`` labels). Splits are named row ranges that never overlap: calibration, tuning, evaluation.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import ConfigError, DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLIT_NAMES = ("calib", "train", "tune", "eval")
#: split-spec key that permutes the rows with a seed before the ranges are cut
SHUFFLE_KEY = "shuffle"


@dataclass(frozen=True)
class Preprocess:
    """Per-sample preprocessing, applied in this order: reshape, dtype, scale, mean/std, layout.

    ``layout`` converts between channel orders: ``"nhwc->nchw"`` or ``"nchw->nhwc"``.

    >>> Preprocess(scale=1/255, layout="nhwc->nchw").apply(np.zeros((2, 4, 4, 3), np.uint8)).shape
    (2, 3, 4, 4)
    """

    scale: float | None = None
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    layout: str | None = None
    dtype: str = "float32"
    shape: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.layout not in (None, "nhwc->nchw", "nchw->nhwc"):
            raise ConfigError(f"layout must be 'nhwc->nchw' or 'nchw->nhwc'; got {self.layout!r}")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise ConfigError(f"dtype must be a numpy dtype name like 'float32'; got {self.dtype!r}") from None
        if self.std is not None and np.any(np.asarray(self.std, dtype=float) == 0):
            raise ConfigError(f"std must be non-zero; got {self.std!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        self.validate()
        if self.shape is not None:
            x = x.reshape((x.shape[0],) + tuple(self.shape))
        x = x.astype(self.dtype, copy=False)
        if self.scale is not None:
            x = x * np.asarray(self.scale, dtype=x.dtype)
        channel_axis = -1 if (self.layout in (None, "nhwc->nchw")) else 1
        if self.mean is not None:
            x = x - _broadcast(self.mean, x, channel_axis)
        if self.std is not None:
            x = x / _broadcast(self.std, x, channel_axis)
        if self.layout == "nhwc->nchw":
            x = np.moveaxis(x, -1, 1)
        elif self.layout == "nchw->nhwc":
            x = np.moveaxis(x, 1, -1)
        return np.ascontiguousarray(x.astype(self.dtype, copy=False))

    def is_identity(self) -> bool:
        return self == Preprocess()


def _broadcast(value, x: np.ndarray, channel_axis: int) -> np.ndarray:
    arr = np.asarray(value, dtype=x.dtype)
    if arr.ndim == 0:
        return arr
    shape = [1] * x.ndim
    shape[channel_axis] = arr.size
    return arr.reshape(shape)


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (samples on axis 0) and optional labels ``y``; ``rows`` records which source rows these are.

    ``x`` is one array, or ``{input name: array}`` for a model with several inputs (token ids and
    an attention mask; features and a recurrent state), every array with the samples on axis 0.
    """

    x: np.ndarray | Mapping[str, np.ndarray]
    y: np.ndarray | None = None
    name: str = "data"
    rows: tuple[int, int] | None = None
    label_names: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self):
        if isinstance(self.x, Mapping):
            if not self.x:
                raise DataError(f"data {self.name!r} has no input arrays")
            lengths = {k: len(v) for k, v in self.x.items()}
            if len(set(lengths.values())) > 1:
                raise DataError(f"data {self.name!r} has input arrays with different numbers of rows {lengths}; "
                                "every input needs one row per sample")
        if self.y is not None and len(self.y) != len(self):
            raise DataError(f"data {self.name!r} has {len(self)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if isinstance(self.x, Mapping) else len(self.x)

    @property
    def is_multi_input(self) -> bool:
        return isinstance(self.x, Mapping)

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def take(self, start: int, stop: int | None, name: str | None = None) -> "Dataset":
        """Rows ``start:stop`` (in this dataset's numbering) as a new Dataset."""
        stop = len(self) if stop is None else stop
        offset = self.rows[0] if self.rows else 0
        x = {k: v[start:stop] for k, v in self.x.items()} if self.is_multi_input else self.x[start:stop]
        return replace(self, x=x, y=None if self.y is None else self.y[start:stop],
                       name=name or f"{self.name}[{start}:{stop}]", rows=(offset + start, offset + stop))

    def preprocess(self, pre: Preprocess | None) -> "Dataset":
        if pre is None or pre.is_identity():
            return self
        if self.is_multi_input:
            raise ConfigError(f"preprocessing (scale, mean/std, layout) applies to single-input data; data {self.name!r} "
                              f"has inputs {list(self.x)}: prepare each array before saving it")
        return replace(self, x=pre.apply(self.x))

    def shuffled(self, seed: int) -> "Dataset":
        """The rows in a seeded random order (deterministic: the same seed gives the same order)."""
        order = np.random.default_rng(seed).permutation(len(self))
        x = {k: v[order] for k, v in self.x.items()} if self.is_multi_input else self.x[order]
        return replace(self, x=x, y=None if self.y is None else self.y[order], name=f"{self.name}~shuffle{seed}", rows=None)

    def splits(self, **ranges: str | tuple[int, int | None] | None) -> dict[str, "Dataset"]:
        """Named, non-overlapping row ranges: ``data.splits(calib="0:500", eval="500:")``."""
        return split(self, ranges)

    def describe(self) -> dict:
        if self.is_multi_input:
            shape: Any = {k: list(v.shape) for k, v in self.x.items()}
            dtype: Any = {k: str(v.dtype) for k, v in self.x.items()}
        else:
            shape, dtype = list(self.x.shape), str(self.x.dtype)
        return {"name": self.name, "samples": len(self), "x_shape": shape, "x_dtype": dtype,
                "labels": self.has_labels, "rows": list(self.rows) if self.rows else None}


def parse_range(text: str | tuple[int, int | None], n: int, *, name: str) -> tuple[int, int]:
    """'0:500' / ':500' / '500:' / (0, 500) -> (start, stop) clipped to n; rejects empty or reversed ranges."""
    if isinstance(text, tuple):
        start, stop = text
    else:
        parts = str(text).split(":")
        if len(parts) != 2:
            raise ConfigError(f"split {name!r} must be a row range like '0:500' or '500:'; got {text!r}")
        try:
            start = int(parts[0]) if parts[0].strip() else 0
            stop = int(parts[1]) if parts[1].strip() else None
        except ValueError:
            raise ConfigError(f"split {name!r} must be a row range like '0:500' or '500:'; got {text!r}") from None
    stop = n if stop is None else stop
    if start < 0 or stop > n or start >= stop:
        raise ConfigError(f"split {name!r} = {start}:{stop} is empty or outside the data's {n} rows")
    return start, stop


def parse_split_spec(spec: str) -> dict[str, str]:
    """'calib=0:500,eval=500:' -> {'calib': '0:500', 'eval': '500:'}; 'shuffle=SEED' first permutes the
    rows with that seed (for files sorted by class), so the ranges count positions in that order."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ConfigError(f"--split takes name=start:stop pairs like 'calib=0:500,eval=500:'; got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in SPLIT_NAMES + (SHUFFLE_KEY,):
            raise ConfigError(f"split name must be one of {', '.join(SPLIT_NAMES)} (or {SHUFFLE_KEY}=SEED); got {key!r}")
        out[key] = value.strip()
    return out


def shuffle_seed(ranges: Mapping[str, Any]) -> int | None:
    """The ``shuffle`` seed of a split spec (None: rows in file order); a typed error if it is not an int >= 0."""
    value = ranges.get(SHUFFLE_KEY)
    if value is None:
        return None
    try:
        seed = int(value)
    except (TypeError, ValueError):
        seed = -1
    if seed < 0 or isinstance(value, bool):
        raise ConfigError(f"split {SHUFFLE_KEY!r} takes a seed, an int >= 0 (e.g. 'shuffle=0,calib=0:500,eval=500:'); got {value!r}")
    return seed


def split(data: Dataset, ranges: Mapping[str, Any]) -> dict[str, Dataset]:
    """Cut ``data`` into named ranges; raises ConfigError if any two overlap. With ``shuffle=SEED`` the
    rows are permuted with that seed first (data files are often sorted by class: contiguous ranges
    would then hold different classes) and the ranges count positions in the permuted order."""
    seed = shuffle_seed(ranges)
    if seed is not None:
        data = data.shuffled(seed)
    bounds = {}
    for key, value in ranges.items():
        if value is None or key == SHUFFLE_KEY:
            continue
        if key not in SPLIT_NAMES:
            raise ConfigError(f"split name must be one of {', '.join(SPLIT_NAMES)}; got {key!r}")
        bounds[key] = parse_range(value, len(data), name=key)
    items = sorted(bounds.items(), key=lambda kv: kv[1])
    for (k1, (a1, b1)), (k2, (a2, b2)) in zip(items, items[1:]):
        if a2 < b1:
            raise ConfigError(f"splits {k1!r} ({a1}:{b1}) and {k2!r} ({a2}:{b2}) overlap; "
                              "calibration, tuning and evaluation rows must be disjoint")
    return {k: data.take(a, b, name=f"{data.name}:{k}") for k, (a, b) in bounds.items()}


def default_splits(data: Dataset) -> dict[str, Dataset]:
    """First half calibration/tuning, second half evaluation (the DATA.md convention)."""
    n = len(data)
    if n < 4:
        raise DataError(f"data {data.name!r} has only {n} rows; at least 4 are needed to split calibration from evaluation")
    half = n // 2
    return split(data, {"calib": (0, half), "eval": (half, None)})


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------

def load_data(
    source: Any,
    *,
    x_key: str = "x",
    y_key: str | None = "y",
    label_column: int | None = -1,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    name: str | None = None,
) -> Dataset:
    """Read data from an ``.npz``, a ``.csv``/``.csv.gz``, a folder of images (one subfolder per
    class), numpy arrays, ``{input name: array}``, or an iterable of ``(x, y)`` batches (e.g. a
    torch DataLoader).

    For a model with several inputs, ``x_key`` lists the ``.npz`` arrays separated by commas
    (``x_key="input_ids,attention_mask"``): ``x`` becomes ``{name: array}``, and each name must be
    the model input it feeds.

    >>> d = load_data("../shared/data/datasets/cifar10_test_first1000.npz")  # doctest: +SKIP
    >>> d.x.shape, d.y.shape  # doctest: +SKIP
    ((1000, 32, 32, 3), (1000,))
    """
    if isinstance(source, Dataset):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"data path {str(path)!r} does not exist")
        lower = path.name.lower()
        if path.is_dir():
            data = _read_image_folder(path)
        elif lower.endswith(".npz"):
            data = _read_npz(path, x_key, y_key)
        elif lower.endswith(".npy"):
            data = Dataset(_safe_npy(path), None, name=path.stem)
        elif lower.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            data = _read_csv(path, label_column)
        else:
            raise DataError(f"unknown data format for {str(path)!r}; expected .npz, .npy, .csv(.gz) or a folder of images")
    elif isinstance(source, np.ndarray):
        data = Dataset(source, None, name=name or "array")
    elif isinstance(source, Mapping):
        data = Dataset(_input_arrays(source), None, name=name or "arrays")
    elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], (np.ndarray, Mapping)):
        x = _input_arrays(source[0]) if isinstance(source[0], Mapping) else np.asarray(source[0])
        data = Dataset(x, None if source[1] is None else np.asarray(source[1]), name=name or "arrays")
    elif isinstance(source, Iterable):
        data = _read_iterable(source)
    else:
        raise DataError(f"cannot read data from a {type(source).__name__}; give a path, arrays (x, y) or an iterable of (x, y) batches")
    if name:
        data = replace(data, name=name)
    if limit is not None:
        data = data.take(0, min(limit, len(data)))
    return data.preprocess(preprocess)


def _input_arrays(mapping: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise DataError(f"multi-input data must map input names (str) to arrays; got key {key!r}")
        out[key] = _to_numpy(value)
    return out


def _safe_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{str(path)!r} holds Python objects (pickles); edgeopt never unpickles data. Save plain arrays") from e


def _read_npz(path: Path, x_key: str, y_key: str | None) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{str(path)!r} is not a readable .npz archive: {e}") from e
    with archive:
        keys = list(archive.keys())
        x_keys = [k.strip() for k in x_key.split(",") if k.strip()]
        if x_key == "x" and "x" not in keys:
            # No array named by the default: the other arrays are the inputs (one per model input,
            # named as the inputs, is how multi-input data is saved); fit_to_model checks the names.
            x_keys = [k for k in keys if k not in (y_key, "label_names")] or x_keys
            if len(x_keys) > 1:
                x_key = ",".join(x_keys)
        absent = [k for k in x_keys if k not in keys]
        if absent or not x_keys:
            raise DataError(f"{str(path)!r} has no array {', '.join(map(repr, absent)) or repr(x_key)} for the inputs; "
                            f"its arrays are {keys}. Choose with --x-key (Python: x_key=); several inputs as a comma "
                            "list like 'input_ids,attention_mask'")
        try:
            x = archive[x_keys[0]] if len(x_keys) == 1 and "," not in x_key else {k: archive[k] for k in x_keys}
            y = archive[y_key] if (y_key and y_key in keys) else None
            names = tuple(str(s) for s in archive["label_names"]) if "label_names" in keys else None
        except ValueError as e:
            raise DataError(f"{str(path)!r} stores Python objects (pickles); edgeopt never unpickles data") from e
    if y is not None and y.ndim != 1:
        y = y.reshape(len(y), -1)
        if y.shape[1] == 1:
            y = y[:, 0]
    return Dataset(x, y, name=path.name.split(".")[0], label_names=names)


def _read_csv(path: Path, label_column: int | None) -> Dataset:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    delimiter = "\t" if ".tsv" in path.name.lower() else ","
    try:
        with opener(path, "rt") as f:
            first = f.readline()
        has_header = any(c.isalpha() for c in first.replace("e-", "").replace("e+", "").replace("nan", ""))
        table = np.loadtxt(path, delimiter=delimiter, skiprows=1 if has_header else 0, dtype=np.float32, ndmin=2)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{str(path)!r} is not a numeric CSV table: {e}") from e
    if label_column is None:
        return Dataset(table, None, name=path.name.split(".")[0])
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise DataError(f"label column {label_column} is outside the CSV's {table.shape[1]} columns; set --label-column")
    y = table[:, label_column].astype(np.int64)
    x = np.delete(table, label_column % table.shape[1], axis=1)
    return Dataset(x, y, name=path.name.split(".")[0])


def _read_image_folder(path: Path) -> Dataset:
    from PIL import Image

    class_dirs = sorted(d for d in path.iterdir() if d.is_dir())
    entries: list[tuple[Path, int | None]] = []
    if class_dirs:
        for label, d in enumerate(class_dirs):
            entries += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    else:
        entries = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not entries:
        raise DataError(f"folder {str(path)!r} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    images = []
    for f, _ in entries:
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
        except Exception as e:
            raise DataError(f"image {str(f)!r} cannot be read: {e}") from e
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images in {str(path)!r} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    x = np.stack(images)
    labels = [lab for _, lab in entries]
    y = None if labels[0] is None else np.asarray(labels, dtype=np.int64)
    names = tuple(d.name for d in class_dirs) if class_dirs else None
    return Dataset(x, y, name=path.name, label_names=names)


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_iterable(source: Iterable) -> Dataset:
    xs, ys = [], []
    for item in source:
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            xs.append(item[0])
            ys.append(_to_numpy(item[1]))
        else:
            xs.append(item)
    if not xs:
        raise DataError("the data iterable yielded nothing")
    if isinstance(xs[0], Mapping):  # batches of {input name: tensor}, as tokenizer pipelines yield
        if not all(isinstance(b, Mapping) and set(b) == set(xs[0]) for b in xs):
            raise DataError("the data iterable mixes batches with different input names; every batch needs the same inputs")
        arrays = {k: np.concatenate([np.atleast_1d(_to_numpy(b[k])) for b in xs]) for k in xs[0]}
        y = np.concatenate([np.atleast_1d(v) for v in ys]) if ys else None
        return Dataset(_input_arrays(arrays), y, name="iterable")
    xs = [_to_numpy(x) for x in xs]
    batched = xs[0].ndim >= 1 and all(x.shape[1:] == xs[0].shape[1:] for x in xs)
    x = np.concatenate(xs) if batched and xs[0].ndim > 1 else np.stack(xs)
    y = None
    if ys:
        y = np.concatenate([np.atleast_1d(v) for v in ys])
    return Dataset(x, y, name="iterable")


# ------------------------------------------------------------------------------------------------
# Fitting data to a model
# ------------------------------------------------------------------------------------------------

def fit_to_model(data: Dataset, model) -> Dataset:
    """Check that ``data`` fits the model's (single) input; fix only the unambiguous cases.

    A flat feature vector whose length equals the input's per-sample size is reshaped (a CSV of
    784 pixels feeds a 1x28x28 input); a dtype is cast when safe. Anything else is a DataError that
    names both shapes. Multi-input data (``x`` a dict) must name every model input; each array
    holds the samples on axis 0, whatever axis the model keeps its batch on.
    """
    if data.is_multi_input and len(model.inputs) == 1 and len(data.x) == 1:
        data = replace(data, x=next(iter(data.x.values())))
    if data.is_multi_input or len(model.inputs) != 1:
        return _fit_inputs(data, model)
    spec = model.inputs[0]
    want = tuple(d for i, d in enumerate(spec.shape) if i != spec.batch_axis)  # per sample
    have = data.x.shape[1:]
    if len(want) == len(have) and all(not isinstance(w, int) or w == h for w, h in zip(want, have)):
        pass
    elif all(isinstance(w, int) for w in want) and int(np.prod(want)) == int(np.prod(have)) and len(have) == 1:
        data = replace(data, x=data.x.reshape((len(data),) + tuple(want)))
    else:
        hint = ""
        if len(want) == 3 and len(have) == 3 and tuple(have) == (want[1], want[2], want[0]):
            hint = " The data looks NHWC and the model NCHW: use --layout nhwc->nchw."
        elif len(want) == 3 and len(have) == 3 and tuple(have) == (want[2], want[0], want[1]):
            hint = " The data looks NCHW and the model NHWC: use --layout nchw->nhwc."
        raise DataError(f"data {data.name!r} has samples of shape {tuple(have)} but model input {spec.name!r} "
                        f"expects {tuple(spec.shape)} (batch first).{hint}")
    if not spec.dtype.startswith("onnx:") and data.x.dtype != np.dtype(spec.dtype):
        target = np.dtype(spec.dtype)
        if np.issubdtype(target, np.floating) or np.can_cast(data.x.dtype, target, "same_kind"):
            data = replace(data, x=data.x.astype(target))
        else:
            raise DataError(f"data {data.name!r} has dtype {data.x.dtype} but model input {spec.name!r} expects {target}")
    return data


def _fit_inputs(data: Dataset, model) -> Dataset:
    """Check multi-input data against the model's inputs by name, shape (per sample) and dtype."""
    names = [s.name for s in model.inputs]
    if not data.is_multi_input:
        raise DataError(f"model takes {len(names)} inputs {names}; give the data as {{input name: array}} "
                        "(an .npz with one array per input and --x-key " + ",".join(names) + ")")
    missing = [n for n in names if n not in data.x]
    extra = [k for k in data.x if k not in names]
    if missing or extra:
        raise DataError(f"data {data.name!r} has arrays {list(data.x)} but the model's inputs are {names}"
                        + (f"; missing {missing}" if missing else "") + (f"; not inputs: {extra}" if extra else "")
                        + ". Name the arrays that feed the inputs with --x-key (Python: x_key=), a comma list "
                        "in input order, and the labels with --y-key")
    fitted = {}
    for spec in model.inputs:
        arr = np.asarray(data.x[spec.name])
        want = tuple(d for i, d in enumerate(spec.shape) if i != spec.batch_axis)
        have = arr.shape[1:]
        if len(want) != len(have) or any(isinstance(w, int) and w != h for w, h in zip(want, have)):
            raise DataError(f"data {data.name!r} array {spec.name!r} has samples of shape {tuple(have)} but the model "
                            f"input has shape {tuple(spec.shape)} (batch axis {spec.batch_axis}), i.e. samples of "
                            f"shape {want}")
        if not spec.dtype.startswith("onnx:") and arr.dtype != np.dtype(spec.dtype):
            target = np.dtype(spec.dtype)
            if not (np.issubdtype(target, np.floating) or np.can_cast(arr.dtype, target, "same_kind")):
                raise DataError(f"data {data.name!r} array {spec.name!r} has dtype {arr.dtype} but the model input "
                                f"expects {target}")
            arr = arr.astype(target)
        fitted[spec.name] = arr
    return replace(data, x=fitted)
