"""The evaluation hub: one checkpoint, one or all suites, one results_<suite>.json with full provenance."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from recur.atomic import write_text
from recur.data.tasks import TASKS, get_task
from recur.data.tokenizer import Tokenizer, load_tokenizer
from recur.eval.algorithmic import algorithmic_suite
from recur.eval.generate import ExitRule
from recur.eval.load import CheckpointMeta, load_model
from recur.eval.meta import check_depths, decoding_params, default_device, effective_depths, metadata
from recur.eval.needle import DEFAULT_LENGTHS, DEFAULT_POSITIONS, needle_suite
from recur.eval.perplexity import heldout_loss
from recur.eval.plots import plot_results
from recur.eval.schema import SCHEMA_VERSION, validate_results
from recur.models.lm import DecoderLM

HUB_SUITES = ("algorithmic", "longctx", "perplexity", "all")


@dataclass
class HubConfig:
    checkpoint: str
    suite: str = "all"
    tasks: list[str] | None = None  # None = the run's training tasks (generated data), else every task
    num_steps: list[int] | None = None  # None = the model's default_num_steps
    out_dir: str | None = None  # None = <run>/eval
    data: str | None = None  # held-out packed parquet; None = <run>/data/val
    num_samples: int = 64
    seed: int = 0
    ood: bool = True
    difficulties: dict[str, list[int]] | None = None  # per-task difficulty grid overriding train + OOD defaults
    max_new_tokens: int | None = None  # None = reference answer length + 8
    context_lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    needle_positions: list[float] = field(default_factory=lambda: list(DEFAULT_POSITIONS))
    needle_samples: int = 4
    max_rows: int | None = None  # held-out rows scored (None = all)
    batch_size: int = 16
    exit_criterion: str | None = None  # delta | kl: adaptive exit with --num_steps as the maximum
    exit_eps: float = 1e-3
    tokenizer: str | None = None  # None = the run's tokenizer (config.yaml), else byte
    device: str | None = None
    plots: bool = True

    def validate(self) -> None:
        if self.suite not in (*HUB_SUITES, "sweep"):  # "sweep" is set by recur.eval.sweep, not a hub flag
            raise ValueError(f"--suite: unknown suite '{self.suite}'; expected one of {', '.join(HUB_SUITES)}")
        for task in [*(self.tasks or []), *(self.difficulties or {})]:
            get_task(task)
        if self.num_steps is not None:
            self.num_steps = check_depths(self.num_steps)
        for flag in ("num_samples", "needle_samples", "batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def exit_rule(self) -> ExitRule | None:
        return ExitRule(self.exit_criterion, self.exit_eps) if self.exit_criterion else None


def resolve_tokenizer(model: DecoderLM, meta: CheckpointMeta, spec: str | None) -> tuple[Tokenizer, str]:
    spec = spec or meta.tokenizer or "byte"
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"--tokenizer {spec} has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model.cfg.vocab_size}: a tokenizer of another model"
        )
    return tokenizer, spec


def default_data(meta: CheckpointMeta, data: str | None) -> str:
    if data is not None:
        return data
    if meta.run_dir is not None and (Path(meta.run_dir) / "data" / "val").is_dir():
        return str(Path(meta.run_dir) / "data" / "val")
    raise ValueError("--data: no held-out dataset given and the checkpoint's run has no data/val/")


def default_out_dir(meta: CheckpointMeta, out_dir: str | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if meta.run_dir is not None:
        return Path(meta.run_dir) / "eval"
    if meta.kind == "hf":  # a model directory keeps its own results, so compare_runs.py reads it like a run
        model_dir = Path(meta.path)
        return (model_dir if model_dir.is_dir() else model_dir.parent) / "eval"
    raise ValueError("--out_dir is required when the checkpoint does not live in a run directory")


def write_results(results: dict, path: Path) -> None:
    """Validate, then write atomically (temp name + rename)."""
    validate_results(results, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(results, indent=2))


def evaluate_model(
    model: DecoderLM,
    meta: CheckpointMeta,
    tokenizer: Tokenizer,
    tokenizer_spec: str,
    cfg: HubConfig,
    suite: str,
    depths: list[int],
) -> dict:
    """The results dict of `suite` ("all" runs the three; "sweep": perplexity + algorithmic)."""
    depths = effective_depths(model, depths)
    exit_rule = cfg.exit_rule()
    rule = asdict(exit_rule) if exit_rule else None
    results = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "metadata": metadata(
            model, meta, tokenizer_spec, cfg.seed, depths, decoding_params(cfg.max_new_tokens, tokenizer.stop_ids, rule)
        ),
    }
    tasks = cfg.tasks or list(TASKS)
    if suite in ("perplexity", "all", "sweep"):
        results["perplexity"] = heldout_loss(model, default_data(meta, cfg.data), depths, cfg.batch_size, cfg.max_rows)
    if suite in ("algorithmic", "all", "sweep"):
        results["algorithmic"] = algorithmic_suite(
            model,
            tokenizer,
            tasks,
            depths,
            cfg.num_samples,
            cfg.seed,
            cfg.ood,
            cfg.max_new_tokens,
            cfg.difficulties,
            exit_rule,
        )
    if suite in ("longctx", "all"):
        results["longctx"] = needle_suite(
            model, tokenizer, depths, cfg.context_lengths, cfg.needle_positions, cfg.needle_samples, cfg.seed, exit_rule
        )
    return results


def with_run_tasks(cfg: HubConfig, meta) -> HubConfig:
    """Without --tasks, score the tasks the run trained on (when it generated its data), else every task."""
    return replace(cfg, tasks=meta.train_tasks) if cfg.tasks is None and meta.train_tasks else cfg


def run_hub(cfg: HubConfig) -> tuple[dict, Path]:
    """Evaluate one checkpoint; returns (results, path of results_<suite>.json)."""
    cfg.validate()
    model, _, meta = load_model(cfg.checkpoint, cfg.device or default_device())
    cfg = with_run_tasks(cfg, meta)
    tokenizer, spec = resolve_tokenizer(model, meta, cfg.tokenizer)
    depths = cfg.num_steps or [model.cfg.default_num_steps if model.uses_depth else 1]
    out_dir = default_out_dir(meta, cfg.out_dir)
    torch.manual_seed(cfg.seed)
    results = evaluate_model(model, meta, tokenizer, spec, cfg, cfg.suite, depths)
    path = out_dir / f"results_{cfg.suite}.json"
    write_results(results, path)
    if cfg.plots:
        plot_results(results, out_dir)
    return results, path
