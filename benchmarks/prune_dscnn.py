"""Structured pruning of DS-CNN (MLPerf Tiny KWS) on Speech Commands, then int8 on top.

Tune on rows 0-2889 of the MLPerf MFCC test set, evaluate on rows 2890-4889 (the issue's split).
The file is sorted by class, so the tuning rows hold classes 0-7 (class 7 only partly) and the
evaluation rows classes 7-11: the pruned model is fine-tuned on one set of words and judged
mostly on others. The class mix is printed. Fine-tuning distils from the original model only (KL on
outputs + feature hints on the kept channels, no hard labels) on the tuning rows plus as many
teacher-guided synthetic rows (``synthesize_for_classes``: tuning rows pushed up the teacher's
gradient toward every class, so the classes missing from the tuning rows are represented), with a
seeded random 10% of both held out for early stopping on agreement with the teacher. Settings were
chosen on the tuning rows alone (``--split dev``: fine-tune on its words 0-4, judge on its words 5-7).

Latency: ``edgeopt.bench.benchmark`` (fresh processes, rounds interleaved across the models,
1 thread, batch 1); the ratio is from that one run. int8: the ``quantize.int8`` pass when present,
else ONNX Runtime ``quantize_static`` (QDQ, U8 activations, S8 per-channel weights), calibrated on
tuning rows.

    python benchmarks/prune_dscnn.py [--ratio 0.2] [--steps 2] [--epochs 20] [--seed 0] [--restarts 1] [--split issue|random|dev] [--json out.json]
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
SHARED = ROOT / ".." / "shared" / "data"


def ort_int8(handle, calib_x: np.ndarray):
    """QDQ U8S8 per-channel static quantization with ONNX Runtime (the PTQ fallback)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import edgeopt

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(calib_x[i:i + 1] for i in range(len(calib_x)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {handle.inputs[0].name: row}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        handle.save(src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        return edgeopt.load(onnx.load(str(dst)), name=handle.name + "_int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--scope", default="global", choices=["global", "layer"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=20, help="epochs without a better held-out agreement before stopping (20: the whole cosine schedule runs)")
    parser.add_argument("--steps", type=int, default=2, help="pruning steps, each followed by the least-squares refit")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--synthetic", type=float, default=2.0,
                        help="teacher-guided synthetic rows per tuning row (covers classes absent from the tuning rows)")
    parser.add_argument("--augment", default="auto")
    parser.add_argument("--round-to", type=int, default=8, help="kept channel counts rounded to multiples of this")
    parser.add_argument("--feature-weight", type=float, default=20.0,
                        help="weight of the feature hints (20: session 10, chosen on --split dev; 5 before)")
    parser.add_argument("--alpha", type=float, default=1.0, help="distillation weight (1 = outputs of the teacher only)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="decay of a moving average of the weights used to judge epochs and kept (0 = off)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="fine-tuning runs from the same pruned start, kept as a greedy soup (1 = one run)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="issue", choices=["issue", "random", "dev"],
                        help="issue: rows 0-2889 / 2890-4889 (sorted by class); random: a seeded shuffle, same sizes "
                             "(supplementary: shows what representative tuning data changes); dev: inside the tuning "
                             "rows only, tune on words 0-4 (rows 0-2026), judge on words 5-7 (rows 2027-2889), for "
                             "choosing settings without looking at the evaluation rows")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--save", type=Path, help="folder to write the four models to (to benchmark them again, "
                                                  "e.g. with `edgeopt bench`, when the machine is quiet)")
    args = parser.parse_args()

    import torch

    import edgeopt
    from edgeopt.bench import benchmark
    from edgeopt.data import load_data
    from edgeopt.evaluation import paired_difference, score
    from edgeopt.passes.base import PassContext, available_passes, make_pass

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    original = edgeopt.load(SHARED / "mlperf_tiny/kws/dscnn_kws12.onnx")
    data = load_data(SHARED / "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz")
    if args.split == "random":
        from dataclasses import replace as _replace

        order = np.random.default_rng(args.seed).permutation(len(data))
        pick = lambda idx, name: _replace(data, x=data.x[np.sort(idx)], y=data.y[np.sort(idx)], name=name, rows=None)
        tune, evaluation = pick(order[:2890], "tune_random_2890"), pick(order[2890:4890], "eval_random_2000")
    elif args.split == "dev":
        tune, evaluation = data.take(0, 2027), data.take(2027, 2890)
    else:
        tune, evaluation = data.take(0, 2890), data.take(2890, 4890)
    names = list(data.label_names or range(12))
    mix = lambda d: {str(names[c]): int(n) for c, n in enumerate(np.bincount(d.y.astype(int), minlength=12)) if n}

    def evaluate(handle):
        return score("top1", handle.predict(evaluation.x)[0], evaluation.y)

    base = evaluate(original)
    ctx = PassContext(tune=tune, teacher=original, seed=args.seed,
                      options={"fine_tune": {"alpha": args.alpha, "patience": args.patience, "progress": False,
                                           "ema": args.ema, "restarts": args.restarts}})
    pruned = make_pass("prune.channels", {"ratio": args.ratio, "importance": args.importance, "epochs": args.epochs, "scope": args.scope,
                                          "lr": args.lr, "feature_weight": args.feature_weight, "steps": args.steps,
                                          "synthetic": args.synthetic, "augment": args.augment,
                                          "round_to": args.round_to})(original, ctx)
    pruned_eval = evaluate(pruned.model)

    calib_rows = np.random.default_rng(args.seed).permutation(len(tune))[:300]
    calib = tune.x[np.sort(calib_rows)]
    if "quantize.int8" in available_passes():
        from edgeopt.data import Dataset

        int8 = make_pass("quantize.int8", {})(pruned.model, PassContext(calib=Dataset(calib), seed=args.seed)).model
        int8_how = "quantize.int8 pass"
    else:
        int8 = ort_int8(pruned.model, calib)
        int8_how = "onnxruntime quantize_static QDQ U8S8 per-channel (quantize.int8 not on this branch)"
    int8_eval = evaluate(int8)
    if int8_how.startswith("onnxruntime"):
        original_int8 = ort_int8(original, calib)
    else:
        from edgeopt.data import Dataset

        original_int8 = make_pass("quantize.int8", {})(original, PassContext(calib=Dataset(calib), seed=args.seed)).model
    original_int8_eval = evaluate(original_int8)

    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for name, h in [("fp32", original), ("pruned", pruned.model), ("int8", original_int8), ("pruned_int8", int8)]:
            h.save(args.save / f"{name}.onnx")
    macs = {name: edgeopt.profile(h).macs for name, h in
            [("fp32", original), ("pruned", pruned.model), ("int8", original_int8), ("pruned_int8", int8)]}
    report = benchmark([original, pruned.model, original_int8, int8], threads=1, rounds=args.rounds,
                       iterations=300, warmup=30)
    order = ["fp32", "pruned", "int8", "pruned_int8"]
    latency = dict(zip(order, [r.best_round_median_ms for r in report.results]))
    sizes = dict(zip(order, [r.size_bytes for r in report.results]))
    per_class = {name: {str(names[c]): float(np.mean(e.per_sample[evaluation.y == c])) for c in np.unique(evaluation.y)}
                 for name, e in [("fp32", base), ("pruned", pruned_eval)]}
    evals = {"fp32": base, "pruned": pruned_eval, "int8": original_int8_eval, "pruned_int8": int8_eval}
    rows = []
    for name in order:
        drop = paired_difference(evals[name], base)
        rows.append({"model": name, "top1": evals[name].value, "drop_pt": -100 * drop.value,
                     "drop_ci95_pt": [-100 * drop.ci_high, -100 * drop.ci_low], "macs": macs[name],
                     "mac_ratio": macs[name] / macs["fp32"], "latency_p50_ms": latency[name],
                     "latency_ratio": latency[name] / latency["fp32"], "size_bytes": sizes[name]})
    result = {
        "split": args.split, "n_eval": len(evaluation),
        "tune_rows": {"issue": "0-2889", "dev": "0-2026"}.get(args.split, "seeded random 2890 rows"),
        "eval_rows": {"issue": "2890-4889", "dev": "2027-2889"}.get(args.split, "the other 2000 rows"), "tune_class_mix": mix(tune), "eval_class_mix": mix(evaluation),
        "settings": vars(args) | {"json": str(args.json) if args.json else None}, "int8_method": int8_how,
        "prune_stats": {k: v for k, v in pruned.stats.items() if k != "fine_tune"},
        "fine_tune": pruned.stats["fine_tune"], "rows": rows, "eval_per_class_top1": per_class,
        "latency_method": report.to_dict()["method"], "latency_settings": report.settings,
        "seconds": time.perf_counter() - t0,
    }
    print(f"tune rows ({result['tune_rows']}) class mix: {result['tune_class_mix']}")
    print(f"eval rows ({result['eval_rows']}) class mix: {result['eval_class_mix']}")
    print(f"n = {len(evaluation)} evaluation rows; drop = fp32 top-1 minus the model's, 95% CI of the paired difference "
          "(bootstrap); latency = one interleaved edgeopt.bench run, 1 thread, batch 1")
    print(f"{'model':<12} {'top-1':>7} {'drop pt':>8} {'95% CI':>15} {'MACs':>10} {'xMACs':>6} {'p50 ms':>8} {'x lat':>6} {'bytes':>8}")
    for r in rows:
        ci = f"{r['drop_ci95_pt'][0]:+.2f}..{r['drop_ci95_pt'][1]:+.2f}"
        print(f"{r['model']:<12} {r['top1']:>7.2%} {r['drop_pt']:>8.2f} {ci:>15} {r['macs']:>10,} {r['mac_ratio']:>6.3f} "
              f"{r['latency_p50_ms']:>8.4f} {r['latency_ratio']:>6.3f} {r['size_bytes']:>8,}")
    print("per-class top-1 on the evaluation rows:", json.dumps(per_class))
    print(json.dumps(result, indent=1, default=str))
    if args.json:
        from edgeopt._io import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
