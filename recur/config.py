"""Typed configuration of a training run. `train.py --print_config` prints a complete, reproducible YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from recur.models.config import ModelConfig, flat_fields
from recur.optim.config import LRScheduleConfig, OptimConfig
from recur.parallel.config import DistConfig
from recur.recurrence import RecurrenceConfig

# The embedded default run: tasks a 0.9M-parameter model makes visible progress on within ~4 CPU minutes.
DEFAULT_TASKS = ["successor", "compare", "parity"]
DEFAULT_WARMUP_STEPS = 30  # lr warmup of the default 300-step run


def default_warmup_steps(steps: int) -> int:
    """The warmup a run of `steps` steps gets when none is given: the default run's 30 steps, but never more
    than a tenth of the run, so `--steps 5` trains (with no warmup) instead of failing on a 30-step warmup
    longer than the run. An explicit --optim.schedule.warmup_steps is taken as given."""
    return min(DEFAULT_WARMUP_STEPS, steps // 10)


@dataclass
class DataConfig:
    path: str | None = None  # packed dataset directory; None = generate the built-in algorithmic mix
    val_path: str | None = None  # held-out packed dataset for perplexity (generated alongside when path is None)
    tokenizer: str = "byte"  # tokenizer of generated data and evaluation: "byte" or a local HF directory
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # generated data only
    num_docs: int = 40_000  # generated training documents
    seq_len: int = 128  # generated data only (a packed dataset records its own)
    global_batch_size: int = 32  # rows per optimizer step, over all ranks and micro-batches
    micro_batch_size: int | None = None  # rows per forward on one rank; None = all of the rank's rows
    num_workers: int = 0  # DataLoader workers; pick 0, 1 or a divisor of the micro-batches per step (docs/data.md)
    verify_sha256: bool = False  # before training, check every shard's sha256 against the manifest (reads all data)
    shuffle_window: int = 1  # row groups whose rows are shuffled together, cut at lane ends (memory: a window per lane)
    seed: int = 0
    # ReLSM split curriculum: the first alg_tokens tokens come from the algorithmic data (generated from
    # --data.tasks), the rest from language data (--data.text_path, or generated stories). 0 = off.
    alg_tokens: int = 0
    text_path: str | None = None
    text_docs: int = 20_000


@dataclass
class CheckpointConfig:
    interval: int = 100  # steps between checkpoints (0 = only at the end and on preemption)
    keep: int = 3  # newest complete checkpoints kept
    save_final: bool = True  # checkpoint after the last step (benchmarks turn it off)
    resume: str = "none"  # none | auto (newest complete checkpoint in the run, if any) | a checkpoint path


@dataclass
class LogConfig:
    interval: int = 10  # steps between progress lines (metrics.jsonl gets every step)
    plot_interval: int = 100  # steps between refreshes of loss.png / accuracy.png
    wandb_mode: str = "disabled"  # disabled | online | offline
    wandb_project: str = "recur"
    peak_tflops: float | None = None  # device peak for MFU; None = table lookup by GPU name (no MFU on CPU)
    # Time a dense matmul at start-up: mfu_measured is MFU against it, with masked-out attention not counted.
    measure_peak: bool = True


@dataclass
class EvalConfig:
    interval: int = 0  # steps between in-training evaluations (0 = only at the end)
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    tasks: list[str] | None = None  # algorithmic tasks to score; None = the training tasks
    num_samples: int = 64  # per task and depth
    max_new_tokens: int = 32


@dataclass
class TrainConfig:
    """A training run (nested groups below)."""

    run_name: str = "default"  # the run's directory is out_dir/run_name
    out_dir: str = "runs"
    model_size: str = "tiny"  # preset whose shape fills `model` (explicit --model.* values win)
    variant: str | None = None  # shorthand for --model.variant
    steps: int = 300  # optimizer steps of the whole run
    stop_at: int | None = None  # checkpoint and exit after this step, as on preemption (schedules keep --steps)
    init_from: str | None = None  # weights of a converted/exported model (utils/convert_hf.py) to start from
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    model: ModelConfig = field(default_factory=ModelConfig)
    # The default run ramps r̄ linearly from 1 to 4 over the first 30% of training, backprop depth 4.
    recurrence: RecurrenceConfig = field(
        default_factory=lambda: RecurrenceConfig(
            mean_recurrence=4, backprop_depth=4, mean_schedule="linear", mean_warmup=0.3
        )
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(schedule=LRScheduleConfig(lr=2e-3, warmup_steps=DEFAULT_WARMUP_STEPS))
    )
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def uses_bf16(self, device_type: str) -> bool:
        """bf16 compute (autocast, and DeepSpeed's bf16 mode): --dtype bf16, or auto on CUDA."""
        return self.dtype == "bf16" or (self.dtype == "auto" and device_type == "cuda")


def _check_model_builds(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Build the model on the meta device (no memory, no time): every variant checks its shape in its
    constructor, which would otherwise run only after the data is generated. Returns the parameter shapes."""
    import torch

    from recur.models import create_model

    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in create_model(model).state_dict().items()}


def _check_init_from_shape(model: ModelConfig, init_from: str) -> None:
    """--init_from's weights fix the parameter shapes: a --model.* value that changes them is named here,
    before the data is built (values that leave every shape alone, e.g. rope_theta, are the user's choice)."""
    from recur.eval.load import saved_config

    saved = saved_config(init_from).resolved()
    if _check_model_builds(model) != _check_model_builds(saved):
        ours, theirs = flat_fields(model.resolved()), flat_fields(saved)
        differing = [
            f"--model.{name} {ours[name]} (the model has {value})"
            for name, value in theirs.items()
            if ours[name] != value
        ]
        raise ValueError(
            f"--init_from {init_from}: its weights fix the model's shape; "
            f"{', '.join(differing) or 'the parameter shapes differ'}"
        )


def _check_intervals(cfg: TrainConfig) -> None:
    """Progress and plot intervals are step moduli (0 would crash mid-run); eval/checkpoint 0 means 'at the end'."""
    for flag, value, low in (
        ("--log.interval", cfg.log.interval, 1),
        ("--log.plot_interval", cfg.log.plot_interval, 1),
        ("--eval.interval", cfg.eval.interval, 0),
        ("--checkpoint.interval", cfg.checkpoint.interval, 0),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")


def validate_config(cfg: TrainConfig) -> None:
    """Fail fast, before anything is written, with one message naming the offending flag."""
    from pathlib import Path

    from recur.data.loader import check_settings, split_batch
    from recur.data.tasks import get_task
    from recur.optim.schedules import check_schedule

    cfg.model.resolved()
    if cfg.init_from is not None and not Path(cfg.init_from).is_dir():
        raise FileNotFoundError(f"--init_from: model directory {cfg.init_from} does not exist")
    if cfg.init_from is not None:  # the parser took the saved model's fields as defaults (recur/cli.py)
        _check_init_from_shape(cfg.model, cfg.init_from)
    else:
        _check_model_builds(cfg.model)
    cfg.recurrence.validate()
    cfg.optim.validate()
    cfg.dist.validate()
    if cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")
    check_schedule(cfg.optim.schedule, cfg.steps)
    _check_intervals(cfg)
    split_batch(cfg.data.global_batch_size, 1, cfg.data.micro_batch_size, "--data.")  # world size: at start-up
    check_settings(
        "--data.", seed=cfg.data.seed, shuffle_window=cfg.data.shuffle_window, num_workers=cfg.data.num_workers
    )
    if cfg.stop_at is not None and not 0 < cfg.stop_at < cfg.steps:
        raise ValueError(f"--stop_at {cfg.stop_at} must lie in (0, --steps {cfg.steps})")
    if cfg.data.alg_tokens < 0:
        raise ValueError(f"--data.alg_tokens must be >= 0, got {cfg.data.alg_tokens}")
    if cfg.data.alg_tokens and cfg.data.path is not None:
        raise ValueError(
            "--data.alg_tokens generates its algorithmic phase from --data.tasks; "
            "it cannot be combined with --data.path (use --data.text_path for the language phase)"
        )
    if cfg.data.text_path is not None and not Path(cfg.data.text_path).is_dir():
        raise FileNotFoundError(f"--data.text_path: data directory {cfg.data.text_path} does not exist")
    if cfg.data.path is not None and not Path(cfg.data.path).is_dir():
        raise FileNotFoundError(f"--data.path: data directory {cfg.data.path} does not exist")
    if cfg.data.val_path is not None and not Path(cfg.data.val_path).is_dir():
        raise FileNotFoundError(f"--data.val_path: data directory {cfg.data.val_path} does not exist")
    if cfg.checkpoint.resume not in ("none", "auto") and not Path(cfg.checkpoint.resume).exists():
        raise FileNotFoundError(f"--checkpoint.resume: checkpoint {cfg.checkpoint.resume} does not exist")
    for task in (cfg.data.tasks if cfg.data.path is None else []) + (cfg.eval.tasks or []):
        try:
            get_task(task)
        except ValueError as error:
            raise ValueError(f"--data.tasks / --eval.tasks: {error}") from None
    if any(d < 1 for d in cfg.eval.depths):
        raise ValueError(f"--eval.depths must all be >= 1, got {cfg.eval.depths}")
    if cfg.log.wandb_mode not in ("disabled", "online", "offline"):
        raise ValueError(f"--log.wandb_mode: got '{cfg.log.wandb_mode}'; expected disabled, online or offline")
    if cfg.dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--dtype: got '{cfg.dtype}'; expected auto, fp32 or bf16")
