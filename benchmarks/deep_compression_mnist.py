"""Deep Compression (Han et al., 2016) on MNIST with edgeopt's passes: prune -> cluster -> int8 -> Huffman.

LeNet-300-100 is trained here from scratch on mnist_5k, then compressed stage by stage; each stage's
stored size and top-1 accuracy (ONNX Runtime, on rows never trained on) are printed, plus JSON.

Split: mnist_5k.csv.gz is sorted by class (rows 0-3999 are digits 0-7, rows 4000-4999 digits 8-9), so
the literal "train 0-3999 / evaluate 4000-4999" split would evaluate only on digits the model never
saw (0% accuracy for every stage). This script uses the same 4000/1000 sizes per class instead:
the first 400 rows of each digit train, the last 100 rows of each digit evaluate (deterministic,
disjoint). The literal split's class counts are printed too, for the record.

Stored size: fp32 = 4 bytes per parameter; later stages count the weights in the stated format
(sparse: fp32 value + 5-bit relative index; clustered: 5-bit cluster index + 5-bit relative index +
codebook; int8: the same with an int8 codebook and one fp32 scale per layer; Huffman: both index
streams Huffman-coded, code tables included) plus biases as 4-byte values.

    python benchmarks/deep_compression_mnist.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / ".." / "shared" / "data" / "datasets" / "mnist_5k.csv.gz"


def lenet_300_100():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def stratified(data, per_class_train: int):
    y = data.y.astype(int)
    train_idx, eval_idx = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        train_idx += list(rows[:per_class_train])
        eval_idx += list(rows[per_class_train:])
    pick = lambda idx, name: replace(data, x=data.x[np.array(idx)], y=data.y[np.array(idx)], name=name, rows=None)
    return pick(train_idx, "mnist_train_400_per_class"), pick(eval_idx, "mnist_eval_100_per_class")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--sparsity", type=float, default=0.92)
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--scope", default="global", choices=["global", "layer"])
    parser.add_argument("--prune-epochs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    import edgeopt
    from edgeopt.data import Preprocess, load_data
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.cluster_weights import ClusterWeights
    from edgeopt.passes.prune_magnitude import PruneMagnitude
    from edgeopt.storage import model_storage
    from edgeopt.training import FineTune, fine_tune

    torch.set_num_threads(1)
    data = load_data(DATA, preprocess=Preprocess(scale=1 / 255))
    train, evaluation = stratified(data, 400)
    fast = {"progress": False, "batch_size": 64}

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    net = lenet_300_100()
    fine_tune(net, train, config=FineTune(epochs=30, lr=1e-3, patience=5, augment="noise", **fast),
              seed=args.seed)
    fp32 = edgeopt.load(net, example_inputs=torch.zeros(1, 784), name="lenet_300_100")
    ctx = PassContext(train=train, teacher=fp32, seed=args.seed, options={"fine_tune": fast})

    def accuracy(handle, d=evaluation) -> float:
        return float(np.mean(handle.predict(d.x)[0].argmax(1) == d.y))

    def weights_and_biases(handle):
        from onnx import numpy_helper

        arrays = {i.name: numpy_helper.to_array(i) for i in handle.proto().graph.initializer if i.data_type == 1}
        return ({k: v for k, v in arrays.items() if v.ndim == 2}, sum(v.size for v in arrays.values() if v.ndim == 1))

    stages = []

    def stage(name, handle, weight_bytes, note):
        _, biases = weights_and_biases(handle)
        size = int(weight_bytes + 4 * biases)
        stages.append({"stage": name, "stored_bytes": size, "accuracy": accuracy(handle), "note": note,
                       "onnx_file_bytes": handle.size_bytes})

    weights, biases = weights_and_biases(fp32)
    params = sum(w.size for w in weights.values()) + biases
    stage("fp32", fp32, 4 * sum(w.size for w in weights.values()), "dense fp32")

    pruned = PruneMagnitude(sparsity=args.sparsity, schedule="gradual", scope=args.scope,
                            epochs=args.prune_epochs, lr=1e-3)(fp32, ctx)
    weights, _ = weights_and_biases(pruned.model)
    stage("pruned", pruned.model, model_storage(weights)["total"]["sparse"],
          f"{pruned.stats['sparsity']:.1%} zeros, fp32 values + 5-bit relative index")

    clustered = ClusterWeights(clusters=args.clusters, epochs=4, lr=1e-4)(pruned.model, ctx)
    weights, _ = weights_and_biases(clustered.model)
    stage("clustered", clustered.model, model_storage(weights)["total"]["codebook"],
          f"{args.clusters} values per layer (5-bit index) + fp32 codebook")

    quantized = ClusterWeights(clusters=args.clusters, epochs=0, codebook="int8")(clustered.model, ctx)
    weights, _ = weights_and_biases(quantized.model)
    layers = len(weights)
    int8_storage = model_storage(weights, codebook_value_bits=8)
    stage("int8", quantized.model, int8_storage["total"]["codebook"] + 4 * layers,
          "codebook entries int8 (+1 fp32 scale per layer)")
    stage("huffman", quantized.model, int8_storage["total"]["huffman"] + 4 * layers,
          "cluster indices and relative indices Huffman-coded (tables included)")

    base_size, base_acc = stages[0]["stored_bytes"], stages[0]["accuracy"]
    for s in stages:
        s["ratio"] = base_size / s["stored_bytes"]
        s["drop_pt"] = 100 * (base_acc - s["accuracy"])
    literal_train_digits = sorted(set(data.y[:4000].astype(int).tolist()))
    literal_eval_digits = sorted(set(data.y[4000:].astype(int).tolist()))
    result = {
        "model": "LeNet-300-100", "params": int(params), "train_rows": len(train), "eval_rows": len(evaluation),
        "split": "first 400 rows of each digit train, last 100 of each digit evaluate (file is sorted by class)",
        "literal_split_digits": {"rows_0_3999": literal_train_digits, "rows_4000_4999": literal_eval_digits},
        "literal_split_note": "the literal split would evaluate only on digits the training rows never contain",
        "stages": stages, "seconds": time.perf_counter() - t0,
        "per_layer_final": int8_storage["layers"],
    }
    print(f"{'stage':<10} {'stored bytes':>12} {'x smaller':>9} {'top-1':>7} {'drop pt':>8}  note")
    for s in stages:
        print(f"{s['stage']:<10} {s['stored_bytes']:>12,} {s['ratio']:>9.1f} {s['accuracy']:>7.2%} {s['drop_pt']:>8.2f}  {s['note']}")
    print(f"eval: {len(evaluation)} images (100 per digit), never trained on. Literal split not used: rows 0-3999 hold "
          f"digits {literal_train_digits}, rows 4000-4999 digits {literal_eval_digits}")
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer_final"}, indent=1))
    if args.json:
        from edgeopt._io import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
