"""The one model format: a run trained by train.py, exported, loads with every reader and with transformers'
AutoModelForCausalLM (trust_remote_code) with equal logits and equal greedy decoding."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, run_train, run_train_in_process, tiny_args

from recur.eval.generate import ExitRule, generate, greedy_generate
from recur.eval.load import load_model, load_weights_into, saved_config
from recur.models import create_model, is_looped
from recur.parallel.export import export_checkpoint

PROMPT = [[257, 104, 101, 108, 108, 111]]  # <bos> "hello" in the byte tokenizer


DATA = {"--data.tasks": "[copy]", "--data.num_docs": "200", "--data.seq_len": "48"}


@pytest.fixture(scope="module", params=["recurrent", "baseline"])
def exported(request, tmp_path_factory):
    """(run directory, its export) of a tiny run trained for a few steps."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    run = root / "runs" / "tiny"
    result = run_train(tiny_args(run, None, steps=6, **{"--model.variant": request.param, **DATA}))
    assert result.returncode == 0, result.stderr[-2000:]
    out = root / "exported"
    if request.param == "baseline":  # the same export in-process; the recurrent run goes through the real command
        export_checkpoint(run, out)
        return run, out
    result = subprocess.run(
        [sys.executable, str(REPO / "utils" / "export_checkpoint.py"), "--checkpoint", str(run), "--out_dir", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return run, out


def test_export_is_a_hugging_face_directory(exported):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "recur" and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_recur.")
    assert config["recur_tokenizer"] == "byte"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["num_steps"] == config["default_num_steps"] and generation["eos_token_id"] == 258
    assert (out / "modeling_recur.py").is_file()
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644


def test_every_reader_gives_the_run_logits(exported, tmp_path):
    from recur.eval.lm_eval_adapter import RecurLM

    run, out = exported
    x = torch.tensor(PROMPT)
    want = load_model(run)[0](x).logits
    for path in (out, out / "model.safetensors"):
        model, _, meta = load_model(path)
        assert meta.kind == "hf" and meta.tokenizer == "byte"
        assert torch.equal(model(x).logits, want)
    assert torch.equal(RecurLM(str(out), device="cpu").model(x).logits, want)
    fresh = create_model(saved_config(out))  # what train.py --init_from builds and fills
    load_weights_into(fresh, out)
    assert torch.equal(fresh.eval()(x).logits, want)


def test_train_init_from_export_and_checkpoint(exported, tmp_path):
    """--init_from takes an export, and a checkpoint directory (retrofit phase 2 starts from phase 1's).
    train.py's main() runs in-process here (the fixture's run is the real command)."""
    run, out = exported
    checkpoint = sorted((run / "checkpoints").glob("step_*[0-9]"))[-1]
    for name, source in (("from_export", out), ("from_checkpoint", checkpoint)):
        result = run_train_in_process(
            tiny_args(tmp_path / "runs" / name, None, steps=6, **{"--init_from": str(source), **DATA})
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"[init] weights from {source}" in result.stderr


def test_automodel_matches_recur(exported):
    from transformers import AutoModelForCausalLM

    run, out = exported
    ours = load_model(run)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    x = torch.tensor(PROMPT)
    for steps in (None, 1, 3):
        torch.testing.assert_close(hf(x, num_steps=steps).logits, ours(x, num_steps=steps).logits, rtol=0, atol=1e-4)
    for steps in (1, 3):
        want = greedy_generate(ours, PROMPT, 8, set(), num_steps=steps)[0]
        got = hf.generate(x, max_new_tokens=8, num_steps=steps, do_sample=False, eos_token_id=None)
        assert got[0, x.shape[1] :].tolist() == want
    if is_looped(ours):  # adaptive exit: the same tokens as recur's, with some tokens exiting early
        decoded = generate(ours, PROMPT, 8, set(), num_steps=4, exit_rule=ExitRule("delta", 0.2))
        assert decoded.mean_steps() < 4
        got = hf.generate(
            x, max_new_tokens=8, num_steps=4, exit_criterion="delta", exit_eps=0.2, do_sample=False, eos_token_id=None
        )
        assert got[0, x.shape[1] :].tolist() == decoded.tokens[0]
    deep = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, num_steps=3)
    torch.testing.assert_close(deep(x).logits, ours(x, num_steps=3).logits, rtol=0, atol=1e-4)
    torch.manual_seed(0)
    sampled = hf.generate(x, max_new_tokens=5, do_sample=True, top_k=20, num_steps=2)
    assert sampled.shape == (1, x.shape[1] + 5)


def test_left_padded_batches_compute_what_unpadded_rows_do(exported):
    """lm-eval's generation batches are left-padded: each row's logits and greedy tokens equal its own run."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(exported[1]), trust_remote_code=True)
    short, long = PROMPT[0][:3], PROMPT[0] + [32, 119]
    pad = 256
    ids = torch.tensor([[pad] * (len(long) - len(short)) + short, long])
    mask = (torch.arange(len(long))[None] >= torch.tensor([[len(long) - len(short)], [0]])).long()
    padded = hf(ids, attention_mask=mask, num_steps=3).logits
    for row, prompt in enumerate((short, long)):
        alone = hf(torch.tensor([prompt]), num_steps=3).logits[0]
        torch.testing.assert_close(padded[row, -len(prompt) :], alone, rtol=0, atol=1e-4)
    batch = hf.generate(
        ids, attention_mask=mask, max_new_tokens=6, num_steps=3, do_sample=False, eos_token_id=None, pad_token_id=pad
    )
    for row, prompt in enumerate((short, long)):
        alone = hf.generate(torch.tensor([prompt]), max_new_tokens=6, num_steps=3, do_sample=False, eos_token_id=None)
        assert batch[row, ids.shape[1] :].tolist() == alone[0, len(prompt) :].tolist()


# A Python where recur is not installed: the editable install's finder and the checkout leave the path.
NO_RECUR = """
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path = [p for p in sys.path if p not in ("", {repo!r}) and "__editable__" not in p]
assert importlib.util.find_spec("recur") is None, "recur is still importable"
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({out!r}, trust_remote_code=True)
torch.save(model(torch.tensor({prompt!r}), num_steps=2).logits, {target!r})
print(model.model.__module__.split(".")[0], sys.modules["recur"].__file__)
"""


def test_the_directory_loads_where_recur_is_not_installed(exported, tmp_path):
    run, out = exported
    moved = shutil.copytree(out, tmp_path / "elsewhere")  # nothing of the checkout next to it
    target = tmp_path / "logits.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    code = NO_RECUR.format(repo=str(REPO), out=str(moved), prompt=PROMPT, target=str(target))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(moved / "recur_src") in result.stdout  # the shipped copy was the one imported
    want = load_model(run)[0](torch.tensor(PROMPT), num_steps=2).logits
    torch.testing.assert_close(torch.load(target), want, rtol=0, atol=1e-5)


def test_plain_lm_eval_scores_a_trained_export(exported, tmp_path, monkeypatch):
    """`lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True,num_steps=2` on a model
    trained by train.py (byte tokenizer) gives the recur adapter's scores."""
    pytest.importorskip("lm_eval")
    from lm_eval_tasks import TASKS, plain_hf_results, write_local_tasks

    from recur.eval.lm_eval_adapter import evaluate_at_depths

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = write_local_tasks(tmp_path)
    plain = plain_hf_results(exported[1], tasks, num_steps=2)
    ours = evaluate_at_depths(str(exported[1]), TASKS, [2], include_path=str(tasks), include_defaults=False)[2]
    for task, metric in (
        ("recur_tiny_mc", "acc,none"),
        ("recur_tiny_ppl", "word_perplexity,none"),
        ("recur_tiny_gen", "exact_match,none"),
    ):
        assert plain[task][metric] == pytest.approx(ours[task][metric], rel=1e-6), (task, plain[task], ours[task])


def _eval_hub_in_process(args: list[str]) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import eval_hub
    from recur.cli_common import run_cli

    argv, sys.argv = sys.argv, ["eval_hub.py", *args]
    try:
        with torch.random.fork_rng():  # the hub seeds the global generator
            return run_cli("eval_hub.py", eval_hub.main)
    finally:
        sys.argv = argv


def test_eval_hub_and_compare_runs_read_an_export(exported, tmp_path):
    """eval_hub.py scores an export (results into <export>/eval) and compare_runs.py compares it with a run."""
    run, out = exported
    export = shutil.copytree(out, tmp_path / "export")
    run_copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(sorted((run / "checkpoints").glob("step_*[0-9]"))[-1], run_copy / "checkpoints" / "step_6")
    for directory in (export, run_copy):
        args = [
            "--checkpoint",
            str(directory),
            "--suite",
            "algorithmic",
            "--tasks",
            "copy",
            "--num_samples",
            "4",
            "--no_ood",
            "--no_plots",
            "--device",
            "cpu",
        ]
        if directory == run_copy:  # eval_hub.py's main() in-process; the export goes through the real command
            assert _eval_hub_in_process(args) == 0
        else:
            hub = subprocess.run([sys.executable, "eval_hub.py", *args], capture_output=True, text=True, cwd=REPO)
            assert hub.returncode == 0, hub.stderr[-2000:]
        assert (directory / "eval" / "results_algorithmic.json").is_file()
    compared = subprocess.run(
        [sys.executable, "compare_runs.py", str(export), str(run_copy), "--out_dir", str(tmp_path / "compare")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert compared.returncode == 0, compared.stderr[-2000:]
    names = [r["name"] for r in json.loads((tmp_path / "compare" / "compare.json").read_text())["runs"]]
    assert names == ["export", "run"]


def test_byte_tokenizer_files_match_recur(exported):
    from transformers import AutoTokenizer

    from recur.data.tokenizer import ByteTokenizer

    hf, ours = AutoTokenizer.from_pretrained(str(exported[1])), ByteTokenizer()
    for text in ("hello world", "héllo ✓ 日本\n\ttabs", ""):
        assert hf.encode(text, add_special_tokens=False) == ours.encode(text)
        assert hf.decode(ours.encode(text)) == text
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert hf.apply_chat_template(chat, return_dict=False) == ours.apply_chat_template(chat)[0]
    assert hf.apply_chat_template(chat[:2], add_generation_prompt=True, return_dict=False) == ours.prompt_ids(chat[:2])
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)


def test_bad_export_input_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "utils" / "export_checkpoint.py"),
            "--checkpoint",
            str(tmp_path / "nope"),
            "--out_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
