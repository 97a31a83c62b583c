"""Greedy decoding at a chosen recurrence depth, with a per-step KV cache and optional adaptive exit.

Decoding always stops: after `max_new_tokens`, at the end of the model's context, at a stop token, or when
a caller's test on the ids so far (`stop_when`, e.g. "the text contains a stop string") holds.

Adaptive exit (looped models): while decoding a token, the recurrence stops as soon as the state has
converged, measured either by the relative state change ‖s_i − s_{i−1}‖ / ‖s_i‖ ("delta") or by the KL
divergence between the next-token distributions read out after steps i−1 and i ("kl"), each below ε.
`num_steps` is then the maximum depth. A token that exits at step j computes no keys/values for steps
j+1..r, yet later tokens iterating deeper attend to those steps' caches; we fill the missing slots with a
copy of the token's step-j keys/values (Huginn's choice: its converged state stands in for the steps it
skipped). With ε = 0 no token ever exits and decoding equals fixed-depth decoding exactly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from recur.models.layers import AttentionContext, KVCache
from recur.models.lm import DecoderLM, NumSteps
from recur.models.looped import LoopedLM, split_steps

EXIT_CRITERIA = ("delta", "kl")
StopWhen = Callable[[int, list[int]], bool]  # (prompt index, ids generated so far) -> the row is complete


@dataclass(frozen=True)
class ExitRule:
    criterion: str  # "delta" (relative state change) or "kl" (successive next-token distributions)
    eps: float

    def __post_init__(self) -> None:
        if self.criterion not in EXIT_CRITERIA:
            raise ValueError(f"--exit_criterion: got '{self.criterion}'; expected one of {', '.join(EXIT_CRITERIA)}")
        if not self.eps >= 0:
            raise ValueError(f"--exit_eps must be >= 0, got {self.eps}")


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


def _copy_step_kv(cache: KVCache, n_core: int, step: int, source: torch.Tensor, rows: torch.Tensor) -> None:
    """Make the newest position of recurrence step `step` hold, for `rows`, the keys/values that step
    `source[row]` computed for it; appends the position if step `step` did not run for it at all."""
    for layer in range(n_core):
        key = (("core", step), layer)
        k, v = cache.store[key]
        complete = k.shape[1] == cache.seen_tokens + 1
        new_k, new_v = (k[:, -1].clone(), v[:, -1].clone()) if complete else (torch.zeros_like(k[:, -1]),
                                                                               torch.zeros_like(v[:, -1]))
        for row in rows.nonzero().flatten().tolist():
            src_k, src_v = cache.store[(("core", int(source[row])), layer)]
            new_k[row], new_v[row] = src_k[row, -1], src_v[row, -1]
        if complete:
            cache.store[key] = (torch.cat([k[:, :-1], new_k[:, None]], 1), torch.cat([v[:, :-1], new_v[:, None]], 1))
        else:
            cache.store[key] = (torch.cat([k, new_k[:, None]], 1), torch.cat([v, new_v[:, None]], 1))


def _readout(model: LoopedLM, s: torch.Tensor, ctx: AttentionContext, commit: bool) -> torch.Tensor:
    """Next-token log-probabilities from state s. A probe (commit=False) runs the coda on a shallow copy
    of the cache, so the real coda entries are written once, by the final readout."""
    if not commit and ctx.cache is not None:
        probe = KVCache()
        probe.store, probe.seen_tokens = dict(ctx.cache.store), ctx.cache.seen_tokens
        ctx = replace(ctx, cache=probe)
    hidden = model.norm(model.run_blocks(model.coda, s, ctx, "coda"))
    return F.log_softmax(model.lm_head(hidden[:, -1]).float(), dim=-1)


@torch.no_grad()
def adaptive_decode_step(model: LoopedLM, token: torch.Tensor, cache: KVCache, max_steps: int,
                         rule: ExitRule) -> tuple[torch.Tensor, torch.Tensor]:
    """One cached decoding step of tokens [B, 1] with per-row early exit -> (log-probs [B, V], steps [B])."""
    start = cache.seen_tokens
    if start + 1 > model.cfg.max_seq_len:
        raise ValueError(f"sequence of {start + 1} tokens exceeds --model.max_seq_len {model.cfg.max_seq_len}")
    cos, sin = model.rotary(torch.arange(start, start + 1, device=token.device))
    ctx = AttentionContext(cos=cos, sin=sin, cache=cache, start_pos=start)
    e = model.run_blocks(model.prelude, model.tok_embeddings(token), ctx, "prelude")
    s = model.initial_state(e)
    batch = token.shape[0]
    exited = torch.zeros(batch, dtype=torch.bool, device=token.device)
    exit_step = torch.full((batch,), max_steps - 1, dtype=torch.long, device=token.device)
    previous = None
    for step in range(max_steps):
        new = model.iterate(s, e, ctx, step)
        if exited.any():  # exited rows keep their converged state and their exit step's cache entries
            new = torch.where(exited[:, None, None], s, new)
            _copy_step_kv(cache, model.cfg.n_core, step, exit_step, exited)
        if rule.criterion == "delta":
            metric = (new - s).flatten(1).norm(dim=-1) / new.flatten(1).norm(dim=-1).clamp(min=1e-12)
        else:
            current = _readout(model, new, ctx, commit=False)
            metric = (F.kl_div(current, previous, log_target=True, reduction="none").sum(-1)
                      if previous is not None else torch.full((batch,), float("inf"), device=token.device))
            previous = current
        s = new
        converged = (metric < rule.eps) & ~exited
        exit_step = torch.where(converged, step, exit_step)
        exited |= converged
        if exited.all():
            for later in range(step + 1, max_steps):
                _copy_step_kv(cache, model.cfg.n_core, later, exit_step, exited)
            break
    log_probs = _readout(model, s, ctx, commit=True)
    cache.seen_tokens += 1
    return log_probs, exit_step + 1


def _batches(prompts: list[list[int]], batch_size: int, padded: bool) -> list[list[int]]:
    """Prompt indices decoded together: consecutive prompts when padding is allowed, else equal-length ones."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[0 if padded else len(prompt)].append(i)
    return [indices[start:start + batch_size] for indices in by_length.values()
            for start in range(0, len(indices), batch_size)]


def _left_pad(prompts: list[list[int]], pad_id: int | None, budget: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts right-aligned in one [B, width] tensor, and doc ids over the prompt and `budget` generated
    positions: 0 on padding, 1 on each row's own tokens, so padding is a document no real token attends to
    (None when no row is padded, which keeps the unmasked attention path)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    doc_ids = torch.ones(len(prompts), width + budget, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        doc_ids[i, :width - len(prompt)] = 0
    return ids.to(device), (None if bool(doc_ids.all()) else doc_ids.to(device))


def _sequence_stops(stop_when: StopWhen, history: list[list[int]], token: torch.Tensor,
                    done: torch.Tensor) -> torch.Tensor:
    """Append this step's tokens to each row's history -> mask of the running rows stop_when ends now."""
    hits = []
    for row, (tok, finished) in enumerate(zip(token.tolist(), done.tolist())):
        history[row].append(tok)
        hits.append(not finished and stop_when(row, history[row]))
    return torch.tensor(hits, device=done.device)


def _finish(row: list[int], step_row: list[int], hit: int, stop_ids: set[int],
            max_new_tokens: int) -> tuple[list[int], list[int], str]:
    """(tokens, steps, reason) of one decoded row; `hit` is the index of the token stop_when ended it at, or -1.
    A stop sequence keeps its last token (the caller cuts text); a stop token is dropped but its steps kept."""
    if hit >= 0:
        return row[:hit + 1], step_row[:hit + 1], "stop_sequence"
    cut = next((j for j, tok in enumerate(row) if tok in stop_ids), None)
    if cut is not None:
        return row[:cut], step_row[:cut + 1], "stop_token"
    return row, step_row, "max_new_tokens" if len(row) == max_new_tokens else "context"


@torch.no_grad()
def generate(model: DecoderLM, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
             num_steps: NumSteps = None, batch_size: int = 64, use_cache: bool = True,
             exit_rule: ExitRule | None = None, pad_id: int | None = None,
             stop_when: StopWhen | None = None) -> Generation:
    """Greedy continuation of every prompt; the prompt itself always runs at the full depth.

    Without `pad_id`, prompts of equal length are decoded together (no padding, so batching never changes
    the result). With it, consecutive prompts are, left-padded with `pad_id`: the padding is a document of
    its own and RoPE is relative, so each row computes what it computes alone (up to float rounding).
    A row ends at a stop token (dropped from `tokens`) or once `stop_when(prompt index, its ids so far)` holds
    (e.g. its text contains a stop string; the ids are kept)."""
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if exit_rule is not None and not isinstance(model, LoopedLM):
        raise ValueError(f"adaptive exit needs a looped model (recurrent or shared_loop); this model is "
                         f"'{model.cfg.variant}'")
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
        decoded = _decode_batch(model, [prompts[i] for i in chunk], max_new_tokens, stop_ids, num_steps,
                                use_cache, exit_rule, pad_id,
                                None if stop_when is None else lambda row, ids: stop_when(chunk[row], ids))
        for i, (tokens, steps, reason) in zip(chunk, decoded):
            result.tokens[i], result.steps[i], result.stop_reasons[i] = tokens, steps, reason
    model.train(was_training)
    return result


def _decode_batch(model: DecoderLM, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                  num_steps: NumSteps, use_cache: bool, exit_rule: ExitRule | None, pad_id: int | None,
                  stop_when: StopWhen | None) -> list[tuple[list[int], list[int], str]]:
    """Greedy decoding of one batch (see generate) -> (tokens, steps, stop reason) per prompt; stop_when
    takes the row's index in this batch."""
    width = max(len(p) for p in prompts)
    budget = min(max_new_tokens, model.cfg.max_seq_len - width)
    if budget < 1:
        raise ValueError(f"prompt of {width} tokens leaves no room to generate within max_seq_len "
                         f"{model.cfg.max_seq_len}")
    device = next(model.parameters()).device
    ids, doc_ids = _left_pad(prompts, pad_id, budget, device)

    def forward(new: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        seen = (cache.seen_tokens if cache is not None else 0) + new.shape[1]
        docs = doc_ids[:, :seen] if doc_ids is not None else None
        return model(new, num_steps=num_steps, cache=cache, doc_ids=docs).logits[:, -1]

    cache = KVCache() if use_cache else None
    logits = forward(ids, cache)
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
            logits, used = adaptive_decode_step(model, token[:, None], cache, depth, exit_rule)
        elif use_cache:
            logits = forward(token[:, None], cache)
        else:
            ids = torch.cat([ids, token[:, None]], dim=1)
            logits = forward(ids, None)
    rows, step_rows = torch.stack(tokens, 1).tolist(), torch.stack(steps, 1).tolist()
    return [_finish(row, step_row, hit, stop_ids, max_new_tokens)
            for row, step_row, hit in zip(rows, step_rows, hit_at.tolist())]


def greedy_generate(model: DecoderLM, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                    num_steps: NumSteps = None, batch_size: int = 64) -> list[list[int]]:
    """Generated ids per prompt, without the stop token (fixed depth, cached)."""
    return generate(model, prompts, max_new_tokens, stop_ids, num_steps, batch_size).tokens
