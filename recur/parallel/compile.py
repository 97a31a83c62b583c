"""torch.compile per decoder block rather than over the whole model.

A looped model unrolls its core r times, and r changes from step to step under a recurrence curriculum;
compiling the whole forward would specialise the graph on r and recompile (or hit the cache limit) for
every new depth. Compiling each Block instead gives one graph that every block and every recurrence step
reuses (blocks share their code and inline_inbuilt_nn_modules treats parameters as inputs), so a new r
never recompiles. The loop, the loss and the head stay eager; `Module.compile` keeps parameter names, so
checkpoints are identical with and without compilation.

Order with the other wrappers (as torchtitan): activation checkpointing, then compile_model, then FSDP.
"""

from __future__ import annotations

from recur.models.lm import DecoderLM


def compile_model(model: DecoderLM, **compile_kwargs) -> DecoderLM:
    """Compile every decoder block of the model's block lists in place (kwargs go to torch.compile);
    returns the model."""
    for entry in model.block_lists():
        for block in entry.blocks:
            block.compile(**compile_kwargs)
    return model
