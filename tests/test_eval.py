"""Evaluation against a tiny model trained inside the test: hub accuracy, sweep perplexity, loading, errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from recur.checkpoint import Checkpointer, DCPState
from recur.config import TrainConfig
from recur.data.packing import pack_dataset
from recur.data.tasks import iter_samples, sample_to_messages
from recur.data.tokenizer import load_tokenizer
from recur.eval.during_training import evaluate_during_training, read_eval_records
from recur.eval.hub import HubConfig, run_hub
from recur.eval.load import load_model
from recur.eval.perplexity import heldout_batches
from recur.eval.schema import RESULTS, schema_errors, validate_results
from recur.eval.stats import wilson_interval
from recur.eval.sweep import run_sweep
from recur.models import create_model
from recur.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
TASK, LEVEL, TRAIN_DEPTH = "successor", 1, 2  # "succ 7" -> "8": ten problems, chance accuracy ~0.1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(variant: str = "recurrent") -> ModelConfig:
    return ModelConfig(
        variant=variant,
        vocab_size=264,
        d_model=128,
        n_layers=3,
        n_heads=4,
        max_seq_len=128,
        default_num_steps=TRAIN_DEPTH,
        init_state="zeros",
    )


def train_tiny(steps: int = 160) -> tuple[torch.nn.Module, list[float]]:
    """A minimal loop on the chat-rendered task, loss on the assistant reply only; returns the losses too."""
    torch.manual_seed(0)
    tok = load_tokenizer("byte")
    model = create_model(tiny_config())
    docs = [tok.apply_chat_template(sample_to_messages(s)) for s, _ in zip(iter_samples(TASK, 1, LEVEL), range(512))]
    width = max(len(ids) for ids, _ in docs)
    ids = torch.tensor([i + [tok.pad_id] * (width - len(i)) for i, _ in docs])
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in docs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    rng = random.Random(0)
    losses = []
    for _ in range(steps):
        rows = torch.tensor(rng.sample(range(len(docs)), 32))
        out = model(ids[rows, :-1], targets=ids[rows, 1:], loss_mask=mask[rows, 1:], num_steps=TRAIN_DEPTH)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as the trainer leaves it: DCP checkpoint, config.yaml, data/val."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    torch.set_num_threads(1)  # the suite shares a small CPU; one thread avoids oversubscription stalls
    model, losses = train_tiny()
    (run / "losses.json").parent.mkdir(parents=True)
    (run / "losses.json").write_text(json.dumps(losses))
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"tokens": 0, "seed": 0, "model_config": asdict(model.cfg)}
    for step in (100, 300):  # two checkpoints (same weights) for the sweep's per-step plot
        Checkpointer(run / "checkpoints").save(step, DCPState(model, optimizer), {**state, "step": step})
    (run / "config.yaml").write_text("data:\n  tokenizer: byte\nmodel:\n  variant: recurrent\n")
    pack_dataset(
        run / "data" / "val",
        tokenizer="byte",
        seq_len=48,
        tasks=[TASK],
        num_docs=40,
        seed=5,
        difficulty=LEVEL,
        packing="bfd",
        mask_non_assistant=True,
    )
    return run


def test_trained_model_reaches_known_accuracy_and_hub_reports_it(run_dir, tmp_path):
    losses = json.loads((run_dir / "losses.json").read_text())
    assert sum(losses[-10:]) / 10 < 0.1  # both reply tokens (digit, end of turn) are learned
    cfg = HubConfig(
        checkpoint=str(run_dir),
        suite="algorithmic",
        tasks=[TASK],
        num_steps=[1, TRAIN_DEPTH],
        difficulties={TASK: [LEVEL]},
        num_samples=20,
        out_dir=str(tmp_path),
    )
    results, path = run_hub(cfg)
    assert path == tmp_path / "results_algorithmic.json"
    validate_results(json.loads(path.read_text()))
    cells = {r["depth"]: r for r in results["algorithmic"]["tasks"][TASK]["results"]}
    # Independent check of the reported number: uncached greedy decoding, written out here.
    model, _, _ = load_model(run_dir)
    tok = load_tokenizer("byte")
    from recur.data.tasks import TASKS
    from recur.eval.algorithmic import EVAL_SEED_OFFSET

    seed = EVAL_SEED_OFFSET + 1009 * sorted(TASKS).index(TASK) + LEVEL
    correct = 0
    for sample, _ in zip(iter_samples(TASK, seed, LEVEL), range(20)):
        ids = tok.prompt_ids(sample_to_messages(sample)[:1])
        reply = []
        for _ in range(8):
            with torch.no_grad():
                nxt = int(model(torch.tensor([ids + reply]), num_steps=TRAIN_DEPTH).logits[0, -1].argmax())
            if nxt in tok.stop_ids:
                break
            reply.append(nxt)
        correct += tok.decode(reply).strip() == sample.answer
    assert cells[TRAIN_DEPTH]["correct"] == correct
    assert cells[TRAIN_DEPTH]["accuracy"] == correct / 20 >= 0.9  # chance is ~0.1
    assert (cells[TRAIN_DEPTH]["ci_low"], cells[TRAIN_DEPTH]["ci_high"]) == wilson_interval(correct, 20)
    assert (tmp_path / "algorithmic.png").read_bytes()[:8] == PNG_MAGIC


def direct_loss(model, data: Path, depth: int) -> float:
    total, count = 0.0, 0
    for inputs, targets, mask, docs in heldout_batches(data, batch_size=1000):
        with torch.no_grad():
            logits = model(inputs, num_steps=depth, doc_ids=docs).logits.float()
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        total += float((losses * mask.flatten()).sum())
        count += int(mask.sum())
    return total / count


def test_sweep_perplexity_equals_direct_forward(run_dir, tmp_path):
    cfg = HubConfig(checkpoint=str(run_dir), tasks=[TASK], num_samples=4, batch_size=7, ood=False)
    written = run_sweep([str(run_dir)], tmp_path, depths=[1, 3], cfg=cfg)
    assert [p.name for p in written] == ["sweep_tiny_step_00000100.json", "sweep_tiny_step_00000300.json"]
    data = json.loads(written[-1].read_text())
    validate_results(data)
    model, _, _ = load_model(run_dir)
    for row in data["perplexity"]["results"]:
        expected = math.exp(direct_loss(model, run_dir / "data" / "val", row["depth"]))
        assert row["perplexity"] == pytest.approx(expected, rel=1e-5)
    for name in ("sweep_depth.png", "sweep_steps.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_all_suites_follow_schema_and_skip_long_contexts(run_dir, tmp_path):
    cfg = HubConfig(
        checkpoint=str(run_dir),
        suite="all",
        tasks=[TASK],
        num_steps=[TRAIN_DEPTH],
        num_samples=2,
        out_dir=str(tmp_path),
        needle_samples=1,
        needle_positions=[0.0, 1.0],
        max_rows=8,
    )
    results, path = run_hub(cfg)
    assert schema_errors(json.loads(path.read_text()), RESULTS) == []
    skipped = {s["context_length"] for s in results["longctx"]["skipped"]}
    assert skipped == {1024, 2048, 4096}  # the model's context is 128 tokens
    assert {r["context_length"] for r in results["longctx"]["results"]} == {128}
    assert all(
        (r["ci_low"], r["ci_high"]) == wilson_interval(r["correct"], r["num_samples"])
        for r in results["longctx"]["results"]
    )
    meta = results["metadata"]
    assert meta["commit"] and meta["grid_version"] and meta["decoding"]["strategy"] == "greedy"
    ood = [r for r in results["algorithmic"]["tasks"][TASK]["results"] if not r["in_distribution"]]
    assert ood, "the OOD grid was not evaluated"


def test_schema_validator_rejects_broken_results(run_dir, tmp_path):
    results, _ = run_hub(
        HubConfig(checkpoint=str(run_dir), suite="perplexity", out_dir=str(tmp_path), max_rows=4, plots=False)
    )
    broken = json.loads(json.dumps(results))
    del broken["metadata"]["commit"]
    broken["perplexity"]["results"][0]["loss"] = "low"
    errors = schema_errors(broken, RESULTS)
    assert any("commit" in e for e in errors) and any("loss" in e for e in errors)
    with pytest.raises(ValueError, match="eval schema"):
        validate_results(broken)


def test_exported_files_load_like_the_checkpoint(run_dir, tmp_path):
    from safetensors.torch import save_file

    model, cfg, _ = load_model(run_dir)
    x = torch.tensor([[257, 260, 115, 117, 99, 99]])
    expected = model(x).logits
    torch.save({"model": model.state_dict(), "model_config": asdict(cfg)}, tmp_path / "model.pt")
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, tmp_path / "model.safetensors", metadata={"model_config": json.dumps(asdict(cfg))})
    for name in ("model.pt", "model.safetensors"):
        loaded, _, meta = load_model(tmp_path / name)
        assert torch.equal(loaded(x).logits, expected), name
        assert meta.kind in ("torch", "safetensors")


def test_bad_inputs_fail_with_one_clear_error(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path / "notes.txt")
    other = create_model(tiny_config("baseline"))
    cfg = asdict(tiny_config().resolved())
    torch.save({"model": other.state_dict(), "model_config": cfg}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another model"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "foreign").mkdir()
    torch.save({"model": other.state_dict(), "config": {}}, tmp_path / "foreign" / "model.pt")
    with pytest.raises(ValueError, match="model_config"):
        load_model(tmp_path / "foreign")
    with pytest.raises(ValueError, match="unknown task 'sorting'"):
        run_hub(HubConfig(checkpoint=str(run_dir), tasks=["sorting"]))
    with pytest.raises(ValueError, match="--suite: unknown suite 'vibes'"):
        run_hub(HubConfig(checkpoint=str(run_dir), suite="vibes"))
    with pytest.raises(ValueError, match=r"--num_steps: every depth must be an integer >= 1, got \[0\]"):
        run_hub(HubConfig(checkpoint=str(run_dir), num_steps=[0, 2]))
    with pytest.raises(ValueError, match="--depths"):
        run_sweep([str(run_dir)], tmp_path, depths=[-1])


def test_cli_turns_errors_into_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval_hub.py", "--checkpoint", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"eval_hub.py: error: --checkpoint: {tmp_path / 'missing'} does not exist"
    ]


def test_evaluation_during_training_logs_and_plots(run_dir, tmp_path):
    model, _, _ = load_model(run_dir)
    cfg = TrainConfig()
    cfg.eval.depths, cfg.eval.tasks, cfg.eval.num_samples = [1, TRAIN_DEPTH], [TASK], 4
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "val").symlink_to(run_dir / "data" / "val")
    for step in (10, 20):
        out = evaluate_during_training(model, load_tokenizer("byte"), cfg, step, run)
    assert set(out["accuracy"]) == {f"{TASK}@r1", f"{TASK}@r{TRAIN_DEPTH}"}
    assert set(out["val_loss"]) == {"r1", f"r{TRAIN_DEPTH}"}
    assert out["metrics"][f"eval/val_loss/r{TRAIN_DEPTH}"] == out["val_loss"][f"r{TRAIN_DEPTH}"]
    assert [r["step"] for r in read_eval_records(run)] == [10, 20]
    assert (run / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
