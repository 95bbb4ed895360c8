"""edgeopt's generated C vs TensorFlow Lite Micro on the four MLPerf Tiny models.

For each model: quantize the fp32 ONNX to int8 QDQ (ONNX Runtime's static quantizer, per-channel
weights, calibration rows 0-499), export C, build for Cortex-M4 (QEMU mps2-an386) and report
flash (text + data of the whole firmware: model, kernels, startup and test harness, from
arm-none-eabi-size), the static arena, and executed instructions of one inference (QEMU -icount;
instructions, not cycles). Next to it: TFLM's arena for the MLPerf reference int8 .tflite
(measured with the tflite-micro PyPI interpreter's recording allocator: activations plus its
persistent per-op data) and the .tflite size. TFLM's interpreter and kernel code are not built
here, so the .tflite size is a lower bound of TFLM's flash; the flash ratio below is therefore
conservative (in TFLM's favour).

    python benchmarks/mcu_vs_tflm.py [--models ic kws vww ad] [--json out.json]

Calibration data: IC = CIFAR-10 test rows 0-499, KWS = Speech Commands MFCC rows 0-499. VWW and AD
ship no data: VWW calibrates on CIFAR rows 0-499 upsampled to 96x96 (real photos, RGB/255); AD on
log-mel frames computed from the 120 Speech Commands clips (real audio, not machine sounds).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = (ROOT / ".." / "shared" / "data").resolve()

MODELS = {
    "ic": ("mlperf_tiny/ic/resnet8_cifar10.onnx", "mlperf_tiny/ic/pretrainedResnet_quant.tflite"),
    "kws": ("mlperf_tiny/kws/dscnn_kws12.onnx", "mlperf_tiny/kws/kws_ref_model.tflite"),
    "vww": ("mlperf_tiny/vww/mobilenetv1_vww96.onnx", "mlperf_tiny/vww/vww_96_int8.tflite"),
    "ad": ("mlperf_tiny/ad/fc_autoencoder_ad01.onnx", "mlperf_tiny/ad/ad01_int8.tflite"),
}


def tflm_arena(tflite: Path) -> dict:
    """TFLM arena bytes for a .tflite, from the interpreter's recording allocator (run in a child process:
    the figures are printed by C++ on stdout)."""
    code = (
        "import numpy as np\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        f"it = runtime.Interpreter.from_file({str(tflite)!r})\n"
        "d = it.get_input_details(0)\n"
        "it.set_input(np.zeros(d['shape'], d['dtype']), 0)\n"
        "it.invoke()\n"
        "it.print_allocations()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    total = int(re.search(r"Arena allocation total (\d+)", out).group(1))
    head = int(re.search(r"Arena allocation head (\d+)", out).group(1))
    return {"tflm_arena_bytes": total, "tflm_activation_bytes": head}


def run(task: str, activation: str, target: str) -> dict:
    from edgeopt.codegen import build_and_run, export_c
    from edgeopt.codegen.quantize_ref import mlperf_calibration, quantize_qdq

    onnx_rel, tflite_rel = MODELS[task]
    calib = mlperf_calibration(task, DATA)
    with tempfile.TemporaryDirectory(prefix=f"edgeopt-bench-{task}-") as tmp:
        q = Path(tmp) / "model_int8.onnx"
        quantize_qdq(DATA / onnx_rel, calib, activation=activation, out_path=q)
        t0 = time.perf_counter()
        exp = export_c(q, Path(tmp) / "c", target=target, samples=calib[:16])
        export_s = time.perf_counter() - t0
        res = build_and_run(Path(tmp) / "c", target, calib[:1])
    row = {
        "model": task, "activation": activation, "target": target,
        "flash_bytes": res.flash_bytes, "constants_bytes": exp.constants_bytes, "arena_bytes": exp.arena_bytes,
        "ram_bytes": res.ram_bytes, "instructions": res.instructions, "peak_op": exp.peak_op,
        "bit_exact_vs_ort_integer": exp.verification["max_abs_lsb"] == 0,
        "max_lsb_vs_ort_default": exp.verification.get("vs_onnxruntime_default_session", exp.verification)["max_abs_lsb"],
        "export_seconds": round(export_s, 2),
        "tflite_bytes": (DATA / tflite_rel).stat().st_size,
    }
    row.update(tflm_arena(DATA / tflite_rel))
    row["arena_ratio"] = round(row["arena_bytes"] / row["tflm_arena_bytes"], 3)
    row["flash_ratio_vs_tflite_only"] = round(row["flash_bytes"] / row["tflite_bytes"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--activation", default="int8", choices=["int8", "uint8"])
    ap.add_argument("--target", default="cortex-m4", choices=["cortex-m4", "cortex-m7"])
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    rows = []
    for task in args.models:
        rows.append(run(task, args.activation, args.target))
        print(json.dumps(rows[-1]), flush=True)
    header = ("model", "flash B", ".tflite B", "flash/tflite", "arena B", "TFLM arena B", "arena ratio", f"instructions ({args.target})")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['flash_bytes']:,} | {r['tflite_bytes']:,} | {r['flash_ratio_vs_tflite_only']} | "
              f"{r['arena_bytes']:,} | {r['tflm_arena_bytes']:,} | {r['arena_ratio']} | {r['instructions']:,} |")
    print("\ngoal: arena <= 0.7x TFLM's, flash <= 0.9x TFLM's (model + kernels; TFLM's kernel code is not counted here)")
    if args.json:
        from edgeopt._io import write_text_atomic

        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
