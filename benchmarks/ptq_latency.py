"""Where int8 time goes on ONNX Runtime (CPU EP, 1 thread, batch 1): ResNet-8 and DS-CNN.

Builds the PTQ candidates exactly as ``edgeopt optimize`` does (fold -> quantize.int8 with 256
calibration rows from rows 0-499), benchmarks them against fp32 with ``edgeopt.bench.benchmark``
(fresh processes, interleaved rounds; best-round median ratio and spread), and prints a per-node
cost table for fp32 and int8 from *graph cuts*: the ORT-optimized graph (ORT_ENABLE_ALL, saved
with ``optimized_model_filepath``) is cut after each node and timed in process; the difference
between consecutive cuts is that node's wall cost. ORT's own profiler (``enable_profiling``) adds a
fixed few microseconds to every node, which swamps kernels of 5-50 us, so it is used here only
for the op-type histogram (see docs/ptq-latency.md).

    python benchmarks/ptq_latency.py [--tasks ic,kws] [--rounds 7] [--no-cuts]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = (ROOT / ".." / "shared" / "data").resolve()
TASKS = {
    "ic": (SHARED / "mlperf_tiny/ic/resnet8_cifar10.onnx", SHARED / "datasets/cifar10_test_first1000.npz"),
    "kws": (SHARED / "mlperf_tiny/kws/dscnn_kws12.onnx", SHARED / "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz"),
}


def candidates(task: str):
    from edgeopt.data import fit_to_model, load_data, split
    from edgeopt.model import load
    from edgeopt.optimizer import _thin_input_layers
    from edgeopt.passes import PassContext, make_pass

    model_path, data_path = TASKS[task]
    handle = load(str(model_path))
    data = fit_to_model(load_data(str(data_path)), handle)
    parts = split(data, {"calib": "0:500", "eval": "500:"})
    ctx = PassContext(calib=parts["calib"], tune=parts["calib"], seed=0)
    folded = make_pass("fold")(handle, ctx).model
    thin = _thin_input_layers(folded.proto())
    q = {"samples": 256}
    built = {"fp32": handle,
             "int8 (U8S8 QDQ, per-channel)": make_pass("quantize.int8", q)(folded, ctx).model,
             "int8, first layer fp32": make_pass("quantize.int8", {**q, "exclude_nodes": thin})(folded, ctx).model,
             "int8, first layer padded to 4 ch": make_pass("quantize.int8", {**q, "pad_channels": True})(folded, ctx).model}
    return built, parts["eval"]


def graph_cut_costs(model_bytes: bytes, x: np.ndarray, repeats: int = 200, rounds: int = 7) -> list[tuple[str, str, float]]:
    """(op, output, microseconds) per node of the ORT-optimized graph, by timing successive cuts."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    name = optimized.graph.input[0].name
    sessions = []
    for k, node in enumerate(optimized.graph.node):
        cut = onnx.ModelProto()
        cut.CopyFrom(optimized)
        del cut.graph.node[k + 1:]
        del cut.graph.output[:]
        cut.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
        session = ort.InferenceSession(cut.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(50):
            session.run(None, {name: x})
        sessions.append(session)
    # rounds interleaved across the cuts, best round median per cut: the VM's slow phases hit all cuts alike
    best = [float("inf")] * len(sessions)
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run(None, {name: x})
                times.append(time.perf_counter() - t0)
            best[i] = min(best[i], float(np.median(times)))
    rows, previous = [], 0.0
    for node, t in zip(optimized.graph.node, best):
        rows.append((f"{node.domain + ':' if node.domain else ''}{node.op_type}", node.output[0][-28:], 1e6 * (t - previous)))
        previous = t
    return rows


def main() -> None:
    from edgeopt.bench import benchmark

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="ic,kws")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-cuts", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ptq_latency.json"))
    args = parser.parse_args()
    result = {"settings": {"runtime": "onnxruntime CPU EP, 1 thread, batch 1, input = first eval row",
                           "rounds": args.rounds, "machine_note": "2-core VM shared with other jobs; see spread"}}
    for task in args.tasks.split(","):
        built, eval_data = candidates(task)
        x = eval_data.x[:1]
        report = benchmark(list(built.values()), threads=1, rounds=args.rounds, inputs=x)
        base = report.results[0].best_round_median_ms
        rows = []
        print(f"\n{task}: edgeopt.bench, {args.rounds} rounds, fresh processes")
        print(f"  {'model':36s} {'best-round median':>18s} {'ratio':>6s} {'spread':>7s} {'bytes':>8s}")
        for (name, model), r in zip(built.items(), report.results):
            rows.append({"model": name, "ms": r.best_round_median_ms, "ratio": r.best_round_median_ms / base,
                         "spread": r.spread, "bytes": model.size_bytes})
            print(f"  {name:36s} {1000 * r.best_round_median_ms:15.1f} us {r.best_round_median_ms / base:6.3f} {r.spread:7.2f} {model.size_bytes:8d}")
        result[task] = {"bench": rows}
        if not args.no_cuts:
            for name in built:
                cuts = graph_cut_costs(built[name].onnx_bytes, x.astype(np.float32))
                result[task][f"graph_cut_us {name}"] = [{"op": op, "output": out, "us": round(us, 1)} for op, out, us in cuts]
                print(f"  per-node wall cost (graph cuts), {name}:")
                for op, out, us in cuts:
                    print(f"    {op:34s} {out:30s} {us:6.1f} us")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **result}, indent=1, default=float))


if __name__ == "__main__":
    main()
