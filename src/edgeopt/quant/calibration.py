"""Calibration data for ONNX Runtime's static quantizer, and a cache of computed tensor ranges.

Calibration rows are always the *first* ``samples`` rows of the calibration split, so a recipe
that records the split and the count identifies exactly which rows were used.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

METHODS = ("minmax", "entropy", "percentile", "distribution")


def ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if name not in table:
        raise ConfigError(f"calibration method must be one of {list(table)}; got {name!r}")
    return table[name]


def calibration_rows(calib, samples: int) -> tuple[np.ndarray | dict[str, np.ndarray], tuple[int, int] | None]:
    """The rows used for calibration (first ``samples``; ``{input: array}`` for several inputs,
    samples on axis 0) and their source row range."""
    if calib is None or len(calib) == 0:
        raise DataError("int8 calibration needs calibration data (the calib split is empty or missing)")
    n = min(int(samples), len(calib))
    rows = None
    if calib.rows:
        rows = (calib.rows[0], calib.rows[0] + n)
    return calib.take(0, n).x, rows


def sample_count(x: np.ndarray | dict[str, np.ndarray]) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def feed_batches(model, x: np.ndarray | dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """``x`` (samples on axis 0) as the model-layout feeds ``predict`` would run, ``batch`` samples
    each (:meth:`edgeopt.model.ModelHandle.feed_batches`), contiguous as ORT's quantizer wants them."""
    return [{k: np.ascontiguousarray(v) for k, v in feeds.items()} for feeds, _, _ in model.feed_batches(x, batch)]


class ArrayReader:
    """``CalibrationDataReader`` over prepared feeds (the ORT quantizer pulls one dict per batch)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.feeds):
            return None
        self._start += 1
        return self.feeds[self._start - 1]

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's strided-calibration hook
        self._start = start_index


def equal_batch(rows: int, largest: int) -> int:
    """The largest batch size <= ``largest`` that splits ``rows`` into equal batches.

    ORT's histogram calibrators (entropy, percentile, distribution) stack the per-batch outputs
    with ``np.asarray``; a shorter last batch makes that array ragged and fails with "setting an
    array element with a sequence". MinMax does not care, and its ranges do not depend on batching.
    """
    rows = max(1, int(rows))
    return next(b for b in range(min(largest, rows), 0, -1) if rows % b == 0)


def reader_for(model, x: np.ndarray | dict[str, np.ndarray]) -> ArrayReader:
    """A reader feeding every model input; a model with a fixed batch gets batches of that size."""
    return ArrayReader(feed_batches(model, x, equal_batch(sample_count(x), 32)))


def cache_path(cache_dir: str | Path | None, model_bytes: bytes, x: np.ndarray | dict[str, np.ndarray], **settings: Any) -> Path | None:
    """Where a calibration with these exact inputs and settings is cached (None: no caching).

    The key covers the model, the calibration array and every setting, so a hit is always the same
    computation; the optimizer uses it to calibrate once and quantize many layer subsets.
    """
    if cache_dir is None:
        return None
    h = hashlib.sha256()
    h.update(model_bytes)
    for key, arr in (sorted(x.items()) if isinstance(x, dict) else [("", x)]):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(sorted(settings.items())).encode())
    return Path(cache_dir) / f"calib-{h.hexdigest()[:24]}.json"


@contextlib.contextmanager
def finite_histograms():
    """Let ONNX Runtime's histogram calibration (entropy, percentile) run on graphs with infinite
    values: its ``HistogramCollector`` histograms every float tensor of the ops it calibrates,
    including the nodes ``nodes_to_exclude`` keeps float, and an attention mask's -inf makes
    ``np.histogram`` raise ("range of [-inf, inf] is not finite"). ORT has no option to skip tensors,
    so non-finite values are dropped from each collected array while this is active: ranges of the
    tensors that are quantized come from their finite values (an excluded mask path's do not matter).
    """
    from onnxruntime.quantization import calibrate

    collector = getattr(calibrate, "HistogramCollector", None)
    original = getattr(collector, "collect", None)
    if original is None:  # a future ORT without it: nothing to patch
        yield
        return

    def finite(arrays):
        # one array, or a list of per-batch arrays (collectors flatten either)
        parts = [np.asarray(a) for a in arrays] if isinstance(arrays, (list, tuple)) else [np.asarray(arrays)]
        if not parts or not all(np.issubdtype(p.dtype, np.floating) for p in parts) or all(np.isfinite(p).all() for p in parts):
            return arrays
        flat = np.concatenate([p.ravel() for p in parts])
        kept = flat[np.isfinite(flat)]
        return kept if kept.size else np.zeros(1, flat.dtype)

    def collect(self, name_to_arr):
        return original(self, {name: finite(v) for name, v in name_to_arr.items()})

    collector.collect = collect
    try:
        yield
    finally:
        collector.collect = original
