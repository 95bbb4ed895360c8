"""Measures one model on one runtime in a fresh process; run as ``python -m edgeopt.bench._worker SPEC.json``.

A fresh process per measurement gives honest load times and peak memory (nothing cached from an
earlier model), and keeps one model's allocator state from slowing the next. The spec and the
result are JSON files and the inputs ``.npy`` files (loaded with ``allow_pickle=False``): nothing
crosses the process boundary as a pickle.

Spec keys: runtime, model, threads, precision, warmup, iterations, inputs {name: npy path}, result.
The result file holds pid, load_ms, latencies_ms, baseline_rss_bytes, peak_rss_bytes,
rss_increase_bytes, precision, runtime_version, or ``error`` {stage, type, message}.

With ``"mode": "interleave"`` the worker instead loads several models (spec ``models``: a list of
{model, inputs}) and times them alternately in short blocks (see :func:`interleave`), so that every
comparison is between runs milliseconds apart; the result holds ``block_medians_ms`` per model.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    """High-water mark of this process's resident set.

    Linux's ``ru_maxrss`` survives fork+exec: a fresh worker starts with its parent's peak (the
    parent's RSS at spawn time, hundreds of MB inside an optimizer), which would swamp the model's
    own cost. ``VmHWM`` belongs to the address space created at exec, so it measures this process
    alone; ``ru_maxrss`` is the fallback where /proc does not exist.
    """
    hwm = _proc_status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _write_json_atomic(path: str, payload: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def measure(spec: dict) -> dict:
    import importlib

    import numpy as np

    feeds = {name: np.load(path, allow_pickle=False) for name, path in spec["inputs"].items()}
    # Baseline after the interpreter, numpy and the inputs, before any runtime code is imported:
    # the increase over it is what the runtime and the model cost.
    baseline = _peak_rss_bytes()
    runtime = importlib.import_module(f"{__package__}.{spec['module']}")
    result: dict = {"pid": os.getpid(), "baseline_rss_bytes": baseline}
    stage = "import"
    try:
        result["runtime_version"] = runtime.import_runtime()
        stage = "load"
        start = time.perf_counter()
        run, precision = runtime.load(spec["model"], threads=spec["threads"], precision=spec["precision"], feeds=feeds)
        result["load_ms"] = (time.perf_counter() - start) * 1e3
        result["precision"] = precision
        stage = "run"
        for _ in range(spec["warmup"]):
            run(feeds)
        latencies = []
        for _ in range(spec["iterations"]):
            start = time.perf_counter()
            run(feeds)
            latencies.append((time.perf_counter() - start) * 1e3)
        result["latencies_ms"] = latencies
    except Exception as e:  # reported to the parent, which raises a typed error naming the model
        result["error"] = {"stage": stage, "type": type(e).__name__, "message": str(e).strip()[:2000]}
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["rss_increase_bytes"] = max(0, result["peak_rss_bytes"] - baseline)
    return result


def interleave(spec: dict) -> dict:
    """Load every model of ``spec["models"]`` in this process and time them in alternation: in each
    cycle every model runs ``block`` times back to back (the starting model rotates from cycle to
    cycle) and the block's median is kept. The number of cycles fits ``budget_s`` (estimated from the
    warm-up), between ``min_cycles`` and ``max_cycles``; when even ``min_cycles`` would not fit, the
    blocks shrink (down to 3 runs).

    Written by hand because no benchmarking library we know pairs runs this way: on a shared VM the
    machine's speed drifts over seconds, so models timed in separate processes (or rounds seconds
    apart) are compared across different machine states, while two blocks of one cycle are
    milliseconds apart. Measured on ResNet-8's int8 candidates: four such runs of about 1 s gave the
    same ratio to +-0.005, where 5-10 fresh-process rounds ranked two graphs 5% apart either way.
    """
    import importlib

    import numpy as np

    runtime = importlib.import_module(f"{__package__}.{spec['module']}")
    result: dict = {"pid": os.getpid()}
    stage, index = "import", 0
    try:
        result["runtime_version"] = runtime.import_runtime()
        runs, feeds_list = [], []
        for index, item in enumerate(spec["models"]):
            stage = "load"
            feeds = {name: np.load(path, allow_pickle=False) for name, path in item["inputs"].items()}
            run, _ = runtime.load(item["model"], threads=spec["threads"], precision=spec["precision"], feeds=feeds)
            stage = "run"
            start = time.perf_counter()
            for _ in range(max(1, spec["warmup"])):
                run(feeds)
            runs.append((run, feeds, (time.perf_counter() - start) / max(1, spec["warmup"])))
        one_each = sum(t for _, _, t in runs)
        block = spec["block"]
        if block * one_each * spec["min_cycles"] > spec["budget_s"]:  # large models: shorter blocks, not hours
            block = min(block, max(3, int(spec["budget_s"] / (spec["min_cycles"] * max(one_each, 1e-9)))))
        per_cycle = block * one_each
        cycles = int(min(spec["max_cycles"], max(spec["min_cycles"], spec["budget_s"] / max(per_cycle, 1e-9))))
        medians = [[0.0] * cycles for _ in runs]
        for cycle in range(cycles):
            for k in range(len(runs)):
                index = (k + cycle) % len(runs)
                run, feeds, _ = runs[index]
                times = []
                for _ in range(block):
                    start = time.perf_counter()
                    run(feeds)
                    times.append(time.perf_counter() - start)
                medians[index][cycle] = float(np.median(times)) * 1e3
        result["block_medians_ms"] = medians
        result["cycles"] = cycles
        result["block"] = block
    except Exception as e:  # reported to the parent, which raises a typed error naming the model
        result["error"] = {"stage": stage, "type": type(e).__name__, "message": str(e).strip()[:2000], "model_index": index}
    return result


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    result = interleave(spec) if spec.get("mode") == "interleave" else measure(spec)
    _write_json_atomic(spec["result"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
