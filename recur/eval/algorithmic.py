"""Exact-match accuracy on the algorithmic tasks, at any recurrence depth and difficulty (ID and OOD)."""

from __future__ import annotations

import itertools

from tqdm import tqdm

from recur.data.tasks import TASKS, get_task, iter_samples, sample_to_messages
from recur.data.tokenizer import Tokenizer
from recur.eval.generate import ExitRule, generate
from recur.eval.stats import interval_fields
from recur.models.lm import DecoderLM

EVAL_SEED_OFFSET = 7_919_000  # keeps evaluation streams apart from the training data's seeds
ANSWER_SLACK = 8  # extra tokens a reply may use beyond the reference answer before it is cut off


def evaluate_task(
    model: DecoderLM,
    tokenizer: Tokenizer,
    task: str,
    depth: int,
    num_samples: int,
    seed: int = 0,
    difficulty: int | None = None,
    max_new_tokens: int | None = None,
    exit_rule: ExitRule | None = None,
) -> dict:
    """{"accuracy", "correct", "num_samples", "ci_low", "ci_high", "mean_steps", "max_new_tokens"} of one
    (task, depth, difficulty); ci_low/ci_high: the 95% Wilson interval of the accuracy (recur/eval/stats.py).

    max_new_tokens None: the longest reference answer + ANSWER_SLACK (room to answer, never unbounded)."""
    checker = get_task(task)
    # The stream is seeded by (seed, task, difficulty) only, so every depth sees the same problems.
    stream_seed = seed + EVAL_SEED_OFFSET + 1009 * sorted(TASKS).index(task) + (difficulty or 0)
    samples = list(itertools.islice(iter_samples(task, stream_seed, difficulty), num_samples))
    prompts = [tokenizer.prompt_ids(sample_to_messages(s)[:1]) for s in samples]
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(s.answer)) for s in samples) + ANSWER_SLACK
    out = generate(model, prompts, max_new_tokens, tokenizer.stop_ids, num_steps=depth, exit_rule=exit_rule)
    correct = sum(checker.check(tokenizer.decode(reply), s.answer) for reply, s in zip(out.tokens, samples))
    return {
        "accuracy": correct / max(1, len(samples)),
        "correct": correct,
        "num_samples": len(samples),
        **interval_fields(correct, len(samples)),
        "mean_steps": out.mean_steps(),
        "max_new_tokens": max_new_tokens,
    }


def fits_context(model: DecoderLM, tokenizer: Tokenizer, task: str, difficulty: int, seed: int) -> str | None:
    """Why (task, difficulty) cannot be evaluated within the model's context, or None if it can."""
    sample = next(iter_samples(task, seed + EVAL_SEED_OFFSET, difficulty))
    need = len(tokenizer.prompt_ids(sample_to_messages(sample)[:1])) + len(tokenizer.encode(sample.answer)) + 1
    if need > model.cfg.max_seq_len:
        return f"prompt + answer need ~{need} tokens > max_seq_len {model.cfg.max_seq_len}"
    return None


def difficulty_grid(task: str, ood: bool) -> list[int]:
    """The training difficulty, plus (ood=True) the task's harder out-of-distribution settings."""
    spec = get_task(task)
    return sorted({spec.train_difficulty, *(spec.ood_difficulties if ood else [])})


def algorithmic_suite(
    model: DecoderLM,
    tokenizer: Tokenizer,
    tasks: list[str],
    depths: list[int],
    num_samples: int,
    seed: int = 0,
    ood: bool = True,
    max_new_tokens: int | None = None,
    difficulties: dict[str, list[int]] | None = None,
    exit_rule: ExitRule | None = None,
    progress: bool = True,
) -> dict:
    """The `algorithmic` section of a results file (see recur/eval/schema.py)."""
    for task in tasks:
        get_task(task)  # unknown task names fail before any work
    section = {"tasks": {}, "summary": [], "skipped": []}
    jobs = []
    for task in tasks:
        spec = get_task(task)
        grid = (difficulties or {}).get(task) or difficulty_grid(task, ood)
        section["tasks"][task] = {"knob": spec.knob, "train_difficulty": spec.train_difficulty, "results": []}
        for level in grid:
            reason = fits_context(model, tokenizer, task, level, seed)
            if reason is not None:
                section["skipped"].append({"task": task, "difficulty": level, "reason": reason})
                continue
            jobs += [(task, level, depth) for depth in depths]
    for task, level, depth in tqdm(jobs, desc="algorithmic", unit="cell", disable=not progress, leave=False):
        cell = evaluate_task(model, tokenizer, task, depth, num_samples, seed, level, max_new_tokens, exit_rule)
        in_dist = level == get_task(task).train_difficulty
        section["tasks"][task]["results"].append(
            {"depth": depth, "difficulty": level, "in_distribution": in_dist, **cell}
        )
    for depth in depths:
        cells = [r for t in section["tasks"].values() for r in t["results"] if r["depth"] == depth]
        means = {}
        for key, wanted in (("in_distribution", True), ("ood", False)):
            accs = [r["accuracy"] for r in cells if r["in_distribution"] == wanted]
            means[key] = sum(accs) / len(accs) if accs else None
        section["summary"].append({"depth": depth, **means})
    return section


def task_accuracy(
    model: DecoderLM,
    tokenizer: Tokenizer,
    task: str,
    num_steps: int,
    num_samples: int,
    seed: int = 0,
    difficulty: int | None = None,
    max_new_tokens: int = 32,
) -> float:
    return evaluate_task(model, tokenizer, task, num_steps, num_samples, seed, difficulty, max_new_tokens)["accuracy"]


def accuracy_grid(
    model: DecoderLM,
    tokenizer: Tokenizer,
    tasks: list[str],
    depths: list[int],
    num_samples: int,
    seed: int = 0,
    max_new_tokens: int = 32,
) -> dict[str, float]:
    """{"<task>@r<depth>": accuracy} at each task's training difficulty."""
    return {
        f"{task}@r{depth}": task_accuracy(
            model, tokenizer, task, depth, num_samples, seed, max_new_tokens=max_new_tokens
        )
        for task in tasks
        for depth in depths
    }
