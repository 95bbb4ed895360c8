"""Calibration data for ONNX Runtime's static quantizer, and a cache of computed tensor ranges.

Calibration rows are always the *first* ``samples`` rows of the calibration split, so a recipe
that records the split and the count identifies exactly which rows were used.
"""

from __future__ import annotations

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


def calibration_rows(calib, samples: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The rows used for calibration (first ``samples``) and their source row range."""
    if calib is None or len(calib) == 0:
        raise DataError("int8 calibration needs calibration data (the calib split is empty or missing)")
    n = min(int(samples), len(calib))
    rows = None
    if calib.rows:
        rows = (calib.rows[0], calib.rows[0] + n)
    return np.asarray(calib.x[:n]), rows


class ArrayReader:
    """``CalibrationDataReader`` over an array, in fixed batches (the ORT quantizer pulls dicts)."""

    def __init__(self, input_name: str, x: np.ndarray, dtype: str, batch: int):
        self.input_name = input_name
        self.x = np.asarray(x).astype(dtype, copy=False)
        self.batch = max(1, int(batch))
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.x):
            return None
        chunk = self.x[self._start : self._start + self.batch]
        self._start += self.batch
        return {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's strided-calibration hook
        self._start = start_index * self.batch


def equal_batch(rows: int, largest: int) -> int:
    """The largest batch size <= ``largest`` that splits ``rows`` into equal batches.

    ORT's histogram calibrators (entropy, percentile, distribution) stack the per-batch outputs
    with ``np.asarray``; a shorter last batch makes that array ragged and fails with "setting an
    array element with a sequence". MinMax does not care, and its ranges do not depend on batching.
    """
    rows = max(1, int(rows))
    return next(b for b in range(min(largest, rows), 0, -1) if rows % b == 0)


def reader_for(model, x: np.ndarray) -> ArrayReader:
    """A reader matching the model's single input; models with a fixed batch of 1 get single rows."""
    if len(model.inputs) != 1:
        raise DataError(f"int8 calibration supports single-input models; this model takes {[s.name for s in model.inputs]}")
    spec = model.inputs[0]
    batch = 1 if (spec.shape and spec.shape[0] == 1) else equal_batch(len(x), 32)
    dtype = spec.dtype if not spec.dtype.startswith("onnx:") else "float32"
    return ArrayReader(spec.name, x, dtype, batch)


def cache_path(cache_dir: str | Path | None, model_bytes: bytes, x: np.ndarray, **settings: Any) -> Path | None:
    """Where a calibration with these exact inputs and settings is cached (None: no caching).

    The key covers the model, the calibration array and every setting, so a hit is always the same
    computation; the optimizer uses it to calibrate once and quantize many layer subsets.
    """
    if cache_dir is None:
        return None
    h = hashlib.sha256()
    h.update(model_bytes)
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(repr(sorted(settings.items())).encode())
    return Path(cache_dir) / f"calib-{h.hexdigest()[:24]}.json"
