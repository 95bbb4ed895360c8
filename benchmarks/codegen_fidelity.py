"""How closely the generated C follows ONNX Runtime on the evaluation rows (IC and KWS).

    python benchmarks/codegen_fidelity.py [--activation int8 uint8]

Quantizes with ORT's static quantizer (calibration rows 0-499), exports C, runs the host build on
every evaluation row (CIFAR-10 rows 500-999, Speech Commands rows 500-4889) and prints: values
equal to ORT's integer kernels, the largest difference to ORT's default session, and top-1
accuracy of the C code and of ORT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = (ROOT / ".." / "shared" / "data").resolve()


def main() -> None:
    import onnx

    from edgeopt.codegen import build_and_run, export_c
    from edgeopt.codegen.api import compare_lsb, reference_int8
    from edgeopt.codegen.lower import lower
    from edgeopt.codegen.quantize_ref import mlperf_calibration, quantize_qdq

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--activation", nargs="+", default=["int8", "uint8"], choices=["int8", "uint8"])
    args = ap.parse_args()
    tasks = {
        "ic": ("mlperf_tiny/ic/resnet8_cifar10.onnx", "datasets/cifar10_test_first1000.npz"),
        "kws": ("mlperf_tiny/kws/dscnn_kws12.onnx", "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz"),
    }
    rows = []
    for task, (model_rel, data_rel) in tasks.items():
        with np.load(DATA / data_rel, allow_pickle=False) as d:
            x, y = d["x"][500:].astype(np.float32), d["y"][500:].astype(np.int64)
        for activation in args.activation:
            with tempfile.TemporaryDirectory() as tmp:
                q = Path(tmp) / "q.onnx"
                quantize_qdq(DATA / model_rel, mlperf_calibration(task, DATA), activation=activation, out_path=q)
                export_c(q, Path(tmp) / "c", target="host", samples=x[:16])
                ours = build_and_run(Path(tmp) / "c", "host", x).outputs
                proto = onnx.load(str(q))
                lowered = lower(proto)
                exact = compare_lsb(ours, reference_int8(proto, lowered, x, integer_kernels=True))
                ort = reference_int8(proto, lowered, x)
                default = compare_lsb(ours, ort)
            row = {"model": task, "activation": activation, "rows": f"500-{500 + len(x) - 1}",
                   "bit_exact_samples_vs_ort_integer": f"{exact['bit_exact_samples']}/{exact['samples']}",
                   "max_lsb_vs_ort_integer": exact["max_abs_lsb"], "max_lsb_vs_ort_default": default["max_abs_lsb"],
                   "top1_agreement_vs_ort_default": float((ours.argmax(1) == ort.argmax(1)).mean()),
                   "top1_c": float((ours.argmax(1) == y).mean()), "top1_ort": float((ort.argmax(1) == y).mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
