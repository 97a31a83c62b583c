"""Greedy decoding at a chosen recurrence depth, with a per-step KV cache and optional adaptive exit.

The model owns the decoding step (`DecoderLM.decode_step`, `LoopedLM.decode_step_with_exit`) and the
cache layout; this module batches prompts, sizes one preallocated KVCache per batch and decides when rows
stop. With static cache shapes, decoding through compiled blocks (--compile) does not recompile per token.

Decoding always stops: after `max_new_tokens`, at the end of the model's context, at a stop token, or when
a caller's test on the ids so far (`stop_when`, e.g. "the text contains a stop string") holds.

Adaptive exit (looped models): while decoding a token, the recurrence stops as soon as the state has
converged, measured either by the relative state change ‖s_i − s_{i−1}‖ / ‖s_i‖ ("delta") or by the KL
divergence between the next-token distributions read out after steps i−1 and i ("kl"), each below ε.
`num_steps` is then the maximum depth. A token that exits at step j computes no keys/values for steps
j+1..r, yet later tokens iterating deeper attend to those steps' caches; we fill the missing slots with a
copy of the token's step-j keys/values (Huginn's choice: its converged state stands in for the steps it
skipped; see LoopedLM.fill_exited). With ε = 0 no token ever exits and decoding equals fixed-depth
decoding exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recur.models.layers import KVCache
from recur.models.lm import DecoderLM, NumSteps
from recur.models.looped import EXIT_CRITERIA, ExitRule, split_steps

__all__ = ["EXIT_CRITERIA", "ExitRule", "Generation", "adaptive_decode_step", "depth_of", "generate", "greedy_generate"]

StopWhen = Callable[[int, list[int]], bool]  # (prompt index, ids generated so far) -> the row is complete


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per prompt, without the stop token
    steps: list[list[int]]  # recurrence steps behind each decoded token, the stop token included
    stop_reasons: list[str]  # "stop_token" | "stop_sequence" | "max_new_tokens" | "context"

    def mean_steps(self) -> float:
        """Average steps per token decoded after the prompt: the first token of a reply always comes from the
        prompt's forward at full depth, so it says nothing about adaptive exit (used only if it is all)."""
        counts = [s for row in self.steps for s in row[1:]] or [s for row in self.steps for s in row]
        return sum(counts) / max(1, len(counts))


def depth_of(model: DecoderLM, num_steps: NumSteps) -> int:
    """Recurrence steps (or thought iterations) a forward with `num_steps` runs (1 for the baseline)."""
    if not model.uses_depth:
        return 1
    return sum(split_steps(num_steps, model.cfg.default_num_steps))


@torch.no_grad()
def adaptive_decode_step(
    model: DecoderLM, token: torch.Tensor, cache: KVCache, max_steps: int, rule: ExitRule
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cached decoding step of tokens [B, 1] with per-row early exit -> (log-probs [B, V], steps [B])."""
    return model.decode_step_with_exit(token, cache, max_steps, rule)


def _batches(prompts: list[list[int]], batch_size: int, padded: bool) -> list[list[int]]:
    """Prompt indices decoded together: consecutive prompts when padding is allowed, else equal-length ones."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[0 if padded else len(prompt)].append(i)
    return [
        indices[start : start + batch_size]
        for indices in by_length.values()
        for start in range(0, len(indices), batch_size)
    ]


def _left_pad(
    prompts: list[list[int]], pad_id: int | None, budget: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts right-aligned in one [B, width] tensor, and doc ids over the prompt and `budget` generated
    positions: 0 on padding, 1 on each row's own tokens, so padding is a document no real token attends to
    (None when no row is padded, which keeps the unmasked attention path)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    doc_ids = torch.ones(len(prompts), width + budget, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        doc_ids[i, : width - len(prompt)] = 0
    return ids.to(device), (None if bool(doc_ids.all()) else doc_ids.to(device))


def _sequence_stops(
    stop_when: StopWhen, history: list[list[int]], token: torch.Tensor, done: torch.Tensor
) -> torch.Tensor:
    """Append this step's tokens to each row's history -> mask of the running rows stop_when ends now."""
    hits = []
    for row, (tok, finished) in enumerate(zip(token.tolist(), done.tolist())):
        history[row].append(tok)
        hits.append(not finished and stop_when(row, history[row]))
    return torch.tensor(hits, device=done.device)


def _finish(
    row: list[int], step_row: list[int], hit: int, stop_ids: set[int], max_new_tokens: int
) -> tuple[list[int], list[int], str]:
    """(tokens, steps, reason) of one decoded row; `hit` is the index of the token stop_when ended it at, or -1.
    A stop sequence keeps its last token (the caller cuts text); a stop token is dropped but its steps kept."""
    if hit >= 0:
        return row[: hit + 1], step_row[: hit + 1], "stop_sequence"
    cut = next((j for j, tok in enumerate(row) if tok in stop_ids), None)
    if cut is not None:
        return row[:cut], step_row[: cut + 1], "stop_token"
    return row, step_row, "max_new_tokens" if len(row) == max_new_tokens else "context"


@torch.no_grad()
def generate(
    model: DecoderLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: set[int],
    num_steps: NumSteps = None,
    batch_size: int = 64,
    use_cache: bool = True,
    exit_rule: ExitRule | None = None,
    pad_id: int | None = None,
    stop_when: StopWhen | None = None,
) -> Generation:
    """Greedy continuation of every prompt; the prompt itself always runs at the full depth.

    Without `pad_id`, prompts of equal length are decoded together (no padding, so batching never changes
    the result). With it, consecutive prompts are, left-padded with `pad_id`: the padding is a document of
    its own and RoPE is relative, so each row computes what it computes alone (up to float rounding).
    A row ends at a stop token (dropped from `tokens`) or once `stop_when(prompt index, its ids so far)` holds
    (e.g. its text contains a stop string; the ids are kept)."""
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if exit_rule is not None and not model.supports_adaptive_exit:
        raise ValueError(
            f"adaptive exit needs a looped model (recurrent or shared_loop); this model is '{model.cfg.variant}'"
        )
    if exit_rule is not None and not use_cache:
        raise ValueError("adaptive exit decodes with the KV cache; do not combine it with use_cache=False")
    if exit_rule is not None and pad_id is not None:
        raise ValueError("adaptive exit decodes unpadded batches only; do not combine it with pad_id")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    was_training = model.training
    model.eval()
    result = Generation([[] for _ in prompts], [[] for _ in prompts], ["" for _ in prompts])
    for chunk in _batches(prompts, batch_size, pad_id is not None):
        decoded = _decode_batch(
            model,
            [prompts[i] for i in chunk],
            max_new_tokens,
            stop_ids,
            num_steps,
            use_cache,
            exit_rule,
            pad_id,
            None if stop_when is None else lambda row, ids, chunk=chunk: stop_when(chunk[row], ids),
        )
        for i, (tokens, steps, reason) in zip(chunk, decoded):
            result.tokens[i], result.steps[i], result.stop_reasons[i] = tokens, steps, reason
    model.train(was_training)
    return result


def _decode_batch(
    model: DecoderLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: set[int],
    num_steps: NumSteps,
    use_cache: bool,
    exit_rule: ExitRule | None,
    pad_id: int | None,
    stop_when: StopWhen | None,
) -> list[tuple[list[int], list[int], str]]:
    """Greedy decoding of one batch (see generate) -> (tokens, steps, stop reason) per prompt; stop_when
    takes the row's index in this batch."""
    width = max(len(p) for p in prompts)
    budget = min(max_new_tokens, model.cfg.max_seq_len - width)
    if budget < 1:
        raise ValueError(
            f"prompt of {width} tokens leaves no room to generate within max_seq_len {model.cfg.max_seq_len}"
        )
    device = next(model.parameters()).device
    ids, doc_ids = _left_pad(prompts, pad_id, budget, device)

    # Sized for the whole batch's decoding up front, so the cache never grows while decoding.
    cache = KVCache(capacity=width + budget) if use_cache else None

    def forward(new: torch.Tensor) -> torch.Tensor:
        if cache is None:
            docs = doc_ids[:, : new.shape[1]] if doc_ids is not None else None
            return model(new, num_steps=num_steps, doc_ids=docs).logits[:, -1]
        docs = doc_ids[:, : cache.seen_tokens + new.shape[1]] if doc_ids is not None else None
        return model.decode_step(new, cache, num_steps, docs)

    logits = forward(ids)
    depth = depth_of(model, num_steps)
    used = torch.full((len(prompts),), depth, device=device)
    stops = torch.tensor(sorted(stop_ids), device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    hit_at = torch.full((len(prompts),), -1, device=device)
    history: list[list[int]] = [[] for _ in prompts]
    tokens, steps = [], []
    for t in range(budget):
        token = logits.argmax(-1)
        tokens.append(token)
        steps.append(used)
        done |= torch.isin(token, stops)
        if stop_when is not None:
            hit = _sequence_stops(stop_when, history, token, done)
            hit_at = torch.where(hit, t, hit_at)
            done |= hit
        if done.all() or t == budget - 1:
            break
        if exit_rule is not None:
            logits, used = model.decode_step_with_exit(token[:, None], cache, depth, exit_rule)
        elif use_cache:
            logits = forward(token[:, None])
        else:
            ids = torch.cat([ids, token[:, None]], dim=1)
            logits = forward(ids)
    rows, step_rows = torch.stack(tokens, 1).tolist(), torch.stack(steps, 1).tolist()
    return [
        _finish(row, step_row, hit, stop_ids, max_new_tokens)
        for row, step_row, hit in zip(rows, step_rows, hit_at.tolist())
    ]


def greedy_generate(
    model: DecoderLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: set[int],
    num_steps: NumSteps = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """Generated ids per prompt, without the stop token (fixed depth, cached)."""
    return generate(model, prompts, max_new_tokens, stop_ids, num_steps, batch_size).tokens
