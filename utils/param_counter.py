"""Parameters by component and training FLOPs of a run under its recurrence curriculum.

    python utils/param_counter.py --model_size nano --steps 20000 --recurrence.mean_recurrence 32 \
        --recurrence.mean_schedule 1-sqrt --data.global_batch_size 256 --data.seq_len 1024
    python utils/param_counter.py --config configs/retrofit_two_phase.yaml --init_from models/tinyllama-4-8-4

Takes the trainer's own flags (any train.py flag or --config file), plus:
  --init_from DIR       count the model saved in DIR (an export, conversion, run or checkpoint) instead of --model.*
  --expectation         draws (default): replay the trainer's seeded (n, k) per step, so the total equals
                        the sum of "flops" in metrics.jsonl; analytic: E[n], E[k] of the sampling law
  --json PATH           also write the numbers as JSON
  --presets [exact]     instead: the table of total / non-embedding parameters of every size preset ×
                        variant (millions; exact integers with `--presets exact`), as in docs/ladder.md
FLOPs = 6·D·N₁ + 2·D·N₂ + attention (see recur/flops.py); the model is built on the meta device, so
1B-scale models cost no memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from recur.checkpoint import write_json_atomic
from recur.cli import parse_config
from recur.config import TrainConfig
from recur.data.validate import read_manifest
from recur.eval.load import saved_config
from recur.flops import EXPECTATIONS, count_params, curriculum_flops
from recur.models import create_model
from recur.models.presets import preset_table
from recur.recurrence import RecurrenceSampler

LABELS = {
    "tok_embeddings": "embeddings",
    "core": "recurrent block (core)",
    "lm_head": "lm_head (untied)",
    "norm": "final norm",
}


def count_run(cfg: TrainConfig, init_from: str | None = None, expectation: str = "draws") -> dict:
    """Params by component and curriculum FLOPs of the run that `cfg` describes."""
    model_cfg = saved_config(init_from) if init_from else cfg.model.resolved()
    with torch.device("meta"):
        model = create_model(model_cfg)
    seq_len = read_manifest(Path(cfg.data.path))["seq_len"] if cfg.data.path else cfg.data.seq_len
    sampler = RecurrenceSampler(cfg.recurrence, cfg.steps)
    flops = curriculum_flops(
        model, model_cfg, sampler, seq_len, cfg.data.global_batch_size * seq_len, expectation=expectation
    )
    return {"params": count_params(model), "flops": flops, "seq_len": seq_len, "expectation": expectation}


def format_report(result: dict) -> str:
    lines = [f"{'component':<24}{'params':>16}"]
    lines += [f"{LABELS.get(name, name):<24}{count:>16,}" for name, count in result["params"].items()]
    f = result["flops"]
    lines += [
        "",
        f"steps {f['steps']:,}, tokens {f['tokens']:,} (seq_len {result['seq_len']}), "
        f"mean n {f['mean_no_grad_steps']:.3f}, mean k {f['mean_grad_steps']:.3f} ({result['expectation']})",
    ]
    lines += [f"{name:<24}{f[name]:>16.4e}" for name in ("flops_6DN1", "flops_2DN2", "flops_attention", "total_flops")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--init_from", default=None)
    own.add_argument("--expectation", choices=EXPECTATIONS, default="draws")
    own.add_argument("--json", type=Path, default=None)
    own.add_argument("--presets", nargs="?", const="millions", choices=("millions", "exact"), default=None)
    args, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        return 0
    if args.presets:
        print(preset_table(exact=args.presets == "exact"), end="")
        return 0
    try:
        cfg, _ = parse_config(rest)
        result = count_run(cfg, args.init_from, args.expectation)
    except (ValueError, FileNotFoundError) as err:
        print(f"param_counter: {err}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
