"""DeepSpeed ZeRO 1/2/3 behind our trainer: one source of truth for batch, accumulation, clipping, precision.

Users bring their JSON configs (see `configs/deepspeed/`). Values the trainer owns may be "auto" (filled
from our config) or equal to ours; anything else is an error naming both settings, never a silent pick.
The optimizer and lr schedule always come from `--optim.*`: we pass our optimizer object to
`deepspeed.initialize` and set its lr each step, so an "optimizer"/"scheduler" block is rejected.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from recur.checkpoint import DEEPSPEED_DIR

TAG = "state"  # engine.save_checkpoint writes <checkpoint>/deepspeed/state/


def zero_fp32_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of a complete DeepSpeed checkpoint directory (its ZeRO 1/2/3 shards
    consolidated), on CPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(Path(checkpoint) / DEEPSPEED_DIR), tag=TAG)
    return {k: v.detach().float().cpu() for k, v in weights.items()}


def build_deepspeed_config(
    path: str | Path,
    *,
    global_batch_size: int,
    micro_batch_size: int,
    accumulation_steps: int,
    grad_clip: float | None,
    bf16: bool,
) -> dict:
    """Read `path` and fill/verify the trainer-owned keys; raises ValueError naming both sides of a conflict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--dist.deepspeed_config: {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--dist.deepspeed_config: {path} is not valid JSON: {error}") from None
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ValueError(f"{path}: remove the '{key}' block; the optimizer and lr schedule come from --optim.*")
    if config.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ValueError(f"{path}: fp16 is not supported (bf16 on GPU via --dtype, fp32 on CPU)")
    ours = {
        "train_batch_size": (global_batch_size, "--data.global_batch_size"),
        "train_micro_batch_size_per_gpu": (micro_batch_size, "--data.micro_batch_size (rows per forward per rank)"),
        "gradient_accumulation_steps": (accumulation_steps, "--data.global_batch_size / (world size x micro batch)"),
        "gradient_clipping": (float(grad_clip or 0.0), "--optim.grad_clip"),
    }
    for key, (value, flag) in ours.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise ValueError(f'{path}: {key} = {given!r} contradicts {flag} = {value!r}; set it to "auto" or {value!r}')
        config[key] = value
    bf16_given = config.setdefault("bf16", {}).get("enabled", "auto")
    if bf16_given != "auto" and bool(bf16_given) != bf16:
        raise ValueError(
            f"{path}: bf16.enabled = {bf16_given!r} contradicts --dtype/--device (bf16 {'on' if bf16 else 'off'})"
        )
    config["bf16"]["enabled"] = bf16
    stage = config.get("zero_optimization", {}).get("stage")
    if stage not in (1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 1, 2 or 3, got {stage!r}")
    # Our optimizers (AdamW, Muon, ELLISAdam) are plain torch optimizers that ZeRO shards by param group.
    config.setdefault("zero_allow_untested_optimizer", True)
    return config


def initialize_deepspeed(model: nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    """(engine, zero_optimizer) over the already-initialised torch.distributed group."""
    import deepspeed

    if not torch.cuda.is_available():
        # DeepSpeed's CPU accelerator would JIT-compile its shared-memory all-reduce extension (minutes on a
        # cold cache, per machine) before the first collective; CPU runs are for testing and gloo serves them.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
    engine, zero_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, zero_optimizer


class DeepSpeedState:
    """Model + optimizer of a DeepSpeed engine inside our checkpoint directory (`deepspeed/`).

    ZeRO partitions are per rank, so a DeepSpeed checkpoint resumes on the same world size; to change
    size, export it (utils/export_checkpoint.py) and start from the consolidated weights.
    """

    format = "deepspeed"

    def __init__(self, engine) -> None:
        self.engine = engine

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=TAG, save_latest=False)

    def load(self, directory: Path, saved_world_size: int | None) -> None:
        world = self.engine.world_size
        if saved_world_size is not None and saved_world_size != world:
            raise ValueError(
                f"--checkpoint.resume: DeepSpeed checkpoint {directory} was saved on {saved_world_size} "
                f"ranks and this run has {world}; ZeRO partitions do not reshard. Resume on "
                f"{saved_world_size} ranks, or export it with utils/export_checkpoint.py"
            )
        load_path, _ = self.engine.load_checkpoint(
            str(directory / DEEPSPEED_DIR), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise ValueError(f"--checkpoint.resume: DeepSpeed could not load {directory / DEEPSPEED_DIR}")
