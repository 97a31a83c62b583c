"""Packing throughput (tokens/s) of concat vs bfd on generated text, plus end-to-end pack_dataset.

  python bench/bench_packing.py [--num_docs 50000] [--seq_len 1024]

Prints tokens/s for each packer on the same pre-tokenized documents (the reference is concat, measured
in the same run), the bfd/concat ratio, and the end-to-end rate including tokenization and writing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from recur.data.packing import TokenizedDoc, pack_bfd, pack_concat, pack_dataset


def generated_docs(num_docs: int, seed: int, max_len: int) -> list[TokenizedDoc]:
    """Byte-level 'text' with a long-tailed (log-normal) length distribution, like real corpora."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=5.0, sigma=1.0, size=num_docs).astype(int), 1, max_len)
    return [TokenizedDoc(rng.integers(0, 256, n, dtype=np.int32), np.ones(n, dtype=np.uint8)) for n in lengths]


def rate(packer, docs: list[TokenizedDoc], row_len: int) -> tuple[float, float]:
    tokens = sum(len(doc.ids) for doc in docs)
    began = time.perf_counter()
    rows = sum(len(block) for block in packer(docs, row_len, 256))
    elapsed = time.perf_counter() - began
    return tokens / elapsed, tokens / (rows * row_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_docs", type=int, default=50_000)
    parser.add_argument("--seq_len", type=int, default=1024)
    args = parser.parse_args()
    row_len = args.seq_len + 1
    docs = generated_docs(args.num_docs, 0, row_len)
    print(f"{len(docs)} docs, {sum(len(d.ids) for d in docs):,} tokens, row_len {row_len}")
    concat_rate, concat_eff = rate(pack_concat, docs, row_len)
    bfd_rate, bfd_eff = rate(pack_bfd, docs, row_len)
    print(f"concat: {concat_rate:>14,.0f} tokens/s  efficiency {concat_eff:.4f}")
    print(f"bfd   : {bfd_rate:>14,.0f} tokens/s  efficiency {bfd_eff:.4f}  ({bfd_rate / concat_rate:.2f}x concat)")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("concat", "bfd"):
            began = time.perf_counter()
            manifest = pack_dataset(
                Path(tmp) / mode,
                tokenizer="byte",
                seq_len=args.seq_len,
                packing=mode,
                tasks=["copy", "addition", "dyck"],
                num_docs=args.num_docs // 2,
                seed=0,
            )
            elapsed = time.perf_counter() - began
            print(
                f"end-to-end {mode:6s} (generate+tokenize+pack+write, byte tokenizer): "
                f"{manifest['num_tokens'] / elapsed:,.0f} tokens/s"
            )


if __name__ == "__main__":
    main()
