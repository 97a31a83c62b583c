"""Mix packed datasets by token proportion into equally sized, deterministically shuffled shards.

Weights are *token* proportions: with per-source mean non-pad tokens per row a_i and target share p_i,
source i contributes n_i ∝ p_i / a_i rows. Rows of a source are drawn without repetition while it has
enough; a source that is too small is repeated (whole passes, each in a fresh order) and the output
says so. Sources are loaded into memory, which suits the dataset sizes this project mixes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recur.data.shard_writer import (
    MANIFEST_NAME,
    ShardWriter,
    build_manifest,
    check_out_dir,
    finish_dataset,
    staged_dir,
)
from recur.data.validate import open_packed_dataset, row_token_counts


@dataclass(frozen=True)
class MixSource:
    path: str
    weight: float


def parse_source(spec: str) -> MixSource:
    """'path:weight' (the weight after the last colon)."""
    path, sep, weight = spec.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = float("nan")
    if not sep or not path or not value > 0:
        raise ValueError(f"--source '{spec}': expected PATH:WEIGHT with a weight > 0")
    return MixSource(path, value)


def load_mix_config(path: str | Path) -> list[MixSource]:
    """YAML `sources: [{path: dir, weight: float}, ...]`; paths are relative to the working directory."""
    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"--config {config_path} not found")
    config = yaml.safe_load(config_path.read_text())
    entries = config.get("sources") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--config {config_path}: expected a non-empty 'sources' list of {{path, weight}}")
    sources = []
    for entry in entries:
        if not isinstance(entry, dict) or "path" not in entry or "weight" not in entry:
            raise ValueError(f"--config {config_path}: source entry {entry!r} needs 'path' and 'weight'")
        sources.append(parse_source(f"{entry['path']}:{entry['weight']}"))
    return sources


@dataclass
class LoadedSource:
    spec: MixSource
    manifest: dict
    table: pa.Table
    row_tokens: np.ndarray


def _read_shard(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"shard {path} is corrupt/truncated: {error}") from error


def _load_source(spec: MixSource) -> LoadedSource:
    # Always the full check: the mix writes its inputs' rows under fresh page CRCs and digests, so an input
    # changed after packing would come out of it looking sound.
    manifest = open_packed_dataset(spec.path, verify_sha256=True)
    if manifest["num_rows"] == 0 or manifest["num_tokens"] == 0:
        raise ValueError(f"source {spec.path} is empty (no rows/tokens)")
    tables = [_read_shard(Path(spec.path) / shard["file"]) for shard in manifest["shards"]]
    table = pa.concat_tables(tables).select(["input_ids", "loss_mask", "doc_starts"]).combine_chunks()
    return LoadedSource(spec, manifest, table, row_token_counts(table, manifest["tokenizer"]["pad_id"]))


def _check_compatible(sources: list[LoadedSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if other.manifest["seq_len"] != first.manifest["seq_len"]:
            raise ValueError(
                f"source {other.spec.path} has seq_len {other.manifest['seq_len']} but {first.spec.path} has "
                f"{first.manifest['seq_len']}; all sources must share seq_len"
            )
        if other.manifest["tokenizer"]["fingerprint"] != first.manifest["tokenizer"]["fingerprint"]:
            raise ValueError(
                f"source {other.spec.path} uses tokenizer '{other.manifest['tokenizer']['name']}' with a different "
                f"fingerprint than {first.spec.path} ('{first.manifest['tokenizer']['name']}'); refusing to mix"
            )


def apportion(total: int, shares: np.ndarray) -> np.ndarray:
    """Integers summing to `total`, proportional to `shares` (largest-remainder rounding)."""
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def plan_rows(
    available_rows: np.ndarray,
    available_tokens: np.ndarray,
    weights: np.ndarray,
    num_shards: int,
    num_rows: int | None = None,
    num_tokens: int | None = None,
) -> np.ndarray:
    """Rows to take from each source so that token shares match `weights`; the total is a multiple of
    `num_shards`. Default size: the largest mix that repeats no source."""
    if num_rows is not None and num_tokens is not None:
        raise ValueError("give at most one of --num_rows and --num_tokens")
    shares = weights / weights.sum()
    tokens_per_row = available_tokens / available_rows
    rows_per_token = shares / tokens_per_row  # rows of each source per output token
    if num_rows is not None:
        total = num_rows
    elif num_tokens is not None:
        total = int(round(num_tokens * rows_per_token.sum()))
    else:
        # The most constrained source sets the token budget; flooring per source keeps all within bounds.
        budget = float(np.min(available_tokens / shares))
        total = int(np.sum(np.floor(budget * rows_per_token + 1e-9)))
    total -= total % num_shards
    if total < 1:
        raise ValueError(f"the mix would have {total} rows; need at least --num_shards ({num_shards}) rows")
    return apportion(total, rows_per_token)


def _pick_rows(rng: np.random.Generator, available: int, wanted: int) -> np.ndarray:
    passes, rest = divmod(wanted, available)
    picks = [rng.permutation(available) for _ in range(passes)]
    picks.append(rng.choice(available, size=rest, replace=False))
    return np.concatenate(picks)


def mix_datasets(
    sources: Sequence[MixSource],
    out_dir: str | Path,
    *,
    num_shards: int = 1,
    seed: int = 0,
    num_rows: int | None = None,
    num_tokens: int | None = None,
    row_group_size: int = 1024,
    overwrite: bool = False,
) -> dict:
    """Write the weighted mix of packed datasets `sources` to `out_dir`; returns the manifest."""
    if not sources:
        raise ValueError("no sources to mix: give --source PATH:WEIGHT or --config")
    if num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1, got {num_shards}")
    began = time.perf_counter()
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    loaded = [_load_source(spec) for spec in sources]
    _check_compatible(loaded)
    counts = plan_rows(
        np.array([source.table.num_rows for source in loaded], dtype=np.float64),
        np.array([source.row_tokens.sum() for source in loaded], dtype=np.float64),
        np.array([source.spec.weight for source in loaded], dtype=np.float64),
        num_shards,
        num_rows,
        num_tokens,
    )
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [source.table.num_rows for source in loaded])
    picked, realised = [], []
    for source, offset, count in zip(loaded, offsets, counts):
        rows = _pick_rows(rng, source.table.num_rows, int(count))
        picked.append(rows + offset)
        realised.append(int(source.row_tokens[rows].sum()))
        factor = count / source.table.num_rows
        how = f"REPEATED {factor:.2f}x (source too small)" if factor > 1 else f"{factor:.2%} of its rows"
        print(f"source {source.spec.path}: {count} rows, {how}")
    order = rng.permutation(np.concatenate(picked))
    total_rows = len(order)

    first = loaded[0].manifest
    combined = pa.concat_tables([source.table for source in loaded])
    per_shard = total_rows // num_shards
    with staged_dir(out) as work:
        writer = ShardWriter(work, first["seq_len"], per_shard, row_group_size)
        for shard in range(num_shards):
            writer.add(combined.take(pa.array(order[shard * per_shard : (shard + 1) * per_shard])))
        shards = writer.close()
        manifest = _mix_manifest(loaded, counts, realised, shards, seed, first, total_rows)
        finish_dataset(work, manifest)

    elapsed = time.perf_counter() - began
    print(
        f"mixed {total_rows} rows, {manifest['num_tokens']} tokens into {num_shards} shards in {out} ({elapsed:.1f}s)"
    )
    return manifest


def _mix_manifest(
    loaded: list, counts, realised: list[int], shards: list[dict], seed: int, first: dict, total_rows: int
) -> dict:
    """The mix's manifest: per source its weight, target and realised token ratio, rows and repeat factor."""
    total_tokens = sum(realised)
    shares = np.array([s.spec.weight for s in loaded]) / sum(s.spec.weight for s in loaded)
    entries = []
    for source, count, tokens, share in zip(loaded, counts, realised, shares):
        manifest_file = Path(source.spec.path) / MANIFEST_NAME
        ratio = tokens / total_tokens
        entries.append(
            {
                "path": source.spec.path,
                "sha256": hashlib.sha256(manifest_file.read_bytes()).hexdigest(),
                "documents": sum(entry.get("documents", 0) for entry in source.manifest["sources"]),
                "tokens": tokens,
                "weight": source.spec.weight,
                "target_ratio": float(share),
                "token_ratio": ratio,
                "rows": int(count),
                "repeat_factor": float(count / source.table.num_rows),
            }
        )
        print(f"  {source.spec.path}: target {share:.4f}, realised token ratio {ratio:.4f}")
    modes = {source.manifest["packing"]["mode"] for source in loaded}
    manifest = build_manifest(
        seq_len=first["seq_len"],
        tokenizer=first["tokenizer"],
        shards=shards,
        num_tokens=total_tokens,
        packing={
            "mode": modes.pop() if len(modes) == 1 else "mixed",
            "efficiency": total_tokens / (total_rows * first["row_len"]),
        },
        sources=entries,
        created_by="recur.data.mixing (mix_datasets.py)",
        mixing={"seed": seed, "realised_token_ratios": {e["path"]: e["token_ratio"] for e in entries}},
    )
    return manifest
