"""Profile the four MLPerf Tiny reference models: params, MACs, peak activations, latency on this host.

Run from the project root:  python benchmarks/profile_mlperf_tiny.py [--runs 50] [--threads 1]
Prints a table and then the same figures as JSON (one object per model). Static figures are per
sample (dynamic batch = 1); latency is ONNX Runtime's profiled median per run at batch 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    args = parser.parse_args()
    rows = []
    for task, rel in MODELS.items():
        path = (SHARED / rel).resolve()
        if not path.exists():
            raise SystemExit(f"missing {path}: see ../shared/data/DATA.md")
        p = profile(path, measure=True, threads=args.threads, runs=args.runs)
        heaviest = max(p.nodes, key=lambda n: n.latency_share or 0)
        rows.append({
            "task": task, "model": p.model, "parameters": p.parameters, "weight_bytes": p.weight_bytes,
            "macs": p.macs, "activation_peak_bytes": p.activation_peak_bytes,
            "activation_peak_node": p.activation_peak_node, "latency_ms_median": p.latency.run_us_median / 1000,
            "heaviest_node": heaviest.name, "heaviest_share": heaviest.latency_share,
            "threads": args.threads, "runs": args.runs,
        })
    header = f"{'task':<22}{'params':>10}{'MACs':>13}{'peak act. B':>13}{'ORT ms':>9}  heaviest node (share)"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<22}{r['parameters']:>10,}{r['macs']:>13,}{r['activation_peak_bytes']:>13,}"
              f"{r['latency_ms_median']:>9.3f}  {r['heaviest_node']} ({r['heaviest_share']:.1%})")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
