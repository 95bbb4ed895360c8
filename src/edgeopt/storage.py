"""Stored-size accounting for compressed weights: dense, sparse, codebook (clustered) and Huffman-coded.

These figures are what a weight file would occupy in the given format. Dense runtimes (ONNX
Runtime, TFLite) store and run the dense tensor regardless: sparsity and clustering shrink
*storage and transfer*, not inference time, unless a sparse/codebook kernel is used.

The formats follow Deep Compression (Han et al., 2016): non-zeros stored with their index as the
*gap* to the previous non-zero in ``index_bits`` bits (a zero filler is inserted when a gap is
too long), cluster indices in ``log2(k)`` bits plus a codebook, then both streams Huffman-coded.
No maintained library computes these sizes for a tensor, hence this small module.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np


def huffman_code_lengths(symbols: Iterable) -> dict:
    """Code length in bits of every symbol under an optimal Huffman code for their frequencies."""
    counts = Counter(symbols.tolist() if isinstance(symbols, np.ndarray) else symbols)
    if not counts:
        return {}
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(n, i, {s: 0}) for i, (s, n) in enumerate(counts.items())]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        n1, _, a = heapq.heappop(heap)
        n2, _, b = heapq.heappop(heap)
        merged = {s: d + 1 for s, d in a.items()} | {s: d + 1 for s, d in b.items()}
        heapq.heappush(heap, (n1 + n2, tie, merged))
        tie += 1
    return heap[0][2]


def huffman_bits(symbols: np.ndarray, *, table_bits_per_symbol: int = 16) -> int:
    """Bits of the Huffman-coded stream plus its code table (``table_bits_per_symbol`` per distinct symbol)."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0:
        return 0
    lengths = huffman_code_lengths(symbols)
    values, counts = np.unique(symbols, return_counts=True)
    payload = int(sum(lengths[v] * c for v, c in zip(values.tolist(), counts.tolist())))
    return payload + table_bits_per_symbol * len(lengths)


def relative_positions(mask: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Gaps between consecutive non-zeros (Deep Compression's relative index) and the fillers needed.

    Returns (gaps, filler_count); a gap longer than ``2**index_bits - 1`` costs a stored zero.
    """
    flat = np.flatnonzero(np.asarray(mask).reshape(-1))
    if flat.size == 0:
        return np.zeros(0, np.int64), 0
    gaps = np.diff(np.concatenate([[-1], flat]))
    limit = 2 ** index_bits - 1
    fillers = int(np.sum((gaps - 1) // limit))
    return np.minimum(gaps, limit), fillers


@dataclass(frozen=True)
class LayerStorage:
    """Sizes (bytes) of one weight tensor in each format."""

    name: str
    numel: int
    nonzero: int
    distinct: int
    dense_fp32: int
    sparse: int
    codebook: int
    huffman: int

    def to_dict(self) -> dict:
        return asdict(self)


def layer_storage(name: str, weight: np.ndarray, *, value_bits: int = 32, index_bits: int = 5,
                  codebook_value_bits: int = 32) -> LayerStorage:
    """Account one tensor: dense fp32, sparse (values + gaps), clustered (indices + codebook), Huffman.

    ``value_bits`` is the width of a stored non-zero in the sparse format; ``codebook_value_bits``
    the width of a codebook entry (32 for fp32 centroids, 8 for int8 ones).
    """
    w = np.asarray(weight).reshape(-1)
    mask = w != 0
    nnz = int(mask.sum())
    gaps, fillers = relative_positions(mask, index_bits)
    stored = nnz + fillers
    sparse_bits = stored * (value_bits + index_bits)
    values = w[mask]
    distinct = int(np.unique(values).size)
    index_width = max(1, int(np.ceil(np.log2(max(distinct, 2)))))
    sparse_codebook_bits = stored * (index_width + index_bits) + distinct * codebook_value_bits
    # Dense tensors are cheaper without relative indices: every element's cluster index (zero included).
    all_values, all_index = np.unique(w, return_inverse=True)
    dense_width = max(1, int(np.ceil(np.log2(max(all_values.size, 2)))))
    dense_codebook_bits = w.size * dense_width + all_values.size * codebook_value_bits
    codebook_bits = min(sparse_codebook_bits, dense_codebook_bits)
    # Huffman over the cluster indices (fillers are one extra symbol) and over the gaps, or over all indices.
    _, cluster_index = np.unique(values, return_inverse=True)
    symbols = np.concatenate([cluster_index.reshape(-1), np.full(fillers, -1)])
    gap_stream = np.concatenate([gaps, np.full(fillers, 2 ** index_bits - 1)])
    sparse_huffman = huffman_bits(symbols) + huffman_bits(gap_stream) + distinct * codebook_value_bits
    dense_huffman = huffman_bits(all_index.reshape(-1)) + all_values.size * codebook_value_bits
    # An encoder keeps the fixed-width streams when the code tables outweigh the gain (tiny tensors).
    huffman_total = min(sparse_huffman, dense_huffman, codebook_bits)
    dense_bytes = w.size * 4
    return LayerStorage(name=name, numel=int(w.size), nonzero=nnz, distinct=distinct, dense_fp32=dense_bytes,
                        sparse=min(_bytes(sparse_bits), dense_bytes), codebook=_bytes(codebook_bits),
                        huffman=_bytes(huffman_total))


def _bytes(bits: int) -> int:
    return int((bits + 7) // 8)


def model_storage(weights: Mapping[str, np.ndarray], **kwargs) -> dict:
    """Per-layer and total sizes for a dict of weight tensors (see :func:`layer_storage`)."""
    layers = [layer_storage(name, w, **kwargs) for name, w in weights.items()]
    totals = {key: int(sum(getattr(l, key) for l in layers))
              for key in ("numel", "nonzero", "dense_fp32", "sparse", "codebook", "huffman")}
    return {"layers": [l.to_dict() for l in layers], "total": totals}


def onnx_weights(proto, *, min_size: int = 16) -> dict[str, np.ndarray]:
    """Float initializers of an ONNX model with at least ``min_size`` elements (weights, not shapes)."""
    from onnx import numpy_helper

    out = {}
    for init in proto.graph.initializer:
        if init.data_type == 1:
            arr = numpy_helper.to_array(init)
            if arr.size >= min_size:
                out[init.name] = arr
    return out
