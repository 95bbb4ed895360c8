"""Quality figures: task metrics with confidence intervals, and fidelity to a reference model.

Task metrics need labels (top-1/top-k accuracy, AUC, MSE, Spearman); fidelity needs only a
reference model's outputs (top-1 agreement, cosine similarity, SQNR in dB), so a model with no
labelled data can still be optimized safely. A custom metric is any callable
``fn(outputs, labels) -> float``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ConfigError, DataError

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class MetricSpec:
    name: str
    needs_labels: bool
    higher_is_better: bool = True
    description: str = ""


METRICS: dict[str, MetricSpec] = {
    "top1": MetricSpec("top1", True, description="top-1 accuracy"),
    "top5": MetricSpec("top5", True, description="top-5 accuracy"),
    "auc": MetricSpec("auc", True, description="ROC AUC of an anomaly score (reconstruction MSE for autoencoders)"),
    "mse": MetricSpec("mse", True, higher_is_better=False, description="mean squared error against the labels"),
    "spearman": MetricSpec("spearman", True, description="Spearman rank correlation of the output with the labels"),
    "agreement": MetricSpec("agreement", False, description="top-1 agreement with the reference model (no labels)"),
    "sqnr": MetricSpec("sqnr", False, description="signal-to-quantization-noise ratio vs the reference, dB (no labels)"),
    "cosine": MetricSpec("cosine", False, description="mean cosine similarity to the reference outputs (no labels)"),
    "deviation": MetricSpec("deviation", False, higher_is_better=False,
                            description="mean absolute difference from the reference outputs, in output units (no labels)"),
}


def metric_spec(metric: str | Callable) -> MetricSpec:
    if callable(metric):
        return MetricSpec(getattr(metric, "__name__", "custom"), needs_labels=False)
    if metric in METRICS:
        return METRICS[metric]
    if isinstance(metric, str) and metric.startswith("top") and metric[3:].isdigit():
        return MetricSpec(metric, True, description=f"top-{metric[3:]} accuracy")
    raise ConfigError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)} (or top<k>, or a Python callable)")


@dataclass(frozen=True)
class Evaluation:
    """A metric value with its 95% confidence interval, the sample count and fidelity figures."""

    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    samples: int
    higher_is_better: bool = True
    fidelity: Mapping[str, float] = field(default_factory=dict)
    per_sample: np.ndarray | None = field(default=None, repr=False, compare=False)
    outputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "ci95": [self.ci_low, self.ci_high],
                "samples": self.samples, "higher_is_better": self.higher_is_better, "fidelity": dict(self.fidelity)}

    def __str__(self) -> str:
        ci = f" (95% CI {self.ci_low:.4f}..{self.ci_high:.4f})" if self.ci_low is not None else ""
        return f"{self.metric} = {self.value:.4f}{ci}, n={self.samples}"


@dataclass(frozen=True)
class Difference:
    """A paired difference ``candidate - baseline`` on the same rows, with its 95% CI."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    samples: int

    def to_dict(self) -> dict:
        return {"metric": self.metric, "difference": self.value, "ci95": [self.ci_low, self.ci_high], "samples": self.samples}


# ------------------------------------------------------------------------------------------------
# Intervals
# ------------------------------------------------------------------------------------------------

def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: well behaved near 0 and 1, unlike the normal one."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of ``statistic`` over rows of ``values`` (seeded: repeatable)."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    if statistic is np.mean:
        stats = values[idx].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in idx])
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


def paired_difference(candidate: Evaluation, baseline: Evaluation) -> Difference:
    """Paired difference of per-sample scores on the same rows (e.g. accuracy drop), bootstrap 95% CI."""
    if candidate.per_sample is None or baseline.per_sample is None:
        raise ConfigError(f"metric {candidate.metric!r} has no per-sample scores; a paired difference needs them")
    if len(candidate.per_sample) != len(baseline.per_sample):
        raise DataError("paired difference needs evaluations on the same rows; "
                        f"got {len(candidate.per_sample)} and {len(baseline.per_sample)} samples")
    diff = candidate.per_sample.astype(np.float64) - baseline.per_sample.astype(np.float64)
    lo, hi = bootstrap_interval(diff)
    return Difference(candidate.metric, float(diff.mean()), lo, hi, len(diff))


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

def _as_scores(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1)


def topk_correct(outputs: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    scores = _as_scores(outputs)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.max(initial=0) >= scores.shape[1] or labels.min(initial=0) < 0:
        raise DataError(f"labels range {labels.min()}..{labels.max()} does not fit the model's {scores.shape[1]} output classes")
    if k == 1:
        return (scores.argmax(axis=1) == labels).astype(np.float64)
    top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1).astype(np.float64)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).reshape(-1)
    if len(np.unique(labels)) != 2:
        raise DataError(f"AUC needs binary labels (normal / anomaly); got classes {np.unique(labels)[:10].tolist()}")
    return float(roc_auc_score(labels, scores))


def anomaly_scores(outputs: np.ndarray, inputs: np.ndarray | None) -> np.ndarray:
    """Reconstruction MSE when the output has the input's shape (autoencoders), else the last output column."""
    out = _as_scores(outputs)
    if inputs is not None and out.shape == _as_scores(inputs).shape:
        return ((out - _as_scores(inputs).astype(out.dtype)) ** 2).mean(axis=1)
    return out[:, -1]


def fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean cosine similarity and SQNR (dB) of ``outputs`` against ``reference``."""
    a = _as_scores(outputs).astype(np.float64)
    r = _as_scores(reference).astype(np.float64)
    if a.shape != r.shape:
        raise DataError(f"outputs {a.shape} and reference outputs {r.shape} differ in shape")
    noise = float(((a - r) ** 2).sum())
    signal = float((r ** 2).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.where(norms > 0, (a * r).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    out = {"cosine": float(cos.mean()), "sqnr_db": float(sqnr), "max_abs_error": float(np.abs(a - r).max(initial=0))}
    if a.shape[1] > 1:
        out["top1_agreement"] = float((a.argmax(axis=1) == r.argmax(axis=1)).mean())
    return out


def score(metric: str | Callable, outputs: np.ndarray, labels: np.ndarray | None, *, inputs: np.ndarray | None = None,
          reference: np.ndarray | None = None) -> Evaluation:
    """Compute ``metric`` from model outputs (first output) and labels / reference outputs."""
    spec = metric_spec(metric)
    n = len(outputs)
    fid = fidelity(outputs, reference) if reference is not None else {}
    if spec.needs_labels and labels is None:
        raise DataError(f"metric {spec.name!r} needs labels but the data has none; use --metric agreement "
                        "(fidelity to the original model) for unlabelled data")
    if callable(metric):
        value = float(metric(outputs, labels))
        return Evaluation(spec.name, value, None, None, n, True, fid, None, outputs)
    name = spec.name
    _refuse_degenerate(name, outputs)
    if name.startswith("top"):
        correct = topk_correct(outputs, labels, int(name[3:]))
        lo, hi = wilson_interval(correct.sum(), n)
        return Evaluation(name, float(correct.mean()), lo, hi, n, True, fid, correct, outputs)
    if name == "auc":
        s = anomaly_scores(outputs, inputs)
        value = roc_auc(s, labels)
        lo, hi = bootstrap_interval(np.stack([s, np.asarray(labels, dtype=np.float64).reshape(-1)], 1),
                                    statistic=lambda rows: _safe_auc(rows[:, 0], rows[:, 1]), samples=500)
        return Evaluation(name, value, lo, hi, n, True, fid, None, outputs)
    if name == "mse":
        err = ((_as_scores(outputs) - _as_scores(np.asarray(labels, dtype=np.float64))) ** 2).mean(axis=1)
        lo, hi = bootstrap_interval(err)
        return Evaluation(name, float(err.mean()), lo, hi, n, False, fid, err, outputs)
    if name == "spearman":
        from scipy.stats import spearmanr

        value = float(spearmanr(_as_scores(outputs)[:, 0], np.asarray(labels).reshape(-1)).statistic)
        return Evaluation(name, value, None, None, n, True, fid, None, outputs)
    if reference is None:
        raise ConfigError(f"metric {name!r} compares against a reference model; none was given")
    if name == "agreement":
        agree = (_as_scores(outputs).argmax(1) == _as_scores(reference).argmax(1)).astype(np.float64)
        lo, hi = wilson_interval(agree.sum(), n)
        return Evaluation(name, float(agree.mean()), lo, hi, n, True, fid, agree, outputs)
    if name == "sqnr":
        return Evaluation(name, fid["sqnr_db"], None, None, n, True, fid, None, outputs)
    if name == "cosine":
        return Evaluation(name, fid["cosine"], None, None, n, True, fid, None, outputs)
    if name == "deviation":
        err = np.abs(_as_scores(outputs).astype(np.float64) - _as_scores(reference).astype(np.float64)).mean(axis=1)
        lo, hi = bootstrap_interval(err)
        return Evaluation(name, float(err.mean()), lo, hi, n, False, fid, err, outputs)
    raise ConfigError(f"metric {name!r} is not implemented")  # unreachable: metric_spec() checked it


def _refuse_degenerate(name: str, outputs) -> None:
    """Top-k, agreement and cosine read each row as a vector of scores: on an output with one value
    per row (a sigmoid probability, a regression) they are constant (argmax is always 0; the cosine
    of two positive numbers is 1), and every candidate would look perfect."""
    if not (name.startswith("top") or name in ("agreement", "cosine")):
        return
    width = _as_scores(np.asarray(outputs)).shape[1] if len(outputs) else 2
    if width == 1:
        raise ConfigError(
            f"metric {name!r} compares rows of several scores, but the output has one value per row (a sigmoid "
            "probability or a regression): it would be the same for any model. Use --metric deviation (mean "
            "absolute difference from the original's outputs, no labels), or mse with labels; choose another "
            "output with --output")


def _safe_auc(s: np.ndarray, y: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return math.nan
    return roc_auc(s, y)


def model_outputs(model: Any, x: Any, *, output: str | int = 0, batch_size: int = 64) -> np.ndarray:
    """One output of ``model`` over samples ``x`` (an array, or ``{input name: array}``), samples on axis 0.

    ``output`` is the output's name or index (default: the first). An output that does not have
    one row per sample (a detector's boxes after NMS) cannot be scored per sample: DataError.
    """
    from .model import load

    handle = load(model)
    result = handle.predict(x, batch_size=batch_size, outputs=[output])[0]
    if isinstance(result, list):
        index = handle._output_indices([output])[0]
        raise DataError(
            f"output {handle.outputs[index].name!r} of model {handle.name!r} does not have one row per sample "
            f"(shape {list(handle.outputs[index].shape)}, e.g. a detector's boxes after NMS), so it cannot be "
            f"scored per sample; choose another output (its outputs are {[o.name for o in handle.outputs]})")
    return result


def has_interval(ci) -> bool:
    """Whether ``ci`` is a usable (low, high) pair: metrics scored on all rows at once (cosine) have
    none (NaN in memory, null once read back from JSON)."""
    return bool(ci) and all(v is not None and v == v for v in ci[:2])


def evaluate(model: Any, data: Any, metric: str | Callable = "top1", *, reference: Any = None,
             batch_size: int = 64, reference_outputs: np.ndarray | None = None, output: str | int = 0) -> Evaluation:
    """Run ``model`` over ``data`` and score it; with ``reference`` also report fidelity to it.

    ``output`` chooses the scored output of a model with several (name or index; default the
    first). ``data`` may hold several inputs (``{input name: array}``, or an .npz read with
    ``load_data(path, x_key="input_ids,attention_mask")``). Without labels, score agreement,
    cosine or sqnr against ``reference`` (the original model; the model itself gives 1.0).

    >>> import edgeopt  # doctest: +SKIP
    >>> edgeopt.evaluate("resnet8.onnx", "cifar.npz", "top1")  # doctest: +SKIP
    Evaluation(metric='top1', value=0.881, ci_low=0.859, ci_high=0.900, samples=1000, ...)
    """
    from .data import fit_to_model, load_data
    from .model import load

    model = load(model)
    data = fit_to_model(load_data(data), model)
    outputs = model_outputs(model, data.x, output=output, batch_size=batch_size)
    if reference_outputs is None and reference is not None:
        ref_model = load(reference)
        ref_data = fit_to_model(data, ref_model)
        reference_outputs = model_outputs(ref_model, ref_data.x, output=output, batch_size=batch_size)
    inputs = data.x if isinstance(data.x, np.ndarray) else None
    return score(metric, outputs, data.y, inputs=inputs, reference=reference_outputs)
