"""The training loop: a Trainer that takes one optimizer step at a time (`train_step`) and then decides what
the step calls for (`after_step`: log, plot, evaluate, checkpoint, stop), and `train`, which checks the run
directory, builds the run (recur/train_setup.py), resumes it and trains until done or preempted."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from recur.checkpoint import Checkpointer, SavePolicy, write_json_atomic
from recur.cli_common import one_line
from recur.config import TrainConfig
from recur.data.loader import split_batch
from recur.data.tokenizer import Tokenizer, load_tokenizer
from recur.eval.during_training import evaluate_during_training
from recur.flops import attended_key_fraction, flop_terms, training_flops
from recur.metrics import MetricsLogger, device_peak_tflops, measured_matmul_tflops, read_metrics
from recur.models.lm import ModelOutput, NoiseKey
from recur.optim import lr_at, set_lr
from recur.parallel.backend import all_reduce_sum, resolve_backend
from recur.parallel.env import DistEnv, init_distributed, shutdown_distributed
from recur.plots import plot_loss
from recur.preemption import PreemptionFlag
from recur.recurrence import RecurrenceSampler, StepDepth
from recur.run_dir import RunDir
from recur.train_setup import TrainSetup, already_complete, build, compute_dtype, resume_point


class NonFiniteLossError(ValueError):
    """A non-finite loss ended the run (--dist.nan_policy stop, or --dist.max_skipped_steps skipped steps in a
    row under skip); the diverged state is not checkpointed."""


def _autocast(cfg: TrainConfig, device: torch.device):
    if compute_dtype(cfg, device) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch_to(
    batch: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, loss mask, doc_ids) on `device`; doc_ids is None when every input row is one
    document, so attention runs as plain causal SDPA (flash/cuDNN) instead of a document-masked kernel.
    Decided on the host copy before the transfer: no device sync."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["loss_mask"].to(device, non_blocking=True)
    docs = batch["doc_ids"][:, :-1]
    docs = docs.to(device, non_blocking=True) if bool(docs.any()) else None
    return ids[:, :-1], ids[:, 1:], mask[:, 1:], docs


def train(cfg: TrainConfig, env: DistEnv | None = None, config_yaml: str | None = None) -> dict:
    """Run (or resume) training; under torchrun/srun every process calls this."""
    env = env or init_distributed(
        cfg.device, cfg.dist.timeout_minutes, cfg.dist.master_port, always=cfg.dist.backend not in ("auto", "none")
    )
    run = RunDir(Path(cfg.out_dir) / cfg.run_name)
    fresh = not run.root.exists()
    try:
        return _train(cfg, env, config_yaml, run)
    except BaseException as error:
        if fresh and env.is_main and not run.metrics.exists():
            # Failed before its first step: leave no half-made run directory (config.yaml, generated data).
            shutil.rmtree(run.root, ignore_errors=True)
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


def _train(cfg: TrainConfig, env: DistEnv, config_yaml: str | None, run: RunDir) -> dict:
    """`train` inside its cleanup: refuse what would mix runs (before anything is written), build, resume
    or initialise, record config.yaml, train."""
    checkpointer = Checkpointer(run.checkpoints, cfg.checkpoint.keep, env.rank, env.world_size)
    resume_from, saved_step = resume_point(cfg, run, checkpointer)
    if already_complete(cfg, run, resume_from, saved_step, env):
        return {"steps": cfg.steps, "complete": True}
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank has checked the run directory before the first rank writes to it
    split_batch(cfg.data.global_batch_size, env.world_size, cfg.data.micro_batch_size, "--data.")
    run.root.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, env, run, checkpointer, build(cfg, run, env, resume_from is not None))
    if resume_from is not None:
        trainer.resume(resume_from)
    elif cfg.init_from:
        trainer.init_weights(cfg.init_from)
    if env.is_main:
        if config_yaml is not None:
            run.config.write_text(config_yaml)
        params = trainer.params
        print(
            f"[model] {trainer.model_cfg.variant}: {params['total']:,} params "
            f"({params['non_embedding']:,} non-embedding) on {env.device} x {env.world_size} "
            f"({resolve_backend(cfg.dist.backend, env.world_size)})",
            file=sys.stderr,
        )
    return trainer.fit(resumed=resume_from is not None)


class Trainer:
    """One run in training: the built data, model and backend, the position in the run (`step`, `tokens`:
    what `state_dict` checkpoints besides the backend's model and optimizer), and the decisions taken after
    each step. Every rank holds one and takes the same decisions on the same step."""

    # Opened by `fit`, once a resume has set the step the metrics log is cut at.
    logger: MetricsLogger
    tokenizer: Tokenizer  # for the in-training evaluations
    preempt: PreemptionFlag
    batches: Iterator[dict]

    def __init__(self, cfg: TrainConfig, env: DistEnv, run: RunDir, checkpointer: Checkpointer, setup: TrainSetup):
        self.cfg, self.env, self.run, self.checkpointer = cfg, env, run, checkpointer
        self.data, self.model_cfg, self.backend, self.params = setup.data, setup.model_cfg, setup.backend, setup.params
        self.sampler = RecurrenceSampler(cfg.recurrence, cfg.steps)
        self.peak = device_peak_tflops(env.device, cfg.log.peak_tflops)
        self.measured_peak = None
        if cfg.log.measure_peak:
            dtype = compute_dtype(cfg, env.device)
            self.measured_peak = measured_matmul_tflops(env.device, dtype)
            if env.is_main:
                spec = f", spec sheet {self.peak:,.0f}" if self.peak else ""
                print(
                    f"[device] {env.device}: dense {str(dtype).removeprefix('torch.')} matmul "
                    f"{self.measured_peak:,.2f} TFLOP/s measured{spec}",
                    file=sys.stderr,
                )
        self.saves = SavePolicy(cfg.steps, cfg.checkpoint.interval, cfg.stop_at, cfg.checkpoint.save_final)
        self.step, self.tokens = 0, 0  # optimizer steps taken; tokens trained on, over all ranks
        self.preempted = 0  # ranks that had a preemption signal by the last step's collective
        self.collapse_warned = False
        self.skipped_in_a_row = 0  # a diverged model skips every step: stop instead of "finishing" on it

    def state_dict(self) -> dict:
        """The trainer's part of a checkpoint (trainer_state.json): where the run stands, and what a resume
        checks it against."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "loader": self.data.loader.state_dict(),
            "seed": self.cfg.seed,
            "model_config": asdict(self.model_cfg),
            "backend": self.backend.name,
        }

    def load_state_dict(self, state: dict) -> None:
        self.data.loader.load_state_dict(state["loader"])
        self.step, self.tokens = state["step"], state["tokens"]

    def resume(self, checkpoint: Path) -> None:
        """Restore model, optimizer, RNGs (Checkpointer.load) and the trainer's state from `checkpoint`."""
        state = self.checkpointer.load(checkpoint, self.backend.checkpoint_state(), asdict(self.model_cfg))
        self.load_state_dict(state)
        if self.env.is_main:
            print(
                f"[resume] {checkpoint} at step {self.step} (saved on {state.get('world_size')} ranks, "
                f"now {self.env.world_size})",
                file=sys.stderr,
            )

    def init_weights(self, source: str) -> None:
        """Start from the weights of another run or model (--init_from), with a fresh optimizer and schedule."""
        from recur.eval.load import load_weights_into

        load_weights_into(self.backend.raw, source)
        if self.env.is_main:
            print(f"[init] weights from {source}", file=sys.stderr)

    def save(self) -> None:
        self.logger.sync()  # the log on disk reaches at least the checkpoint's step
        self.checkpointer.save(self.step, self.backend.checkpoint_state(), self.state_dict())

    def fit(self, resumed: bool) -> dict:
        """Steps from the current one to --steps, then the final checkpoint, evaluation and summary; or, on a
        preemption signal or at --stop_at, a checkpoint and {"preempted": True, "step": ...}."""
        cfg = self.cfg
        self.logger = MetricsLogger(
            self.run.root,
            cfg.steps,
            cfg.log.interval,
            cfg.log.wandb_mode,
            cfg.log.wandb_project,
            cfg.run_name,
            asdict(cfg),
            enabled=self.env.is_main,
            resume=resumed,
            show_depth=self.backend.raw.uses_depth,
        )
        self.logger.truncate_after(self.step)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.preempt = PreemptionFlag()
        self.batches = iter(self.data.loader)
        start_step = self.step
        self.backend.model.train()
        for step in range(start_step, cfg.steps):
            record = self.train_step(step)
            stopped = self.after_step(record, start_step)
            if stopped is not None:
                return stopped
        return self.finish(start_step)

    def train_step(self, step: int) -> dict:
        """One optimizer step over the global batch of `step`; returns its metrics record (metrics.jsonl)."""
        cfg, env, backend = self.cfg, self.env, self.backend
        began = time.perf_counter()
        lr = lr_at(step, cfg.optim.schedule, cfg.steps)
        set_lr(backend.optimizer, lr)
        depth = self.sampler(step)  # a pure function of the step: the same draw on every rank
        host = [next(self.batches) for _ in range(self.data.micro_batches)]
        attended = sum(attended_key_fraction(b["doc_ids"][:, :-1]) for b in host) / len(host)  # on the host copy
        micro_batches = [_batch_to(batch, env.device) for batch in host]
        weights, target_tokens = _loss_weights([mb[2] for mb in micro_batches], env)
        loss_sum, checksum, out = self._forward_backward(step, depth, micro_batches, weights)
        step_tokens = sum(inputs.numel() for inputs, *_ in micro_batches)
        # One collective carries the global loss, the NaN verdict, the preemption vote and the data checksum,
        # so every rank takes the same decision on the same step.
        total_loss, nonfinite, preempted, checksum = all_reduce_sum(
            torch.stack(
                [
                    loss_sum,
                    (~torch.isfinite(loss_sum)).double(),
                    torch.tensor(float(self.preempt.raised is not None), dtype=torch.float64, device=env.device),
                    checksum,
                ]
            )
        )
        self.preempted = int(preempted)
        grad_norm = self._optimizer_step(step, nonfinite)
        self.step = step + 1
        self.tokens += step_tokens * env.world_size
        elapsed = time.perf_counter() - began
        terms = flop_terms(backend.raw, self.model_cfg, self.data.seq_len, depth.no_grad_steps, depth.grad_steps)
        flops, flops_attended = (training_flops(terms, share) * step_tokens for share in (1.0, attended))
        record = {
            "step": step,
            "loss": total_loss / target_tokens,
            "lr": lr,
            "r": depth.total,
            "mean_recurrence": depth.mean_recurrence,
            "k": depth.grad_steps,
            "backprop_depth": depth.backprop_depth,
            "tokens": self.tokens,
            "tokens_per_s": step_tokens * env.world_size / elapsed,
            "flops": flops * env.world_size,
            "flops_attended": flops_attended * env.world_size,
            "mfu": flops / elapsed / (self.peak * 1e12) if self.peak else None,
            # Against what the device really does, and counting masked-out attention as not done.
            "mfu_measured": flops_attended / elapsed / (self.measured_peak * 1e12) if self.measured_peak else None,
            "grad_norm": grad_norm,
            "skipped": bool(nonfinite),
            "data_checksum": checksum,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if env.device.type == "cuda" else None,
            "time": time.time(),
        }
        record.update({f"stat/{k}": float(v) for k, v in out.stats.items()})
        return record

    def _forward_backward(
        self, step: int, depth: StepDepth, micro_batches: list[tuple], weights: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor, ModelOutput]:
        """Forward and backward of every micro-batch, gradients synced on the last; returns the sum of loss x
        target tokens and the data fingerprint, both kept on the device (no sync per micro-batch), and the
        last micro-batch's model output (its stats go into the record)."""
        cfg, env, backend, accum = self.cfg, self.env, self.backend, self.data.micro_batches
        rank_rows, micro_rows = self.data.rank_rows, self.data.micro_rows
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        checksum = torch.zeros((), dtype=torch.float64, device=env.device)
        for micro, (inputs, targets, mask, docs) in enumerate(micro_batches):
            # Initial-state noise keyed by (seed, step, global row): world-size invariant.
            noise = NoiseKey(cfg.seed * 1_000_003 + step, env.rank * rank_rows + micro * micro_rows)
            last = micro == accum - 1
            with backend.micro_batch(last):
                with _autocast(cfg, env.device):
                    out = backend.model(
                        inputs,
                        targets=targets,
                        loss_mask=mask,
                        num_steps=(depth.no_grad_steps, depth.grad_steps),
                        doc_ids=docs,
                        noise=noise,
                    )
                loss = out.loss * weights[micro]
                if out.aux_loss is not None:
                    loss = loss + out.aux_loss / accum
                backend.backward(loss, last_micro_batch=last)
            loss_sum += out.loss.detach().double() * mask.sum()
            checksum += _data_checksum(inputs)
        return loss_sum, checksum, out

    def _optimizer_step(self, step: int, nonfinite: float) -> float:
        """Clip and step, or skip the step on a non-finite loss (`nonfinite`: on how many ranks) as
        --dist.nan_policy says; returns the gradient norm (nan when skipped)."""
        cfg, env, backend = self.cfg, self.env, self.backend
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if nonfinite else 0
        if nonfinite:
            if cfg.dist.nan_policy == "stop":
                _report_nonfinite(self.run, step, env, "stop")
            if self.skipped_in_a_row >= cfg.dist.max_skipped_steps:
                _report_nonfinite(
                    self.run, step, env, f"skip, {self.skipped_in_a_row} in a row = --dist.max_skipped_steps"
                )
            backend.skip_step()
            grad_norm = float("nan")
            if env.is_main:
                print(
                    f"[nan] step {step}: non-finite loss on {int(nonfinite)} rank(s); step skipped "
                    "(--dist.nan_policy skip)",
                    file=sys.stderr,
                )
        else:
            grad_norm = backend.clip_and_step(cfg.optim.grad_clip)
        backend.zero_grad()
        return grad_norm

    def after_step(self, record: dict, start_step: int) -> dict | None:
        """What the step just taken calls for: log it, refresh the loss plot, evaluate, checkpoint (as the
        SavePolicy says); returns the run's result when it stops here (preemption, --stop_at), else None."""
        cfg, env, done = self.cfg, self.env, self.step
        self.collapse_warned = _warn_collapse(record, env, self.collapse_warned)
        self.logger.log(record)
        self.logger.progress(record, start_step)
        if env.is_main and (done % cfg.log.plot_interval == 0 or done == cfg.steps):
            plot_loss(read_metrics(self.logger.path), self.run.loss_plot)
        if cfg.eval.interval and done % cfg.eval.interval == 0 and done != cfg.steps:
            self._evaluate()
        reason = self.saves.stop_reason(done, self.preempted)
        if reason is not None:
            self.save()
            if env.is_main:
                print(f"[preempt] {reason}: checkpointed step {done}, exiting", file=sys.stderr)
            self.logger.close()
            return {"preempted": True, "step": done}
        if self.saves.periodic(done):
            self.save()
        return None

    def _evaluate(self) -> dict:
        """Every rank evaluates (a sharded model needs all ranks in each forward); the main rank records."""
        record = evaluate_during_training(
            self.backend.raw, self.tokenizer, self.cfg, self.step, self.run.root, write=self.env.is_main
        )
        self.logger.log_eval(self.step, record["metrics"])
        return record

    def finish(self, start_step: int) -> dict:
        """After the last step: the final checkpoint and evaluation, and summary.json (which marks the run
        complete, so a later resume does nothing)."""
        cfg, env = self.cfg, self.env
        if self.saves.final(start_step):
            self.save()
        summary = {"steps": cfg.steps, "tokens": self.tokens, "params": self.params}
        accuracy = self._evaluate()["accuracy"]
        if env.is_main:
            history = read_metrics(self.logger.path)
            tail = history[-max(1, len(history) // 20) :]
            summary.update(
                final_loss=sum(r["loss"] for r in tail) / len(tail),
                first_loss=history[0]["loss"],
                mean_tokens_per_s=sum(r["tokens_per_s"] for r in history) / len(history),
                wall_time_s=history[-1]["time"] - history[0]["time"],
                eval=accuracy,
            )
            write_json_atomic(self.run.summary, summary)
            print(
                f"[done] final loss {summary['final_loss']:.4f}; accuracy "
                + ", ".join(f"{k} {v:.2f}" for k, v in summary["eval"].items()),
                file=sys.stderr,
            )
        self.logger.close()
        return summary


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


COLLAPSED_SPREAD = 0.01  # token_spread below this: every position holds (nearly) the same state


def _warn_collapse(record: dict, env: DistEnv, warned: bool) -> bool:
    """Say once, loudly, when a looped model's state has rank-collapsed: training goes on (it is not a
    numerical error), but the loss will not improve again without a lower learning rate."""
    spread = record.get("stat/state_spread")
    if warned or spread is None or spread >= COLLAPSED_SPREAD:
        return warned
    if env.is_main:
        print(
            f"[collapse] step {record['step']}: the recurrent state is the same at every position (spread "
            f"{spread:.4f}); the model predicts one distribution everywhere. Lower --optim.schedule.lr (sandwich "
            "blocks at nano size need <= 3e-4; docs/recurrence.md)",
            file=sys.stderr,
            flush=True,
        )
    return True


def _report_nonfinite(run: RunDir, step: int, env: DistEnv, policy: str) -> None:
    """End the run on a non-finite loss (--dist.nan_policy stop, or too many skipped steps in a row): write the
    report, raise; the diverged state is not checkpointed."""
    report = run.nan_report
    if env.is_main:
        write_json_atomic(
            report,
            {
                "step": step,
                "policy": policy,
                "world_size": env.world_size,
                "hint": "resume from the last checkpoint with a lower lr or --dist.nan_policy skip",
            },
        )
    raise NonFiniteLossError(f"non-finite loss at step {step} (--dist.nan_policy {policy}); report in {report}")
