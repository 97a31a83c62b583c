"""Shortcut audit of the algorithmic tasks: how well do answer-blind heuristics score?

A task is only evidence of computation if no trivial rule solves it. The heuristics here see the prompt
but do not compute the task: answer the most frequent training answer, or copy a number that appears in
the prompt (the first, the last, or one at random). `shortcut_accuracy` reports each rule's exact-match
accuracy; the test suite requires every task to stay below `SHORTCUT_LIMIT` at every difficulty it is
evaluated at, and the depth-scaling report prints the best rule as each task's chance level.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable

from recur.data.tasks import Sample, get_task

SHORTCUT_LIMIT = 0.6
_NUMBER = re.compile(r"\d+")


def _numbers(prompt: str) -> list[str]:
    return _NUMBER.findall(prompt)


def _copy_rule(pick: Callable[[list[str], random.Random], str]) -> Callable[[Sample, random.Random], str]:
    def rule(sample: Sample, rng: random.Random) -> str:
        numbers = _numbers(sample.prompt)
        return pick(numbers, rng) if numbers else ""

    return rule


COPY_RULES: dict[str, Callable[[Sample, random.Random], str]] = {
    "first_number": _copy_rule(lambda numbers, rng: numbers[0]),
    "last_number": _copy_rule(lambda numbers, rng: numbers[-1]),
    "random_number": _copy_rule(lambda numbers, rng: rng.choice(numbers)),
}


def shortcut_accuracy(
    task_name: str, difficulty: int | None = None, num_samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """{rule: accuracy} of every heuristic on `num_samples` problems of one task and difficulty (None = the
    training distribution). The majority answer is learnt from a separate draw of the same size."""
    task = get_task(task_name)
    fit_rng, test_rng, rule_rng = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    majority = Counter(task.generate(fit_rng, difficulty).answer for _ in range(num_samples)).most_common(1)[0][0]
    samples = [task.generate(test_rng, difficulty) for _ in range(num_samples)]
    scores = {"majority": sum(task.check(majority, s.answer) for s in samples) / num_samples}
    for name, rule in COPY_RULES.items():
        scores[name] = sum(task.check(rule(s, rule_rng), s.answer) for s in samples) / num_samples
    return scores


def best_shortcut(task_name: str, difficulty: int | None = None, num_samples: int = 2000) -> tuple[str, float]:
    """The strongest heuristic and its accuracy: the chance level a trained model has to beat."""
    scores = shortcut_accuracy(task_name, difficulty, num_samples)
    name = max(scores, key=scores.get)
    return name, scores[name]
