"""Algorithmic task generators with a difficulty knob, for length-generalisation experiments.

Every task renders short, byte-friendly prompts ("parity 10110101" -> "1") so that a tiny byte-level
model can learn the in-distribution difficulty quickly; `ood_difficulties` lists harder settings for
testing whether extra recurrence lets the model extrapolate. Generation is a pure function of the
`random.Random` state, so a seed fully determines the data.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Sample:
    prompt: str
    answer: str
    difficulty: int
    # More (question, answer) turns about the same prompt, appended to training documents only: one
    # answer per ~100-token prompt is too sparse a signal to learn a lookup from (see `_chain`).
    follow_ups: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Task:
    """One task: `make(rng, difficulty) -> (prompt, answer)`; `difficulty` is the knob in `knob` units."""

    name: str
    knob: str
    train_difficulty: int
    ood_difficulties: list[int]
    make: Callable[[random.Random, int], tuple] = field(repr=False)  # (prompt, answer[, follow-up turns])
    min_difficulty: int = 1
    max_difficulty: int | None = None
    # When set, training samples (difficulty None) draw their level uniformly from
    # [train_min_difficulty, train_difficulty]: a model that sees every length in between has to learn the
    # step of the algorithm rather than one fixed-size circuit, which is what lets extra recurrence extend it.
    train_min_difficulty: int | None = None

    def generate(self, rng: random.Random, difficulty: int | None = None) -> Sample:
        level = self.train_difficulty if difficulty is None else difficulty
        if difficulty is None and self.train_min_difficulty is not None:
            level = rng.randint(self.train_min_difficulty, self.train_difficulty)
        if (
            not isinstance(level, int)
            or level < self.min_difficulty
            or (self.max_difficulty is not None and level > self.max_difficulty)
        ):
            upper = "" if self.max_difficulty is None else f" and <= {self.max_difficulty}"
            raise ValueError(
                f"task '{self.name}': difficulty ({self.knob}) must be an int >= {self.min_difficulty}{upper}, "
                f"got {level!r}"
            )
        prompt, answer, *follow_ups = self.make(rng, level)  # a task may add follow-up turns (chain does)
        return Sample(prompt=prompt, answer=answer, difficulty=level, follow_ups=tuple(*follow_ups))

    @staticmethod
    def check(prediction: str, answer: str) -> bool:
        """Exact match after stripping surrounding whitespace."""
        return prediction.strip() == answer.strip()


def _number(rng: random.Random, digits: int) -> int:
    """A uniformly random integer with exactly `digits` decimal digits (0..9 when digits == 1)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(length))


def _mod_add(rng: random.Random, digits: int) -> tuple[str, str]:
    # A modulus with exactly `digits` digits (>= 2 so the sum is not trivially 0).
    modulus = max(2, _number(rng, digits))
    a, b = rng.randrange(modulus), rng.randrange(modulus)
    return f"modadd {a}+{b}%{modulus}", str((a + b) % modulus)


def _parity(rng: random.Random, bits: int) -> tuple[str, str]:
    word = "".join(rng.choice("01") for _ in range(bits))
    return f"parity {word}", str(word.count("1") % 2)


def _addition(rng: random.Random, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), _number(rng, digits)
    return f"add {a}+{b}", str(a + b)


def _multiplication(rng: random.Random, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), _number(rng, digits)
    return f"mul {a}*{b}", str(a * b)


def _copy(rng: random.Random, length: int) -> tuple[str, str]:
    word = _word(rng, length)
    return f"copy {word}", word


def _reverse(rng: random.Random, length: int) -> tuple[str, str]:
    word = _word(rng, length)
    return f"reverse {word}", word[::-1]


_BRACKETS = {"(": ")", "[": "]"}


def _balanced(rng: random.Random, pairs: int) -> str:
    """A uniformly shaped random balanced bracket word with `pairs` pairs (random split recursion)."""
    if pairs == 0:
        return ""
    inner = rng.randrange(pairs)
    opener = rng.choice("([")
    return opener + _balanced(rng, inner) + _BRACKETS[opener] + _balanced(rng, pairs - 1 - inner)


def _dyck(rng: random.Random, depth: int) -> tuple[str, str]:
    # A Dyck-2 prefix left with exactly `depth` unclosed brackets, interleaved with balanced
    # distractor segments; the answer closes them, so its length equals the depth.
    prefix, stack = [], []
    for _ in range(depth):
        prefix.append(_balanced(rng, rng.randint(0, 2)))
        opener = rng.choice("([")
        prefix.append(opener)
        stack.append(_BRACKETS[opener])
    prefix.append(_balanced(rng, rng.randint(0, 2)))
    return f"dyck {''.join(prefix)}", "".join(reversed(stack))


CHAIN_NAMES = string.ascii_lowercase + string.ascii_uppercase  # one byte per variable name
# Three chains per prompt at every level, so a harder level is longer chains, and chance is 1/3. With the
# earlier 5-10 short chains per prompt (a constant prompt length) no nano arm learned even hop 0 in 6k GPU
# steps, while three chains are learned to hop 0 in ~1k and hop 1 in ~8k (docs/recurrence.md, probe 5).
CHAINS = 3
CHAIN_FOLLOW_UPS = 7  # extra queries per training prompt, about any variable of any chain


def spread_statements(rng: random.Random, statements: list[str], width: int) -> str:
    """The statements joined by runs of spaces, placed at random, that fill at least `width` characters: with
    one `width` for every hop count, a longer chain is not also a longer prompt, whose query-to-statement
    distances the model never trained on."""
    gaps = [1] * (len(statements) - 1)
    for _ in range(width - len(" ".join(statements))):
        gaps[rng.randrange(len(gaps))] += 1
    return statements[0] + "".join(" " * gap + statement for gap, statement in zip(gaps, statements[1:]))


@dataclass(frozen=True)
class BindingChains:
    """`chains[c]` names chain c's variables, root binding first; `statements` are all bindings in chain
    order, for the caller to shuffle (where in its draws is part of a task's seeded data)."""

    chains: list[list[str]]
    roots: list[str]
    statements: list[str]

    def variable(self, chain: int, depth: int) -> str:
        """The variable `depth` hops from chain `chain`'s root (its value is that root)."""
        return self.chains[chain][depth]


def binding_chains(rng: random.Random, count: int, length: int) -> BindingChains:
    """`count` chains  x0=7 x1=x0 ... x_length=x_{length-1}, each rooted at a distinct digit (statements not
    yet shuffled together). Every chain has the same length, so neither a digit's position nor a chain's size
    tells which root a variable leads to: the model has to follow the pointers back."""
    names = rng.sample(CHAIN_NAMES, count * (length + 1))
    chains = [names[c * (length + 1) : (c + 1) * (length + 1)] for c in range(count)]
    roots = rng.sample(string.digits, count)
    statements = [
        f"{chain[i]}={chain[i - 1] if i else root}" for chain, root in zip(chains, roots) for i in range(length + 1)
    ]
    return BindingChains(chains, roots, statements)


def _chain(rng: random.Random, hops: int) -> tuple[str, str, list[tuple[str, str]]]:
    # Three binding chains; the question names the last variable of one chain, `hops` hops from its root.
    # The follow-ups (training documents only) ask about random variables of random chains, 0..hops hops
    # from the root, drawn with replacement so earlier answers never rule a root out. With a single
    # answer per prompt a nano model stayed at chance on every level, hop 0 included, after 3,000 steps
    # (docs/recurrence.md); multi-query recall is how associative-recall tasks are usually made learnable.
    bound = binding_chains(rng, CHAINS, hops)
    asked = rng.randrange(CHAINS)
    rng.shuffle(bound.statements)
    follow_ups = []
    for _ in range(CHAIN_FOLLOW_UPS):
        c = rng.randrange(CHAINS)
        follow_ups.append((f"?{bound.variable(c, rng.randrange(hops + 1))}", bound.roots[c]))
    return f"chain {' '.join(bound.statements)} ?{bound.variable(asked, hops)}", bound.roots[asked], follow_ups


def _compare(rng: random.Random, digits: int) -> tuple[str, str]:
    # Same digit count and a shared random-length prefix, so the decision needs the first differing digit.
    relation = rng.choice("<>=")
    a = str(_number(rng, digits))
    if relation == "=":
        return f"cmp {a} {a}", "="
    shared = rng.randrange(digits)
    first = a[:shared]
    low_digit = 1 if shared == 0 and digits > 1 else 0
    x, y = sorted(rng.sample(range(low_digit, 10), 2))
    tail_a = "".join(rng.choice(string.digits) for _ in range(digits - shared - 1))
    tail_b = "".join(rng.choice(string.digits) for _ in range(digits - shared - 1))
    small, big = first + str(x) + tail_a, first + str(y) + tail_b
    left, right = (small, big) if relation == "<" else (big, small)
    return f"cmp {left} {right}", relation


def _successor(rng: random.Random, digits: int) -> tuple[str, str]:
    # Force a random run of trailing 9s so long carry chains are common rather than 1-in-10^k rare.
    nines = rng.randint(0, digits - 1)
    head = str(_number(rng, digits - nines)) if digits - nines > 1 else str(rng.randint(digits > 1, 9))
    n = int(head + "9" * nines)
    return f"succ {n}", str(n + 1)


TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task("mod_add", "digits", 2, [2, 3, 4, 6], _mod_add),
        Task("parity", "bits", 8, [8, 16, 32, 64], _parity),
        Task("addition", "digits", 4, [4, 5, 6, 8], _addition),
        Task("multiplication", "digits", 2, [2, 3, 4, 5], _multiplication),
        Task("copy", "length", 16, [16, 32, 64, 128], _copy),
        Task("reverse", "length", 16, [16, 32, 64, 128], _reverse),
        Task("dyck", "depth", 4, [4, 8, 16, 32], _dyck),
        Task(
            "chain",
            "hops",
            4,
            [4, 6, 8, 16],
            _chain,
            min_difficulty=0,
            max_difficulty=len(CHAIN_NAMES) // CHAINS - 1,
            train_min_difficulty=0,
        ),
        Task("compare", "digits", 4, [4, 8, 16, 32], _compare),
        Task("successor", "digits", 4, [4, 8, 16, 32], _successor),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def iter_samples(task: str | Task, seed: int, difficulty: int | None = None) -> Iterator[Sample]:
    """Infinite deterministic stream of samples of one task."""
    resolved = get_task(task) if isinstance(task, str) else task
    rng = random.Random(seed)
    while True:
        yield resolved.generate(rng, difficulty)


def sample_to_messages(sample: Sample) -> list[dict[str, str]]:
    """The sample as a chat; its follow-up turns come after the first answer (evaluation uses turn one)."""
    turns = [(sample.prompt, sample.answer), *sample.follow_ups]
    return [{"role": role, "content": text} for turn in turns for role, text in zip(("user", "assistant"), turn)]


def make_task_documents(task_names: list[str], num_docs: int, seed: int, difficulty: int | None = None) -> list[dict]:
    """`num_docs` chat documents cycling through `task_names` (balanced), deterministic in `seed`."""
    if not task_names:
        raise ValueError("make_task_documents: task_names is empty; expected at least one task name")
    if num_docs < 0:
        raise ValueError(f"make_task_documents: num_docs must be >= 0, got {num_docs}")
    # Each task gets its own stream (seeded from `seed` and the task's position) so adding a task to
    # the list does not change the samples drawn for the others.
    streams = [iter_samples(name, seed * 1_000_003 + i, difficulty) for i, name in enumerate(task_names)]
    chosen = itertools.islice(itertools.cycle(streams), num_docs)
    return [{"messages": sample_to_messages(next(stream))} for stream in chosen]
