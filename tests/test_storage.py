"""Storage accounting: Huffman code lengths, relative indices, sparse/codebook sizes."""

import numpy as np
import pytest

from edgeopt.storage import huffman_bits, huffman_code_lengths, layer_storage, relative_positions


def test_huffman_lengths_textbook_example():
    symbols = ["a"] * 45 + ["b"] * 13 + ["c"] * 12 + ["d"] * 16 + ["e"] * 9 + ["f"] * 5
    lengths = huffman_code_lengths(symbols)
    assert lengths["a"] == 1 and lengths["f"] == 4 and lengths["e"] == 4
    assert huffman_bits(np.array(symbols), table_bits_per_symbol=0) == 224  # CLRS 16.3: 224 bits per 100 chars
    assert huffman_bits(np.array([1] * 10), table_bits_per_symbol=0) == 10


def test_relative_positions_insert_fillers_for_long_gaps():
    mask = np.zeros(100, bool)
    mask[[0, 3, 90]] = True
    gaps, fillers = relative_positions(mask, index_bits=3)  # max gap 7
    assert list(gaps) == [1, 3, 7] and fillers == (87 - 1) // 7


def test_layer_storage_of_sparse_clustered_tensor():
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-0.5, 0.25, 0.75], np.float32), size=20000)
    w[rng.random(20000) < 0.9] = 0
    s = layer_storage("w", w)
    assert s.distinct == 3 and s.dense_fp32 == 80000
    assert s.huffman < s.codebook < s.sparse < s.dense_fp32
