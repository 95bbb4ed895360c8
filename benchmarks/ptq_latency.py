"""Where int8 time goes on ONNX Runtime (CPU EP, 1 thread, batch 1): ResNet-8 and DS-CNN.

Builds the PTQ candidates exactly as ``edgeopt optimize`` does (fold -> quantize.int8 with 256
calibration rows from rows 0-499), benchmarks them against fp32 with ``edgeopt.bench.benchmark``
(fresh processes, interleaved rounds; best-round median ratio and spread), and prints a per-node
cost table for fp32 and int8 from *graph cuts*: the ORT-optimized graph (ORT_ENABLE_ALL, saved
with ``optimized_model_filepath``) is cut after each node and timed in process; the difference
between consecutive cuts is that node's wall cost. ORT's own profiler (``enable_profiling``) adds a
fixed few microseconds to every node, which swamps kernels of 5-50 us, so it is used here only
for the op-type histogram (see docs/ptq-latency.md).

    python benchmarks/ptq_latency.py [--tasks ic,kws] [--rounds 7] [--no-cuts] [--no-layers]
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
    # the exact rewrites onto 4+ channels, where they apply (QOperator, as the optimizer builds them)
    rewrites = make_pass("quantize.int8", {**q, "space_to_depth": True, "format": "qoperator"})(folded, ctx)
    if rewrites.stats["space_to_depth_layers"]:
        built["int8, first layer space-to-depth"] = rewrites.model
    rewrites = make_pass("quantize.int8", {**q, "pack_width": True, "format": "qoperator"})(folded, ctx)
    if rewrites.stats["pack_width_layers"]:
        built["int8, first layer rows packed"] = rewrites.model
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


# (channels, height, width, kernel, group): ResNet-8's three stages and DS-CNN's depthwise/pointwise pair
LAYER_SHAPES = [(16, 32, 32, 3, 1), (32, 16, 16, 3, 1), (64, 8, 8, 3, 1), (64, 25, 5, 3, 64), (64, 25, 5, 1, 1)]


def _conv_chain(channels, height, width, kernel, group, depth, quantized):
    """``depth`` Conv+Relu layers of one shape, fp32 or as the QDQ graph edgeopt emits (u8 x s8 per channel)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"]), helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"])]
        x = "d0"
    for i in range(depth):
        w = (rng.standard_normal((channels, channels // group, kernel, kernel)) * 0.1).astype(np.float32)
        if quantized:
            ws = (np.abs(w).reshape(channels, -1).max(1) / 127).astype(np.float32)
            inits += [numpy_helper.from_array(np.round(w / ws[:, None, None, None]).astype(np.int8), f"wq{i}"),
                      numpy_helper.from_array(ws, f"ws{i}"), numpy_helper.from_array(np.zeros(channels, np.int8), f"wz{i}"),
                      numpy_helper.from_array(np.zeros(channels, np.int32), f"bq{i}"),
                      numpy_helper.from_array((0.05 * ws).astype(np.float32), f"bs{i}"),
                      numpy_helper.from_array(np.zeros(channels, np.int32), f"bz{i}")]
            nodes += [helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"w{i}"], axis=0),
                      helper.make_node("DequantizeLinear", [f"bq{i}", f"bs{i}", f"bz{i}"], [f"b{i}"], axis=0)]
        else:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[kernel // 2] * 4, group=group),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if quantized:
            nodes += [helper.make_node("QuantizeLinear", [x, "s", "z"], [f"q{i + 1}"]),
                      helper.make_node("DequantizeLinear", [f"q{i + 1}", "s", "z"], [f"d{i + 1}"])]
            x = f"d{i + 1}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def layer_costs(rounds: int = 5, repeats: int = 300) -> list[dict]:
    """Per-layer wall cost of one conv shape in fp32 and int8: (11-layer chain - 1-layer chain) / 10, in process."""
    from edgeopt.model import make_session

    out = []
    for shape in LAYER_SHAPES:
        x = np.random.default_rng(1).random((1, shape[0], shape[1], shape[2]), dtype=np.float32)
        sessions = {(q, d): make_session(_conv_chain(*shape, d, q)) for q in (False, True) for d in (1, 11)}
        best = dict.fromkeys(sessions, float("inf"))
        for _ in range(rounds):
            for key, session in sessions.items():
                for _ in range(30):
                    session.run(None, {"x": x})
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    session.run(None, {"x": x})
                    times.append(time.perf_counter() - t0)
                best[key] = min(best[key], float(np.median(times)))
        fp32 = 1e6 * (best[(False, 11)] - best[(False, 1)]) / 10
        int8 = 1e6 * (best[(True, 11)] - best[(True, 1)]) / 10
        c, h, w, k, g = shape
        out.append({"layer": f"{'depthwise ' if g > 1 else ''}{k}x{k} conv, {c} ch, {h}x{w}", "fp32_us": round(fp32, 1),
                    "int8_us": round(int8, 1), "int8_over_fp32": round(int8 / fp32, 2)})
    return out


def main() -> None:
    from edgeopt.bench import benchmark

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="ic,kws")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-cuts", action="store_true")
    parser.add_argument("--no-layers", action="store_true")
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
    if not args.no_layers:
        result["layers"] = layer_costs()
        print("\nper-layer wall cost, one conv shape (in process, chain of 11 minus chain of 1, / 10):")
        for row in result["layers"]:
            print(f"  {row['layer']:36s} fp32 {row['fp32_us']:6.1f} us   int8 {row['int8_us']:6.1f} us   int8/fp32 {row['int8_over_fp32']:.2f}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **result}, indent=1, default=float))


if __name__ == "__main__":
    main()
