"""``optimize()``: accuracy-guarded post-training compression that is measured, not hoped for.

Given a model, labelled (or unlabelled) data and an accuracy budget, it builds candidates (int8
variants, fp16, int4, mixed precision guided by per-layer sensitivity), evaluates each on the
tuning rows and again on held-out evaluation rows (never the calibration rows), benchmarks all of
them against the input in one interleaved run, and chooses the fastest candidate whose held-out
drop stays within the budget. A candidate slower than its input is never chosen for a latency goal.

>>> import edgeopt                                                                 # doctest: +SKIP
>>> result = edgeopt.optimize("resnet8.onnx", data="cifar.npz", max_drop=0.005,
...                           splits="calib=0:500,eval=500:")                        # doctest: +SKIP
>>> result.best.name, result.best.latency_ratio                                    # doctest: +SKIP
>>> result.save("out/")                                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .search.outcome import SearchOutcome

from .errors import BudgetError, ConfigError, DataError, EdgeOptError, UnsupportedModelError, VerificationError, first_line
from .profiling import matmul_dominated

TECHNIQUES = ("int8", "fp16", "int4", "mixed", "dynamic")  # "dynamic": int8-dynamic even for conv nets
GOALS = ("latency", "size")
DEFAULT_TECHNIQUES = ("int8", "fp16", "int4", "mixed")
# Per-layer sensitivity runs on at most this many tuning rows: it ranks layers, it is not the verdict.
SENSITIVITY_ROWS = 256
# Mixed precision stops after MIXED_STALL steps in a row that did not close MIXED_MIN_GAIN of the
# int8 base's gap to the budget (on a 22M-parameter transformer each step costs ~20 s).
MIXED_STALL = 3
MIXED_MIN_GAIN = 0.05
# Relative latency difference treated as a tie when choosing (then the smaller model wins). 5% while the
# ratios came from fresh-process rounds; the interleaved ratios repeat to about +-0.5%, and at 5% a graph
# 240 bytes smaller but 4% slower won (ResNet-8: padded first layer 0.506x over packed 0.487x).
LATENCY_TIE = 0.02
# Seconds of alternating runs that decide the latency ratios (edgeopt.bench.compare_interleaved), and
# the most model bytes loaded side by side for it (beyond, the fresh-process ratios decide).
INTERLEAVE_BUDGET_S = 8.0
INTERLEAVE_MAX_BYTES = 2 * 2**30
# Which accurate candidates the confirmation benchmark re-measures for the reported ms, load time and
# memory: the CONFIRM_TOP fastest, and any other within CONFIRM_WITHIN of the fastest, at most CONFIRM_MAX.
CONFIRM_TOP = 3
CONFIRM_WITHIN = 0.15
CONFIRM_MAX = 6


@dataclass
class Candidate:
    """One model tried: how it was made, what it scored, what it costs, and why it was kept or dropped."""

    name: str
    technique: str
    recipe: Any = None                     # edgeopt.recipe.Recipe
    model: Any = None                      # ModelHandle (None when building failed)
    tune: Any = None                       # Evaluation on the tuning rows
    eval: Any = None                       # Evaluation on the held-out rows
    drop_tune: float | None = None
    drop_eval: Any = None                  # Difference (candidate - baseline) with CI, metric units
    bench: Mapping[str, Any] | None = None
    latency_ratio: float | None = None
    size_ratio: float | None = None
    status: str = "pending"                # chosen | kept | dropped | failed
    reason: str = ""
    stats: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size_bytes(self) -> int | None:
        return self.model.size_bytes if self.model is not None else None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "technique": self.technique, "status": self.status, "reason": self.reason,
            "size_bytes": self.size_bytes, "size_ratio": self.size_ratio, "latency_ratio": self.latency_ratio,
            "bench": dict(self.bench) if self.bench else None,
            "tune": self.tune.to_dict() if self.tune is not None else None,
            "eval": self.eval.to_dict() if self.eval is not None else None,
            "drop_tune": self.drop_tune,
            "difference_eval": self.drop_eval.to_dict() if self.drop_eval is not None else None,
            "recipe": self.recipe.to_dict() if self.recipe is not None else None,
            "stats": self.stats, "build_seconds": round(self.seconds, 2),
        }


@dataclass
class OptimizeResult:
    """What ``optimize`` found: the baseline, every candidate, the chosen one and the report data."""

    baseline: Candidate
    candidates: list[Candidate]
    best: Candidate | None
    report_data: dict
    eval_data: Any = field(repr=False, default=None)

    @property
    def pareto(self) -> list[Candidate]:
        """Candidates within the accuracy budget on the held-out rows that no other such candidate
        beats on both latency and size (fastest first)."""
        ok = [c for c in self.candidates if c.model is not None and c.latency_ratio is not None
              and _within(_eval_drop(c), self.report_data["settings"]["max_drop"])]
        front = [c for c in ok if not any(
            o.latency_ratio <= c.latency_ratio and o.size_bytes <= c.size_bytes
            and (o.latency_ratio < c.latency_ratio or o.size_bytes < c.size_bytes) for o in ok)]
        return sorted(front, key=lambda c: (c.latency_ratio, c.size_bytes))

    def report(self, path: str | os.PathLike | None = None) -> dict:
        """The report as a dict; with ``path`` also write it (``.json`` or ``.html``) atomically."""
        if path is not None:
            from ._io import write_text_atomic
            from .report import render_html, to_json

            path = Path(path)
            text = render_html(self.report_data) if path.suffix.lower() in (".html", ".htm") else to_json(self.report_data)
            write_text_atomic(path, text)
        return self.report_data

    def save(self, out: str | os.PathLike) -> Path:
        """Write model.onnx, recipe.yaml, report.json and report.html into ``out`` as one unit.

        Everything is built in a temporary folder beside ``out`` and renamed into place, so an
        interruption leaves either the previous folder or the complete new one. The model is
        re-loaded from its bytes and re-scored before writing; it must reproduce the report's figure.
        """
        from .report import render_html, to_json

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            if self.best is not None:
                verify_emitted(self.best, self.eval_data, self.report_data)
                (tmp / "model.onnx").write_bytes(self.best.model.onnx_bytes)
                (tmp / "recipe.yaml").write_text(self.best.recipe.to_yaml(), encoding="utf-8")
            (tmp / "report.json").write_text(to_json(self.report_data), encoding="utf-8")
            (tmp / "report.html").write_text(render_html(self.report_data), encoding="utf-8")
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def _replace_dir(new: Path, dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--out {str(dest)!r} is a file; give a folder")
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_emitted(candidate: Candidate, eval_data, report_data: Mapping) -> None:
    """Fresh ONNX Runtime session from the bytes about to be written: it loads, runs, and scores
    exactly what the report says on the held-out rows (else VerificationError, nothing written)."""
    from .evaluation import score
    from .model import ModelHandle

    fresh = ModelHandle(candidate.model.onnx_bytes, name="emitted")
    scored = report_data.get("data", {}).get("output")
    outputs = fresh.predict(eval_data.x, outputs=[scored] if scored else None)[0]
    if not np.all(np.isfinite(outputs)):
        raise VerificationError("the chosen model produces non-finite outputs; not written")
    reference = report_data.get("_reference_eval_outputs")
    metric = report_data["settings"]["metric"]
    value = score(metric, outputs, eval_data.y, inputs=eval_data.x,
                  reference=reference if reference is not None else None).value
    stated = report_data["chosen"]["eval"]["value"]
    if not (value == stated or abs(value - stated) <= 1e-12):
        raise VerificationError(f"the chosen model scores {value} on the evaluation rows but the report states {stated}; not written")


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------

def parse_techniques(techniques: str | Sequence[str] | None) -> tuple[str, ...]:
    if techniques is None:
        return DEFAULT_TECHNIQUES
    items = [t.strip() for t in (techniques.split(",") if isinstance(techniques, str) else techniques) if t and t.strip()]
    unknown = [t for t in items if t not in TECHNIQUES]
    if unknown or not items:
        raise ConfigError(f"--techniques must be a comma-separated subset of {', '.join(TECHNIQUES)}; got {techniques!r}")
    return tuple(dict.fromkeys(items))


def parse_time_budget(value: str | float | int | None) -> float | None:
    """'10m' / '90s' / '1h' / seconds -> seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"s": 1, "m": 60, "h": 3600}
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
        except ValueError:
            raise ConfigError(f"--time-budget must be a duration like '90s', '10m' or '1h'; got {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"--time-budget must be positive; got {value!r}")
    return seconds


def check_max_drop(max_drop: float, metric_spec) -> float:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not np.isfinite(max_drop):
        raise ConfigError(f"max_drop must be a number; got {max_drop!r}")
    if metric_spec.name.startswith("top") or metric_spec.name == "agreement":
        if not 0 <= max_drop < 1:
            raise ConfigError(f"max_drop for {metric_spec.name} is a fraction in [0, 1) (0.005 = 0.5 points); got {max_drop!r}")
    elif max_drop < 0:
        raise ConfigError(f"max_drop must be >= 0; got {max_drop!r}")
    if metric_spec.name == "sqnr":
        raise ConfigError("--metric sqnr cannot be a budget: the original's SQNR against itself is infinite, so every "
                          "candidate drops by infinity. Use --metric deviation (mean absolute difference from the "
                          "original's outputs, output units) or cosine; SQNR is reported for every candidate anyway")
    return float(max_drop)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

class _Progress:
    """Rich progress bars on stderr, one task per step; silent when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<44}"), BarColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def step(self, description: str):
        if self._bar is not None:
            if self._task is not None:
                self._bar.update(self._task, completed=1.0)
            self._task = self._bar.add_task(description, total=1.0)

    def update(self, message: str, fraction: float):
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=max(0.0, min(1.0, fraction)))

    def done(self):
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=1.0)


def optimize(
    model: Any,
    data: Any = None,
    *,
    metric: str | Callable = "top1",
    max_drop: float = 0.005,
    splits: str | Mapping[str, Any] | None = None,
    techniques: str | Sequence[str] | None = None,
    time_budget: str | float | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    goal: str = "latency",
    x_key: str = "x",
    y_key: str | None = "y",
    bench_rounds: int = 5,
    bench_iterations: int = 100,
    calibration_samples: int = 256,
    quick: bool = False,
    target: Any = None,
    objectives: str | Sequence[str] | None = None,
    trials: int | None = None,
    study: str | None = None,
    study_name: str = "edgeopt",
    resume: bool = False,
    sampler: str = "tpe",
    drop_bound: str = "upper",
    output: str | int | None = None,
) -> "OptimizeResult | SearchOutcome":
    """Compress ``model`` within an accuracy budget and return the measured candidates.

    Two modes, one result shape (``.best``, ``.pareto``, ``.save(dir)``, ``.report(path)``):

    - **search** when any of ``target``, ``objectives``, ``trials`` or ``study`` is given: the
      target-aware multi-objective search over every registered pass
      (:func:`edgeopt.search.outcome.optimize_with_search`; ``techniques`` then names passes or
      families, ``splits`` needs ``calib``, ``tune`` and ``eval`` rows, optional ``train``;
      ``drop_bound`` judges the budget on the drop's 95% CI upper end (``"upper"``) or its point
      estimate (``"estimate"``));
    - **PTQ candidates** otherwise: the fixed list of int8 / fp16 / int4 / mixed variants below.

    ``max_drop`` is in metric units (0.005 = half a point of top-1). ``splits`` names disjoint row
    ranges (``"calib=0:500,eval=500:"``, optional ``tune``); without a ``tune`` range, tuning
    decisions use the calibration rows (stated in the report). The choice is made on the
    ``eval`` rows. With ``out`` the result is saved there (see :meth:`OptimizeResult.save`); a
    BudgetError (exit code 2) is raised after writing the report when nothing meets the budget.
    ``quick=True`` tries one int8 variant (plus mixed precision if needed) and skips the
    confirmation benchmark: for smoke runs and tests. ``output`` (a name or index) is the model
    output the metric scores, in both modes (default the first: a detector's class scores may come
    second); every output is kept in the emitted model.
    """
    from .data import Dataset, fit_to_model, load_data, parse_split_spec, shuffle_seed, split
    from .evaluation import metric_spec
    from .model import load_with_data

    started = time.monotonic()
    budget_s = parse_time_budget(time_budget)
    spec = metric_spec(metric)
    max_drop = check_max_drop(max_drop, spec)
    if any(v is not None for v in (target, objectives, trials, study)):
        from .search.outcome import optimize_with_search

        if data is None:
            raise DataError("optimize() needs data: calibration rows, tune rows to compare candidates on and held-out eval rows")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an integer; got {seed!r}")
        from .search.study import check_drop_bound

        check_drop_bound(drop_bound, name="--drop-bound")   # before any data is read or model loaded
        return optimize_with_search(model, data, target=target or "host", objectives=objectives, trials=trials, study=study,
                                    study_name=study_name, resume=resume, sampler=sampler, techniques=techniques, drop_bound=drop_bound,
                                    metric=metric, max_drop=max_drop, splits=splits, time_budget=budget_s, seed=seed,
                                    out=out, progress=progress, x_key=x_key, y_key=y_key, output=output)
    chosen_techniques = parse_techniques(techniques)
    if goal not in GOALS:
        raise ConfigError(f"goal must be one of {list(GOALS)}; got {goal!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer; got {seed!r}")
    if data is None:
        raise DataError("optimize() needs data: calibration rows to quantize with and held-out rows to check the budget")

    dataset = data if isinstance(data, Dataset) else load_data(data, x_key=x_key, y_key=y_key)
    handle = load_with_data(model, dataset)  # an nn.Module without example inputs is traced on the data
    source_path = str(model) if isinstance(model, (str, os.PathLike)) else None
    scored = handle.output_name(output)
    if spec.needs_labels and not dataset.has_labels:
        raise DataError(f"metric {spec.name!r} needs labels but data {dataset.name!r} has none "
                        f"(no {y_key!r} array); use --metric agreement to optimize for fidelity to the original model")
    dataset = fit_to_model(dataset, handle)
    from .passes.quantize_int8 import quantizable_nodes

    if not quantizable_nodes(handle.proto()) and set(chosen_techniques) <= {"int8", "mixed", "int4", "fp16", "dynamic"}:
        if _already_quantized(handle.proto()):
            raise UnsupportedModelError(
                f"model {handle.name!r} is already quantized: its layers read int8 weights through DequantizeLinear, "
                "so there is nothing left to quantize; give edgeopt the float model (e.g. the float32 .tflite) and it "
                "will quantize, measure and compare; nothing was written")
        raise UnsupportedModelError(
            f"model {handle.name!r} has no Conv/Gemm/MatMul layer with constant weights: there is nothing to quantize "
            "(its ops: " + ", ".join(sorted({n.op_type for n in handle.proto().graph.node})) + "); nothing was written")
    split_spec = parse_split_spec(splits) if isinstance(splits, str) else dict(splits or {})
    if not split_spec:
        half = len(dataset) // 2
        if len(dataset) < 4:
            raise DataError(f"data {dataset.name!r} has only {len(dataset)} rows; need at least 4 to hold out evaluation rows")
        split_spec = {"calib": f"0:{half}", "eval": f"{half}:"}
    for required in ("calib", "eval"):
        if required not in split_spec:
            raise ConfigError(f"splits must name 'calib' and 'eval' row ranges (e.g. 'calib=0:500,eval=500:'); got {split_spec}")
    parts = split(dataset, split_spec)
    calib, eval_data = parts["calib"], parts["eval"]
    tune = parts.get("tune")
    tune_note = "tuning decisions on the separate tune rows" if tune is not None else \
        "no tune split given: tuning decisions (sensitivity, mixed precision) used the calibration rows; the choice was checked on the held-out eval rows"
    tune = tune if tune is not None else calib

    candidates: list[Candidate] = []
    notes: list[str] = []  # how the run went, for the report (e.g. why mixed precision stopped)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeopt-opt-")))
        bar = stack.enter_context(_Progress(progress))
        from .passes import PassContext

        ctx = PassContext(calib=calib, tune=tune, metric=metric, seed=seed,
                          progress=bar.update, options={"calibration_cache_dir": str(work / "calib-cache"), "output": scored})
        data_record = {"source": str(data) if isinstance(data, (str, os.PathLike)) else dataset.name,
                       "x_key": x_key, "y_key": y_key, "splits": {k: list(v.rows) for k, v in parts.items()}, "shuffle": shuffle_seed(split_spec),
                       "output": scored}

        # -- baseline ------------------------------------------------------------------------------
        bar.step("evaluating the original model")
        rng_state = np.random.get_state()
        np.random.seed(seed)  # ORT's quantizer and any numpy sampling are deterministic under a seed
        ref_tune = handle.predict(tune.x, outputs=[scored])[0]
        ref_eval = handle.predict(eval_data.x, outputs=[scored])[0]
        baseline = Candidate("original", "none", model=handle, status="baseline")
        baseline.tune = _score(metric, ref_tune, tune, ref_tune)
        baseline.eval = _score(metric, ref_eval, eval_data, ref_eval)
        bar.done()

        def over_budget() -> bool:
            return budget_s is not None and time.monotonic() - started > budget_s

        def evaluate_candidate(c: Candidate) -> None:
            c.tune = _score(metric, c.model.predict(tune.x, outputs=[scored])[0], tune, ref_tune)
            c.drop_tune = _drop(baseline.tune, c.tune)
            c.eval = _score(metric, c.model.predict(eval_data.x, outputs=[scored])[0], eval_data, ref_eval)
            c.drop_eval = _difference(c.eval, baseline.eval)

        def build(name: str, technique: str, steps: list, pre_stats: list | None = None) -> Candidate:
            from .recipe import Recipe

            recipe = Recipe.of(steps, seed=seed, data={**data_record, "calibration_rows": None},
                               metadata={"candidate": name, "metric": spec.name, "max_drop": max_drop})
            c = Candidate(name, technique, recipe=recipe)
            t0 = time.monotonic()
            try:
                np.random.seed(seed)
                c.model, c.stats = recipe.apply(handle, ctx)
                c.model.name = name
                rows = next((s.get("calibration_rows") for s in c.stats if s.get("calibration_rows")), None)
                if rows:
                    c.recipe = Recipe(recipe.steps, recipe.seed, {**data_record, "calibration_rows": rows}, recipe.metadata)
                evaluate_candidate(c)
                c.status = "kept"
            except EdgeOptError as e:
                c.status, c.reason = "failed", f"{type(e).__name__}: {e}"
            c.seconds = time.monotonic() - t0
            candidates.append(c)
            return c

        from .passes import make_pass

        # Graph cleanup first, when it keeps the outputs within its tolerance (1e-5). On a deep net
        # folding can move a softmax output by float rounding alone (PP-OCRv4's recognizer: 1.4e-5);
        # then every candidate is built from the graph as given, and the report says why.
        fold = make_pass("fold")
        bar.step("graph cleanup (fold)")
        try:
            folded_handle = fold(handle, ctx).model
            prep = [fold]
        except EdgeOptError as e:
            folded_handle, prep = handle, []
            notes.append(f"fold skipped, candidates built from the graph as given: {first_line(e)}")
        bar.done()
        # float_tail: a classifier's last Gemm outputs float and its Softmax runs float (ORT: faster and
        # not rounded to 256 levels; DS-CNN 0.746x -> 0.736x, ResNet-8 0.489x -> 0.484x in one interleaved
        # run each); a no-op where the graph ends otherwise
        int8_default = {"samples": calibration_samples, "float_tail": True}
        plans: list[tuple[str, str, list]] = []
        if "int8" in chosen_techniques or "mixed" in chosen_techniques:
            plans.append(("int8-minmax", "int8", [*prep, make_pass("quantize.int8", int8_default)]))
        if "int8" in chosen_techniques and not quick:
            plans += [
                ("int8-percentile", "int8", [*prep, make_pass("quantize.int8", {**int8_default, "calibration": "percentile"})]),
                ("int8-qoperator", "int8", [*prep, make_pass("quantize.int8", {**int8_default, "format": "qoperator"})]),
                ("int8-ort-fused", "int8", [*prep, make_pass("quantize.int8", int8_default), make_pass("ort.optimize")]),
            ]
        if "int8" in chosen_techniques and not quick:
            plans.append(("int8-bias-corrected", "int8",
                          [*prep, make_pass("quantize.int8", {**int8_default, "bias_correction": True})]))
            if _has_depthwise(handle.proto()):
                plans.append(("int8-cle-bias-corrected", "int8",
                              [*prep, make_pass("equalize"), make_pass("quantize.int8", {**int8_default, "bias_correction": True})]))
        # one scan of the graph (proto() copies it: 90 MB for a MiniLM) for both matmul-only candidates
        matmul_heavy = "int8" in chosen_techniques and not quick and matmul_dominated(handle.proto())
        if matmul_heavy or "dynamic" in chosen_techniques:
            # transformers, RNNs, MLPs: activations quantized per run need no calibration coverage
            plans.append(("int8-dynamic", "int8", [*prep, make_pass("quantize.dynamic")]))
            # per-channel weight scales: all-MiniLM-L6-v2 kept 0.992 cosine with them, 0.954 without
            plans.append(("int8-dynamic-per-channel", "int8", [*prep, make_pass("quantize.dynamic", {"per_channel": True})]))
        if matmul_heavy:
            # static int8 of the weighted layers only: a transformer's residual stream, LayerNorm and
            # GELU outputs stay float (their outlier channels defeat one per-tensor scale)
            plans.append(("int8-weighted-ops", "int8", [*prep, make_pass("quantize.int8", {**int8_default, "ops": "weighted"})]))
        if "int8" in chosen_techniques and not quick:
            from .quant.control_flow import control_flow_weights

            if control_flow_weights(folded_handle.proto()):
                # weights inside If/Loop bodies (Silero VAD's LSTM), which ORT's quantizer leaves float:
                # stored int8 they shrink the file, but ORT then dequantizes them every run
                plans.append(("int8-control-flow-weights", "int8",
                              [*prep, make_pass("quantize.int8", {**int8_default, "control_flow_weights": True})]))
        if "fp16" in chosen_techniques:
            plans.append(("fp16", "fp16", [*prep, make_pass("quantize.fp16")]))
        if "int4" in chosen_techniques:
            plans.append(("int4-weight-only", "int4", [make_pass("quantize.int4")]))

        int8_possible = True
        for i, (name, technique, steps) in enumerate(plans):
            if over_budget():
                candidates.append(Candidate(name, technique, status="dropped", reason="not tried: --time-budget reached"))
                continue
            bar.step(f"building {name}")
            c = build(name, technique, steps)
            if technique == "int8" and c.status == "failed" and "UnsupportedModelError" in c.reason:
                int8_possible = False
            bar.done()

        # First layers with very few input channels run slower in int8 on ORT's CPU kernels (measured:
        # DS-CNN's 1-channel 10x4 conv, ResNet-8's RGB conv); offer the variant that keeps them float.
        proto = folded_handle.proto() if int8_possible and "int8" in chosen_techniques and not quick else None
        if proto is not None and not over_budget():
            thin = _thin_input_layers(proto)
            if thin:
                bar.step("building int8 with thin first layer in float")
                build("int8-first-layer-float", "int8",
                      [*prep, make_pass("quantize.int8", {**int8_default, "exclude_nodes": thin})])
                build("int8-first-layer-float-qoperator", "int8",
                      [*prep, make_pass("quantize.int8", {**int8_default, "exclude_nodes": thin, "format": "qoperator"})])
                # ...or keep it int8 but widened to 4 channels, where ORT's fast symmetric int8 kernel applies
                build("int8-padded-first-layer", "int8",
                      [*prep, make_pass("quantize.int8", {**int8_default, "pad_channels": True})])
                # ...or rewritten exactly as a conv on 4+ channels: when strided, SpaceToDepth + a stride-1
                # conv (same MACs; DS-CNN on a Zen 4 CPU: 0.74x fp32 and 0.29x the file, against 0.77x /
                # 0.36x with the layer float); at any stride, the rows' pixels packed into channels by free
                # channels-last Reshapes (more MACs; ResNet-8's RGB stem on Zen 4: 0.49x against 0.51x
                # padded). QOperator: the smaller file, measured no slower.
                from .quant.pack_width import pack_width_plan
                from .quant.space_to_depth import space_to_depth_plan
                from .quant.thin_convs import thin_convs

                rewritable = thin_convs(proto)
                if any(space_to_depth_plan(t) for t in rewritable):
                    build("int8-space-to-depth-first-layer", "int8",
                          [*prep, make_pass("quantize.int8", {**int8_default, "space_to_depth": True, "format": "qoperator"})])
                if any(pack_width_plan(t) for t in rewritable):
                    build("int8-packed-first-layer", "int8",
                          [*prep, make_pass("quantize.int8", {**int8_default, "pack_width": True, "format": "qoperator"})])
                bar.done()

        # -- per-layer sensitivity and mixed precision ----------------------------------------------
        sensitivity: list[dict] = []
        if int8_possible and ("int8" in chosen_techniques or "mixed" in chosen_techniques) and not over_budget():
            from .quant.sensitivity import layer_sensitivity

            # Mixed precision starts from the more accurate static int8 base: all ops quantized, or
            # (offered for matmul-heavy models) only the weighted layers. Sensitivity is measured the
            # same way, so that it ranks the layers of the graph mixed precision will edit.
            bases = [c for c in candidates if c.name in ("int8-minmax", "int8-weighted-ops") and c.status == "kept"
                     and c.drop_tune is not None]
            base_int8 = min(bases, key=lambda c: (c.drop_tune, c.name != "int8-minmax")) if bases else None
            ops = {"ops": "weighted"} if base_int8 is not None and base_int8.name == "int8-weighted-ops" else {}
            bar.step("per-layer sensitivity (one layer int8 at a time)")
            sensitivity = layer_sensitivity(folded_handle, ctx, rows=tune.take(0, min(SENSITIVITY_ROWS, len(tune))).x,
                                            reference=ref_tune[:SENSITIVITY_ROWS], samples=calibration_samples, output=scored,
                                            progress=bar.update, **ops)
            bar.done()
            if "mixed" in chosen_techniques and base_int8 is not None and not _within(base_int8.drop_tune, max_drop):
                ranked = [s["layer"] for s in sorted(sensitivity, key=lambda s: s["sqnr_db"])]
                prefix = "int8-weighted-mixed" if ops else "int8-mixed"
                best_drop, stalled = base_int8.drop_tune, 0
                # a step "helps" when it closes at least MIXED_MIN_GAIN of the base's gap to the budget
                min_gain = MIXED_MIN_GAIN * (base_int8.drop_tune - max_drop)
                for k in range(1, max(1, len(ranked) // 2) + 1):
                    if over_budget():
                        break
                    if stalled >= MIXED_STALL:
                        # each step costs a quantization and an evaluation (20 s on a 22M-parameter
                        # transformer): stop once more float layers stop helping
                        notes.append(f"mixed precision stopped after {k - 1} float layer(s): the last {MIXED_STALL} steps "
                                     f"did not lower the tune drop by {min_gain:.4g} below {best_drop:.4f}")
                        break
                    bar.step(f"mixed precision: {k} most sensitive layer(s) float")
                    c = build(f"{prefix}-{k}-float", "mixed",
                              [*prep, make_pass("quantize.int8", {**int8_default, "exclude_nodes": ranked[:k], **ops})])
                    bar.done()
                    if c.status == "kept" and _within(c.drop_tune, max_drop):
                        break
                    if c.drop_tune is not None and c.drop_tune < best_drop - min_gain:
                        best_drop, stalled = c.drop_tune, 0
                    else:
                        stalled += 1

        # -- benchmark everything that built, in one interleaved run --------------------------------
        # a candidate whose graph was built but failed to load or score is not benchmarked (one such
        # model stopped the whole run: an opset-11 model's int8 graph that ONNX Runtime refused)
        built = [c for c in candidates if c.model is not None and c.status == "kept"]
        if over_budget():
            # benchmarking is the last step; with the budget spent, still measure (a choice needs it) but briefly
            bench_rounds = min(bench_rounds, 2)
        bench_info = {}
        if built:
            from .bench import benchmark

            bench_feeds = handle.feeds_from_samples(eval_data.take(0, 1).x)  # one real sample, model layout
            bar.step(f"benchmarking {len(built) + 1} models ({bench_rounds} rounds)")
            report = benchmark([handle, *[c.model for c in built]], threads=1, rounds=bench_rounds,
                               iterations=bench_iterations, warmup=10, inputs=bench_feeds, progress=bar.update)
            bench_info = dict(report.settings)
            base_size = _baseline_size(handle, source_path)
            baseline.bench = _bench_dict(report.results[0])
            baseline.size_ratio = 1.0
            baseline.latency_ratio = 1.0
            for c, r in zip(built, report.results[1:]):
                c.bench = {**_bench_dict(r), "best_round_ratio": _best_round_ratio(r, report.results[0])}
                c.latency_ratio = paired_latency_ratio(r, report.results[0])
                c.size_ratio = c.model.size_bytes / base_size
            bar.done()

            # -- the ratios that decide: every model timed in alternation in one process ------------------
            # Fresh-process rounds are seconds apart and this machine's speed drifts between them: one
            # screening run ranked ResNet-8's two fastest graphs (4% apart) the wrong way round, and a
            # confirmation run during a slow phase made every contender look slower than a candidate it
            # did not re-measure. Blocks milliseconds apart in one worker give the same ratios run after run.
            from .bench import compare_interleaved

            inter, together = None, handle.size_bytes + sum(c.model.size_bytes for c in built)
            if together > INTERLEAVE_MAX_BYTES:
                notes.append(f"latency ratios from fresh-process rounds: the {len(built) + 1} models hold "
                             f"{together / 2**30:.1f} GiB, too much to load side by side in one process")
            else:
                bar.step(f"comparing {len(built) + 1} models in alternation")
                try:
                    inter = compare_interleaved([handle, *[c.model for c in built]], threads=1, inputs=bench_feeds,
                                                budget_s=INTERLEAVE_BUDGET_S if not (quick or over_budget()) else 2.0)
                except EdgeOptError as e:  # each loaded alone in its own process; keep those ratios, say why
                    notes.append(f"latency ratios from fresh-process rounds: the models could not be timed side by side "
                                 f"in one process ({first_line(e)})")
                bar.done()
            if inter is not None:
                for c, ratio, cycle_ratio, iqr in zip(built, inter.ratios[1:], inter.cycle_ratios[1:], inter.ratio_iqr[1:]):
                    c.bench = {**c.bench, "fresh_process_ratio": c.latency_ratio, "interleaved_cycle_ratio": cycle_ratio,
                               "interleaved_ratio_iqr": list(iqr)}
                    c.latency_ratio = ratio
                bench_info = {**bench_info, "interleaved": {"cycles": inter.cycles, "block": inter.block,
                                                            "budget_s": inter.settings["budget_s"]}}

            # -- confirm: the contenders' reported figures (ms, load time, memory) from a longer run ------
            contenders = _contenders(candidates, max_drop, goal)
            if contenders and not over_budget() and not quick:
                bar.step(f"confirming {len(contenders)} fastest ({2 * bench_rounds} rounds)")
                confirm = benchmark([handle, *[c.model for c in contenders]], threads=1, rounds=2 * bench_rounds,
                                    iterations=bench_iterations, warmup=10, inputs=bench_feeds, progress=bar.update)
                baseline.bench = {**_bench_dict(confirm.results[0]), "run": "confirmation"}
                for c, r in zip(contenders, confirm.results[1:]):
                    c.bench = {**_bench_dict(r), "run": "confirmation",
                               "interleaved_ratio_iqr": c.bench.get("interleaved_ratio_iqr"),
                               "interleaved_cycle_ratio": c.bench.get("interleaved_cycle_ratio"),
                               "fresh_process_ratio": paired_latency_ratio(r, confirm.results[0]),
                               "best_round_ratio": _best_round_ratio(r, confirm.results[0])}
                bench_info = {**bench_info, "confirmation_rounds": 2 * bench_rounds,
                              "confirmed": [c.name for c in contenders]}
                bar.done()
        np.random.set_state(rng_state)

    # -- choose ------------------------------------------------------------------------------------
    best = _choose(candidates, max_drop, goal)
    report_data = _report_data(handle, source_path, baseline, candidates, best, sensitivity, spec, max_drop, goal,
                               chosen_techniques, seed, data_record, tune_note, bench_info, parts, time.monotonic() - started,
                               notes)
    if spec.name in ("agreement", "sqnr", "cosine", "deviation"):
        report_data["_reference_eval_outputs"] = ref_eval
    result = OptimizeResult(baseline, candidates, best, report_data, eval_data)
    if out is not None:
        result.save(out)
    if best is None:
        error = BudgetError(_no_choice_message(candidates, max_drop, goal, spec.name) + (f"; report written to {out}" if out else ""))
        error.result = result  # every candidate measured, as the search's BudgetError carries its result
        raise error
    return result


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def _score(metric, outputs, data, reference):
    from .evaluation import score

    return score(metric, outputs, data.y, inputs=data.x, reference=reference)


def _drop(baseline, candidate) -> float:
    """How much worse the candidate is, in metric units (positive = worse)."""
    diff = candidate.value - baseline.value
    return float(-diff if baseline.higher_is_better else diff)


def _difference(candidate, baseline):
    from .evaluation import Difference, paired_difference

    if candidate.per_sample is not None and baseline.per_sample is not None:
        return paired_difference(candidate, baseline)
    return Difference(candidate.metric, candidate.value - baseline.value, float("nan"), float("nan"), candidate.samples)


def _within(drop: float | None, max_drop: float) -> bool:
    return drop is not None and drop <= max_drop + 1e-12


def _eval_drop(c: Candidate) -> float | None:
    if c.drop_eval is None or c.eval is None:
        return None
    return float(-c.drop_eval.value if c.eval.higher_is_better else c.drop_eval.value)


def _choose(candidates: list[Candidate], max_drop: float, goal: str) -> Candidate | None:
    eligible = []
    for c in candidates:
        if c.status != "kept":
            continue
        drop = _eval_drop(c)
        if not _within(drop, max_drop):
            c.status, c.reason = "dropped", f"held-out drop {drop:.4f} exceeds the budget {max_drop:.4f}"
            continue
        if c.latency_ratio is None:
            c.status, c.reason = "dropped", "not benchmarked"
            continue
        if goal == "latency" and c.latency_ratio >= 1.0:
            c.status, c.reason = "dropped", (f"meets the accuracy budget but runs {c.latency_ratio:.2f}x the input's latency "
                                             "(slower than the input is never chosen for a latency goal)")
            continue
        eligible.append(c)
    if not eligible:
        return None
    if goal == "latency":
        # Latencies within LATENCY_TIE of the fastest are one measurement apart, not a real difference
        # (round medians on a shared VM drift by more): among those, the smaller file wins.
        fastest = min(c.latency_ratio for c in eligible)
        eligible.sort(key=lambda c: (c.latency_ratio > fastest * (1 + LATENCY_TIE), c.size_bytes, c.latency_ratio))
    else:
        eligible.sort(key=lambda c: (c.size_bytes, c.latency_ratio))
    best = eligible[0]
    best.status, best.reason = "chosen", (
        f"fastest within the budget (smallest of those within {LATENCY_TIE:.0%} of the fastest latency)" if goal == "latency"
        else "smallest candidate within the budget (size goal)")
    for c in eligible[1:]:
        c.reason = f"within the budget but {'slower' if goal == 'latency' else 'larger'} than {best.name}"
    return best


def _contenders(candidates: list[Candidate], max_drop: float, goal: str, top: int = CONFIRM_TOP,
                within: float = CONFIRM_WITHIN, most: int = CONFIRM_MAX) -> list[Candidate]:
    """The accurate candidates worth re-measuring: fastest first (latency goal) or smallest (size goal);
    for the latency goal also every candidate screened within ``within`` of the fastest (up to ``most``)."""
    ok = [c for c in candidates if c.status == "kept" and c.latency_ratio is not None and _within(_eval_drop(c), max_drop)]
    if goal == "latency":
        ok.sort(key=lambda c: (c.latency_ratio, c.size_bytes))
        close = [c for c in ok[top:most] if c.latency_ratio <= ok[0].latency_ratio * (1 + within)]
        return ok[:top] + close
    ok.sort(key=lambda c: (c.size_bytes, c.latency_ratio))
    return ok[:top]


def _no_choice_message(candidates, max_drop, goal, metric) -> str:
    tried = [c for c in candidates if c.status in ("dropped", "failed")]
    reasons = "; ".join(f"{c.name}: {c.reason}" for c in tried[:6])
    return f"no candidate meets the budget (max drop {max_drop:g} in {metric}, goal {goal}): {reasons}"


def _thin_input_layers(proto) -> list[str]:
    """Weighted layers reading the graph input (through layout ops only) with <= 4 input channels."""
    inits = {i.name: i for i in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input if i.name not in inits}
    producers = {o: n for n in proto.graph.node for o in n.output}
    out = []
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if len(w.dims) < 2 or int(w.dims[1]) > 4:
            continue
        src, hops = node.input[0], 0
        while src not in graph_inputs and src in producers and hops < 4:
            p = producers[src]
            if p.op_type not in ("Transpose", "Reshape", "Cast", "Identity"):
                break
            src, hops = p.input[0], hops + 1
        if src in graph_inputs:
            out.append(node.name)
    return out


def _already_quantized(proto) -> bool:
    """A weighted layer reads its weight from a DequantizeLinear of an 8-bit (or smaller) constant."""
    small = {i.name for i in proto.graph.initializer if i.data_type in (2, 3, 21, 22)}  # uint8, int8, uint4, int4
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in small}
    return any(n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in dequantized
               for n in proto.graph.node)


def _has_depthwise(proto) -> bool:
    from onnx import helper

    return any(n.op_type == "Conv" and any(a.name == "group" and helper.get_attribute_value(a) > 1 for a in n.attribute)
               for n in proto.graph.node)


def _baseline_size(handle, source_path: str | None) -> int:
    """The input's size on disk when it came from a file (what the user compares against)."""
    if source_path and Path(source_path).suffix.lower() == ".onnx" and Path(source_path).is_file():
        return Path(source_path).stat().st_size
    return handle.size_bytes


def paired_latency_ratio(result, baseline) -> float | None:
    """Median over rounds of (candidate round median / baseline round median) from one interleaved run.

    Rounds are interleaved, so the two medians of one round saw the same machine load. The ratio
    of best-round medians instead lets one lucky round of either model decide: measured on this
    shared VM, a baseline round at 0.29 ms among nine at 0.39-0.52 ms turned three candidates that
    screened at 0.78-0.84x into "1.22x, slower than the input".
    """
    pairs = [a / b for a, b in zip(result.round_medians_ms, baseline.round_medians_ms) if b > 0]
    return float(np.median(pairs)) if pairs else None


def _best_round_ratio(result, baseline) -> float | None:
    base = baseline.best_round_median_ms
    return result.best_round_median_ms / base if base > 0 else None


def _bench_dict(r) -> dict:
    return {"best_round_median_ms": r.best_round_median_ms, "spread": r.spread, "load_ms": r.load_ms,
            "peak_rss_bytes": r.peak_rss_bytes, "size_bytes": r.size_bytes, "latency_ms": dict(r.latency_ms),
            "round_medians_ms": list(r.round_medians_ms)}


def _layer_table(candidate: Candidate | None, sensitivity: list[dict]) -> list[dict]:
    if candidate is None:
        return []
    quantized, floating = set(), set()
    for s in candidate.stats:
        quantized |= set(s.get("quantized_layers") or [])
        floating |= set(s.get("float_layers") or [])
    precision = "int8" if candidate.technique in ("int8", "mixed") else candidate.technique
    rows = []
    for s in sensitivity:
        layer = s["layer"]
        p = "fp32" if layer in floating else (precision if layer in quantized or not quantized else "fp32")
        rows.append({**s, "precision": p})
    if not sensitivity:
        rows = [{"layer": n, "op": "", "precision": "int8"} for n in sorted(quantized)] + \
               [{"layer": n, "op": "", "precision": "fp32"} for n in sorted(floating)]
    return rows


def _report_data(handle, source_path, baseline, candidates, best, sensitivity, spec, max_drop, goal, techniques, seed,
                 data_record, tune_note, bench_info, parts, seconds, notes=()) -> dict:
    base_size = _baseline_size(handle, source_path)

    def summary(c: Candidate) -> dict:
        d = c.to_dict()
        d["size_bytes"] = base_size if c is baseline else c.size_bytes
        d["fidelity_eval"] = dict(c.eval.fidelity) if c.eval is not None else None
        d["drop_eval"] = _eval_drop(c) if c is not baseline else 0.0
        return d

    return {
        "edgeopt_report": 1,
        "kind": "optimize",
        "model": {"source": source_path or handle.name, "inputs": [s.to_dict() for s in handle.inputs],
                  "outputs": [s.to_dict() for s in handle.outputs]},
        "settings": {"metric": spec.name, "metric_description": spec.description, "max_drop": max_drop, "goal": goal,
                     "techniques": list(techniques), "seed": seed, "notes": list(notes)},
        "data": {**data_record, "rows": {k: {"range": list(v.rows), "samples": len(v)} for k, v in parts.items()},
                 "tuning_note": tune_note},
        "baseline": summary(baseline),
        "chosen": summary(best) if best is not None else None,
        "candidates": [summary(c) for c in candidates],
        "layers": _layer_table(best, sensitivity),
        "sensitivity_method": "per layer: quantize only that layer to int8 (same calibration), SQNR (dB) and top-1 "
                              f"agreement of the model outputs vs fp32 on up to {SENSITIVITY_ROWS} tuning rows; lower SQNR = more sensitive",
        "recipe": best.recipe.to_dict() if best is not None else None,
        "measurement": {
            "latency": "ONNX Runtime CPU provider, 1 thread, batch 1, input = first evaluation row. latency_ratio (what "
                       "decides) = edgeopt.bench.compare_interleaved: the baseline and every candidate loaded in one fresh "
                       "process and timed in alternation, blocks of runs milliseconds apart; ratio = 0.1 quantile of the "
                       "candidate's block medians / the same of the baseline (its speed in the machine's quiet phases); "
                       "bench.interleaved_cycle_ratio = median over cycles of same-cycle ratios, bench.interleaved_ratio_iqr "
                       "= their 25th-75th percentiles (wide: a noisy run). Figures in ms, load time and memory = edgeopt.bench.benchmark: "
                       "every model in fresh processes, rounds interleaved across models; figure = median of the best "
                       "round, spread = slowest/fastest round median; bench.fresh_process_ratio = median over rounds of "
                       "same-round ratios, best_round_ratio = ratio of best-round medians. Screening run: all candidates; "
                       "confirmation run (twice the rounds): the baseline and the fastest accurate candidates",
            "bench_settings": bench_info,
            "size": "bytes of the serialized ONNX file (baseline: the input file on disk)",
            "metric": f"{spec.name} on the held-out eval rows {list(parts['eval'].rows)} (never used for calibration), "
                      "95% CI (Wilson for proportions); drop = paired difference vs the original on the same rows with a bootstrap 95% CI",
            "memory": "peak resident set of the fresh benchmark process",
        },
        "seconds": round(seconds, 1),
    }


# ------------------------------------------------------------------------------------------------
# Replaying a recipe (edgeopt apply)
# ------------------------------------------------------------------------------------------------

def replay(model: Any, recipe: Any, data: Any = None, *, x_key: str | None = None, y_key: str | None = None):
    """Re-run a saved recipe on ``model`` with the same calibration rows and seed; returns the ModelHandle.

    The data is split with the row ranges stored in the recipe, so the same file gives the same
    calibration rows and therefore the same model, byte for byte.
    """
    from .data import Dataset, fit_to_model, load_data, split
    from .model import load
    from .passes import PassContext
    from .recipe import Recipe

    recipe = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)
    handle = load(model)
    record = dict(recipe.data or {})
    splits = {k: tuple(v) for k, v in (record.get("splits") or {}).items()}
    searched = record.get("context") == "search"
    needs_data = any(("calib" in p.requires or "train" in p.requires) for p in recipe.passes)
    calib = train = None
    if needs_data:
        if data is None:
            raise DataError(f"this recipe calibrates on rows {splits.get('calib')} of {record.get('source')!r}; pass --data with that file")
        dataset = data if isinstance(data, Dataset) else load_data(data, x_key=x_key or record.get("x_key") or "x",
                                                                   y_key=y_key if y_key is not None else record.get("y_key"))
        dataset = fit_to_model(dataset, handle)
        if "calib" not in splits:
            raise ConfigError("the recipe records no calibration rows (data.splits.calib); it was not written by edgeopt optimize")
        if splits["calib"][1] > len(dataset):
            raise DataError(f"the recipe calibrates on rows {list(splits['calib'])} but the data has only {len(dataset)} rows; "
                            f"is this the same file as {record.get('source')!r}?")
        parts = split(dataset, {k: splits[k] for k in ("calib", "train") if k in splits} | {"shuffle": record.get("shuffle")})
        calib, train = parts["calib"], parts.get("train")
    if searched:
        # the same context the search built the candidate with (search.CandidateEvaluator.context):
        # the target decides e.g. int8 activation signedness, the teacher is the original model
        from .target import Target

        ctx = PassContext(calib=calib, tune=None, train=train, metric=record.get("metric") or "top1",
                          target=Target.parse(record["target"]) if record.get("target") else None,
                          seed=recipe.seed, teacher=handle, options={"output": record.get("output") or 0})
    else:
        ctx = PassContext(calib=calib, tune=calib, seed=recipe.seed, options={"output": record.get("output") or 0})
    rng_state = np.random.get_state()
    np.random.seed(recipe.seed)
    try:
        out, _ = recipe.apply(handle, ctx)
    finally:
        np.random.set_state(rng_state)
    fresh = out.run(out.example_inputs(batch=1))
    if not all(np.all(np.isfinite(o)) for o in fresh):
        raise VerificationError("the replayed model produces non-finite outputs; not written")
    return out
