"""Benchmark models on a real runtime: latency percentiles, load ("spin-up") time, peak memory, size.

>>> import edgeopt
>>> report = edgeopt.benchmark(["a.onnx", "b.onnx"], runtime="openvino", rounds=5)  # doctest: +SKIP
>>> report.ratios()[1]["latency"]                                                  # doctest: +SKIP
0.62

Every figure comes from fresh processes (``_worker.py``), one per model per round, with the rounds
interleaved (round r measures model A, then B, ...). The virtual machines this runs on change
speed by up to ~1.4x from one block of time to the next; interleaving exposes every model to the
same drift, and the best round's median is the least disturbed estimate of what the model costs.
The spread (slowest / fastest round median) says how much to trust a comparison.

One module per runtime (``ort.py``, ``ov.py``), found by file name; each defines ``NAME``,
``PACKAGE``, ``EXTRA``, ``PRECISIONS``, ``import_runtime() -> version`` (untimed) and
``load(path, threads=, precision=, feeds=) -> (run, precision_used)`` (timed). Nothing heavy is
imported at the top of this package: the worker imports it before taking its memory baseline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, UnsupportedModelError

__all__ = ["benchmark", "compare_interleaved", "measure_inprocess", "runtimes", "BenchResult", "BenchReport", "Interleaved"]

# A worker that neither finishes nor fails in this time is stuck (a deadlocked runtime); give up on it.
WORKER_TIMEOUT_S = 900


def runtimes() -> dict[str, Any]:
    """The available runtime modules by their public name (``{"onnxruntime": <module ort>, ...}``)."""
    import importlib
    import pkgutil

    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[module.NAME] = module
    return found


def _runtime(name: str):
    available = runtimes()
    if name not in available:
        raise ConfigError(f"runtime must be one of {sorted(available)}; got {name!r}")
    module = available[name]
    import importlib.util

    if importlib.util.find_spec(module.PACKAGE) is None:
        from ..errors import MissingDependencyError

        hint = f"pip install 'edgeopt[{module.EXTRA}]'" if module.EXTRA else f"pip install {module.PACKAGE}"
        raise MissingDependencyError(f"runtime {name!r} needs the {module.PACKAGE} package; install it with: {hint}")
    return module


@dataclass(frozen=True)
class BenchResult:
    """One model's figures on one runtime. Times in milliseconds, memory and size in bytes.

    ``latency_ms`` holds p50/p90/p99/mean of the best round (the round with the lowest median);
    ``best_round_median_ms`` equals its p50. ``spread`` is the slowest round median over the
    fastest (1.0 = perfectly steady). ``load_ms`` is the median session creation/compilation time
    over rounds. ``peak_rss_bytes`` is the highest resident set of a fresh worker process (the
    largest over rounds); ``rss_increase_bytes`` is its growth over the worker's baseline before the
    runtime was imported (interpreter + numpy + inputs), i.e. what the runtime and model cost.
    """

    name: str
    runtime: str
    precision: str
    threads: int
    batch: int
    latency_ms: Mapping[str, float]
    best_round_median_ms: float
    spread: float
    round_medians_ms: tuple[float, ...]
    load_ms: float
    peak_rss_bytes: int
    rss_increase_bytes: int
    size_bytes: int
    iterations: int = 0
    runtime_version: str = ""
    worker_pids: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["latency_ms"] = dict(self.latency_ms)
        d["round_medians_ms"] = list(self.round_medians_ms)
        d["worker_pids"] = list(self.worker_pids)
        return d


@dataclass(frozen=True)
class BenchReport:
    """Results of :func:`benchmark`, in the order the models were given; the first is the reference."""

    results: tuple[BenchResult, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, index: int) -> BenchResult:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def ratios(self) -> list[dict[str, float]]:
        """Per model, its figures divided by the first model's (so the first is all 1.0).

        ``latency`` compares best-round medians, ``size`` bytes on disk, ``memory`` peak RSS,
        ``memory_increase`` the RSS growth caused by runtime + model, ``load`` load time.
        """
        ref = self.results[0]

        def ratio(a: float, b: float) -> float:
            return float(a) / float(b) if b else float("nan")

        return [
            {
                "name": r.name,
                "latency": ratio(r.best_round_median_ms, ref.best_round_median_ms),
                "size": ratio(r.size_bytes, ref.size_bytes),
                "memory": ratio(r.peak_rss_bytes, ref.peak_rss_bytes),
                "memory_increase": ratio(r.rss_increase_bytes, ref.rss_increase_bytes),
                "load": ratio(r.load_ms, ref.load_ms),
            }
            for r in self.results
        ]

    def to_dict(self) -> dict:
        return {
            "settings": dict(self.settings),
            "results": [r.to_dict() for r in self.results],
            "ratios": self.ratios(),
            "method": (
                "each model measured in a fresh process per round, rounds interleaved across models; "
                "latency = percentiles of the round with the lowest median (after warm-up); "
                "spread = max/min of round medians; load = median session creation time; "
                "peak RSS = ru_maxrss of the worker (max over rounds)"
            ),
        }

    def table(self, title: str | None = None):
        """A rich Table with one column per model (side by side) and ratios against the first model."""
        from rich.table import Table

        s = self.settings
        table = Table(title=title or (
            f"{s.get('runtime', '')}, {s.get('threads', '?')} thread(s), batch {s.get('batch', '?')}, "
            f"best of {s.get('rounds', '?')} rounds x {s.get('iterations', '?')} runs"
        ))
        table.add_column("")
        for r in self.results:
            table.add_column(r.name, justify="right")
        ratios = self.ratios()

        def row(label: str, fmt: Callable[[BenchResult], str], ratio_key: str | None = None) -> None:
            cells = []
            for i, (r, q) in enumerate(zip(self.results, ratios)):
                cell = fmt(r)
                if ratio_key and i > 0:
                    cell += f" (x{q[ratio_key]:.2f})"
                cells.append(cell)
            table.add_row(label, *cells)

        row("precision", lambda r: r.precision)
        row("p50 ms (best round)", lambda r: f"{r.latency_ms['p50']:.3f}", "latency")
        row("p90 ms", lambda r: f"{r.latency_ms['p90']:.3f}")
        row("p99 ms", lambda r: f"{r.latency_ms['p99']:.3f}")
        row("spread of round medians", lambda r: f"x{r.spread:.2f}")
        row("load ms", lambda r: f"{r.load_ms:.1f}", "load")
        row("peak RSS MiB", lambda r: f"{r.peak_rss_bytes / 2**20:.1f}", "memory")
        row("RSS increase MiB", lambda r: f"{r.rss_increase_bytes / 2**20:.1f}", "memory_increase")
        row("size KiB", lambda r: f"{r.size_bytes / 1024:.1f}", "size")
        return table


# ------------------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    name: str
    path: str
    size_bytes: int
    inputs: dict[str, str]   # input name -> .npy path
    batch: int


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def _prepare(models: Sequence[Any], workdir: Path, *, batch: int, inputs: Any,
             dims: Mapping[str, int] | None = None) -> list[_Prepared]:
    import numpy as np

    from ..model import ModelHandle, load

    prepared: list[_Prepared] = []
    seen: dict[str, int] = {}
    for index, model in enumerate(models):
        if not isinstance(model, (str, os.PathLike, ModelHandle)):
            raise ConfigError(f"benchmark() takes model paths or ModelHandles; model #{index + 1} is a {type(model).__name__}")
        handle = load(model)
        base = handle.name if isinstance(model, ModelHandle) else Path(model).stem
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        if not isinstance(model, ModelHandle) and Path(model).suffix.lower() == ".onnx":
            # Measure the user's own file (loading re-serializes it with inferred shapes, a different size).
            path = str(Path(model).resolve())
            size = _bytes_on_disk(Path(path))
        else:
            path = str(workdir / f"model{index}.onnx")
            Path(path).write_bytes(handle.onnx_bytes)
            size = handle.size_bytes
        if inputs is None:
            for spec in handle.inputs:
                fixed = spec.shape[spec.batch_axis] if spec.batch_axis is not None else None
                if isinstance(fixed, int) and fixed != batch:
                    raise ConfigError(
                        f"model {name!r} has a fixed batch of {fixed} on input {spec.name!r}; got batch={batch}. "
                        f"Use batch={fixed} or a model with a dynamic batch dimension"
                    )
            feeds = handle.example_inputs(batch=batch, dims=dims)
        else:
            feeds = handle._feeds(inputs)  # checks names, shapes and dtypes against the model
        input_paths = {}
        for i, (input_name, array) in enumerate(feeds.items()):
            npy = workdir / f"model{index}_input{i}.npy"
            np.save(npy, np.ascontiguousarray(array), allow_pickle=False)
            input_paths[input_name] = str(npy)
        first = handle.inputs[0] if handle.inputs else None
        array = feeds.get(first.name) if first is not None else None
        axis = first.batch_axis if first is not None else None
        actual_batch = int(array.shape[axis]) if array is not None and axis is not None and array.ndim > axis else batch
        prepared.append(_Prepared(name, path, size, input_paths, actual_batch))
    return prepared


def _model_list(models: Any, module, runtime: str, precision: str, caller: str) -> list:
    """``models`` as a non-empty list, after checking ``precision`` against the runtime."""
    if precision not in module.PRECISIONS:
        raise ConfigError(f"precision for runtime {runtime!r} must be one of {list(module.PRECISIONS)}; got {precision!r}")
    model_list = list(models) if isinstance(models, (list, tuple)) else [models]
    if not model_list:
        raise ConfigError(f"{caller}() needs at least one model; got an empty list")
    return model_list


def _bytes_on_disk(path: Path) -> int:
    """Size of an ONNX file plus the external data files it references (what a deployment ships)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    size = path.stat().st_size
    proto = onnx.load_model(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in _get_all_tensors(proto) if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    }
    # load() has already refused locations outside the model's folder and missing files.
    return size + sum((path.parent / location).stat().st_size for location in locations)


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Keep stray thread pools (BLAS, OpenMP) to the same count as the runtime's own.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _short_message(text: str, limit: int = 400) -> str:
    """The informative part of a runtime's error: OpenVINO leads with C++ source locations
    ("Exception from src/...cpp:84:", "Check 'false' failed at ...") that tell a user nothing."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))] or lines
    return " ".join(useful)[:limit]


def _run_worker(spec: dict, workdir: Path, tag: str, env: dict, *, model_name: str, runtime: str,
                names: Sequence[str] | None = None) -> dict:
    spec_path = workdir / f"{tag}.spec.json"
    result_path = workdir / f"{tag}.result.json"
    spec = dict(spec, result=str(result_path))
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"{__name__}._worker", str(spec_path)],
            env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise UnsupportedModelError(
            f"{runtime} did not finish measuring model {model_name!r} within {WORKER_TIMEOUT_S} s; "
            "lower iterations or check that the model runs at all"
        ) from None
    if proc.returncode != 0 or not result_path.exists():
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[:600]
        raise UnsupportedModelError(f"the {runtime} worker measuring model {model_name!r} {how}: {tail or 'no output'}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    error = result.get("error")
    if error and names is not None and error.get("model_index") is not None:
        model_name = names[error["model_index"]]
    if error:
        first_line = _short_message(error["message"])
        doing = {"import": "is not usable (import failed) for", "load": "cannot load"}.get(error["stage"], "loaded but cannot run")
        kind = "" if error["type"] == "UnsupportedModelError" else f"{error['type']}: "
        raise UnsupportedModelError(f"{runtime} {doing} model {model_name!r}: {kind}{first_line}")
    return result


def _summarize(prepared: _Prepared, runs: list[dict], *, runtime: str, threads: int, iterations: int) -> BenchResult:
    import numpy as np

    medians = [float(np.median(r["latencies_ms"])) for r in runs]
    best = int(np.argmin(medians))
    best_lat = np.asarray(runs[best]["latencies_ms"], dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(best_lat, [50, 90, 99]))
    return BenchResult(
        name=prepared.name,
        runtime=runtime,
        precision=runs[best]["precision"],
        threads=threads,
        batch=prepared.batch,
        latency_ms={"p50": p50, "p90": p90, "p99": p99, "mean": float(best_lat.mean())},
        best_round_median_ms=medians[best],
        spread=max(medians) / min(medians) if min(medians) > 0 else float("nan"),
        round_medians_ms=tuple(medians),
        load_ms=float(statistics.median(r["load_ms"] for r in runs)),
        peak_rss_bytes=int(max(r["peak_rss_bytes"] for r in runs)),
        rss_increase_bytes=int(max(r["rss_increase_bytes"] for r in runs)),
        size_bytes=prepared.size_bytes,
        iterations=iterations,
        runtime_version=runs[best].get("runtime_version", ""),
        worker_pids=tuple(int(r["pid"]) for r in runs),
    )


def benchmark(
    models: Any,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    rounds: int = 5,
    warmup: int = 10,
    iterations: int = 100,
    batch: int = 1,
    inputs: Any = None,
    precision: str = "f32",
    progress: Callable[[str, float], None] | None = None,
    dims: Mapping[str, int] | None = None,
) -> BenchReport:
    """Measure one or more models on ``runtime`` in fresh processes, rounds interleaved across models.

    ``models`` is a path, a ModelHandle, or a list of them (compared side by side; ratios are
    against the first). ``inputs`` (an array for single-input models, or ``{name: array}``) is fed
    to every model; by default each model gets seeded random inputs of its own shape and dtype.
    ``precision`` is the floating-point execution precision the runtime may use (OpenVINO: f32,
    bf16, f16; ONNX Runtime runs the graph as stored: f32 only); the result records what ran.
    ``progress(message, fraction)`` is called after each measurement. ``dims`` sizes the random
    inputs' dynamic dimensions other than the batch (``{"sequence": 128}``; default 1).

    >>> report = benchmark("../shared/data/mlperf_tiny/kws/dscnn_kws12.onnx", rounds=3)  # doctest: +SKIP
    >>> report.results[0].best_round_median_ms                                          # doctest: +SKIP
    """
    module = _runtime(runtime)
    _check_int("threads", threads, 1)
    _check_int("rounds", rounds, 1)
    _check_int("warmup", warmup, 0)
    _check_int("iterations", iterations, 1)
    _check_int("batch", batch, 1)
    model_list = _model_list(models, module, runtime, precision, "benchmark")

    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        workdir = Path(tmp)
        prepared = _prepare(model_list, workdir, batch=batch, inputs=inputs, dims=dims)
        env = _worker_env(threads)
        runs: list[list[dict]] = [[] for _ in prepared]
        total = rounds * len(prepared)
        done = 0
        if progress:
            progress(f"round 1/{rounds}: {prepared[0].name}", 0.0)
        for round_index in range(rounds):
            for model_index, item in enumerate(prepared):
                spec = {
                    "module": module.__name__.rsplit(".", 1)[1], "model": item.path, "threads": threads,
                    "precision": precision, "warmup": warmup, "iterations": iterations, "inputs": item.inputs,
                }
                runs[model_index].append(
                    _run_worker(spec, workdir, f"r{round_index}m{model_index}", env, model_name=item.name, runtime=runtime)
                )
                done += 1
                if progress:
                    following = prepared[done % len(prepared)].name
                    progress(f"round {done // len(prepared) + 1}/{rounds}: {following}" if done < total else "done", done / total)
    results = tuple(
        _summarize(item, item_runs, runtime=runtime, threads=threads, iterations=iterations)
        for item, item_runs in zip(prepared, runs)
    )
    settings = {"runtime": runtime, "threads": threads, "rounds": rounds, "warmup": warmup,
                "iterations": iterations, "batch": batch, "precision": precision, "dims": dict(dims or {})}
    return BenchReport(results=results, settings=settings)


# The quantile of a model's block medians that stands for its speed (see Interleaved). Measured on DS-CNN
# int8 vs fp32, four runs of 8 s: median of same-cycle ratios 0.748 / 0.747 / 0.803 / 0.743 (the third run
# caught a slow phase: the fp32 block median rose from 0.065 to 0.086 ms), 0.1 quantile ratio
# 0.746 / 0.746 / 0.743 / 0.742.
QUIET_QUANTILE = 0.1


@dataclass(frozen=True)
class Interleaved:
    """Result of :func:`compare_interleaved`, in the order the models were given (the first is the
    reference). ``ratios[i]`` = ``quiet_ms[i] / quiet_ms[0]``, where ``quiet_ms`` is the
    ``QUIET_QUANTILE`` quantile of a model's block medians (its speed in the machine's quiet phases);
    ``cycle_ratios[i]`` the median over cycles of model i's block median over the reference's in the
    same cycle, ``ratio_iqr[i]`` the 25th-75th percentiles of those per-cycle ratios (wide = a noisy run);
    ``median_ms[i]`` the median of model i's block medians."""

    names: tuple[str, ...]
    median_ms: tuple[float, ...]
    quiet_ms: tuple[float, ...]
    ratios: tuple[float, ...]
    cycle_ratios: tuple[float, ...]
    ratio_iqr: tuple[tuple[float, float], ...]
    cycles: int
    block: int
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "median_ms": list(self.median_ms), "quiet_ms": list(self.quiet_ms),
                "ratios": list(self.ratios), "cycle_ratios": list(self.cycle_ratios),
                "ratio_iqr": [list(q) for q in self.ratio_iqr], "cycles": self.cycles, "block": self.block,
                "settings": dict(self.settings),
                "method": "all models loaded in one fresh worker process and timed in alternation: each cycle runs every "
                          "model `block` times back to back (starting model rotated per cycle) and keeps the block median; "
                          f"ratio = {QUIET_QUANTILE:g} quantile of the model's block medians / the same of the reference "
                          "(slow phases of a shared machine add time to every run, pulling same-cycle ratios toward 1); "
                          "cycle_ratios = median over cycles of same-cycle ratios"}




def compare_interleaved(
    models: Any,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    inputs: Any = None,
    block: int = 20,
    budget_s: float = 8.0,
    min_cycles: int = 15,
    max_cycles: int = 300,
    warmup: int = 20,
    batch: int = 1,
    precision: str = "f32",
    dims: Mapping[str, int] | None = None,
) -> Interleaved:
    """Latency ratios of ``models`` against the first, measured in alternation in one fresh process.

    :func:`benchmark` gives each model its own processes (honest load time and peak memory), but on
    a shared machine its rounds are seconds apart and the machine's speed drifts between them, so
    candidates a few percent apart can swap places from run to run. Here all models share one worker
    and are timed in short alternating blocks, milliseconds apart, for about ``budget_s`` seconds of
    runs (at least ``min_cycles`` cycles); each model's speed is a low quantile of its block medians
    (:data:`QUIET_QUANTILE`), which slow phases do not reach. The ratio to use when choosing between
    close candidates.
    """
    import numpy as np

    module = _runtime(runtime)
    for name, value, minimum in (("threads", threads, 1), ("block", block, 1), ("min_cycles", min_cycles, 1),
                                 ("max_cycles", max_cycles, 1), ("warmup", warmup, 0), ("batch", batch, 1)):
        _check_int(name, value, minimum)
    if not isinstance(budget_s, (int, float)) or isinstance(budget_s, bool) or budget_s <= 0:
        raise ConfigError(f"budget_s must be a positive number of seconds; got {budget_s!r}")
    model_list = _model_list(models, module, runtime, precision, "compare_interleaved")
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        workdir = Path(tmp)
        prepared = _prepare(model_list, workdir, batch=batch, inputs=inputs, dims=dims)
        spec = {"mode": "interleave", "module": module.__name__.rsplit(".", 1)[1], "threads": threads,
                "precision": precision, "warmup": warmup, "block": block, "budget_s": float(budget_s),
                "min_cycles": min_cycles, "max_cycles": max(min_cycles, max_cycles),
                "models": [{"model": item.path, "inputs": item.inputs} for item in prepared]}
        names = [item.name for item in prepared]
        result = _run_worker(spec, workdir, "interleave", _worker_env(threads), model_name=", ".join(names),
                             runtime=runtime, names=names)
    medians = np.asarray(result["block_medians_ms"], dtype=np.float64)  # (models, cycles)
    per_cycle = medians / medians[:1]
    quiet = np.quantile(medians, QUIET_QUANTILE, axis=1)
    return Interleaved(
        names=tuple(names),
        median_ms=tuple(float(v) for v in np.median(medians, axis=1)),
        quiet_ms=tuple(float(v) for v in quiet),
        ratios=tuple(float(v) for v in quiet / quiet[0]),
        cycle_ratios=tuple(float(v) for v in np.median(per_cycle, axis=1)),
        ratio_iqr=tuple((float(a), float(b)) for a, b in np.percentile(per_cycle, [25, 75], axis=1).T),
        cycles=int(result["cycles"]), block=int(result.get("block", block)),
        settings={"runtime": runtime, "threads": threads, "batch": batch, "precision": precision, "warmup": warmup,
                  "budget_s": float(budget_s), "runtime_version": result.get("runtime_version", "")},
    )


def measure_inprocess(
    model: Any,
    feeds: Mapping[str, Any] | None = None,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    warmup: int = 5,
    iterations: int = 50,
    precision: str = "f32",
) -> dict[str, float]:
    """Quick latency screening in this process: ``{"p50", "p90", "p99", "mean", "load"}`` in ms.

    Cheaper than :func:`benchmark` (no process start) but shares this process's caches, memory and
    drift, so use it only to rank candidates cheaply; report figures from :func:`benchmark`.
    """
    import numpy as np

    from ..model import load

    module = _runtime(runtime)
    _check_int("threads", threads, 1)
    _check_int("warmup", warmup, 0)
    _check_int("iterations", iterations, 1)
    if precision not in module.PRECISIONS:
        raise ConfigError(f"precision for runtime {runtime!r} must be one of {list(module.PRECISIONS)}; got {precision!r}")
    handle = load(model)
    feeds = handle._feeds(feeds) if feeds is not None else handle.example_inputs()
    module.import_runtime()
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(handle.onnx_bytes)
        start = time.perf_counter()
        try:
            run, _ = module.load(str(path), threads=threads, precision=precision, feeds=feeds)
        except Exception as e:  # ORT/OpenVINO raise their own untyped errors; name the model either way
            raise UnsupportedModelError(f"{runtime} cannot load model {handle.name!r}: {_short_message(str(e))}") from e
        load_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        run(feeds)
    latencies = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(feeds)
        latencies.append((time.perf_counter() - start) * 1e3)
    lat = np.asarray(latencies)
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(lat.mean()), "load": load_ms}
