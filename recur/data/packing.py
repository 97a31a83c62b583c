"""Tokenize documents and pack them into fixed-length rows (the packed format of docs/data.md).

Inputs: .jsonl (one JSON object per line), .parquet (a `text` or `messages` column) or .txt (one
document per blank-line-separated paragraph), or algorithmic tasks generated on the fly. Every
document is followed by EOS. Two packers:

- concat: documents are concatenated and cut into rows, so a document may continue in the next row;
  only the very last row is padded (with the pad id, loss 0, as its own final doc_starts segment).
- bfd: best-fit-decreasing bin packing; a document is never split. Each row is padded at its end.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recur.data.shard_writer import RowBlock, ShardWriter, build_manifest, check_out_dir, finish_dataset, staged_dir
from recur.data.tasks import get_task, make_task_documents
from recur.data.tokenizer import Tokenizer, load_tokenizer

PACKING_MODES = ("concat", "bfd")
BLOCK_ROWS = 4096  # rows converted to Arrow at a time: bounds the peak memory of the conversion


@dataclass
class Source:
    """One input (file or generated tasks) with its documents; token counts are filled by tokenization."""

    path: str
    sha256: str
    documents: list[dict]
    extra: dict = field(default_factory=dict)


@dataclass
class TokenizedDoc:
    ids: np.ndarray  # int32
    mask: np.ndarray  # uint8, 1 where the token may be a training target


def _check_document(doc: object, where: str) -> dict:
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return {"text": doc["text"]}
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list) and doc["messages"]:
        return {"messages": doc["messages"]}
    raise ValueError(f"{where}: expected an object with a string 'text' or a non-empty 'messages' list")


def read_documents(path: str | Path) -> list[dict]:
    """Documents of one input file; raises on a missing/empty file or a malformed document."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"input file {path} is empty")
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: invalid JSON: {error}") from error
            docs.append(_check_document(record, f"{path}, line {number}"))
    elif path.suffix == ".parquet":
        try:
            schema = pq.read_schema(path)
            column = next((name for name in ("messages", "text") if name in schema.names), None)
            if column is None:
                raise ValueError(f"{path}: expected a 'text' or 'messages' column, found {schema.names}")
            records = pq.read_table(path, columns=[column]).to_pylist()
        except (pa.ArrowException, OSError) as error:  # ArrowInvalid is a ValueError that names no file
            raise ValueError(f"input file {path} is corrupt/truncated: {error}") from error
        docs = [_check_document(record, f"{path}, row {i}") for i, record in enumerate(records)]
    elif path.suffix == ".txt":
        paragraphs = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n")
        docs = [{"text": text.strip("\n")} for text in paragraphs if text.strip()]
    else:
        raise ValueError(f"input file {path}: unsupported extension '{path.suffix}'; expected .jsonl, .parquet or .txt")
    if not docs:
        raise ValueError(f"input file {path} contains no documents")
    return docs


def file_source(path: str) -> Source:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else ""
    return Source(path=str(path), sha256=digest, documents=read_documents(path))


def task_source(tasks: Sequence[str], num_docs: int, seed: int, difficulty: int | None) -> Source:
    for name in tasks:
        get_task(name)
    if num_docs < 1:
        raise ValueError(f"--num_docs must be >= 1 when generating tasks, got {num_docs}")
    spec = {"tasks": list(tasks), "num_docs": num_docs, "seed": seed, "difficulty": difficulty}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    documents = make_task_documents(list(tasks), num_docs, seed, difficulty)
    return Source(path="tasks:" + ",".join(tasks), sha256=digest, documents=documents, extra=spec)


def render_document(doc: dict, tokenizer: Tokenizer, mask_non_assistant: bool) -> TokenizedDoc:
    """Tokens + loss mask of one document, always ending in EOS."""
    if "messages" in doc:
        ids, assistant = tokenizer.apply_chat_template(doc["messages"])
        mask = assistant if mask_non_assistant else [1] * len(ids)
    else:
        if mask_non_assistant:
            raise ValueError("--mask_non_assistant needs chat documents ('messages'), got a plain 'text' document")
        ids = tokenizer.encode(doc["text"])
        mask = [1] * len(ids)
    if not ids or ids[-1] != tokenizer.eos_id:
        # The EOS separating documents is part of no assistant reply, so it is only trained without the flag.
        ids, mask = ids + [tokenizer.eos_id], mask + [int(not mask_non_assistant)]
    return TokenizedDoc(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.uint8))


_worker: dict = {}


def _init_worker(tokenizer_spec: str, mask_non_assistant: bool) -> None:
    _worker["tokenizer"] = load_tokenizer(tokenizer_spec)
    _worker["mask_non_assistant"] = mask_non_assistant


def _render_chunk(chunk: list[dict]) -> list[TokenizedDoc]:
    return [render_document(doc, _worker["tokenizer"], _worker["mask_non_assistant"]) for doc in chunk]


def tokenize_documents(
    docs: list[dict], tokenizer_spec: str, mask_non_assistant: bool, num_proc: int = 1, chunk_size: int = 256
) -> list[TokenizedDoc]:
    """Tokenize in `num_proc` worker processes (each loads the tokenizer once), preserving order."""
    if num_proc < 1:
        raise ValueError(f"--num_proc must be >= 1, got {num_proc}")
    chunks = [docs[i : i + chunk_size] for i in range(0, len(docs), chunk_size)]
    out: list[TokenizedDoc] = []
    with tqdm(total=len(docs), desc="tokenize", unit="doc", leave=False) as progress:
        if num_proc == 1:
            _init_worker(tokenizer_spec, mask_non_assistant)
            results: Iterator[list[TokenizedDoc]] = map(_render_chunk, chunks)
            for result in results:
                out += result
                progress.update(len(result))
        else:
            # Spawned, not forked: a fork copies locks held by the caller's other threads (torch, the Rust
            # tokenizer pool, loader prefetch) and the child can wait on them forever.
            spawn = multiprocessing.get_context("spawn")
            with spawn.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer_spec, mask_non_assistant)) as pool:
                for result in pool.imap(_render_chunk, chunks):
                    out += result
                    progress.update(len(result))
    return out


def _blocks_from_flat(ids: np.ndarray, mask: np.ndarray, starts: np.ndarray, row_len: int) -> Iterator[RowBlock]:
    """Cut flat token/mask arrays (length a multiple of row_len) into RowBlocks; `starts` are the global
    positions where documents begin (row starts are added: a continued document restarts each row)."""
    num_rows = len(ids) // row_len
    all_starts = np.union1d(starts, np.arange(num_rows, dtype=np.int64) * row_len)
    row_of = all_starts // row_len
    for first in range(0, num_rows, BLOCK_ROWS):
        last = min(first + BLOCK_ROWS, num_rows)
        lo, hi = np.searchsorted(row_of, [first, last])
        offsets = np.searchsorted(row_of[lo:hi], np.arange(first, last + 1))
        yield RowBlock(
            input_ids=ids[first * row_len : last * row_len].reshape(-1, row_len),
            loss_mask=mask[first * row_len : last * row_len].reshape(-1, row_len),
            doc_starts=(all_starts[lo:hi] % row_len).astype(np.int32),
            doc_offsets=offsets.astype(np.int32),
        )


def pack_concat(docs: list[TokenizedDoc], row_len: int, pad_id: int) -> Iterator[RowBlock]:
    lengths = np.array([len(doc.ids) for doc in docs], dtype=np.int64)
    total = int(lengths.sum())
    padded = -(-total // row_len) * row_len
    ids = np.full(padded, pad_id, dtype=np.int32)
    mask = np.zeros(padded, dtype=np.uint8)
    if docs:
        ids[:total] = np.concatenate([doc.ids for doc in docs])
        mask[:total] = np.concatenate([doc.mask for doc in docs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if docs else np.zeros(0, np.int64)
    if padded > total:
        starts = np.append(starts, total)  # the final padding is its own segment
    return _blocks_from_flat(ids, mask, starts, row_len)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices (each bin's total <= capacity), placing items longest-first into the bin with
    the least remaining room that fits. Bins are bucketed by remaining capacity and the distinct
    capacities kept sorted, so each placement is a bisect: O(n log capacity) instead of O(n * bins)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    capacities: list[int] = []  # sorted distinct remaining capacities that have open bins
    buckets: dict[int, list[int]] = {}  # remaining capacity -> open bins with exactly that room
    bins: list[list[int]] = []
    for item in order:
        size = lengths[item]
        if size > capacity:
            raise ValueError(f"item {item} of size {size} exceeds the bin capacity {capacity}")
        slot = bisect.bisect_left(capacities, size)
        if slot < len(capacities):
            room = capacities[slot]
            target = buckets[room].pop()
            if not buckets[room]:
                del buckets[room]
                capacities.pop(slot)
        else:
            room, target = capacity, len(bins)
            bins.append([])
        bins[target].append(item)
        left = room - size
        if left > 0:
            if left not in buckets:
                bisect.insort(capacities, left)
                buckets[left] = []
            buckets[left].append(target)
    return bins


def pack_bfd(docs: list[TokenizedDoc], row_len: int, pad_id: int) -> Iterator[RowBlock]:
    bins = best_fit_decreasing([len(doc.ids) for doc in docs], row_len)
    for first in range(0, len(bins), BLOCK_ROWS):
        chunk = bins[first : first + BLOCK_ROWS]
        ids = np.full((len(chunk), row_len), pad_id, dtype=np.int32)
        mask = np.zeros((len(chunk), row_len), dtype=np.uint8)
        starts, offsets = [], [0]
        for row, members in enumerate(chunk):
            position = 0
            for index in members:
                doc = docs[index]
                ids[row, position : position + len(doc.ids)] = doc.ids
                mask[row, position : position + len(doc.ids)] = doc.mask
                starts.append(position)
                position += len(doc.ids)
            if position < row_len:
                starts.append(position)
            offsets.append(len(starts))
        yield RowBlock(ids, mask, np.asarray(starts, np.int32), np.asarray(offsets, np.int32))


def _fit_lengths(docs: list[TokenizedDoc], owners: list[tuple[str, int]], row_len: int, truncate: bool) -> None:
    for doc, (path, index) in zip(docs, owners):
        if len(doc.ids) > row_len:
            if not truncate:
                raise ValueError(
                    f"document {index} of {path} has {len(doc.ids)} tokens > row_len {row_len}; "
                    "bfd never splits documents: pass --truncate to cut it, raise --seq_len or use --packing concat"
                )
            doc.ids, doc.mask = doc.ids[:row_len], doc.mask[:row_len]


def tokenizer_entry(tokenizer: Tokenizer, spec: str) -> dict:
    return {
        "name": tokenizer.name,
        "spec": spec,
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "fingerprint": tokenizer.fingerprint(),
    }


def pack_dataset(
    out_dir: str | Path,
    *,
    tokenizer: str,
    seq_len: int,
    inputs: Sequence[str] = (),
    tasks: Sequence[str] = (),
    num_docs: int = 0,
    seed: int = 0,
    difficulty: int | None = None,
    packing: str = "concat",
    mask_non_assistant: bool = False,
    truncate: bool = False,
    num_proc: int = 1,
    rows_per_shard: int = 8192,
    row_group_size: int = 1024,
    overwrite: bool = False,
    recipe: dict | None = None,
) -> dict:
    """Read/generate, tokenize, pack and write a packed dataset; returns the manifest. `recipe`: the settings
    the data was generated from, recorded in the manifest (recur.data.generated compares it on reuse)."""
    if packing not in PACKING_MODES:
        raise ValueError(f"--packing must be one of {PACKING_MODES}, got '{packing}'")
    if seq_len < 1:
        raise ValueError(f"--seq_len must be >= 1, got {seq_len}")
    if not inputs and not tasks:
        raise ValueError("nothing to pack: give input files or --tasks")
    row_len = seq_len + 1
    sources = [file_source(path) for path in inputs]
    if tasks:
        sources.append(task_source(tasks, num_docs, seed, difficulty))
    tok = load_tokenizer(tokenizer)
    out = Path(out_dir)
    check_out_dir(out, overwrite)

    began = time.perf_counter()
    docs: list[TokenizedDoc] = []
    owners: list[tuple[str, int]] = []
    source_entries = []
    for source in sources:
        try:
            rendered = tokenize_documents(source.documents, tokenizer, mask_non_assistant, num_proc)
        except ValueError as error:
            raise ValueError(f"{source.path}: {error}") from error
        docs += rendered
        owners += [(source.path, i) for i in range(len(rendered))]
        tokens = sum(len(doc.ids) for doc in rendered)
        source_entries.append(
            {"path": source.path, "sha256": source.sha256, "documents": len(rendered), "tokens": tokens} | source.extra
        )
    if packing == "bfd":
        _fit_lengths(docs, owners, row_len, truncate)
    num_tokens = sum(len(doc.ids) for doc in docs)
    blocks = pack_concat(docs, row_len, tok.pad_id) if packing == "concat" else pack_bfd(docs, row_len, tok.pad_id)
    with staged_dir(out) as work:
        writer = ShardWriter(work, seq_len, rows_per_shard, row_group_size)
        for block in tqdm(blocks, desc=f"pack ({packing})", unit="block", leave=False):
            writer.add(block.to_table())
        shards = writer.close()
        elapsed = time.perf_counter() - began
        num_rows = sum(shard["num_rows"] for shard in shards)
        efficiency = num_tokens / max(1, num_rows * row_len)
        manifest = build_manifest(
            seq_len=seq_len,
            tokenizer=tokenizer_entry(tok, tokenizer),
            shards=shards,
            num_tokens=num_tokens,
            packing={"mode": packing, "efficiency": efficiency, "mask_non_assistant": mask_non_assistant},
            sources=source_entries,
            created_by="recur.data.packing (preprocess_data_packing.py)",
            **({"recipe": recipe} if recipe is not None else {}),
        )
        finish_dataset(work, manifest)
    print(
        f"packed {len(docs)} documents, {num_tokens} tokens into {num_rows} rows of {row_len} "
        f"({len(shards)} shards) in {out}: efficiency {efficiency:.4f}, {num_tokens / elapsed:,.0f} tokens/s"
    )
    return manifest
