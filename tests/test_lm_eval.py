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
from lm_eval_tasks import TASKS, plain_hf_results, write_local_tasks  # noqa: E402
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
    results = evaluate_at_depths(str(model_dir), ["recur_tiny_mc", "recur_tiny_ppl", "recur_tiny_gen"], [1, 4],
                                 include_path=str(task_dir), include_defaults=False)
    assert set(results) == {1, 4}
    for depth in (1, 4):
        assert 0.0 <= results[depth]["recur_tiny_mc"]["acc,none"] <= 1.0
        assert results[depth]["recur_tiny_ppl"]["word_perplexity,none"] > 1.0
        assert "exact_match,none" in results[depth]["recur_tiny_gen"]
    assert results[1]["recur_tiny_ppl"] != results[4]["recur_tiny_ppl"]


@pytest.mark.slow  # a fresh interpreter imports lm-eval and indexes its ~10k built-in task YAMLs
def test_lm_eval_cli_with_recur_model(model_dir, task_dir, tmp_path):
    """`python -m recur.eval.lm_eval_adapter` is lm_eval's own CLI with --model recur registered."""
    env = {**os.environ, "PYTHONPATH": REPO, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "recur.eval.lm_eval_adapter", "--model", "recur",
                           "--model_args", f"path={model_dir},num_steps=2", "--tasks", "recur_tiny_mc",
                           "--include_path", str(task_dir), "--output_path", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
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
        depths[1]["recur_tiny_ppl"]["word_perplexity,none"], rel=1e-6)
    for task, metric in (("recur_tiny_mc", "acc,none"), ("recur_tiny_ppl", "word_perplexity,none"),
                         ("recur_tiny_gen", "exact_match,none")):
        assert plain[task][metric] == pytest.approx(ours[task][metric], rel=1e-6), (task, plain[task], ours[task])
