"""lm-eval integration: adapter methods against direct model computations, and local tasks end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from hf_fixtures import make_tiny_llama  # noqa: E402
from lm_eval_tasks import DOCS, TASKS, plain_hf_results, write_local_tasks  # noqa: E402

from recur.convert.hf import convert_to_dir, tokenizer_files  # noqa: E402
from recur.eval.generate import greedy_generate  # noqa: E402
from recur.eval.lm_eval_adapter import RecurLM, evaluate_at_depths  # noqa: E402
from recur.hf_model import save_pretrained  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    out = root / "converted"
    model = convert_to_dir(make_tiny_llama(root, n_layers=3), out, 1, 1, 1, 1)
    # A pass-through adapter ignores the state, so every depth would score alike; a trained adapter mixes
    # the state in. Emulate that so depth changes the scores.
    with torch.no_grad():
        d = model.cfg.d_model
        model.adapter.weight[:, :d].copy_(0.5 * torch.eye(d))
    save_pretrained(model, out, extra_files=tokenizer_files(root / "tiny_llama_3"), overwrite=True)
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_local_tasks(tmp_path_factory.mktemp("tasks"))


def _req(*args):
    return SimpleNamespace(args=args)


def _direct_loglikelihood(lm: RecurLM, context: list[int], continuation: list[int]) -> float:
    """sum log p(continuation | context) from one forward of the model at the adapter's depth."""
    ids = context + continuation
    with torch.no_grad():
        logp = F.log_softmax(lm.model(torch.tensor([ids[:-1]]), num_steps=lm.num_steps).logits[0].float(), -1)
    return logp[-len(continuation) :].gather(1, torch.tensor(continuation)[:, None]).sum().item()


class _ForwardLog:
    """Batch size of every model forward while active (prompt forwards and decoding steps alike)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = model.register_forward_hook(lambda _, args, __: self.batches.append(args[0].shape[0]))

    def __enter__(self) -> _ForwardLog:
        return self

    def __exit__(self, *_) -> None:
        self.handle.remove()


def test_loglikelihood_matches_model(model_dir):
    lm = RecurLM(str(model_dir), num_steps=3, batch_size=2)
    reqs = [_req("The cat sat on the", " mat"), _req("Two plus two", " is four"), _req("Water", " is wet")]
    scores = lm.loglikelihood(reqs, disable_tqdm=True)
    for (ctx, cont), (ll, greedy) in zip([r.args for r in reqs], scores):
        ids = lm.tok_encode(ctx + cont)
        n = len(lm.tok_encode(ctx + cont)) - len(lm.tok_encode(ctx))
        with torch.no_grad():
            logp = F.log_softmax(lm.model(torch.tensor([ids[:-1]]), num_steps=3).logits[0].float(), -1)
        rows = logp[-n:]
        assert ll == pytest.approx(rows.gather(1, torch.tensor(ids[-n:])[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(ids[-n:])).all())
    # Depth matters: the same request scores differently at another recurrence.
    lm.num_steps = 1
    assert lm.loglikelihood(reqs[:1], disable_tqdm=True)[0][0] != pytest.approx(scores[0][0], abs=1e-6)


def test_rolling_and_generation_match_model(model_dir):
    lm = RecurLM(str(model_dir), num_steps=2)
    text = "hello world, this is a short document"
    ids = lm.tok_encode(text, add_special_tokens=False)
    with torch.no_grad():
        logp = F.log_softmax(lm.model(torch.tensor([[lm.prefix_token_id] + ids[:-1]]), num_steps=2).logits[0], -1)
    expected = logp.gather(1, torch.tensor(ids)[:, None]).sum().item()
    assert lm.loglikelihood_rolling([_req(text)], disable_tqdm=True)[0] == pytest.approx(expected, abs=1e-3)
    out = lm.generate_until([_req("The cat", {"until": [], "max_gen_toks": 5})], disable_tqdm=True)[0]
    want = greedy_generate(lm.model, [lm.tok_encode("The cat")], 5, {lm.eot_token_id}, num_steps=2)[0]
    assert out == lm.tok_decode(want)
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([_req("x", {"do_sample": True})], disable_tqdm=True)


def test_local_tasks_at_several_depths(model_dir, task_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    results = evaluate_at_depths(
        str(model_dir),
        ["recur_tiny_mc", "recur_tiny_ppl", "recur_tiny_gen"],
        [1, 4],
        include_path=str(task_dir),
        include_defaults=False,
    )
    assert set(results) == {1, 4}
    for depth in (1, 4):
        assert 0.0 <= results[depth]["recur_tiny_mc"]["acc,none"] <= 1.0
        assert results[depth]["recur_tiny_ppl"]["word_perplexity,none"] > 1.0
        assert "exact_match,none" in results[depth]["recur_tiny_gen"]
    assert results[1]["recur_tiny_ppl"] != results[4]["recur_tiny_ppl"]


@pytest.mark.slow  # a fresh interpreter imports lm-eval and indexes its ~10k built-in task YAMLs
def test_lm_eval_cli_with_recur_model(model_dir, task_dir, tmp_path):
    """`python -m recur.eval.lm_eval_adapter` is lm_eval's own CLI with --model recur registered."""
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recur.eval.lm_eval_adapter",
            "--model",
            "recur",
            "--model_args",
            f"path={model_dir},num_steps=2",
            "--tasks",
            "recur_tiny_mc",
            "--include_path",
            str(task_dir),
            "--output_path",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("results*.json"))
    assert files and "recur_tiny_mc" in json.loads(files[0].read_text())["results"]


def test_plain_lm_eval_hf_model_scores_like_the_adapter(model_dir, task_dir, monkeypatch, tmp_path):
    """lm-eval's own `hf` model (`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True,
    num_steps=2`: transformers' AutoModel path, left-padded batched generation, no recur code in lm-eval)
    scores a recur directory as the recur adapter does at the same depth."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    plain = plain_hf_results(model_dir, task_dir, num_steps=2)
    depths = evaluate_at_depths(str(model_dir), TASKS, [1, 2], include_path=str(task_dir), include_defaults=False)
    ours = depths[2]
    # num_steps reached the model: depth 1 scores the perplexity task differently.
    assert plain["recur_tiny_ppl"]["word_perplexity,none"] != pytest.approx(
        depths[1]["recur_tiny_ppl"]["word_perplexity,none"], rel=1e-6
    )
    for task, metric in (
        ("recur_tiny_mc", "acc,none"),
        ("recur_tiny_ppl", "word_perplexity,none"),
        ("recur_tiny_gen", "exact_match,none"),
    ):
        assert plain[task][metric] == pytest.approx(ours[task][metric], rel=1e-6), (task, plain[task], ours[task])


def test_chat_template_prompts_score_as_the_template_ids(model_dir, task_dir, monkeypatch, tmp_path):
    """--apply_chat_template: the rendered prompt string encodes back to the tokenizer's own template ids
    (special tokens parsed, BOS not doubled), and a task scored through lm-eval equals scoring those ids."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two is"}]
    chatml = RecurLM(str(model_dir), num_steps=2)  # the saved HF tokenizer: ChatML, its template writes <s>
    assert chatml.tok_encode(chatml.apply_chat_template(messages)) == chatml.tok.prompt_ids(messages)
    lm = RecurLM(str(model_dir), num_steps=2, tokenizer="byte")
    assert lm.tok_encode(lm.apply_chat_template(messages)) == lm.tok.prompt_ids(messages)
    out = simple_evaluate(
        model=lm,
        tasks=["recur_tiny_mc"],
        apply_chat_template=True,
        log_samples=True,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0,
    )
    samples = out["samples"]["recur_tiny_mc"]
    assert len(samples) == len(DOCS)
    for sample in samples:
        doc = sample["doc"]
        prompt = lm.tok.prompt_ids([{"role": "user", "content": doc["question"]}])
        assert len(sample["resps"]) == len(doc["choices"])
        for choice, resp in zip(doc["choices"], sample["resps"]):
            assert resp[0][0] == pytest.approx(_direct_loglikelihood(lm, prompt, lm.tok.encode(choice)), abs=1e-4)


def test_batched_generation_equals_one_request_at_a_time(model_dir):
    lm = RecurLM(str(model_dir), num_steps=2, batch_size=3)
    contexts = ["The cat", "Two plus two is", "W", "hello world, again and again"]
    reqs = [_req(ctx, {"until": [], "max_gen_toks": 8}) for ctx in contexts]
    reqs += [_req("Water is", {"until": ["."], "max_gen_toks": 8}), _req("The cat", {"max_gen_toks": 3})]
    assert len({len(lm.tok_encode(ctx)) for ctx in contexts}) == len(contexts)
    with _ForwardLog(lm.model) as log:
        batched = lm.generate_until(reqs, disable_tqdm=True)
    assert max(log.batches) == 3  # prompts of different lengths were decoded together, left-padded
    lm.batch_size = 1
    assert batched == lm.generate_until(reqs, disable_tqdm=True)
    assert batched[-1] == batched[0][: len(batched[-1])] and any(batched)


def test_generation_stops_at_until_strings(model_dir):
    """A row stops decoding as soon as its text holds a stop string (not after max_gen_toks), and its text is
    cut before the first one; in a batch each row stops on its own strings."""
    lm = RecurLM(str(model_dir), num_steps=2, batch_size=2)
    free_ids = greedy_generate(lm.model, [lm.tok_encode("The cat")], 12, {lm.eot_token_id}, num_steps=2)[0]
    assert len(free_ids) == 12
    free = lm.tok_decode(free_ids)
    stop = free[len(lm.tok_decode(free_ids[:4])) : len(lm.tok_decode(free_ids[:6]))]  # complete by token 6
    assert stop
    reqs = [
        _req("The cat", {"until": ["never there", stop], "max_gen_toks": 200}),
        _req("The cat", {"until": ["also absent", free[:2]], "max_gen_toks": 200}),
    ]
    with _ForwardLog(lm.model) as log:
        outs = lm.generate_until(reqs, disable_tqdm=True)
    assert len(log.batches) <= 6  # the prompt forward, then at most 5 decoding steps of 200
    assert outs == [free[: free.find(stop)], ""]
    assert stop not in outs[0]
