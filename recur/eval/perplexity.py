"""Held-out cross-entropy and perplexity of a packed parquet dataset, per recurrence depth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recur.data.packed_reader import PackedShards, take_rows
from recur.models.lm import DecoderLM


def heldout_batches(path: str | Path, batch_size: int, max_rows: int | None = None):
    """Rows of a packed dataset in storage order, as batches of (inputs, targets, loss_mask, doc_ids)."""
    shards = PackedShards(path)
    rows_left = shards.num_rows if max_rows is None else min(max_rows, shards.num_rows)
    for group in range(len(shards.group_sizes)):
        block = shards.read_group(group)
        for lo in range(0, len(block), batch_size):
            if rows_left <= 0:
                return
            take = np.arange(lo, min(lo + batch_size, len(block)))[:rows_left]
            rows_left -= len(take)
            arrays = take_rows(block, take)
            ids = torch.from_numpy(arrays["input_ids"].astype(np.int64))
            mask = torch.from_numpy(arrays["loss_mask"].astype(np.int64))
            docs = torch.from_numpy(arrays["doc_ids"].astype(np.int64))
            yield ids[:, :-1], ids[:, 1:], mask[:, 1:], docs[:, :-1]


def check_data_fits(model: DecoderLM, path: str | Path) -> PackedShards:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--data: held-out dataset {path} does not exist")
    shards = PackedShards(path)
    if shards.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"--data: {path} uses a vocabulary of {shards.vocab_size} tokens but the model has "
                         f"{model.cfg.vocab_size}: data from another tokenizer")
    if shards.row_len - 1 > model.cfg.max_seq_len:
        raise ValueError(f"--data: {path} rows hold {shards.row_len - 1} tokens > the model's max_seq_len "
                         f"{model.cfg.max_seq_len}")
    return shards


@torch.no_grad()
def heldout_loss(model: DecoderLM, path: str | Path, depths: list[int], batch_size: int = 16,
                 max_rows: int | None = None, progress: bool = True) -> dict:
    """The `perplexity` section of a results file: token-weighted mean loss (nats) over loss_mask tokens."""
    shards = check_data_fits(model, path)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    for depth in tqdm(depths, desc="perplexity", unit="depth", disable=not progress, leave=False):
        total, count = 0.0, 0
        for inputs, targets, mask, docs in heldout_batches(path, batch_size, max_rows):
            inputs, targets, mask, docs = (t.to(device) for t in (inputs, targets, mask, docs))
            n = int(mask.sum())
            if n == 0:
                continue
            out = model(inputs, targets=targets, loss_mask=mask, num_steps=depth, doc_ids=docs)
            total += out.loss.item() * n
            count += n
        if count == 0:
            raise ValueError(f"--data: {path} has no tokens with loss_mask = 1 to score")
        loss = total / count
        results.append({"depth": depth, "loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count})
    model.train(was_training)
    rows = shards.num_rows if max_rows is None else min(max_rows, shards.num_rows)
    return {"data": str(path), "rows": rows, "results": results}
