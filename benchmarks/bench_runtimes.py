"""Latency, load time and peak memory of the four MLPerf Tiny models on ONNX Runtime and OpenVINO.

f32, 1 thread, batch 1, random inputs; every figure from fresh processes, rounds interleaved across
the four models (see edgeopt.bench). Prints one table per runtime and a side-by-side comparison,
and writes the figures to benchmarks/results/bench_runtimes.json (atomically).

    PYTHONPATH=src python benchmarks/bench_runtimes.py [--rounds 5] [--iterations 200] [--out FILE]

Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeopt._io import write_text_atomic
from edgeopt.bench import benchmark

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "mlperf_tiny"
MODELS = {
    "ic": DATA / "ic" / "resnet8_cifar10.onnx",
    "kws": DATA / "kws" / "dscnn_kws12.onnx",
    "vww": DATA / "vww" / "mobilenetv1_vww96.onnx",
    "ad": DATA / "ad" / "fc_autoencoder_ad01.onnx",
}
RUNTIMES = ("onnxruntime", "openvino")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_runtimes.json")
    args = parser.parse_args()

    missing = [str(p) for p in MODELS.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing real models (see ../shared/data/DATA.md): {missing}")

    console = Console(width=140)
    reports = {}
    for runtime in RUNTIMES:
        console.print(f"[dim]measuring {len(MODELS)} models on {runtime} ...[/]")
        reports[runtime] = benchmark(
            [MODELS[k] for k in MODELS], runtime=runtime, threads=args.threads, rounds=args.rounds,
            warmup=args.warmup, iterations=args.iterations, precision="f32",
        )
        console.print(reports[runtime].table())

    side = Table(title=f"ONNX Runtime vs OpenVINO (f32, {args.threads} thread, batch 1, best-round medians)")
    for col in ("task", "model", "ORT p50 ms", "OV p50 ms", "OV / ORT", "ORT spread", "OV spread",
                "ORT load ms", "OV load ms", "ORT peak RSS MiB", "OV peak RSS MiB"):
        side.add_column(col, justify="left" if col in ("task", "model") else "right")
    ort_results, ov_results = reports["onnxruntime"].results, reports["openvino"].results
    for task, a, b in zip(MODELS, ort_results, ov_results):
        side.add_row(
            task, a.name, f"{a.best_round_median_ms:.3f}", f"{b.best_round_median_ms:.3f}",
            f"{b.best_round_median_ms / a.best_round_median_ms:.2f}", f"x{a.spread:.2f}", f"x{b.spread:.2f}",
            f"{a.load_ms:.0f}", f"{b.load_ms:.0f}", f"{a.peak_rss_bytes / 2**20:.0f}", f"{b.peak_rss_bytes / 2**20:.0f}",
        )
    console.print(side)

    payload = {
        "benchmark": "bench_runtimes",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_name(), "python": platform.python_version()},
        "models": {task: str(path.resolve().relative_to(DATA.resolve().parent)) for task, path in MODELS.items()},
        "reports": {runtime: report.to_dict() for runtime, report in reports.items()},
    }
    write_text_atomic(args.out, json.dumps(payload, indent=2) + "\n")
    console.print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
