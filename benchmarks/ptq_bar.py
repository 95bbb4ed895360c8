"""Issue-4 bar, measured: edgeopt.optimize on ResNet-8/CIFAR, DS-CNN/Speech Commands (top-1, 0.5 pt)
and MobileNetV1 VWW (top-1 agreement >= 99% on unlabelled CIFAR images resized to 96x96, /255).

Prints the chosen candidate's held-out drop with its 95% CI, size ratio and latency ratio (from
the optimizer's own interleaved benchmark run) and writes each report folder under --out.

    python benchmarks/ptq_bar.py [--tasks ic,kws,vww] [--out benchmarks/results/bar]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = (ROOT / ".." / "shared" / "data").resolve()


def repo_relative(text: str) -> str:
    """Stored results are committed with the repo, so they name files relative to its root (as the
    command line above does), not by the absolute path of whichever checkout ran the benchmark."""
    return text.replace(str(SHARED), "../shared/data").replace(f"{ROOT}/", "")


def vww_inputs() -> np.ndarray:
    from PIL import Image

    x = np.load(SHARED / "datasets/cifar10_test_first1000.npz", allow_pickle=False)["x"]
    return np.stack([np.asarray(Image.fromarray(im).resize((96, 96), Image.BILINEAR), dtype=np.float32) / 255.0 for im in x])


def main() -> None:
    import edgeopt
    from edgeopt._io import write_text_atomic

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="ic,kws,vww")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bar"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tasks = {
        "ic": dict(model=SHARED / "mlperf_tiny/ic/resnet8_cifar10.onnx", data=str(SHARED / "datasets/cifar10_test_first1000.npz"),
                   metric="top1", max_drop=0.005, bar=(0.30, 0.50)),
        "kws": dict(model=SHARED / "mlperf_tiny/kws/dscnn_kws12.onnx", data=str(SHARED / "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz"),
                    metric="top1", max_drop=0.005, bar=(0.30, 0.75)),
        "vww": dict(model=SHARED / "mlperf_tiny/vww/mobilenetv1_vww96.onnx", data=None, metric="agreement", max_drop=0.01, bar=(None, None), goal="size"),
    }
    summary = {}
    for task in args.tasks.split(","):
        t = tasks[task]
        data = vww_inputs() if task == "vww" else t["data"]
        out = Path(args.out) / task
        try:
            r = edgeopt.optimize(str(t["model"]), data=data, metric=t["metric"], max_drop=t["max_drop"],
                                 splits="calib=0:500,eval=500:", progress=False, out=out, bench_rounds=args.rounds,
                                 goal=t.get("goal", "latency"))
        except edgeopt.errors.BudgetError as e:
            print(task, "BUDGET ERROR:", e)
            report = json.loads((out / "report.json").read_text())
            summary[task] = {"error": str(e), "candidates": [
                {k: c.get(k) for k in ("name", "status", "size_ratio", "latency_ratio", "drop_eval", "reason")} for c in report["candidates"]]}
            for c in report["candidates"]:
                print(f"    {c['name']:34s} {c['status']:8s} size={c['size_ratio'] and round(c['size_ratio'], 3)} "
                      f"lat={c['latency_ratio'] and round(c['latency_ratio'], 3)} drop={c['drop_eval']}")
            continue
        b = r.best
        d = b.drop_eval
        row = {"chosen": b.name, "metric": t["metric"], "baseline": r.baseline.eval.value, "value": b.eval.value,
               "difference": d.value, "difference_ci95": [d.ci_low, d.ci_high], "eval_samples": b.eval.samples,
               "size_ratio": b.size_ratio, "latency_ratio": b.latency_ratio, "latency_spread": b.bench["spread"],
               "fidelity": dict(b.eval.fidelity)}
        summary[task] = row
        print(f"{task}: chosen {b.name}: {t['metric']} {r.baseline.eval.value:.4f} -> {b.eval.value:.4f} "
              f"(diff {100 * d.value:+.2f} pt, 95% CI [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}], n={b.eval.samples}); "
              f"size {b.size_ratio:.3f}x; latency {b.latency_ratio:.3f}x (spread {b.bench['spread']:.2f})")
        for c in r.candidates:
            print(f"    {c.name:34s} {c.status:8s} size={c.size_ratio and round(c.size_ratio, 3)} "
                  f"lat={c.latency_ratio and round(c.latency_ratio, 3)} diff={None if c.drop_eval is None else round(100 * c.drop_eval.value, 2)}pt  {c.reason[:80]}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summary_path = Path(args.out) / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    write_text_atomic(summary_path, repo_relative(json.dumps({**previous, **summary}, indent=2, default=float)))


if __name__ == "__main__":
    main()
