"""What a run is built from, and what it refuses first: the resume point (refusing a resume or a new start
that would mix two runs in one directory, before anything is written), the training data, the model and
its parallel backend."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from recur.checkpoint import Checkpointer, read_trainer_state, seed_everything
from recur.config import TrainConfig
from recur.data.curriculum import PhasedLoader, SplitCurriculumConfig, build_phased_loader
from recur.data.generated import generate_once, pack_task_data, task_recipe
from recur.data.loader import StatefulDataLoader, open_rank_loader
from recur.data.validate import read_manifest
from recur.flops import count_params
from recur.models import create_model
from recur.models.attention import select_backend
from recur.models.config import ModelConfig
from recur.optim import build_optimizer
from recur.parallel.backend import Backend, build_backend
from recur.parallel.env import DistEnv
from recur.run_dir import RunDir

# Settings a resumed run must share with the run that wrote its checkpoints: they fix the lr / r̄ / k
# schedules and the data (its generation and order), so a change would silently train a different run under
# the same step numbers.
RESUME_INVARIANTS = (
    "steps",
    "seed",
    "data.path",
    "data.tokenizer",
    "data.tasks",
    "data.num_docs",
    "data.seq_len",
    "data.seed",
    "data.text_docs",
    "data.global_batch_size",
    "optim.schedule",
    "recurrence",
)


def _lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = (config or {}).get(key)
    return config


def _with_defaults(recorded: dict, defaults: dict) -> dict:
    """`recorded` with every key it lacks, at any depth, taken from `defaults`."""
    merged = dict(recorded)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged


def check_new_run(cfg: TrainConfig, run: RunDir) -> None:
    """Refuse a new run (no --checkpoint.resume) in the directory of an existing one: its checkpoints would sit
    beside the old run's (eval_hub.py would score the old one), its evaluations would be appended to the old
    eval.jsonl, and its config.yaml and metrics.jsonl would replace the old run's."""
    found = [path.name for path in run.started if path.exists()]
    if found:
        raise ValueError(
            f"--run_name {cfg.run_name}: {run.root} already holds a run ({', '.join(found)}); "
            "continue it with --checkpoint.resume auto or choose a new --run_name"
        )


def check_no_newer_checkpoints(checkpointer: Checkpointer, checkpoint: Path, saved_step: int) -> None:
    """Refuse resuming an older checkpoint of a run that has newer ones: training on would save over them."""
    newer = checkpointer.newer_than(saved_step)
    if newer:
        raise ValueError(
            f"--checkpoint.resume: {checkpoint} is at step {saved_step} but {checkpointer.root} holds "
            f"newer checkpoints ({', '.join(p.name for p in newer)}) that resuming would overwrite; "
            "move them elsewhere first or resume the newest (--checkpoint.resume auto)"
        )


def resume_point(cfg: TrainConfig, run: RunDir, checkpointer: Checkpointer) -> tuple[Path | None, int]:
    """(checkpoint to resume from, its step), or (None, 0) for a start from scratch, after refusing what would
    mix runs: a new run in an existing run's directory, a resume whose settings differ from the run's, an
    older checkpoint than the run's newest. Only reads: every refusal comes before anything is written."""
    if cfg.checkpoint.resume == "none":
        check_new_run(cfg, run)
        return None, 0
    checkpoint = checkpointer.latest() if cfg.checkpoint.resume == "auto" else Path(cfg.checkpoint.resume)
    if checkpoint is None:  # auto, and the run has no checkpoint yet: a start from scratch
        return None, 0
    saved_step = read_trainer_state(checkpoint)["step"]
    check_resumable(cfg, run, checkpoint, saved_step)
    check_no_newer_checkpoints(checkpointer, checkpoint, saved_step)
    return checkpoint, saved_step


def already_complete(cfg: TrainConfig, run: RunDir, checkpoint: Path | None, saved_step: int, env: DistEnv) -> bool:
    """True, and says so, when the resumed run has finished: its checkpoint is at --steps and summary.json is
    written. Then nothing is rewritten: not the checkpoint, config.yaml or the evaluation. (A run stopped at
    --steps before its summary, e.g. during the final evaluation, resumes to finish it and saves nothing.)"""
    if checkpoint is None or saved_step != cfg.steps or not run.summary.exists():
        return False
    if env.is_main:
        print(
            f"[done] {run.root} is already complete at step {saved_step} ({checkpoint.name}, summary.json); "
            "nothing to do",
            file=sys.stderr,
        )
    return True


def check_resumable(cfg: TrainConfig, run: RunDir, checkpoint: Path, saved_step: int) -> None:
    """Refuse, before anything is written, a resume that would mix runs: a checkpoint past --steps (its weights
    would be saved again under a smaller step number), or a run directory whose recorded config.yaml differs
    in a setting of RESUME_INVARIANTS."""
    if saved_step > cfg.steps:
        raise ValueError(
            f"--checkpoint.resume: {checkpoint} is at step {saved_step}, past --steps {cfg.steps}; "
            "resume with the run's own --steps (use --stop_at to end it early)"
        )
    if not run.config.is_file():
        return
    import yaml

    # A field added since the run was recorded is absent from its config.yaml; its default is the behaviour
    # the run trained with (a new knob defaults to the old behaviour), so the comparison fills it in.
    defaults = json.loads(json.dumps(asdict(TrainConfig())))
    old = _with_defaults(yaml.safe_load(run.config.read_text()) or {}, defaults)
    new = json.loads(json.dumps(asdict(cfg)))
    changed = [
        f"--{key} {_lookup(old, key)!r} -> {_lookup(new, key)!r}"
        for key in RESUME_INVARIANTS
        if _lookup(old, key) != _lookup(new, key)
    ]
    if changed:
        raise ValueError(
            f"--checkpoint.resume: {run.root} was trained with other settings ({'; '.join(changed)}); "
            "resume with the recorded ones (config.yaml) or start a new --run_name"
        )


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 (under autocast) for --dtype bf16, or auto on CUDA; fp32 otherwise."""
    return torch.bfloat16 if cfg.uses_bf16(device.type) else torch.float32


def prepare_data(cfg: TrainConfig, run: RunDir, env: DistEnv, resuming: bool) -> Path:
    """The packed training data: --data.path, or the built-in algorithmic mix generated into the run (with a
    held-out set next to it, which evaluation finds by itself), rebuilt when its recorded settings differ
    from the config's (refused when `resuming`: see generate_once)."""
    if cfg.data.path is not None:
        path = Path(cfg.data.path)
        if not path.is_dir():
            raise FileNotFoundError(f"--data.path: data directory {path} does not exist")
        return path
    recipe = task_recipe(cfg.data)
    if env.is_main:
        for out, num_docs, seed in (
            (run.train_data, cfg.data.num_docs, cfg.data.seed),
            (run.val_data, max(256, cfg.data.num_docs // 50), cfg.data.seed + 1),
        ):
            build = partial(pack_task_data, out, cfg.data, cfg.data.tasks, num_docs, seed)
            generate_once(out, recipe, build, resuming)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return run.train_data


@dataclass(frozen=True)
class TrainData:
    """This rank's training data as the step consumes it: `micro_batches` batches of `micro_rows` rows a step,
    `rank_rows` rows in all (the looped models key their initial-state noise by the global row)."""

    loader: StatefulDataLoader | PhasedLoader  # iterable of batches; state_dict()/load_state_dict() for resume
    path: Path  # the packed dataset directory (its manifest names the tokenizer and seq_len)
    rank_rows: int
    micro_rows: int
    micro_batches: int
    seq_len: int


def _data_seq_len(cfg: TrainConfig, path: Path) -> int:
    """The seq_len of the packed data at `path`, after refusing data the model cannot embed or attend over."""
    manifest = read_manifest(path)
    data_vocab = manifest["tokenizer"]["vocab_size"]
    if data_vocab > cfg.model.vocab_size:
        raise ValueError(
            f"--model.vocab_size {cfg.model.vocab_size} is smaller than the vocabulary of {path} ({data_vocab})"
        )
    if manifest["seq_len"] > cfg.model.max_seq_len:
        raise ValueError(
            f"--model.max_seq_len {cfg.model.max_seq_len} is shorter than the data's seq_len "
            f"{manifest['seq_len']} ({path})"
        )
    return manifest["seq_len"]


def build_data(cfg: TrainConfig, run: RunDir, env: DistEnv, resuming: bool) -> TrainData:
    """The run's training data; `resuming`: a checkpoint trained on the run's generated data, which must not
    change under it."""
    if cfg.data.alg_tokens:
        row_len = cfg.data.seq_len + 1
        split = SplitCurriculumConfig(
            alg_tokens=cfg.data.alg_tokens,
            total_tokens=cfg.steps * cfg.data.global_batch_size * row_len,
            alg_tasks=cfg.data.tasks,
            text_path=cfg.data.text_path,
        )
        loader = build_phased_loader(cfg, run.root, env, split, resuming)
        rank_rows = cfg.data.global_batch_size // env.world_size
        micro = cfg.data.micro_batch_size or rank_rows
        return TrainData(
            loader, run.alg_data, rank_rows, micro, loader.micro_batches_per_step, _data_seq_len(cfg, run.alg_data)
        )
    train_path = prepare_data(cfg, run, env, resuming)
    dataset, loader = open_rank_loader(train_path, cfg.data, env)
    return TrainData(
        loader,
        train_path,
        dataset.rank_batch_size,
        dataset.micro_batch_size,
        dataset.micro_batches_per_step,
        _data_seq_len(cfg, train_path),
    )


def build_model(cfg: TrainConfig, env: DistEnv, seq_len: int, micro_rows: int) -> tuple[ModelConfig, torch.nn.Module]:
    """The model of --model.* (with --init_from the parser filled it from the saved model's config)."""
    model_cfg = cfg.model.resolved()
    if env.device.type == "cuda" and model_cfg.attn_backend == "auto":
        # Time the kernels once on this run's shape; `auto` then means the fastest correct one, chosen
        # apart for batches of packed documents and for batches whose rows are single documents.
        for doc_masking in (True, False):
            name, timings = select_backend(
                env.device,
                micro_rows,
                min(seq_len, 8192),
                model_cfg.n_heads,
                model_cfg.n_kv_heads,
                model_cfg.head_dim,
                doc_masking=doc_masking,
                dtype=compute_dtype(cfg, env.device),
            )
            if env.is_main:
                times = ", ".join(f"{k} {v['seconds'] * 1e3:.2f}ms" for k, v in timings.items() if v["seconds"])
                kind = "packed documents" if doc_masking else "one document per row"
                print(f"[attention] auto -> {name} for {kind} ({times})", file=sys.stderr)
    return model_cfg, create_model(model_cfg).to(env.device)


@dataclass(frozen=True)
class TrainSetup:
    """What `build` makes of a config: the data, the model (wrapped in its parallel backend, with the
    optimizer) and the parameter count of the unwrapped model (a sharded one no longer counts right)."""

    data: TrainData
    model_cfg: ModelConfig
    backend: Backend
    params: dict[str, int]


def build(cfg: TrainConfig, run: RunDir, env: DistEnv, resuming: bool) -> TrainSetup:
    """Data, model, optimizer and backend, seeded so that every rank starts from the same weights and then
    draws its own random streams; the RNGs are set as a fresh run's first step finds them (a resume then
    restores the checkpoint's)."""
    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP/ZeRO-3 shard local inits)
    data = build_data(cfg, run, env, resuming)
    model_cfg, model = build_model(cfg, env, data.seq_len, data.micro_rows)
    params = count_params(model)
    backend = build_backend(
        cfg, model, env, data.micro_batches, data.micro_rows, lambda m: build_optimizer(m, cfg.optim)
    )
    seed_everything(cfg.seed + env.rank)  # per-rank streams from here on (e.g. dropout)
    return TrainSetup(data, model_cfg, backend, params)
