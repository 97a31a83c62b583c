import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recur.data.task_audit import SHORTCUT_LIMIT, shortcut_accuracy
from recur.data.tasks import (
    CHAIN_FOLLOW_UPS,
    CHAINS,
    TASKS,
    Task,
    get_task,
    iter_samples,
    make_task_documents,
    sample_to_messages,
)


def _chain_value(statements: list[str], query: str) -> str:
    bindings = dict(statement.split("=") for statement in statements)
    value = bindings[query]
    while not value.isdigit():
        value = bindings[value]
    return value


def _dyck_closing(prefix: str) -> str:
    stack = []
    for char in prefix:
        if char in "([":
            stack.append({"(": ")", "[": "]"}[char])
        else:
            assert stack.pop() == char, "distractor segments must be balanced"
    return "".join(reversed(stack))


def _mod_add(a: str, b: str, modulus: str) -> str:
    assert int(a) < int(modulus) and int(b) < int(modulus)
    return str((int(a) + int(b)) % int(modulus))


def _compare(a: str, b: str) -> str:
    return "<" if int(a) < int(b) else ">" if int(a) > int(b) else "="


# Independent solvers: parse the prompt and recompute the answer, so a buggy generator cannot pass.
SOLVERS = {
    "mod_add": lambda p: _mod_add(*re.fullmatch(r"modadd (\d+)\+(\d+)%(\d+)", p).groups()),
    "parity": lambda p: str(p.split()[1].count("1") % 2),
    "addition": lambda p: str(eval(p.split()[1])),
    "multiplication": lambda p: str(eval(p.split()[1])),
    "copy": lambda p: p.split()[1],
    "reverse": lambda p: p.split()[1][::-1],
    "dyck": lambda p: _dyck_closing(p.split()[1]),
    "chain": lambda p: _chain_value(p.split()[1:-1], p.split()[-1][1:]),
    "compare": lambda p: _compare(*p.split()[1:]),
    "successor": lambda p: str(int(p.split()[1]) + 1),
}

# The difficulty knob's observable effect: the length of the part it controls.
KNOB_LENGTH = {
    "mod_add": lambda s: len(s.prompt.split("%")[1]),
    "parity": lambda s: len(s.prompt.split()[1]),
    "addition": lambda s: len(s.prompt.split()[1].split("+")[0]),
    "multiplication": lambda s: len(s.prompt.split()[1].split("*")[1]),
    "copy": lambda s: len(s.answer),
    "reverse": lambda s: len(s.answer),
    "dyck": lambda s: len(s.answer),
    "chain": lambda s: (len(s.prompt.split()) - 2) // CHAINS - 1,
    "compare": lambda s: len(s.prompt.split()[2]),
    "successor": lambda s: len(s.prompt.split()[1]),
}


def test_all_ten_tasks_registered():
    assert set(TASKS) == set(SOLVERS) and len(TASKS) == 10
    for task in TASKS.values():
        assert task.ood_difficulties[0] == task.train_difficulty
        assert task.ood_difficulties == sorted(task.ood_difficulties)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(TASKS)), seed=st.integers(0, 2**32), level=st.integers(0, 3))
def test_answers_are_correct_and_knob_sets_length(name, seed, level):
    task = TASKS[name]
    difficulty = task.ood_difficulties[level % len(task.ood_difficulties)]
    sample = task.generate(random.Random(seed), difficulty)
    expected = SOLVERS[name](sample.prompt)
    assert task.check(expected, sample.answer), (sample, expected)
    assert task.check(f"  {sample.answer}\n", sample.answer)
    assert not task.check(sample.answer + "0", sample.answer)
    assert sample.difficulty == difficulty
    assert KNOB_LENGTH[name](sample) == difficulty
    assert sample.prompt.isascii() and sample.answer.isascii() and "\n" not in sample.prompt


def test_parity_and_addition_stated_levels():
    assert TASKS["parity"].train_difficulty == 8 and TASKS["parity"].ood_difficulties[-1] == 64
    assert TASKS["addition"].train_difficulty == 4 and TASKS["addition"].ood_difficulties[-1] == 8
    assert len(TASKS["parity"].generate(random.Random(0)).prompt) == len("parity ") + 8


def test_compare_covers_all_relations():
    answers = {TASKS["compare"].generate(random.Random(seed)).answer for seed in range(60)}
    assert answers == {"<", ">", "="}


def test_same_seed_same_data_and_streams_are_infinite():
    a = [s for _, s in zip(range(50), iter_samples("dyck", 7, 8))]
    b = [s for _, s in zip(range(50), iter_samples("dyck", 7, 8))]
    c = [s for _, s in zip(range(50), iter_samples("dyck", 8, 8))]
    assert a == b and a != c
    assert make_task_documents(["parity", "chain"], 30, seed=3) == make_task_documents(["parity", "chain"], 30, seed=3)


def test_make_task_documents_balanced_chat_docs():
    docs = make_task_documents(["parity", "successor", "copy"], 9, seed=1, difficulty=5)
    assert len(docs) == 9
    prompts = [doc["messages"][0]["content"].split()[0] for doc in docs]
    assert prompts == ["parity", "succ", "copy"] * 3
    for doc in docs:
        assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]


def test_unknown_task_and_bad_difficulty():
    with pytest.raises(ValueError, match=r"unknown task 'sorting'; expected one of mod_add, parity"):
        get_task("sorting")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task_documents(["nope"], 1, seed=0)
    with pytest.raises(ValueError, match=r"task 'parity': difficulty \(bits\) must be an int >= 1"):
        TASKS["parity"].generate(random.Random(0), 0)
    with pytest.raises(ValueError, match="task 'chain'.*<= 16"):
        TASKS["chain"].generate(random.Random(0), 17)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_task_falls_to_a_shortcut(name):
    """Answer-blind rules (majority answer, copy a number from the prompt) stay below the limit at every
    difficulty the task is trained or evaluated at, so accuracy above it is evidence of computation."""
    task = TASKS[name]
    for difficulty in [None, *task.ood_difficulties]:
        scores = shortcut_accuracy(name, difficulty, num_samples=600)
        assert max(scores.values()) < SHORTCUT_LIMIT, (name, difficulty, scores)


def test_audit_catches_the_single_chain_shortcut():
    """The old chain task (one chain: its only digit is the answer) must fail the audit."""

    def single_chain(rng, hops):
        names = rng.sample("abcdefghijklmnopqrstuvwxyz", hops + 1)
        statements = [f"{names[0]}={rng.randrange(10)}"] + [f"{names[i]}={names[i - 1]}" for i in range(1, hops + 1)]
        value = statements[0][-1]
        rng.shuffle(statements)
        return f"chain {' '.join(statements)} ?{names[-1]}", value

    TASKS["single_chain"] = Task("single_chain", "hops", 4, [4], single_chain)
    try:
        assert shortcut_accuracy("single_chain", num_samples=200)["first_number"] == 1.0
    finally:
        del TASKS["single_chain"]


def test_chain_chains_are_distinct_and_training_mixes_hop_counts():
    rng = random.Random(3)
    hops = [TASKS["chain"].generate(rng).difficulty for _ in range(400)]
    assert set(hops) == set(range(0, TASKS["chain"].train_difficulty + 1))  # hop 0: plain recall
    for seed in range(50):
        sample = TASKS["chain"].generate(random.Random(seed), 16)
        statements = sample.prompt.split()[1:-1]
        roots = [s[-1] for s in statements if s[-1].isdigit()]
        assert len(roots) == CHAINS == len(set(roots)) and sample.answer in roots
        names = [s.split("=")[0] for s in statements]
        assert len(names) == len(set(names)) == CHAINS * 17
    # Every level has three chains of hops + 1 statements: harder levels are longer chains, not more of them.
    for h in (0, 4, 8):
        assert len(TASKS["chain"].generate(random.Random(0), h).prompt.split()) == 2 + CHAINS * (h + 1)


def test_chain_follow_ups_are_correct_turns_after_the_first_answer():
    """Training documents ask more questions about the same statements; evaluation reads turn one only."""
    for seed in range(30):
        sample = TASKS["chain"].generate(random.Random(seed))
        statements = sample.prompt.split()[1:-1]
        assert len(sample.follow_ups) == CHAIN_FOLLOW_UPS
        assert all(answer == _chain_value(statements, query[1:]) for query, answer in sample.follow_ups)
        messages = sample_to_messages(sample)
        assert messages[:2] == [
            {"role": "user", "content": sample.prompt},
            {"role": "assistant", "content": sample.answer},
        ]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (1 + CHAIN_FOLLOW_UPS)


def test_chain_samples_are_pinned():
    """A seed's chain sample never changes: earlier runs' data and results stay reproducible (the draw order
    of names, roots, the asked chain and the shuffle is part of the data)."""
    sample = TASKS["chain"].generate(random.Random(0), 2)
    assert (sample.prompt, sample.answer) == ("chain F=3 G=q c=5 t=z z=F y=7 W=y q=c A=W ?t", "3")
    assert sample.follow_ups[:2] == (("?c", "5"), ("?F", "3"))
