"""ReLSM's split curriculum (algorithmic data, then language).

`PhasedLoader` reads phase 1 until `alg_tokens` tokens have been consumed, then phase 2 until
`total_tokens`, switching only at optimizer-step boundaries (a step never mixes phases). Tokens are
counted globally (global_batch_size · row_len per step), so every rank switches at the same step. Its
state (phase, tokens, both loaders' positions) resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from recur.data.generated import generate_once, pack_task_data, stories_recipe, task_recipe
from recur.data.loader import open_rank_loader
from recur.data.packing import pack_dataset
from recur.data.tasks import get_task
from recur.data.textgen import write_stories

PHASES = ("algorithmic", "language")


@dataclass
class SplitCurriculumConfig:
    """Proposed `data.*` fields of the trainer (see docs/ladder.md)."""

    alg_tokens: int  # tokens of phase 1 (algorithmic)
    total_tokens: int  # tokens of both phases together
    alg_tasks: list[str] = field(default_factory=lambda: ["parity", "addition", "copy", "reverse", "mod_add"])
    text_path: str | None = None  # packed language dataset; None = generated stories

    def validate(self) -> None:
        if self.alg_tokens < 0:
            raise ValueError(f"--data.alg_tokens must be >= 0, got {self.alg_tokens}")
        if self.total_tokens <= self.alg_tokens:
            raise ValueError(f"--data.total_tokens {self.total_tokens} must exceed --data.alg_tokens {self.alg_tokens}")
        if not self.alg_tasks:
            raise ValueError("--data.alg_tasks is empty; expected at least one task name")
        for task in self.alg_tasks:
            try:
                get_task(task)
            except ValueError as error:
                raise ValueError(f"--data.alg_tasks: {error}") from None
        if self.text_path is not None and not Path(self.text_path).is_dir():
            raise FileNotFoundError(f"--data.text_path: data directory {self.text_path} does not exist")


class PhasedLoader:
    """Loader-like: __iter__ yields micro-batches; state_dict / load_state_dict; micro_batches_per_step."""

    def __init__(
        self, phases: list, micro_batches_per_step: int, tokens_per_step: int, alg_tokens: int, total_tokens: int
    ):
        if len(phases) != 2:
            raise ValueError(f"PhasedLoader: expected 2 phase loaders, got {len(phases)}")
        self.phases = phases
        self.micro_batches_per_step = micro_batches_per_step
        self.tokens_per_step = tokens_per_step
        self.limits = (alg_tokens, total_tokens)
        self.tokens = 0  # global tokens of completed steps
        self.phase = 0 if alg_tokens > 0 else 1

    @property
    def phase_name(self) -> str:
        return PHASES[self.phase]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        streams: dict[int, Iterator] = {}
        while self.tokens < self.limits[1]:
            if self.phase == 0 and self.tokens >= self.limits[0]:
                self.phase = 1
            stream = streams.setdefault(self.phase, iter(self.phases[self.phase]))
            for micro in range(self.micro_batches_per_step):
                # Counted before the step's last micro-batch leaves, so a state_dict taken after the
                # step (before the next request) already includes it, as the inner loaders do.
                if micro == self.micro_batches_per_step - 1:
                    self.tokens += self.tokens_per_step
                yield next(stream)

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "tokens": self.tokens,
            "limits": list(self.limits),
            "loaders": [loader.state_dict() for loader in self.phases],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["limits"]) != list(self.limits):
            raise ValueError(
                f"cannot resume the split curriculum: saved alg/total tokens {state['limits']} differ "
                f"from --data.alg_tokens/--data.total_tokens {list(self.limits)}"
            )
        self.phase, self.tokens = state["phase"], state["tokens"]
        for loader, saved in zip(self.phases, state["loaders"]):
            loader.load_state_dict(saved)


def build_phased_loader(cfg, run_dir: Path, env, split: SplitCurriculumConfig, resuming: bool) -> PhasedLoader:
    """Pack (on the main rank, when missing or generated with other settings: see generate_once) the
    algorithmic and language datasets under run_dir/data and chain them.

    `cfg` is the TrainConfig (data.* for tokenizer, seq_len, batch sizes, seeds); `env` the DistEnv;
    `resuming`: a checkpoint was trained on the generated data, which must not change under it.
    """
    split.validate()
    data = cfg.data
    alg_dir, lang_dir = (
        run_dir / "data" / "alg",
        Path(split.text_path) if split.text_path else run_dir / "data" / "lang",
    )
    if env.is_main:
        pack = partial(pack_task_data, alg_dir, data, split.alg_tasks, data.num_docs, data.seed)
        generate_once(alg_dir, task_recipe(data), pack, resuming)
        if split.text_path is None:
            generate_once(lang_dir, stories_recipe(data), partial(_pack_stories, run_dir, lang_dir, data), resuming)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    loaders, datasets = [], []
    for path in (alg_dir, lang_dir):
        dataset, loader = open_rank_loader(path, data, env)
        datasets.append(dataset)
        loaders.append(loader)
    if datasets[0].row_len != datasets[1].row_len:
        raise ValueError(
            f"{alg_dir} and {lang_dir} have different row lengths "
            f"({datasets[0].row_len} vs {datasets[1].row_len}); pack both with the same seq_len"
        )
    return PhasedLoader(
        loaders,
        datasets[0].micro_batches_per_step,
        data.global_batch_size * datasets[0].row_len,
        split.alg_tokens,
        split.total_tokens,
    )


def _pack_stories(run_dir: Path, lang_dir: Path, data) -> None:
    corpus = write_stories(run_dir / "data" / "stories.jsonl", data.text_docs, data.seed)
    pack_dataset(
        lang_dir,
        tokenizer=data.tokenizer,
        seq_len=data.seq_len,
        inputs=[str(corpus)],
        packing="concat",
        overwrite=True,
        recipe=stories_recipe(data),
    )
