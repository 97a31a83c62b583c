"""Needle in a haystack: a secret code hidden at several depths of filler text, retrieved by greedy decoding.

The filler is the passkey-retrieval haystack of Mohtashami & Jaggi (2023): repeated neutral sentences, so
the only information in the prompt is the needle. Lengths the model's context cannot hold are skipped
with the reason recorded.
"""

from __future__ import annotations

import random

from tqdm import tqdm

from recur.data.tokenizer import Tokenizer
from recur.eval.generate import ExitRule, generate
from recur.eval.stats import interval_fields
from recur.models.lm import DecoderLM

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the secret code?"
DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
CODE_DIGITS = 5


def needle_prompt(tokenizer: Tokenizer, length: int, position: float, code: str, answer_room: int) -> list[int]:
    """Chat prompt of at most `length - answer_room` tokens with the needle after `position` of the filler."""
    needle = f" The secret code is {code}. Remember it. {code} is the secret code. "
    overhead = len(tokenizer.prompt_ids([{"role": "user", "content": needle + QUESTION}]))
    filler_tokens = len(tokenizer.encode(FILLER))
    repeats = max(0, (length - answer_room - overhead) // filler_tokens)
    while True:
        cut = round(position * repeats)
        text = FILLER * cut + needle + FILLER * (repeats - cut) + QUESTION
        prompt = tokenizer.prompt_ids([{"role": "user", "content": text}])
        if len(prompt) <= length - answer_room or repeats == 0:
            return prompt
        repeats -= 1  # tokenizers that merge across sentence boundaries can overshoot the estimate


def context_lengths(requested: list[int], max_seq_len: int) -> tuple[list[int], list[dict]]:
    """(lengths to run, skipped entries). The model's own context is always added as the longest length."""
    lengths = sorted(set(requested) | {max_seq_len})
    run = [n for n in lengths if n <= max_seq_len]
    skipped = [
        {"context_length": n, "reason": f"context length {n} exceeds the model's max_seq_len {max_seq_len}"}
        for n in lengths
        if n > max_seq_len
    ]
    return run, skipped


def needle_suite(
    model: DecoderLM,
    tokenizer: Tokenizer,
    depths: list[int],
    lengths: list[int] = DEFAULT_LENGTHS,
    positions: list[float] = DEFAULT_POSITIONS,
    num_samples: int = 4,
    seed: int = 0,
    exit_rule: ExitRule | None = None,
    progress: bool = True,
) -> dict:
    """The `longctx` section of a results file (see recur/eval/schema.py)."""
    if any(not 0.0 <= p <= 1.0 for p in positions):
        raise ValueError(f"--needle_positions must lie in [0, 1], got {positions}")
    answer_room = CODE_DIGITS + 3
    run, skipped = context_lengths(list(lengths), model.cfg.max_seq_len)
    shortest = len(needle_prompt(tokenizer, 0, 0.0, "0" * CODE_DIGITS, 0))
    too_short = [n for n in run if shortest > n - answer_room]
    skipped += [
        {"context_length": n, "reason": f"the needle and question alone need {shortest} + {answer_room} tokens > {n}"}
        for n in too_short
    ]
    run = [n for n in run if n not in too_short]
    results = []
    jobs = [(n, p, d) for n in run for p in positions for d in depths]
    for length, position, depth in tqdm(jobs, desc="needle", unit="cell", disable=not progress, leave=False):
        rng = random.Random(f"{seed}-{length}-{position}")  # same codes at every depth
        codes = [str(rng.randrange(10 ** (CODE_DIGITS - 1), 10**CODE_DIGITS)) for _ in range(num_samples)]
        prompts = [needle_prompt(tokenizer, length, position, code, answer_room) for code in codes]
        out = generate(model, prompts, answer_room, tokenizer.stop_ids, num_steps=depth, exit_rule=exit_rule)
        correct = sum(tokenizer.decode(reply).strip() == code for reply, code in zip(out.tokens, codes))
        results.append(
            {
                "context_length": length,
                "prompt_tokens": max(len(p) for p in prompts),
                "needle_position": position,
                "depth": depth,
                "accuracy": correct / num_samples,
                "correct": correct,
                "num_samples": num_samples,
                **interval_fields(correct, num_samples),
            }
        )
    summary = []
    for length in run:
        for depth in depths:
            cells = [r["accuracy"] for r in results if r["context_length"] == length and r["depth"] == depth]
            summary.append({"context_length": length, "depth": depth, "accuracy": sum(cells) / len(cells)})
    return {"results": results, "summary": summary, "skipped": skipped}
