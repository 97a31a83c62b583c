"""torch.compile per decoder block rather than over the whole model, one graph per mode of use.

A looped model unrolls its core r times, and r changes from step to step under a recurrence curriculum;
compiling the whole forward would specialise the graph on r and recompile (or hit the cache limit) for
every new depth. Compiling each Block instead gives one graph that every block and every recurrence step
reuses (blocks share their code and inline_inbuilt_nn_modules treats parameters as inputs), so a new r
never recompiles. The loop, the loss and the head stay eager.

A block is run in a few modes: training with grad, the no-grad iterations of truncated backprop, evaluation
(held-out loss), a prompt's prefill into the KV cache and one-token decoding. Each needs its own graph (grad
mode is a global guard; one token is a size dynamo always specialises), and when they share one compiled
function each switch fails a guard and is logged as a recompilation — every step of a run whose sampled r
includes no-grad iterations. So each mode gets its own compiled entry point (gpt-fast's separate prefill and
decode functions): its own code object, hence its own dynamo cache, compiled once. Evaluation entries are
compiled with dynamic sizes from the start, so other prompt lengths and eval batch sizes do not recompile
either (a size of 1 is always specialised: a batch of one row after batches of several recompiles once).

The dispatcher replaces the block's `forward` (an instance attribute); `Module.__call__` stays eager, so
module hooks (FSDP2's all-gathers, activation checkpointing) run outside the graph as with `Module.compile`,
and parameter names, hence checkpoints, are unchanged.

Order with the other wrappers (as torchtitan): activation checkpointing, then compile_model, then FSDP.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from recur.models.lm import DecoderLM


def _block_forward(module: nn.Module, *args, **kwargs):
    return type(module).forward(module, *args, **kwargs)  # the class's forward, not the dispatcher


@cache
def _entry_point(mode: str) -> Callable:
    """A copy of _block_forward under its own code object: dynamo keeps one cache per code object of the
    frame it compiles, so each mode's graphs live apart."""
    code = _block_forward.__code__.replace(co_name=f"block_{mode}", co_qualname=f"block_{mode}")
    return types.FunctionType(code, _block_forward.__globals__, code.co_name)


# Compiled with dynamic sizes: shapes vary from call to call.
EVAL_MODES = ("eval", "eval_grad", "prefill", "decode")


def block_mode(module: nn.Module, x: torch.Tensor, ctx: object) -> str:
    """Which mode a call belongs to."""
    if getattr(ctx, "cache", None) is not None:
        return "decode" if x.shape[1] == 1 else "prefill"
    if not module.training:
        mode = "eval" if not torch.is_grad_enabled() else "eval_grad"
        # Flex attention is compiled with static sizes only (dynamic=False: a new shape is a new static graph):
        # inductor's CPU flex kernel fails to build with dynamic ones (torch 2.13), and packed held-out rows
        # have one shape anyway.
        return mode + "_flex" if getattr(ctx, "block_mask", None) is not None else mode
    return "train" if torch.is_grad_enabled() else "no_grad"


def _mark_dynamic(obj: object, depth: int = 2) -> None:
    """dynamic=True makes only the frame's own tensor arguments dynamic; the tensors inside the attention
    context (rotary tables, masks, the KV slot) would stay static and pin the sequence length. Dims of
    size 1 stay static: they broadcast (a mask shared by all heads), and dynamo specialises 1 anyway."""
    for value in vars(obj).values() if hasattr(obj, "__dataclass_fields__") else ():
        if isinstance(value, torch.Tensor):
            for dim, size in enumerate(value.shape):
                if size > 1:
                    torch._dynamo.maybe_mark_dynamic(value, dim)
        elif depth > 1:
            _mark_dynamic(value, depth - 1)


class ModeCompiledForward:
    """A block's forward, dispatched (eagerly) to the compiled entry point of its mode, made on first use."""

    def __init__(self, module: nn.Module, compile_kwargs: dict):
        self.module, self.compile_kwargs, self.entries = module, compile_kwargs, {}

    def __call__(self, x: torch.Tensor, ctx: object, *args, **kwargs) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced as part of a whole-model graph (WholeTrainingForward)
            return _block_forward(self.module, x, ctx, *args, **kwargs)
        # One entry per mode and input dtype: under autocast a looped model's prelude gets fp32 embeddings and
        # its core the adapter's bf16 output (two graphs, not a recompile).
        mode = block_mode(self.module, x, ctx)
        entry = self.entries.get((mode, x.dtype))
        if entry is None:
            options = dict(self.compile_kwargs)
            if mode.endswith("_flex"):
                options.setdefault("dynamic", False)
            elif mode in EVAL_MODES:
                options.setdefault("dynamic", True)
            name = f"{mode}_{str(x.dtype).removeprefix('torch.')}"
            entry = self.entries[mode, x.dtype] = torch.compile(_entry_point(name), **options)
        if mode in EVAL_MODES:
            _mark_dynamic(ctx)
        return entry(self.module, x, ctx, *args, **kwargs)


def _model_forward(model: nn.Module, *args, **kwargs):
    return type(model).forward(model, *args, **kwargs)


class WholeTrainingForward:
    """A model's forward whose training calls (train mode, grad enabled) run one compiled graph of the whole
    model — embeddings, rotary tables, blocks, final norm, head and loss, as nanoGPT compiles its GPT — and
    whose other calls (evaluation, generation) take the eager forward with its per-mode compiled blocks."""

    def __init__(self, model: nn.Module, compile_kwargs: dict):
        self.model, self.compiled = model, torch.compile(_model_forward, **compile_kwargs)

    def __call__(self, *args, **kwargs):
        if self.model.training and torch.is_grad_enabled():
            return self.compiled(self.model, *args, **kwargs)
        return _model_forward(self.model, *args, **kwargs)


def compile_model(model: DecoderLM, whole: bool = False, **compile_kwargs) -> DecoderLM:
    """Compile every decoder block of the model's block lists in place, one entry point per mode (kwargs
    go to torch.compile); returns the model. `whole`: a model that takes no depth (`uses_depth` False: its graph
    cannot change, so one graph serves every training step) also compiles its training forward whole. Only for
    models that no wrapper hooks into per block (no FSDP, no activation checkpointing): the whole graph
    would run their hooks inside it."""
    for entry in model.block_lists():
        for block in entry.blocks:
            block.forward = ModeCompiledForward(block, compile_kwargs)
    if whole and not model.uses_depth:  # thought-stream models loop without a looped block list
        model.forward = WholeTrainingForward(model, compile_kwargs)
    return model
