"""Held-out cross-entropy and perplexity of a packed parquet dataset, per recurrence depth."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from tqdm import tqdm

from recur.data.loader import StatefulParquetDataset
from recur.data.packed_reader import PackedShards
from recur.models.lm import DecoderLM


def heldout_batches(path: str | Path, batch_size: int, max_rows: int | None = None):
    """Rows of a packed dataset in storage order (one pass, no shuffle), as batches of
    (inputs, targets, loss_mask, doc_ids) with the targets and mask shifted by one token."""
    # One row per global batch, so the pass ends exactly at the last row (no wrap into a second epoch).
    dataset = StatefulParquetDataset(path, global_batch_size=1, shuffle=False, infinite=False)
    rows = iter(dataset) if max_rows is None else itertools.islice(dataset, max_rows)
    while chunk := list(itertools.islice(rows, batch_size)):
        ids = torch.cat([row["input_ids"] for row in chunk])
        mask = torch.cat([row["loss_mask"] for row in chunk]).long()
        docs = torch.cat([row["doc_ids"] for row in chunk]).long()
        yield ids[:, :-1], ids[:, 1:], mask[:, 1:], docs[:, :-1]


def check_data_fits(model: DecoderLM, path: str | Path) -> PackedShards:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--data: held-out dataset {path} does not exist")
    shards = PackedShards(path)
    if shards.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"--data: {path} uses a vocabulary of {shards.vocab_size} tokens but the model has "
            f"{model.cfg.vocab_size}: data from another tokenizer"
        )
    if shards.row_len - 1 > model.cfg.max_seq_len:
        raise ValueError(
            f"--data: {path} rows hold {shards.row_len - 1} tokens > the model's max_seq_len {model.cfg.max_seq_len}"
        )
    return shards


@torch.no_grad()
def heldout_loss(
    model: DecoderLM,
    path: str | Path,
    depths: list[int],
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = True,
) -> dict:
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
