"""edgeopt's PTQ against its peers on the MLPerf Tiny IC (ResNet-8 / CIFAR-10) and KWS (DS-CNN /
Speech Commands) reference models: one table, same evaluation rows, latency ratios from one run.

Rows per task: fp32 ONNX; the MLPerf reference int8 .tflite on LiteRT; onnxruntime's default
``quantize_static`` (QDQ, S8S8, per-tensor, MinMax); NNCF ``nncf.quantize`` on the ONNX model (run
in its own venv, --nncf-python); Intel Neural Compressor 3.7.1 ``quantization.fit`` with its default
static ``PostTrainingQuantConfig`` (ONNX Runtime backend, QOperator, no accuracy tuning; run in its own
venv, --inc-python, pinned to onnx < 1.19: see _inc_quantize.py); ``edgeopt.optimize`` (0.5 pt budget).
A peer whose venv is missing is skipped; one that fails gets a row with its error. Calibration rows
0-499 (the same rows for every calibrating method), evaluation rows 500.. (IC: 500-999 of the CIFAR
subset; KWS: 500-4889).

ONNX models are timed together by ``edgeopt.bench.benchmark`` (fresh processes, interleaved rounds,
1 thread, batch 1; best-round median; column "latency x") and again by
``edgeopt.bench.compare_interleaved`` (all in one process, timed in alternation, each at the 0.1
quantile of its block medians; column "latency x alt.", what the optimizer decides on). LiteRT cannot run in that harness, so the .tflite model and
the fp32 ONNX model are also timed in this process, interleaved, and the LiteRT ratio is against
that in-process fp32 figure.

    python benchmarks/ptq_vs_peers.py [--tasks ic,kws] [--rounds 5] [--nncf-python PY] [--inc-python PY]
        [--out benchmarks/results/ptq_vs_peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = (ROOT / ".." / "shared" / "data").resolve()

TASKS = {
    "ic": {"onnx": "mlperf_tiny/ic/resnet8_cifar10.onnx", "tflite": "mlperf_tiny/ic/pretrainedResnet_quant.tflite",
           "data": "datasets/cifar10_test_first1000.npz", "calib": (0, 500), "eval": (500, 1000)},
    "kws": {"onnx": "mlperf_tiny/kws/dscnn_kws12.onnx", "tflite": "mlperf_tiny/kws/kws_ref_model.tflite",
            "data": "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz", "calib": (0, 500), "eval": (500, None)},
}


def top1(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((outputs.reshape(len(outputs), -1).argmax(1) == y).mean())


def ort_outputs(path: str, x: np.ndarray) -> np.ndarray:
    import edgeopt

    return edgeopt.load(path).predict(x)[0]


def litert_interpreter(path: str):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    return interp


def litert_outputs(path: str, x: np.ndarray) -> np.ndarray:
    interp = litert_interpreter(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zp = inp["quantization"]
    outs = []
    for row in x:
        sample = row[None].astype(np.float32)
        if inp["dtype"] in (np.int8, np.uint8):
            info = np.iinfo(inp["dtype"])
            sample = np.clip(np.round(sample / scale + zp), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], sample.reshape(inp["shape"]))
        interp.invoke()
        o = interp.get_tensor(out["index"]).astype(np.float32)
        oscale, ozp = out["quantization"]
        if out["dtype"] in (np.int8, np.uint8) and oscale:
            o = (o - ozp) * oscale
        outs.append(o.reshape(-1))
    return np.stack(outs)


def inprocess_latency_pair(onnx_path: str, tflite_path: str, x_row: np.ndarray, rounds: int, iterations: int = 200):
    """Best-round medians (ms) of ORT fp32 and LiteRT int8, rounds interleaved, 1 thread each."""
    from edgeopt.model import make_session

    sess = make_session(onnx_path, threads=1)
    feed = {sess.get_inputs()[0].name: x_row[None].astype(np.float32)}
    interp = litert_interpreter(tflite_path)
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    sample = x_row[None].astype(np.float32)
    if inp["dtype"] in (np.int8, np.uint8):
        info = np.iinfo(inp["dtype"])
        sample = np.clip(np.round(sample / scale + zp), info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], sample.reshape(inp["shape"]))

    def time_it(fn):
        for _ in range(20):
            fn()
        ts = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts) * 1e3)

    best_ort, best_lite = float("inf"), float("inf")
    for _ in range(rounds):
        best_ort = min(best_ort, time_it(lambda: sess.run(None, feed)))
        best_lite = min(best_lite, time_it(interp.invoke))
    return best_ort, best_lite


def ort_default_quantize(src: str, calib_x: np.ndarray, out: str) -> None:
    from onnxruntime.quantization import quantize_static

    from edgeopt.quant import quiet
    from edgeopt.quant.calibration import ArrayReader

    import onnx

    name = onnx.load(src).graph.input[0].name
    with quiet():
        rows = np.asarray(calib_x, dtype=np.float32)
        quantize_static(src, out, ArrayReader([{name: rows[i : i + 1]} for i in range(len(rows))]))


def peer_quantize(python: str, script: str, label: str, src: str, calib_x: np.ndarray, out: str, work: Path) -> str:
    """Run a peer's quantizer script (``script MODEL.onnx CALIB.npy OUT.onnx``) with the python of its own venv.

    The script's last stdout line names the tool and its version; that line is returned. It runs in ``work``
    (some tools write workspaces into the current directory).
    """
    calib_path = work / "calib.npy"
    np.save(calib_path, calib_x.astype(np.float32), allow_pickle=False)
    script_path = Path(__file__).with_name(script)
    proc = subprocess.run([python, str(script_path), src, str(calib_path), out], capture_output=True, text=True,
                          timeout=1800, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return proc.stdout.strip().splitlines()[-1]


def nncf_quantize(python: str, src: str, calib_x: np.ndarray, out: str, work: Path) -> str:
    return peer_quantize(python, "_nncf_quantize.py", "NNCF", src, calib_x, out, work)


def inc_quantize(python: str, src: str, calib_x: np.ndarray, out: str, work: Path) -> str:
    return peer_quantize(python, "_inc_quantize.py", "INC", src, calib_x, out, work)


PEERS = (  # (argparse dest of the peer's python, row label, quantizer, output file suffix)
    ("nncf_python", "NNCF nncf.quantize", nncf_quantize, "nncf"),
    ("inc_python", "Intel Neural Compressor quantization.fit", inc_quantize, "inc"),
)


def run_task(task: str, args, work: Path) -> list[dict]:
    import edgeopt
    from edgeopt.bench import benchmark, compare_interleaved

    spec = TASKS[task]
    onnx_path = str(SHARED / spec["onnx"])
    tflite_path = str(SHARED / spec["tflite"])
    archive = np.load(SHARED / spec["data"], allow_pickle=False)
    x, y = archive["x"].astype(np.float32), archive["y"].astype(np.int64)
    c0, c1 = spec["calib"]
    e0, e1 = spec["eval"][0], spec["eval"][1] or len(x)
    calib_x, eval_x, eval_y = x[c0:c1], x[e0:e1], y[e0:e1]
    rows: list[dict] = []

    models: dict[str, str] = {"fp32 (ONNX Runtime)": onnx_path}
    ort_q = str(work / f"{task}_ort_default.onnx")
    ort_default_quantize(onnx_path, calib_x, ort_q)
    models["onnxruntime quantize_static (default)"] = ort_q
    for dest, label, quantize, suffix in PEERS:
        python = getattr(args, dest)
        if not (python and Path(python).exists()):
            continue
        peer_q = str(work / f"{task}_{suffix}.onnx")
        try:
            note = quantize(python, onnx_path, calib_x, peer_q, work)
            models[f"{label} ({note})"] = peer_q
        except Exception as e:  # report, don't hide: the row says why it is missing
            rows.append({"task": task, "method": label, "error": str(e)})
    t0 = time.monotonic()
    common = dict(data=(x, y), metric="top1", max_drop=0.005, splits={"calib": f"{c0}:{c1}", "eval": f"{e0}:{e1}"},
                  progress=False, seed=0, bench_rounds=args.rounds)
    goal = "latency"
    try:
        result = edgeopt.optimize(onnx_path, goal=goal, **common)
    except edgeopt.errors.BudgetError as e:
        # No int8 graph beat fp32 on this runtime (measured, e.g. DS-CNN on ORT): compare the smallest instead.
        print(f"{task}: latency goal not met ({str(e)[:120]}...); using --goal size", file=sys.stderr)
        goal = "size"
        result = edgeopt.optimize(onnx_path, goal=goal, **common)
    edgeopt_s = time.monotonic() - t0
    best_path = str(work / f"{task}_edgeopt.onnx")
    Path(best_path).write_bytes(result.best.model.onnx_bytes)
    models[f"edgeopt ({result.best.name}, goal {goal})"] = best_path

    report = benchmark(list(models.values()), threads=1, rounds=args.rounds, iterations=100, inputs=eval_x[:1])
    # the same ONNX models timed in alternation in one process (what the optimizer decides on)
    inter = compare_interleaved(list(models.values()), threads=1, inputs=eval_x[:1], budget_s=10.0)
    base_ms = report.results[0].best_round_median_ms
    fp32_size = os.path.getsize(onnx_path)
    fp32_acc = None
    for (name, path), r, alternating in zip(models.items(), report.results, inter.ratios):
        acc = top1(ort_outputs(path, eval_x), eval_y)
        fp32_acc = acc if fp32_acc is None else fp32_acc
        rows.append({"task": task, "method": name, "top1": acc, "drop_pt": 100 * (fp32_acc - acc),
                     "bytes": os.path.getsize(path), "size_ratio": os.path.getsize(path) / fp32_size,
                     "latency_ms": r.best_round_median_ms, "latency_ratio": r.best_round_median_ms / base_ms,
                     "latency_ratio_interleaved": alternating,
                     "spread": r.spread, "runtime": "onnxruntime (edgeopt.bench, fresh processes)"})
    # LiteRT reference int8
    lite_acc = top1(litert_outputs(tflite_path, eval_x), eval_y)
    ort_ms, lite_ms = inprocess_latency_pair(onnx_path, tflite_path, eval_x[0], rounds=args.rounds)
    rows.append({"task": task, "method": "MLPerf reference int8 .tflite (LiteRT)", "top1": lite_acc,
                 "drop_pt": 100 * (fp32_acc - lite_acc), "bytes": os.path.getsize(tflite_path),
                 "size_ratio": os.path.getsize(tflite_path) / fp32_size, "latency_ms": lite_ms,
                 "latency_ratio": lite_ms / ort_ms, "spread": None,
                 "runtime": f"LiteRT in-process, ratio vs ORT fp32 in-process ({ort_ms:.4f} ms)"})
    for r in rows:
        r.setdefault("eval_rows", [e0, e1])
        r.setdefault("calib_rows", [c0, c1])
    rows.append({"task": task, "method": "edgeopt optimize wall time", "seconds": round(edgeopt_s, 1),
                 "chosen": result.best.name, "drop_ci95_pt": [100 * -result.best.drop_eval.ci_high, 100 * -result.best.drop_eval.ci_low]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="ic,kws")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nncf-python", default="/work/venv-nncf/bin/python", help="python of a venv with nncf installed")
    parser.add_argument("--inc-python", default="/work/venv-inc/bin/python",
                        help="python of a venv with neural-compressor 3.7.1 installed (recipe in _inc_quantize.py)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ptq_vs_peers.json"))
    args = parser.parse_args()
    all_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ptq-peers-") as tmp:
        for task in args.tasks.split(","):
            all_rows += run_task(task.strip(), args, Path(tmp))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PTQ vs peers (top-1 on the same eval rows; latency ratio vs fp32 from one run, 1 thread)")
    for col in ("task", "method", "top-1", "drop pt", "bytes", "size x", "latency x", "spread", "latency x alt."):
        table.add_column(col, justify="left" if col in ("task", "method") else "right")
    for r in all_rows:
        if "top1" not in r:
            table.add_row(r["task"], r["method"], *(["—"] * 7)) if "error" not in r else table.add_row(r["task"], r["method"], r["error"][:40], *(["—"] * 6))
            continue
        table.add_row(r["task"], r["method"], f"{100 * r['top1']:.2f}%", f"{r['drop_pt']:+.2f}", f"{r['bytes']:,}",
                      f"{r['size_ratio']:.3f}", f"{r['latency_ratio']:.3f}", "—" if r["spread"] is None else f"{r['spread']:.2f}",
                      "—" if r.get("latency_ratio_interleaved") is None else f"{r['latency_ratio_interleaved']:.3f}")
    Console(width=170).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgeopt._io import write_text_atomic

    write_text_atomic(out, json.dumps({"rows": all_rows, "rounds": args.rounds, "machine_note": "2-core VM shared with other jobs; see spread"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
