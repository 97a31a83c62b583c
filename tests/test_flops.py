"""FLOP counter: a hand computation, the sampling-law expectation, and agreement with the trainer's log."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recur.flops import attended_key_fraction, count_params, curriculum_flops, expected_steps, flops_per_token
from recur.models import ModelConfig, create_model
from recur.recurrence import RecurrenceConfig, RecurrenceSampler


def test_hand_computation_small_config():
    d, ff, V, T = 16, 32, 10, 8
    cfg = ModelConfig(
        vocab_size=V,
        d_model=d,
        n_heads=2,
        d_ff=ff,
        n_prelude=1,
        n_core=2,
        n_coda=1,
        tie_embeddings=False,
        max_seq_len=T,
    ).resolved()
    model = create_model(cfg)
    block = 4 * d * d + 3 * d * ff + 4 * d  # q, k, v, o; SwiGLU gate, up, down; four RMSNorm gains (sandwich)
    params = count_params(model)
    assert params == {
        "tok_embeddings": V * d,
        "prelude": block,
        "adapter": 2 * d * d,
        "core": 2 * block,
        "coda": block,
        "norm": d,
        "lm_head": V * d,
        "total": 2 * V * d + 4 * block + 2 * d * d + d,
        "non_embedding": V * d + 4 * block + 2 * d * d + d,
    }
    n, k = 3, 2
    fixed, loop = 2 * block + V * d, 2 * block + 2 * d * d  # applied once with grad / per iteration
    attn = 4 * T * d * (3 * (2 + 2 * k) + 2 * n)  # QKᵀ + AV per layer application: fwd ×1, fwd+bwd ×3
    assert flops_per_token(model, cfg, T, n, k) == 6 * (fixed + k * loop) + 2 * (n * loop) + attn


@pytest.mark.parametrize("mean", [1, 2, 4, 8, 32])
def test_expected_total_is_mean_plus_one(mean):
    n, k = expected_steps(mean, 8)
    assert n + k == pytest.approx(mean + 1, rel=1e-9)
    assert 0 < k <= min(8, mean + 1)


def test_expected_steps_match_the_samplers_draws():
    """The analytic expectation agrees with the trainer's own seeded draws (law of large numbers)."""
    cfg = RecurrenceConfig(mean_recurrence=6, backprop_depth=3, max_recurrence=12)
    sampler = RecurrenceSampler(cfg, total_steps=20_000)
    draws = np.array([(d.no_grad_steps, d.grad_steps) for d in map(sampler, range(20_000))], dtype=float)
    n, k = expected_steps(6, 3, max_recurrence=12)
    assert abs(draws[:, 0].mean() - n) < 4 * draws[:, 0].std() / math.sqrt(len(draws))
    assert abs(draws[:, 1].mean() - k) < 4 * draws[:, 1].std() / math.sqrt(len(draws)) + 1e-9
    assert n + k < 7  # the cap lowers the mean below r̄ + 1


def test_fixed_sampling_is_exact():
    assert expected_steps(5, 2, sampling="fixed") == (3.0, 2.0)
    assert expected_steps(5, 2, sampling="fixed", max_recurrence=4) == (2.0, 2.0)


def test_curriculum_analytic_close_to_draws_and_ramp_costs_less():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_heads=2, n_prelude=1, n_core=2, n_coda=1).resolved()
    model = create_model(cfg)
    rec = RecurrenceConfig(
        mean_recurrence=8,
        backprop_depth=4,
        mean_schedule="1-sqrt",
        mean_warmup=0.5,
        backprop_schedule="linear",
        backprop_warmup=0.5,
    )
    sampler = RecurrenceSampler(rec, total_steps=2000)
    draws = curriculum_flops(model, cfg, sampler, seq_len=16, tokens_per_step=64, expectation="draws")
    analytic = curriculum_flops(model, cfg, sampler, seq_len=16, tokens_per_step=64, expectation="analytic")
    assert analytic["total_flops"] == pytest.approx(draws["total_flops"], rel=0.02)
    assert analytic["tokens"] == draws["tokens"] == 2000 * 64
    constant = RecurrenceSampler(RecurrenceConfig(mean_recurrence=8, backprop_depth=4), total_steps=2000)
    flat = curriculum_flops(model, cfg, constant, seq_len=16, tokens_per_step=64, expectation="analytic")
    assert analytic["total_flops"] < flat["total_flops"]
    parts = analytic["flops_6DN1"] + analytic["flops_2DN2"] + analytic["flops_attention"]
    assert parts == pytest.approx(analytic["total_flops"], rel=1e-12)


def test_single_pass_phase_counts_one_iteration_with_grad_in_both_expectations():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_heads=2, n_prelude=1, n_core=2, n_coda=1).resolved()
    rec = RecurrenceConfig(mean_recurrence=8, backprop_depth=4, single_pass_fraction=0.5)
    sampler = RecurrenceSampler(rec, total_steps=40)
    for expectation in ("draws", "analytic"):
        first_half = curriculum_flops(create_model(cfg), cfg, sampler, 16, 64, steps=20, expectation=expectation)
        assert (first_half["mean_no_grad_steps"], first_half["mean_grad_steps"]) == (0.0, 1.0)


def test_counter_equals_trainer_logged_flops(tmp_path):
    """Sum of metrics.jsonl "flops" over a short curriculum run == the counter on the same config."""
    from train_helpers import tiny_args

    from recur.cli import parse_config
    from recur.data.packing import pack_dataset
    from recur.train_loop import train
    from utils.param_counter import count_run, main

    data = tmp_path / "data"
    pack_dataset(
        data, tokenizer="byte", seq_len=48, tasks=["copy"], num_docs=120, seed=0, packing="bfd", mask_non_assistant=True
    )
    run_dir = tmp_path / "runs" / "flops"
    args = tiny_args(
        run_dir,
        data,
        steps=10,
        **{
            "--recurrence.mean_recurrence": "4",
            "--recurrence.mean_schedule": "linear",
            "--recurrence.mean_warmup": "0.5",
            "--model.d_model": "32",
            "--data.global_batch_size": "2",
            "--checkpoint.interval": "0",
            "--eval.num_samples": "1",
            "--log.interval": "100",
        },
    )
    cfg, _ = parse_config(args)
    train(cfg)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len({r["r"] for r in logged}) > 1  # the curriculum really varied the depth
    counted = count_run(cfg)
    assert counted["flops"]["total_flops"] == pytest.approx(sum(r["flops"] for r in logged), rel=1e-12)
    assert counted["flops"]["tokens"] == logged[-1]["tokens"]
    out = tmp_path / "count.json"
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["flops"]["total_flops"] == counted["flops"]["total_flops"]


def test_counter_cli_bad_input(capsys):
    from utils.param_counter import main

    assert main(["--model_size", "nope"]) == 2
    assert "--model_size" in capsys.readouterr().err


def test_attended_key_fraction_counts_causal_pairs_within_documents():
    one_doc = torch.zeros(2, 8, dtype=torch.long)
    assert attended_key_fraction(one_doc) == pytest.approx(9 / 16)  # (T + 1) / 2T
    halves = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    assert attended_key_fraction(halves) == pytest.approx(2 * (4 * 5 / 2) / 64)
    uneven = torch.tensor([[3, 5, 5, 5, 5, 5, 5, 5]])  # a 1-token document, then a 7-token one
    assert attended_key_fraction(uneven) == pytest.approx((1 + 7 * 8 / 2) / 64)
