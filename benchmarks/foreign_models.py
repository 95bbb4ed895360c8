"""`edgeopt optimize` on models unlike the MLPerf CNNs: transformers fed token ids and masks, a
stateful LSTM, the MLPerf Tiny anomaly-detection autoencoder (Keras BatchNorm, no labels), and the
real all-MiniLM-L6-v2 sentence encoder (with --minilm-dir: exported by _export_minilm.py, whose
docstring gives the venv and the download; 1000 rows, calibrate on 0-199, hold out 200-999).

The PyTorch models are built here with seeded random weights (each transformer layer initialised on
its own, so no weights are shared) and exported to ONNX; their data are seeded random token ids
(every third row padded: the mask matters) or frames. With random weights, logits are close
together, so agreement and cosine to the original are harsh tests. First half of the rows
calibrates, the second half is held out; 1 thread, the optimizer's own interleaved benchmark.

    python benchmarks/foreign_models.py [--only NAME] [--minilm-dir DIR] [--json benchmarks/results/foreign_models.json]
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


def _transformer(torch, vocab: int, d: int, heads: int, layers: int):
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, d)
            layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(d, 4)

        def forward(self, input_ids, attention_mask):
            return self.head(self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)[:, 0])

    model = Encoder().eval()
    for layer in model.encoder.layers:  # TransformerEncoder clones one layer: give each its own weights
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else torch.nn.init.zeros_(p)
        layer.norm1.weight.data.fill_(1.0)
        layer.norm2.weight.data.fill_(1.0)
    return model


def build(name: str, folder: Path, minilm_dir: Path | None = None):
    """(model path, data path, metric, max_drop, goal, splits) for one case."""
    if name == "minilm-l6":
        return minilm_dir / "minilm.onnx", minilm_dir / "minilm_tokens.npz", "cosine", 0.01, "latency", "calib=0:200,eval=200:"
    import torch

    import edgeopt

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = folder / f"{name}.npz"
    if name in ("transformer-1x16", "transformer-4x256"):
        vocab, d, heads, layers, seq = (50, 16, 2, 1, 7) if name == "transformer-1x16" else (1000, 256, 4, 4, 64)
        module = _transformer(torch, vocab, d, heads, layers)
        ids = torch.randint(0, vocab, (2, seq))
        handle = edgeopt.load(module, example_inputs=(ids, torch.ones(2, seq, dtype=torch.int64)),
                              input_names=["input_ids", "attention_mask"])
        mask = np.ones((200, seq), np.int64)
        mask[::3, seq * 2 // 3:] = 0
        np.savez(data, input_ids=rng.integers(0, vocab, (200, seq)), attention_mask=mask)
        metric, max_drop, goal = ("agreement", 0.01, "size") if layers == 1 else ("cosine", 0.01, "latency")
    elif name == "lstm":
        class Lstm(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(10, 64, num_layers=2, batch_first=True)
                self.classify = torch.nn.Linear(64, 12)

            def forward(self, frames, h, c):
                out, (h_next, c_next) = self.lstm(frames, (h, c))
                return self.classify(out[:, -1]), h_next, c_next

        handle = edgeopt.load(Lstm().eval(), example_inputs=(torch.randn(3, 49, 10), torch.zeros(2, 3, 64), torch.zeros(2, 3, 64)),
                              input_names=["frames", "h", "c"], output_names=["logits", "h_next", "c_next"])
        np.savez(data, frames=rng.standard_normal((300, 49, 10)).astype(np.float32),
                 h=np.zeros((300, 2, 64), np.float32), c=np.zeros((300, 2, 64), np.float32))
        metric, max_drop, goal = "agreement", 0.02, "size"
    elif name == "ad-autoencoder":
        np.savez(data, x=rng.standard_normal((400, 640)).astype(np.float32))
        return SHARED / "mlperf_tiny" / "ad" / "fc_autoencoder_ad01.onnx", data, "cosine", 0.005, "latency", None
    else:
        raise SystemExit(f"unknown case {name!r}")
    path = folder / f"{name}.onnx"
    handle.save(path)
    return path, data, metric, max_drop, goal, None


CASES = ("transformer-1x16", "transformer-4x256", "lstm", "ad-autoencoder", "minilm-l6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=CASES)
    parser.add_argument("--minilm-dir", type=Path, help="folder with minilm.onnx and minilm_tokens.npz (_export_minilm.py)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "foreign_models.json")
    args = parser.parse_args()

    import edgeopt
    from edgeopt.errors import BudgetError

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-foreign-") as tmp:
        for name in [args.only] if args.only else CASES:
            if name == "minilm-l6" and not (args.minilm_dir and (args.minilm_dir / "minilm.onnx").exists()):
                if args.only:
                    raise SystemExit("minilm-l6 needs --minilm-dir DIR with minilm.onnx (see benchmarks/_export_minilm.py)")
                print("minilm-l6: skipped (no --minilm-dir; see benchmarks/_export_minilm.py)", flush=True)
                continue
            path, data, metric, max_drop, goal, splits = build(name, Path(tmp), args.minilm_dir)
            started = time.monotonic()
            try:
                result = edgeopt.optimize(str(path), data=str(data), metric=metric, max_drop=max_drop, goal=goal,
                                          splits=splits, progress=False)
                chosen = result.best
            except BudgetError as e:
                result, chosen = getattr(e, "result", None), None
            by_name = {c.name: c for c in (result.candidates if result is not None else [])}

            def summary(c):
                if c is None:
                    return None
                drop = None
                if c.drop_eval is not None and c.eval is not None:  # a paired difference: higher is better flips it
                    drop = float(-c.drop_eval.value if c.eval.higher_is_better else c.drop_eval.value)
                return {"status": c.status, "size_ratio": c.size_ratio, "latency_ratio": c.latency_ratio,
                        "held_out_drop": drop, "reason": c.reason}

            rows.append({"model": name, "metric": metric, "max_drop": max_drop, "goal": goal,
                         "bytes": path.stat().st_size, "chosen": chosen.name if chosen else None,
                         "chosen_figures": summary(chosen), "static_int8": summary(by_name.get("int8-minmax")),
                         "dynamic_int8": summary(by_name.get("int8-dynamic")),
                         "dynamic_int8_per_channel": summary(by_name.get("int8-dynamic-per-channel")),
                         "weighted_ops_int8": summary(by_name.get("int8-weighted-ops")),
                         "seconds": round(time.monotonic() - started, 1)})
            print(f"{name}: done in {rows[-1]['seconds']} s", flush=True)

    def fmt(s, key, spec):
        return "-" if not s or s.get(key) is None else format(s[key], spec)

    print(f"\n| model | bytes | metric, budget | chosen | x size | x latency | held-out drop | static int8 drop "
          f"| static int8, weighted ops only | dynamic int8 drop | dynamic, per-channel |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["chosen_figures"]
        print(f"| {r['model']} | {r['bytes']:,} | {r['metric']} {r['max_drop']} ({r['goal']}) | {r['chosen'] or 'none (budget error)'} "
              f"| {fmt(c, 'size_ratio', '.3f')} | {fmt(c, 'latency_ratio', '.3f')} | {fmt(c, 'held_out_drop', '.4f')} "
              f"| {fmt(r['static_int8'], 'held_out_drop', '.4f')} | {fmt(r.get('weighted_ops_int8'), 'held_out_drop', '.4f')} "
              f"| {fmt(r['dynamic_int8'], 'held_out_drop', '.4f')} | {fmt(r.get('dynamic_int8_per_channel'), 'held_out_drop', '.4f')} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
