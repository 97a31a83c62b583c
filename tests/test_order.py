"""The walk's row shuffle sorts each piece on a hash; the packed one-argsort form must equal np.lexsort."""

from __future__ import annotations

import numpy as np
import pytest

from recur.data.order import _argsort_in_pieces


@pytest.mark.parametrize("key_bits", [9, 12, 64])
def test_argsort_in_pieces_equals_lexsort_ties_on_leading_bits_included(key_bits: int) -> None:
    rng = np.random.default_rng(key_bits)
    for _ in range(50):
        lengths = rng.integers(1, 9, size=rng.integers(1, 40))
        piece = np.repeat(np.arange(len(lengths)), lengths)
        # Distinct keys (as hashes of distinct positions are); few key bits make many of them share the
        # leading bits that the packed sort keeps.
        keys = rng.choice(2 ** min(key_bits, 62), size=len(piece), replace=False).astype(np.uint64)
        keys <<= np.uint64(max(0, key_bits - 62))
        assert np.array_equal(_argsort_in_pieces(piece, keys), np.lexsort((keys, piece)))
