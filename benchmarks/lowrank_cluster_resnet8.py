"""Low-rank factorization and weight clustering on ResNet-8 (MLPerf Tiny IC), CIFAR-10 subset.

Tune on images 0-499, evaluate on 500-999 of the first 1000 CIFAR-10 test images (never trained
on). Each technique is applied on its own to the original model and reported honestly: top-1 with
its paired difference to fp32 (95% bootstrap CI, 500 images), MACs (edgeopt.profile of the
exported ONNX), parameters, the ONNX file size, and for clustering the stored size in codebook +
index form and Huffman-coded (the ONNX file itself stays dense fp32).

    python benchmarks/lowrank_cluster_resnet8.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT / ".." / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    import edgeopt
    from edgeopt.data import load_data
    from edgeopt.evaluation import paired_difference, score
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.cluster_weights import ClusterWeights
    from edgeopt.passes.lowrank import LowRank

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    original = edgeopt.load(SHARED / "mlperf_tiny/ic/resnet8_cifar10.onnx")
    data = load_data(SHARED / "datasets/cifar10_test_first1000.npz")
    data = data.take(0, len(data))
    from dataclasses import replace

    data = replace(data, x=data.x.astype(np.float32))
    tune, evaluation = data.take(0, 500), data.take(500, 1000)
    ctx = PassContext(tune=tune, teacher=original, seed=args.seed, options={"fine_tune": {"progress": False}})

    def evaluate(handle):
        return score("top1", handle.predict(evaluation.x)[0], evaluation.y)

    base = evaluate(original)
    runs = [
        ("fp32", None),
        ("lowrank energy 0.95", LowRank(energy=0.95, epochs=args.epochs, lr=5e-5)),
        ("lowrank MACs 0.75", LowRank(mac_fraction=0.75, epochs=args.epochs, lr=5e-5)),
        ("lowrank MACs 0.5", LowRank(mac_fraction=0.5, epochs=args.epochs, lr=5e-5)),
        ("cluster 64", ClusterWeights(clusters=64, epochs=0)),
        ("cluster 64 int8", ClusterWeights(clusters=64, epochs=0, codebook="int8")),
        ("cluster 32 +ft", ClusterWeights(clusters=32, epochs=args.epochs // 2, lr=2e-5)),
        ("cluster 16 +ft", ClusterWeights(clusters=16, epochs=args.epochs // 2, lr=2e-5)),
    ]
    rows = []
    for name, p in runs:
        start = time.perf_counter()
        result = p(original, ctx) if p is not None else None
        handle = result.model if result else original
        ev = evaluate(handle)
        drop = paired_difference(ev, base)
        prof = edgeopt.profile(handle)
        row = {"model": name, "top1": ev.value, "drop_pt": -100 * drop.value,
               "drop_ci95_pt": [-100 * drop.ci_high, -100 * drop.ci_low], "macs": prof.macs,
               "params": prof.parameters, "onnx_bytes": handle.size_bytes, "seconds": time.perf_counter() - start}
        if result is not None and "ranks" in result.stats:
            row["ranks"] = result.stats["ranks"]
            row["stored_bytes"] = handle.size_bytes
        elif result is not None:
            clustered = sum(layer["numel"] for layer in result.stats["storage"])
            row["stored_bytes"] = result.stats["huffman_bytes"] + 4 * (prof.parameters - clustered)
            row["codebook_bytes"] = result.stats["codebook_bytes"]
            row["max_distinct_per_layer"] = max(result.stats["distinct_values"].values())
        else:
            row["stored_bytes"] = 4 * prof.parameters
        if result is not None:
            row["fine_tune"] = result.stats["fine_tune"]
        rows.append(row)
        print(f"{name:<20} top-1 {ev.value:.2%} drop {row['drop_pt']:+.2f} pt  MACs {prof.macs:,}  stored {row['stored_bytes']:,} B",
              flush=True)
    print()
    print(f"{'model':<20} {'top-1':>7} {'drop pt':>8} {'95% CI':>15} {'MACs':>11} {'params':>8} {'ONNX B':>8} {'stored B':>9}")
    for r in rows:
        ci = f"{r['drop_ci95_pt'][0]:+.2f}..{r['drop_ci95_pt'][1]:+.2f}"
        print(f"{r['model']:<20} {r['top1']:>7.2%} {r['drop_pt']:>8.2f} {ci:>15} {r['macs']:>11,} {r['params']:>8,} "
              f"{r['onnx_bytes']:>8,} {r['stored_bytes']:>9,}")
    out = {"tune_rows": "0-499", "eval_rows": "500-999", "eval_samples": len(evaluation), "rows": rows,
           "stored_bytes_meaning": "fp32: 4 B/param; lowrank: the ONNX file; cluster: Huffman-coded indices + codebook "
                                   "(+ biases as they are) from edgeopt.storage; the ONNX file itself stays dense",
           "seconds": time.perf_counter() - t0}
    print(json.dumps(out, indent=1, default=str))
    if args.json:
        from edgeopt._io import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
