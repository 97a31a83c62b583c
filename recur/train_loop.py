"""The training loop, top to bottom: data, model, optimizer, resume, then steps until done or preempted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from recur.checkpoint import Checkpointer, read_trainer_state, seed_everything, write_json_atomic
from recur.cli_common import one_line
from recur.config import TrainConfig
from recur.data.curriculum import SplitCurriculumConfig, build_phased_loader
from recur.data.generated import generate_once, task_recipe
from recur.data.loader import open_rank_loader, split_batch
from recur.data.packing import pack_dataset
from recur.data.tokenizer import load_tokenizer
from recur.data.validate import read_manifest
from recur.eval.during_training import evaluate_during_training
from recur.flops import count_params, flops_per_token
from recur.metrics import MetricsLogger, device_peak_tflops, read_metrics
from recur.models import create_model
from recur.models.attention import select_backend
from recur.models.lm import NoiseKey
from recur.optim import build_optimizer, lr_at, set_lr
from recur.parallel.backend import all_reduce_sum, build_backend, resolve_backend
from recur.parallel.env import DistEnv, init_distributed, shutdown_distributed
from recur.plots import plot_loss
from recur.preemption import PreemptionFlag
from recur.recurrence import RecurrenceSampler


class NonFiniteLossError(ValueError):
    """A non-finite loss ended the run (--dist.nan_policy stop, or --dist.max_skipped_steps skipped steps in a
    row under skip); the diverged state is not checkpointed."""


def prepare_data(cfg: TrainConfig, run_dir: Path, env: DistEnv, resuming: bool) -> Path:
    """The packed training data: --data.path, or the built-in algorithmic mix generated into the run (with a
    held-out set next to it, which evaluation finds by itself), rebuilt when its recorded settings differ
    from the config's (refused when `resuming`: see generate_once)."""
    if cfg.data.path is not None:
        path = Path(cfg.data.path)
        if not path.is_dir():
            raise FileNotFoundError(f"--data.path: data directory {path} does not exist")
        return path
    train_dir, val_dir = run_dir / "data" / "train", run_dir / "data" / "val"
    recipe = task_recipe(cfg.data)
    if env.is_main:
        for out, num_docs, seed in ((train_dir, cfg.data.num_docs, cfg.data.seed),
                                    (val_dir, max(256, cfg.data.num_docs // 50), cfg.data.seed + 1)):
            build = partial(pack_dataset, out, tokenizer=cfg.data.tokenizer, seq_len=cfg.data.seq_len,
                            tasks=cfg.data.tasks, num_docs=num_docs, seed=seed, packing="bfd",
                            mask_non_assistant=True, overwrite=True, recipe=recipe)
            generate_once(out, recipe, build, resuming)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return train_dir


# Settings a resumed run must share with the run that wrote its checkpoints: they fix the lr / r̄ / k
# schedules and the data (its generation and order), so a change would silently train a different run under
# the same step numbers.
RESUME_INVARIANTS = ("steps", "seed", "data.path", "data.tokenizer", "data.tasks", "data.num_docs", "data.seq_len",
                     "data.seed", "data.text_docs", "data.global_batch_size", "optim.schedule", "recurrence")
# What a run leaves in its directory from its start on (train.py removes the directory of a run that fails
# before its first step); any of them means the --run_name is taken.
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")


def _lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = (config or {}).get(key)
    return config


def check_new_run(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a new run (no --checkpoint.resume) in the directory of an existing one: its checkpoints would sit
    beside the old run's (eval_hub.py would score the old one), its evaluations would be appended to the old
    eval.jsonl, and its config.yaml and metrics.jsonl would replace the old run's."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found:
        raise ValueError(f"--run_name {cfg.run_name}: {run_dir} already holds a run ({', '.join(found)}); "
                         "continue it with --checkpoint.resume auto or choose a new --run_name")


def check_no_newer_checkpoints(checkpointer: Checkpointer, checkpoint: Path, saved_step: int) -> None:
    """Refuse resuming an older checkpoint of a run that has newer ones: training on would save over them."""
    newer = checkpointer.newer_than(saved_step)
    if newer:
        raise ValueError(f"--checkpoint.resume: {checkpoint} is at step {saved_step} but {checkpointer.root} holds "
                         f"newer checkpoints ({', '.join(p.name for p in newer)}) that resuming would overwrite; "
                         "move them elsewhere first or resume the newest (--checkpoint.resume auto)")


def resume_point(cfg: TrainConfig, run_dir: Path, checkpointer: Checkpointer) -> tuple[Path | None, int]:
    """(checkpoint to resume from, its step), or (None, 0) for a start from scratch, after refusing what would
    mix runs: a new run in an existing run's directory, a resume whose settings differ from the run's, an
    older checkpoint than the run's newest. Only reads: every refusal comes before anything is written."""
    if cfg.checkpoint.resume == "none":
        check_new_run(cfg, run_dir)
        return None, 0
    checkpoint = checkpointer.latest() if cfg.checkpoint.resume == "auto" else Path(cfg.checkpoint.resume)
    if checkpoint is None:  # auto, and the run has no checkpoint yet: a start from scratch
        return None, 0
    saved_step = read_trainer_state(checkpoint)["step"]
    check_resumable(cfg, run_dir, checkpoint, saved_step)
    check_no_newer_checkpoints(checkpointer, checkpoint, saved_step)
    return checkpoint, saved_step


def _already_complete(cfg: TrainConfig, run_dir: Path, checkpoint: Path | None, saved_step: int,
                      env: DistEnv) -> bool:
    """True, and says so, when the resumed run has finished: its checkpoint is at --steps and summary.json is
    written. Then nothing is rewritten: not the checkpoint, config.yaml or the evaluation. (A run stopped at
    --steps before its summary, e.g. during the final evaluation, resumes to finish it and saves nothing.)"""
    if checkpoint is None or saved_step != cfg.steps or not (run_dir / "summary.json").exists():
        return False
    if env.is_main:
        print(f"[done] {run_dir} is already complete at step {saved_step} ({checkpoint.name}, summary.json); "
              "nothing to do", file=sys.stderr)
    return True


def check_resumable(cfg: TrainConfig, run_dir: Path, checkpoint: Path, saved_step: int) -> None:
    """Refuse, before anything is written, a resume that would mix runs: a checkpoint past --steps (its weights
    would be saved again under a smaller step number), or a run directory whose recorded config.yaml differs
    in a setting of RESUME_INVARIANTS."""
    if saved_step > cfg.steps:
        raise ValueError(f"--checkpoint.resume: {checkpoint} is at step {saved_step}, past --steps {cfg.steps}; "
                         "resume with the run's own --steps (use --stop_at to end it early)")
    previous = run_dir / "config.yaml"
    if not previous.is_file():
        return
    import yaml

    old, new = yaml.safe_load(previous.read_text()) or {}, json.loads(json.dumps(asdict(cfg)))
    changed = [f"--{key} {_lookup(old, key)!r} -> {_lookup(new, key)!r}" for key in RESUME_INVARIANTS
               if _lookup(old, key) != _lookup(new, key)]
    if changed:
        raise ValueError(f"--checkpoint.resume: {run_dir} was trained with other settings ({'; '.join(changed)}); "
                         "resume with the recorded ones (config.yaml) or start a new --run_name")


def _compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 (under autocast) for --dtype bf16, or auto on CUDA; fp32 otherwise."""
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else torch.float32


def _autocast(cfg: TrainConfig, device: torch.device):
    if _compute_dtype(cfg, device) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch_to(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, loss mask, doc_ids) on `device`; doc_ids is None when every input row is one
    document, so attention runs as plain causal SDPA (flash/cuDNN) instead of a document-masked kernel.
    Decided on the host copy before the transfer: no device sync."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["loss_mask"].to(device, non_blocking=True)
    docs = batch["doc_ids"][:, :-1]
    docs = docs.to(device, non_blocking=True) if bool(docs.any()) else None
    return ids[:, :-1], ids[:, 1:], mask[:, 1:], docs


def build_data(cfg: TrainConfig, run_dir: Path, env: DistEnv, resuming: bool):
    """(loader, train dataset directory, rows per rank, rows per micro-batch, micro-batches per step);
    `resuming`: a checkpoint trained on the run's generated data, which must not change under it."""
    if cfg.data.alg_tokens:
        row_len = cfg.data.seq_len + 1
        split = SplitCurriculumConfig(alg_tokens=cfg.data.alg_tokens,
                                      total_tokens=cfg.steps * cfg.data.global_batch_size * row_len,
                                      alg_tasks=cfg.data.tasks, text_path=cfg.data.text_path)
        loader = build_phased_loader(cfg, run_dir, env, split, resuming)
        rank_rows = cfg.data.global_batch_size // env.world_size
        micro = cfg.data.micro_batch_size or rank_rows
        return loader, run_dir / "data" / "alg", rank_rows, micro, loader.micro_batches_per_step
    train_path = prepare_data(cfg, run_dir, env, resuming)
    dataset, loader = open_rank_loader(train_path, cfg.data, env)
    return loader, train_path, dataset.rank_batch_size, dataset.micro_batch_size, dataset.micro_batches_per_step


def build_model(cfg: TrainConfig, env: DistEnv, seq_len: int, micro_rows: int):
    """The model of --model.* (with --init_from the parser filled it from the saved model's config)."""
    model_cfg = cfg.model.resolved()
    if env.device.type == "cuda" and model_cfg.attn_backend == "auto":
        # Time the kernels once on this run's shape; `auto` then means the fastest correct one, chosen
        # apart for batches of packed documents and for batches whose rows are single documents.
        for doc_masking in (True, False):
            name, timings = select_backend(env.device, micro_rows, min(seq_len, 8192), model_cfg.n_heads,
                                           model_cfg.n_kv_heads, model_cfg.head_dim, doc_masking=doc_masking,
                                           dtype=_compute_dtype(cfg, env.device))
            if env.is_main:
                times = ", ".join(f"{k} {v['seconds'] * 1e3:.2f}ms" for k, v in timings.items() if v["seconds"])
                kind = "packed documents" if doc_masking else "one document per row"
                print(f"[attention] auto -> {name} for {kind} ({times})", file=sys.stderr)
    return model_cfg, create_model(model_cfg).to(env.device)


def _evaluate(model, tokenizer, cfg: TrainConfig, step: int, run_dir: Path, env: DistEnv,
              logger: MetricsLogger) -> dict:
    """Every rank evaluates (a sharded model needs all ranks in each forward); the main rank records."""
    record = evaluate_during_training(model, tokenizer, cfg, step, run_dir, write=env.is_main)
    logger.log_eval(step, record["metrics"])
    return record


def train(cfg: TrainConfig, env: DistEnv | None = None, config_yaml: str | None = None) -> dict:
    """Run (or resume) training; under torchrun/srun every process calls this."""
    env = env or init_distributed(cfg.device, cfg.dist.timeout_minutes, cfg.dist.master_port,
                                  always=cfg.dist.backend not in ("auto", "none"))
    run_dir = Path(cfg.out_dir) / cfg.run_name
    fresh = not run_dir.exists()
    try:
        return _train(cfg, env, config_yaml, run_dir)
    except BaseException as error:
        if fresh and env.is_main and not (run_dir / "metrics.jsonl").exists():
            # Failed before its first step: leave no half-made run directory (config.yaml, generated data).
            shutil.rmtree(run_dir, ignore_errors=True)
        if not env.distributed:
            raise
        _abort_job(error, env)
    finally:
        shutdown_distributed()


def _abort_job(error: BaseException, env: DistEnv) -> None:
    """A failing rank must not leave the others waiting in a collective until the timeout: report, then
    exit at once (no Python cleanup that could block on communication); torchrun/srun end the others."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        print(f"train.py: error (rank {env.rank}): {one_line(error)}", file=sys.stderr, flush=True)
        os._exit(2)
    print(f"[rank {env.rank}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    os._exit(1)


def _loss_weights(masks: list[torch.Tensor], env: DistEnv) -> tuple[list[float], float]:
    """Per-micro-batch weights turning each micro-batch's mean loss into its share of the global-batch
    mean over *all* target tokens, with the backends' averaging over ranks undone. One process with a
    single micro-batch gets weight exactly 1."""
    counts = [float(m.sum()) for m in masks]
    total = max(all_reduce_sum(torch.tensor([sum(counts)], dtype=torch.float64, device=env.device))[0], 1.0)
    return [c * env.world_size / total for c in counts], total


def _data_checksum(inputs: torch.Tensor) -> torch.Tensor:
    """Order-sensitive fingerprint of the tokens of a batch (summed over ranks it identifies the global batch)."""
    positions = torch.arange(1, inputs.shape[1] + 1, device=inputs.device)
    return (inputs * positions).sum().double()


def _train(cfg: TrainConfig, env: DistEnv, config_yaml: str | None, run_dir: Path) -> dict:
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, env.rank, env.world_size)
    resume_from, saved_step = resume_point(cfg, run_dir, checkpointer)
    if _already_complete(cfg, run_dir, resume_from, saved_step, env):
        return {"steps": cfg.steps, "complete": True}
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank has checked the run directory before the first rank writes to it
    split_batch(cfg.data.global_batch_size, env.world_size, cfg.data.micro_batch_size, "--data.")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP/ZeRO-3 shard local inits)

    # ---- data ----
    loader, train_path, rank_rows, micro_rows, accum = build_data(cfg, run_dir, env, resume_from is not None)
    manifest = read_manifest(train_path)
    data_vocab = manifest["tokenizer"]["vocab_size"]
    if data_vocab > cfg.model.vocab_size:
        raise ValueError(f"--model.vocab_size {cfg.model.vocab_size} is smaller than the vocabulary of "
                         f"{train_path} ({data_vocab})")
    if manifest["seq_len"] > cfg.model.max_seq_len:
        raise ValueError(f"--model.max_seq_len {cfg.model.max_seq_len} is shorter than the data's seq_len "
                         f"{manifest['seq_len']} ({train_path})")
    seq_len = manifest["seq_len"]

    # ---- model, optimizer, parallel backend, schedules ----
    model_cfg, model = build_model(cfg, env, seq_len, micro_rows)
    params = count_params(model)
    backend = build_backend(cfg, model, env, accum, micro_rows, lambda m: build_optimizer(m, cfg.optim))
    optimizer = backend.optimizer
    seed_everything(cfg.seed + env.rank)  # per-rank streams from here on (e.g. dropout)
    sampler = RecurrenceSampler(cfg.recurrence, cfg.steps)
    peak = device_peak_tflops(env.device, cfg.log.peak_tflops)

    # ---- resume ----
    start_step, tokens_seen = 0, 0
    if resume_from is not None:
        state = checkpointer.load(resume_from, backend.checkpoint_state(), asdict(model_cfg))
        loader.load_state_dict(state["loader"])
        start_step, tokens_seen = state["step"], state["tokens"]
        if env.is_main:
            print(f"[resume] {resume_from} at step {start_step} (saved on {state.get('world_size')} ranks, "
                  f"now {env.world_size})", file=sys.stderr)
    elif cfg.init_from:
        from recur.eval.load import load_weights_into

        load_weights_into(backend.raw, cfg.init_from)
        if env.is_main:
            print(f"[init] weights from {cfg.init_from}", file=sys.stderr)
    if env.is_main:
        if config_yaml is not None:
            (run_dir / "config.yaml").write_text(config_yaml)
        print(f"[model] {model_cfg.variant}: {params['total']:,} params "
              f"({params['non_embedding']:,} non-embedding) on {env.device} x {env.world_size} "
              f"({resolve_backend(cfg.dist.backend, env.world_size)})", file=sys.stderr)
    logger = MetricsLogger(run_dir, cfg.steps, cfg.log.interval, cfg.log.wandb_mode, cfg.log.wandb_project,
                           cfg.run_name, asdict(cfg), enabled=env.is_main, resume=resume_from is not None,
                           show_depth=backend.raw.uses_depth)
    logger.truncate_after(start_step)
    tokenizer = load_tokenizer(cfg.data.tokenizer)

    def trainer_state(step: int) -> dict:
        return {"step": step, "tokens": tokens_seen, "loader": loader.state_dict(), "seed": cfg.seed,
                "model_config": asdict(model_cfg), "backend": backend.name}

    def save(step: int) -> None:
        logger.sync()  # the log on disk reaches at least the checkpoint's step
        checkpointer.save(step, backend.checkpoint_state(), trainer_state(step))

    # ---- loop ----
    preempt = PreemptionFlag()
    batches = iter(loader)
    collapse_warned = False
    skipped_in_a_row = 0  # a diverged model skips every step: stop instead of "finishing" on it
    step = start_step
    backend.model.train()
    for step in range(start_step, cfg.steps):
        began = time.perf_counter()
        lr = lr_at(step, cfg.optim.schedule, cfg.steps)
        set_lr(optimizer, lr)
        depth = sampler(step)  # a pure function of the step: the same draw on every rank
        micro_batches = [_batch_to(next(batches), env.device) for _ in range(accum)]
        weights, target_tokens = _loss_weights([mb[2] for mb in micro_batches], env)
        # Kept on the device (no sync per micro-batch): sum of loss x target tokens, and the data fingerprint.
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        checksum = torch.zeros((), dtype=torch.float64, device=env.device)
        step_tokens = 0
        for micro, (inputs, targets, mask, docs) in enumerate(micro_batches):
            # Initial-state noise keyed by (seed, step, global row): world-size invariant.
            noise = NoiseKey(cfg.seed * 1_000_003 + step, env.rank * rank_rows + micro * micro_rows)
            last = micro == accum - 1
            with backend.micro_batch(last):
                with _autocast(cfg, env.device):
                    out = backend.model(inputs, targets=targets, loss_mask=mask,
                                        num_steps=(depth.no_grad_steps, depth.grad_steps), doc_ids=docs,
                                        noise=noise)
                loss = out.loss * weights[micro]
                if out.aux_loss is not None:
                    loss = loss + out.aux_loss / accum
                backend.backward(loss, last_micro_batch=last)
            loss_sum += out.loss.detach().double() * mask.sum()
            checksum += _data_checksum(inputs)
            step_tokens += inputs.numel()
        # One collective carries the global loss, the NaN verdict, the preemption vote and the data checksum,
        # so every rank takes the same decision on the same step.
        total_loss, nonfinite, preempted, checksum = all_reduce_sum(torch.stack([
            loss_sum, (~torch.isfinite(loss_sum)).double(), torch.tensor(float(preempt.raised is not None),
                                                                       dtype=torch.float64, device=env.device),
            checksum]))
        global_loss = total_loss / target_tokens
        skipped_in_a_row = skipped_in_a_row + 1 if nonfinite else 0
        if nonfinite:
            if cfg.dist.nan_policy == "stop":
                _report_nonfinite(run_dir, step, env, "stop")
            if skipped_in_a_row >= cfg.dist.max_skipped_steps:
                _report_nonfinite(run_dir, step, env, f"skip, {skipped_in_a_row} in a row = --dist.max_skipped_steps")
            backend.skip_step()
            grad_norm = float("nan")
            if env.is_main:
                print(f"[nan] step {step}: non-finite loss on {int(nonfinite)} rank(s); step skipped "
                      "(--dist.nan_policy skip)", file=sys.stderr)
        else:
            grad_norm = backend.clip_and_step(cfg.optim.grad_clip)
        backend.zero_grad()
        tokens_seen += step_tokens * env.world_size
        elapsed = time.perf_counter() - began
        flops = flops_per_token(backend.raw, model_cfg, seq_len, depth.no_grad_steps, depth.grad_steps) * step_tokens
        record = {"step": step, "loss": global_loss, "lr": lr, "r": depth.total,
                  "mean_recurrence": depth.mean_recurrence, "k": depth.grad_steps,
                  "backprop_depth": depth.backprop_depth, "tokens": tokens_seen,
                  "tokens_per_s": step_tokens * env.world_size / elapsed, "flops": flops * env.world_size,
                  "mfu": flops / elapsed / (peak * 1e12) if peak else None, "grad_norm": grad_norm,
                  "skipped": bool(nonfinite), "data_checksum": checksum,
                  "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if env.device.type == "cuda" else None,
                  "time": time.time()}
        record.update({f"stat/{k}": float(v) for k, v in out.stats.items()})
        collapse_warned = _warn_collapse(record, env, collapse_warned)
        logger.log(record)
        logger.progress(record, start_step)
        done = step + 1
        if env.is_main and (done % cfg.log.plot_interval == 0 or done == cfg.steps):
            plot_loss(read_metrics(logger.path), run_dir / "loss.png")
        if cfg.eval.interval and done % cfg.eval.interval == 0 and done != cfg.steps:
            _evaluate(backend.raw, tokenizer, cfg, done, run_dir, env, logger)
        if preempted or done == cfg.stop_at:
            save(done)
            if env.is_main:
                reason = f"signal on {int(preempted)} rank(s)" if preempted else f"--stop_at {done}"
                print(f"[preempt] {reason}: checkpointed step {done}, exiting", file=sys.stderr)
            logger.close()
            return {"preempted": True, "step": done}
        if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done != cfg.steps:
            save(done)

    # ---- finish ----
    if cfg.checkpoint.save_final and start_step < cfg.steps:  # else resumed at --steps: that checkpoint is this state
        save(cfg.steps)
    summary = {"steps": cfg.steps, "tokens": tokens_seen, "params": params}
    accuracy = _evaluate(backend.raw, tokenizer, cfg, cfg.steps, run_dir, env, logger)["accuracy"]
    if env.is_main:
        history = read_metrics(logger.path)
        tail = history[-max(1, len(history) // 20):]
        summary.update(final_loss=sum(r["loss"] for r in tail) / len(tail), first_loss=history[0]["loss"],
                       mean_tokens_per_s=sum(r["tokens_per_s"] for r in history) / len(history),
                       wall_time_s=history[-1]["time"] - history[0]["time"], eval=accuracy)
        write_json_atomic(run_dir / "summary.json", summary)
        print(f"[done] final loss {summary['final_loss']:.4f}; accuracy "
              + ", ".join(f"{k} {v:.2f}" for k, v in summary["eval"].items()), file=sys.stderr)
    logger.close()
    return summary


COLLAPSED_SPREAD = 0.01  # token_spread below this: every position holds (nearly) the same state


def _warn_collapse(record: dict, env: DistEnv, warned: bool) -> bool:
    """Say once, loudly, when a looped model's state has rank-collapsed: training goes on (it is not a
    numerical error), but the loss will not improve again without a lower learning rate."""
    spread = record.get("stat/state_spread")
    if warned or spread is None or spread >= COLLAPSED_SPREAD:
        return warned
    if env.is_main:
        print(f"[collapse] step {record['step']}: the recurrent state is the same at every position (spread "
              f"{spread:.4f}); the model predicts one distribution everywhere. Lower --optim.schedule.lr (sandwich "
              "blocks at nano size need <= 3e-4; docs/recurrence.md)", file=sys.stderr, flush=True)
    return True


def _report_nonfinite(run_dir: Path, step: int, env: DistEnv, policy: str) -> None:
    """End the run on a non-finite loss (--dist.nan_policy stop, or too many skipped steps in a row): write the
    report, raise; the diverged state is not checkpointed."""
    report = run_dir / "nan_report.json"
    if env.is_main:
        write_json_atomic(report, {"step": step, "policy": policy, "world_size": env.world_size,
                                   "hint": "resume from the last checkpoint with a lower lr or --dist.nan_policy skip"})
    raise NonFiniteLossError(f"non-finite loss at step {step} (--dist.nan_policy {policy}); report in {report}")
