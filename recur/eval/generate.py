"""Greedy decoding with a KV cache at a chosen recurrence depth; it always stops (max_new_tokens, context)."""

from __future__ import annotations

from collections import defaultdict

import torch

from recur.models.layers import KVCache
from recur.models.lm import DecoderLM, NumSteps


@torch.no_grad()
def greedy_generate(model: DecoderLM, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                    num_steps: NumSteps = None, batch_size: int = 64) -> list[list[int]]:
    """Generated ids per prompt, without the stop token. Prompts of equal length are decoded together."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stops = torch.tensor(sorted(stop_ids), device=device)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    outputs: list[list[int]] = [[] for _ in prompts]
    for length, indices in by_length.items():
        budget = min(max_new_tokens, model.cfg.max_seq_len - length)
        if budget < 1:
            raise ValueError(f"prompt of {length} tokens leaves no room to generate within max_seq_len "
                             f"{model.cfg.max_seq_len}")
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            cache = KVCache()
            x = torch.tensor([prompts[i] for i in chunk], device=device)
            logits = model(x, num_steps=num_steps, cache=cache).logits[:, -1]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            generated = []
            for t in range(budget):
                token = logits.argmax(-1)
                generated.append(token)
                done |= torch.isin(token, stops)
                if done.all() or t == budget - 1:
                    break
                logits = model(token[:, None], num_steps=num_steps, cache=cache).logits[:, -1]
            rows = torch.stack(generated, dim=1).tolist()
            for i, row in zip(chunk, rows):
                cut = next((j for j, tok in enumerate(row) if tok in stop_ids), len(row))
                outputs[i] = row[:cut]
    model.train(was_training)
    return outputs
