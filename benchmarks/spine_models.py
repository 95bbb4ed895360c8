"""Profile + benchmark the four MLPerf Tiny reference models on this host (issue 5's table).

Run from the project root:  python benchmarks/spine_models.py [--runs 50] [--threads 1] [--rounds 5]
Prints a table and then the same figures as JSON (one object per model). Static figures are per
sample (dynamic batch = 1). "prof ms" is ONNX Runtime's profiled median per run (in-process, used
for per-node shares); "p50 ms" / "spread" / "load ms" / "peak RSS" come from edgeopt.benchmark:
each model in a fresh process per round, rounds interleaved, best-round median reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeopt.bench import benchmark
from edgeopt.profiling import profile

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mlperf_tiny"
MODELS = {
    "ic / ResNet-8": "ic/resnet8_cifar10.onnx",
    "kws / DS-CNN": "kws/dscnn_kws12.onnx",
    "vww / MobileNetV1": "vww/mobilenetv1_vww96.onnx",
    "ad / FC autoencoder": "ad/fc_autoencoder_ad01.onnx",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    paths = [(SHARED / rel).resolve() for rel in MODELS.values()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: see ../shared/data/DATA.md")
    bench = benchmark(paths, threads=args.threads, rounds=args.rounds)
    for (task, rel), path, b in zip(MODELS.items(), paths, bench.results):
        p = profile(path, measure=True, threads=args.threads, runs=args.runs)
        heaviest = max(p.nodes, key=lambda n: n.latency_share or 0)
        rows.append({
            "task": task, "model": p.model, "parameters": p.parameters, "weight_bytes": p.weight_bytes,
            "macs": p.macs, "activation_peak_bytes": p.activation_peak_bytes,
            "activation_peak_node": p.activation_peak_node, "latency_ms_median": p.latency.run_us_median / 1000,
            "heaviest_node": heaviest.name, "heaviest_share": heaviest.latency_share,
            "threads": args.threads, "runs": args.runs,
            "p50_ms": b.best_round_median_ms, "spread": b.spread, "load_ms": b.load_ms,
            "peak_rss_bytes": b.peak_rss_bytes, "size_bytes": b.size_bytes, "rounds": args.rounds,
        })
    header = (f"{'task':<22}{'params':>10}{'MACs':>13}{'peak act. B':>13}{'bytes':>11}{'prof ms':>9}"
              f"{'p50 ms':>9}{'spread':>8}{'load ms':>9}{'peak RSS MiB':>14}  heaviest node (share)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<22}{r['parameters']:>10,}{r['macs']:>13,}{r['activation_peak_bytes']:>13,}"
              f"{r['size_bytes']:>11,}{r['latency_ms_median']:>9.3f}{r['p50_ms']:>9.3f}{r['spread']:>8.2f}"
              f"{r['load_ms']:>9.1f}{r['peak_rss_bytes'] / 2**20:>14.1f}  {r['heaviest_node']} ({r['heaviest_share']:.1%})")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
