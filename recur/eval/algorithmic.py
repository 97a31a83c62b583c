"""Exact-match accuracy on the algorithmic tasks, at any recurrence depth and difficulty."""

from __future__ import annotations

import itertools

from recur.data.tasks import get_task, iter_samples, sample_to_messages
from recur.data.tokenizer import Tokenizer
from recur.eval.generate import greedy_generate
from recur.models.lm import DecoderLM

EVAL_SEED_OFFSET = 7_919_000  # keeps evaluation streams apart from the training data's seeds


def task_accuracy(model: DecoderLM, tokenizer: Tokenizer, task: str, num_steps: int, num_samples: int,
                  seed: int = 0, difficulty: int | None = None, max_new_tokens: int = 32) -> float:
    checker = get_task(task)
    samples = list(itertools.islice(iter_samples(task, seed + EVAL_SEED_OFFSET, difficulty), num_samples))
    prompts = [tokenizer.prompt_ids(sample_to_messages(s)[:1]) for s in samples]
    replies = greedy_generate(model, prompts, max_new_tokens, tokenizer.stop_ids, num_steps=num_steps)
    correct = sum(checker.check(tokenizer.decode(reply), s.answer) for reply, s in zip(replies, samples))
    return correct / max(1, len(samples))


def accuracy_grid(model: DecoderLM, tokenizer: Tokenizer, tasks: list[str], depths: list[int], num_samples: int,
                  seed: int = 0, max_new_tokens: int = 32) -> dict[str, float]:
    """{"<task>@r<depth>": accuracy} at each task's training difficulty."""
    return {f"{task}@r{depth}": task_accuracy(model, tokenizer, task, depth, num_samples, seed,
                                               max_new_tokens=max_new_tokens)
            for task in tasks for depth in depths}
