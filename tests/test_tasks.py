import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recur.data.tasks import TASKS, get_task, iter_samples, make_task_documents


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
    "chain": lambda s: len(s.prompt.split()) - 3,
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
    difficulty = task.ood_difficulties[level]
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
    with pytest.raises(ValueError, match="task 'chain'.*<= 25"):
        TASKS["chain"].generate(random.Random(0), 26)
