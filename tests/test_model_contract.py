"""The model contract (recur/models/lm.py): a variant defined and registered outside recur/ is sharded,
checkpointed, compiled, counted and trained by recur's own code, which knows it only through
block_lists / param_parts / flop_terms / supports_adaptive_exit."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from recur.flops import count_params, flops_per_token
from recur.models import ModelConfig, create_model, register_variant, unregister_variant
from recur.models.layers import AttentionContext, Block
from recur.models.lm import (
    BlockList,
    DecoderLM,
    ModelOutput,
    NoiseKey,
    NumSteps,
    attention_flops_per_layer,
    loop_flop_terms,
    param_count,
)
from recur.models.looped import split_steps


class TwoStackLM(DecoderLM):
    """Two block lists: `lower` runs once, then `upper` is iterated r = n + k times (the first n without grad)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        half = cfg.n_layers // 2
        self.lower = nn.ModuleList(Block(cfg) for _ in range(half))
        self.upper = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers - half))
        self.init_weights()

    def effective_depth(self) -> int:
        return len(self.lower) + len(self.upper) * self.cfg.default_num_steps

    def trunk(
        self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, noise: NoiseKey | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        no_grad_steps, grad_steps = split_steps(num_steps, self.cfg.default_num_steps)
        h = self.run_blocks(self.lower, x, ctx, "lower")
        with torch.no_grad():
            for step in range(no_grad_steps):
                h = self.run_blocks(self.upper, h, ctx, ("upper", step))
        for step in range(no_grad_steps, no_grad_steps + grad_steps):
            h = self.run_blocks(self.upper, h, ctx, ("upper", step))
        return h, ModelOutput(stats={"num_steps": no_grad_steps + grad_steps})

    def block_lists(self) -> list[BlockList]:
        return [BlockList("lower", self.lower), BlockList("upper", self.upper, looped=True, before_head=True)]

    def param_parts(self) -> dict[str, nn.Module | None]:
        return {"lower": self.lower, "upper": self.upper}

    def flop_terms(self, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1) -> dict[str, float]:
        fixed = param_count(self.lower) + self.lm_head.weight.numel()
        return loop_flop_terms(
            fixed,
            param_count(self.upper),
            len(self.lower),
            len(self.upper),
            attention_flops_per_layer(self.cfg, seq_len),
            no_grad_steps,
            grad_steps,
        )


@pytest.fixture
def two_stack():
    register_variant("two_stack", TwoStackLM)
    yield ModelConfig(variant="two_stack", vocab_size=64, d_model=32, n_heads=2, n_layers=4, max_seq_len=32)
    unregister_variant("two_stack")


def _expected_flops(model: TwoStackLM, seq_len: int, n: int, k: int) -> int:
    """The variant's cost by hand: lower + head once with grad, upper n times without and k with."""
    fixed = param_count(model.lower) + model.lm_head.weight.numel()
    loop = param_count(model.upper)
    attn = 4 * seq_len * model.cfg.n_heads * model.cfg.head_dim
    return (
        6 * (fixed + k * loop)
        + 2 * n * loop
        + attn * (3 * (len(model.lower) + k * len(model.upper)) + n * len(model.upper))
    )


def test_registration_is_scoped_and_checked(two_stack):
    model = create_model(two_stack)
    assert type(model) is TwoStackLM and model.cfg.n_layers == 4
    with pytest.raises(ValueError, match="already exists"):
        register_variant("two_stack", TwoStackLM)
    with pytest.raises(ValueError, match="already exists"):
        register_variant("recurrent", TwoStackLM)
    with pytest.raises(TypeError, match="not a DecoderLM"):
        register_variant("plain", nn.Linear)


def test_unregistered_variant_is_unknown():
    with pytest.raises(ValueError, match="unknown variant 'two_stack'"):
        ModelConfig(variant="two_stack").resolved()


def test_params_and_flops_come_from_the_contract(two_stack):
    model = create_model(two_stack)
    params = count_params(model)
    assert params["lower"] == param_count(model.lower) and params["upper"] == param_count(model.upper)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    for n, k in ((0, 1), (3, 2), (5, 4)):
        assert flops_per_token(model, model.cfg, 16, n, k) == _expected_flops(model, 16, n, k)


def test_activation_checkpointing_and_compile_find_its_blocks(two_stack):
    from recur.parallel.compile import ModeCompiledForward, compile_model
    from recur.parallel.fsdp import apply_activation_checkpointing

    plain, wrapped = create_model(two_stack).train(), create_model(two_stack).train()
    wrapped.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(wrapped)
    compile_model(wrapped, backend="eager")
    blocks = [*wrapped.lower, *wrapped.upper]
    assert all(isinstance(block.forward, ModeCompiledForward) for block in blocks)  # every block of both lists
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, 64, (2, 12))
    for model in (plain, wrapped):
        model(ids, targets=ids, num_steps=(1, 2)).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_cached_decoding_and_no_adaptive_exit(two_stack):
    from recur.eval.generate import ExitRule, generate

    model = create_model(two_stack).eval()
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    cached = generate(model, prompts, 6, set(), num_steps=3).tokens
    assert cached == generate(model, prompts, 6, set(), num_steps=3, use_cache=False).tokens
    with pytest.raises(ValueError, match="adaptive exit needs a looped model"):
        generate(model, prompts, 2, set(), exit_rule=ExitRule("delta", 0.1))


def test_trains_through_the_public_api_with_fsdp(two_stack, tmp_path, capfd):
    """A few steps of recur's trainer on a 1-rank FSDP group with activation checkpointing: finite losses,
    and the logged FLOPs are the variant's own flop_terms at each step's (n, k)."""
    from train_helpers import tiny_args

    from recur.cli import parse_config
    from recur.data.packing import pack_dataset
    from recur.train_loop import train

    data = tmp_path / "data"
    pack_dataset(
        data, tokenizer="byte", seq_len=48, tasks=["copy"], num_docs=40, seed=0, packing="bfd", mask_non_assistant=True
    )
    run_dir = tmp_path / "runs" / "two_stack"
    args = tiny_args(
        run_dir,
        data,
        steps=4,
        **{
            "--model.variant": "two_stack",
            "--model.d_model": "32",
            "--model.n_heads": "2",
            "--model.n_layers": "4",
            "--model.vocab_size": "264",
            "--model.max_seq_len": "64",
            "--data.global_batch_size": "2",
            "--checkpoint.interval": "0",
            "--checkpoint.save_final": "false",
            "--eval.num_samples": "1",
            "--log.interval": "100",
            "--optim.schedule.warmup_steps": "1",
            "--dist.backend": "fsdp",
            "--dist.activation_checkpointing": "true",
        },
    )
    cfg, _ = parse_config(args)
    train(cfg)
    assert "two_stack:" in capfd.readouterr().err.split("(fsdp)")[0]  # "[model] two_stack: ... (fsdp)"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    reference, step_tokens = create_model(cfg.model), logged[0]["tokens"]
    for record in logged:
        assert record["tokens"] == step_tokens * (record["step"] + 1)
        n, k = record["r"] - record["k"], record["k"]
        assert record["flops"] == _expected_flops(reference, 48, n, k) * step_tokens
