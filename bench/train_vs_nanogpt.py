"""recur's own train.py vs karpathy/nanoGPT's own train.py, same synthetic tokens and shape (issue 17).

    python bench/train_vs_nanogpt.py                       # GPU: GPT-2 124M shape, bf16, compile on
    python bench/train_vs_nanogpt.py --smoke               # CPU, tiny shape, compile off (checks the pipeline)

Unlike bench/gpu_perf.py's `nanogpt` benchmark (both models timed inside one process, outside any
trainer), this runs the two products end to end: nanoGPT's train.py (its configurator, poor man's loader,
whole-model compile) and recur's train.py (packed parquet loader, block compile, metrics.jsonl), then
recur's recurrent model at a fixed depth r = 1 and r = 4 (k = r). Tokens/s of each run is the median over
the steps after the warm-up (compile) steps; both trainers sync once per step (nanoGPT with
--log_interval=1 calls loss.item(), recur's train loop reads the loss each step), so the per-step times
compare like for like. Every recur run also logs TORCH_LOGS=recompiles: the count of "Recompiling" lines
shows whether training at a fixed r or the final evaluation (depths 1 and 4) recompiled.

nanoGPT is not vendored: pass --nanogpt_dir, a git-ignored copy of karpathy/nanoGPT (default
third_party/nanoGPT). Results go to bench/results/train_vs_nanogpt.json (written atomically).
"""

from __future__ import annotations

import argparse
import pickle
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.perf_common import environment_line, log
from recur.checkpoint import write_json_atomic
from recur.cli_common import child_env
from recur.data.packing import TokenizedDoc, pack_concat
from recur.data.shard_writer import ShardWriter, build_manifest, finish_dataset, staged_dir

ROOT = Path(__file__).resolve().parents[1]
GPT2_VOCAB = 50257  # tokens are drawn from GPT-2's real vocabulary; both models pad their tables to 50304
PROGRESS_LINE = re.compile(r"^step\s+(\d+)/(\d+) \|")  # train.py's progress line (recur.metrics)
NANOGPT_LINE = re.compile(r"^iter (\d+): loss ([-\d.naif]+), time ([\d.]+)ms, mfu ([-\d.]+)%", re.M)


@dataclass(frozen=True)
class Shape:
    """One model/batch shape, given to both trainers in their own flags."""

    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    batch: int
    vocab: int  # token ids are drawn from [0, vocab)
    model_vocab: int  # embedding rows of both models
    device: str
    compile: bool


FULL = Shape(
    n_layers=12,
    d_model=768,
    n_heads=12,
    seq_len=1024,
    batch=32,
    vocab=GPT2_VOCAB,
    model_vocab=50304,
    device="cuda",
    compile=True,
)
# Three layers: the least a recurrent model takes (prelude, core, coda); the same for every run.
SMOKE = Shape(
    n_layers=3, d_model=64, n_heads=4, seq_len=64, batch=4, vocab=512, model_vocab=512, device="cpu", compile=False
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--nanogpt_dir",
        type=Path,
        default=ROOT / "third_party" / "nanoGPT",
        help="a copy of karpathy/nanoGPT (train.py, configurator.py, model.py); git-ignored",
    )
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, compile off, a few steps")
    p.add_argument("--steps", type=int, default=None, help="steps of each baseline/r=1 run (default 50, smoke 6)")
    p.add_argument("--r4_steps", type=int, default=None, help="steps of the r=4 run (default 30, smoke 6)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the medians (default 10, smoke 2)")
    p.add_argument("--timeout", type=int, default=300, help="seconds each of the four runs may take")
    p.add_argument(
        "--work_dir",
        type=Path,
        default=ROOT / "bench" / "out" / "train_vs_nanogpt",
        help="data, run directories and logs (replaced on every call)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default bench/results/train_vs_nanogpt.json; smoke: in --work_dir)",
    )
    p.add_argument("--no_recompile_log", action="store_true", help="run recur without TORCH_LOGS=recompiles")
    args = p.parse_args(argv)
    args.shape = SMOKE if args.smoke else FULL
    args.steps = args.steps or (6 if args.smoke else 50)
    args.r4_steps = args.r4_steps or (6 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 10)
    args.out = args.out or (
        args.work_dir / "train_vs_nanogpt_smoke.json"
        if args.smoke
        else ROOT / "bench" / "results" / "train_vs_nanogpt.json"
    )
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, what would fail minutes later: one line naming the problem."""
    missing = [
        name
        for name in ("train.py", "configurator.py", "model.py", "config/train_gpt2.py")
        if not (args.nanogpt_dir / name).is_file()
    ]
    if missing:
        raise ValueError(
            f"--nanogpt_dir {args.nanogpt_dir}: not a nanoGPT copy (missing {', '.join(missing)}); "
            "put karpathy/nanoGPT there (git-ignored, e.g. third_party/nanoGPT)"
        )
    if min(args.steps, args.r4_steps) <= args.warmup + 1:
        raise ValueError(
            f"--steps {args.steps} / --r4_steps {args.r4_steps} must exceed --warmup {args.warmup} + 1 "
            "(no timed steps would be left)"
        )
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("no CUDA device: run on the GPU machine, or pass --smoke to check the pipeline on CPU")


# ---------------------------------------------------------------- data
def synthetic_stream(num_tokens: int, vocab: int, seed: int) -> np.ndarray:
    """Uniform random token ids: no tokenizer to ship, and both trainers read the very same numbers."""
    return np.random.default_rng(seed).integers(0, vocab, size=num_tokens, dtype=np.int32)


def write_nanogpt_bin(stream: np.ndarray, path: Path) -> None:
    """nanoGPT's format (data/<dataset>/{train,val}.bin): a flat uint16 memmap it reads random windows from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    memmap = np.memmap(path, dtype=np.uint16, mode="w+", shape=stream.shape)
    memmap[:] = stream
    memmap.flush()


def write_recur_packed(stream: np.ndarray, out: Path, seq_len: int, vocab: int) -> None:
    """recur's packed parquet dataset from the same stream: concat packing cuts it into rows of seq_len + 1
    (one document per row, so train.py uses plain causal attention, as nanoGPT does)."""
    row_len = seq_len + 1
    doc = TokenizedDoc(ids=stream, mask=np.ones(len(stream), dtype=np.uint8))
    tokenizer = {
        "name": "synthetic-uniform",
        "spec": "none",
        "vocab_size": vocab,
        "pad_id": 0,
        "eos_id": 0,
        "bos_id": None,
        "fingerprint": f"synthetic-uniform-{vocab}",
    }
    with staged_dir(out) as work:
        writer = ShardWriter(work, seq_len, rows_per_shard=8192, row_group_size=256)
        for block in pack_concat([doc], row_len, pad_id=0):
            writer.add(block.to_table())
        manifest = build_manifest(
            seq_len=seq_len,
            tokenizer=tokenizer,
            shards=writer.close(),
            num_tokens=len(stream),
            packing={"mode": "concat", "efficiency": 1.0, "mask_non_assistant": False},
            sources=[],
            created_by="bench/train_vs_nanogpt.py",
        )
        finish_dataset(work, manifest)


def write_datasets(work: Path, shape: Shape, train_rows: int, val_rows: int = 64) -> dict[str, Path]:
    """Train and val token streams (seeds 0 and 1), each written in both trainers' formats; a multiple of the
    row length, so recur's rows hold exactly the stream."""
    paths = {
        "nanogpt": work / "nanogpt_data",
        "train": work / "recur_data" / "train",
        "val": work / "recur_data" / "val",
    }
    for split, rows, seed in (("train", train_rows, 0), ("val", val_rows, 1)):
        stream = synthetic_stream(rows * (shape.seq_len + 1), shape.vocab, seed)
        write_nanogpt_bin(stream, paths["nanogpt"] / f"{split}.bin")
        write_recur_packed(stream, paths[split], shape.seq_len, shape.vocab)
    if shape.model_vocab != 50304:  # nanoGPT reads a smaller vocabulary from meta.pkl (else GPT-2's padded 50304)
        with open(paths["nanogpt"] / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": shape.model_vocab}, f)
    return paths


# ---------------------------------------------------------------- commands
def nanogpt_command(shape: Shape, steps: int, data_dir: Path, out_dir: Path) -> list[str]:
    """nanoGPT's train.py with its GPT-2 config, overridden through its configurator (`--key=value`).
    max_iters counts from 0 inclusive, so steps - 1 gives `steps` iterations; the one evaluation at iter 0
    (nanoGPT always evaluates there) reads a single batch."""
    overrides = dict(
        dataset=str(data_dir.resolve()),
        out_dir=str(out_dir.resolve()),
        wandb_log=False,
        max_iters=steps - 1,
        lr_decay_iters=steps,
        warmup_iters=max(1, steps // 10),
        eval_interval=10**9,
        eval_iters=1,
        log_interval=1,
        always_save_checkpoint=False,
        batch_size=shape.batch,
        block_size=shape.seq_len,
        gradient_accumulation_steps=1,
        n_layer=shape.n_layers,
        n_head=shape.n_heads,
        n_embd=shape.d_model,
        dropout=0.0,
        bias=False,
        device=shape.device,
        dtype="bfloat16" if shape.device == "cuda" else "float32",
        compile=shape.compile,
    )
    return [sys.executable, "train.py", "config/train_gpt2.py"] + [f"--{k}={v}" for k, v in overrides.items()]


def recur_command(
    shape: Shape, steps: int, paths: dict[str, Path], out_dir: Path, name: str, r: int | None
) -> list[str]:
    """recur's train.py (the product path) on the packed copy of the same tokens. r=None: the baseline
    variant; else the recurrent variant at a fixed depth (sampling fixed, constant schedules, k = r)."""
    smoke = shape.device == "cpu"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--model_size",
        "tiny" if smoke else "125M",
        "--variant",
        "baseline" if r is None else "recurrent",
        "--compile",
        str(shape.compile).lower(),
        "--run_name",
        name,
        "--out_dir",
        str(out_dir),
        "--steps",
        str(steps),
        "--device",
        shape.device,
        "--dtype",
        "bf16" if shape.device == "cuda" else "fp32",
        "--data.path",
        str(paths["train"]),
        "--data.val_path",
        str(paths["val"]),
        "--data.tasks",
        "[]",
        "--data.global_batch_size",
        str(shape.batch),
        "--model.dropout",
        "0.0",
        "--checkpoint.interval",
        "0",
        "--checkpoint.save_final",
        "false",
        "--log.interval",
        "1" if smoke else "10",
        "--log.plot_interval",
        "1000000",
        "--eval.depths",
        "[1, 4]",
        "--eval.num_samples",
        "8",
    ]
    if smoke:
        cmd += [
            "--model.d_model",
            str(shape.d_model),
            "--model.n_layers",
            str(shape.n_layers),
            "--model.n_heads",
            str(shape.n_heads),
            "--model.max_seq_len",
            str(shape.seq_len),
            "--model.vocab_size",
            str(shape.model_vocab),
        ]
    if r is not None:
        cmd += [
            "--recurrence.sampling",
            "fixed",
            "--recurrence.mean_recurrence",
            str(r),
            "--recurrence.backprop_depth",
            str(r),
            "--recurrence.mean_schedule",
            "constant",
            "--recurrence.backprop_schedule",
            "constant",
        ]
    return cmd


# ---------------------------------------------------------------- running and parsing
def run_logged(cmd: list[str], cwd: Path, log_stem: Path, timeout: int, env: dict[str, str]) -> tuple[str, str, float]:
    """Run one trainer with its stdout/stderr kept in log files; (stdout, stderr, wall seconds). A failure
    raises with the last lines of stderr, which name the cause."""
    began = time.perf_counter()
    with open(f"{log_stem}.stdout", "w") as out, open(f"{log_stem}.stderr", "w") as err:
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    stdout, stderr = Path(f"{log_stem}.stdout").read_text(), Path(f"{log_stem}.stderr").read_text()
    if rc != 0:
        tail = " | ".join(stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"exit {rc} after {time.perf_counter() - began:.0f}s ({log_stem}.stderr): {tail[-1500:]}")
    return stdout, stderr, time.perf_counter() - began


def parse_nanogpt_log(text: str) -> list[dict]:
    """nanoGPT's per-iteration lines, "iter N: loss X, time Y ms, mfu Z%" (its mfu: vs an A100's 312 TFLOP/s,
    a running average, -100 for the first iterations)."""
    return [
        {"step": int(m[1]), "loss": float(m[2]), "step_ms": float(m[3]), "mfu_pct_a100": float(m[4])}
        for m in NANOGPT_LINE.finditer(text)
    ]


def read_recur_metrics(run_dir: Path) -> list[dict]:
    """The per-step records train.py writes to <run>/metrics.jsonl (tokens_per_s, mfu, loss, r, k, ...)."""
    from recur.metrics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def count_recompiles(stderr: str) -> dict[str, int]:
    """Lines of TORCH_LOGS=recompiles output (each one recompilation of a compiled region), split at
    train.py's progress line of its last step: before it training (fixed r), after it the final evaluation
    (depths 1 and 4, no_grad). Both go to the same stderr stream, so the order is the order of events."""
    lines = stderr.splitlines()
    last = [i for i, line in enumerate(lines) if (m := PROGRESS_LINE.match(line)) and m[1] == m[2]]
    split = last[-1] if last else len(lines)
    count = lambda part: sum("Recompiling" in line for line in part)  # noqa: E731
    return {"training": count(lines[:split]), "evaluation": count(lines[split:])}


def steady(values: list[float], warmup: int) -> float | None:
    """Median after the warm-up steps (compile, allocator, cudnn autotune); None when nothing is left."""
    rest = [v for v in values[warmup:] if v is not None]
    return statistics.median(rest) if rest else None


def summarize_nanogpt(records: list[dict], shape: Shape, warmup: int) -> dict:
    step_ms = steady([r["step_ms"] for r in records], warmup)
    return {
        "steps_logged": len(records),
        "steps_timed": max(0, len(records) - warmup),
        "median_step_ms": step_ms,
        "tokens_per_s": shape.batch * shape.seq_len / (step_ms / 1e3) if step_ms else None,
        "reported_mfu_pct_vs_a100_312tflops": records[-1]["mfu_pct_a100"] if records else None,
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
    }


def summarize_recur(records: list[dict], warmup: int) -> dict:
    tokens_per_s = steady([r["tokens_per_s"] for r in records], warmup)
    tokens = records[0]["tokens"] if records else 0  # tokens of one step (the first record's running total)
    return {
        "steps_logged": len(records),
        "steps_timed": max(0, len(records) - warmup),
        "tokens_per_s": tokens_per_s,
        "median_step_ms": tokens / tokens_per_s * 1e3 if tokens_per_s else None,
        "mfu": steady([r["mfu"] for r in records], warmup),
        "r": sorted({r["r"] for r in records}),
        "k": sorted({r["k"] for r in records}),
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
    }


# ---------------------------------------------------------------- the four runs
def run_nanogpt(args: argparse.Namespace, paths: dict[str, Path]) -> dict:
    cmd = nanogpt_command(args.shape, args.steps, paths["nanogpt"], args.work_dir / "nanogpt_out")
    stdout, _, wall = run_logged(cmd, args.nanogpt_dir, args.work_dir / "nanogpt", args.timeout, child_env(ROOT))
    records = parse_nanogpt_log(stdout)
    if not records:
        raise RuntimeError(f"no 'iter N: loss ...' lines in {args.work_dir / 'nanogpt.stdout'}")
    return {
        "command": f"cd {shlex.quote(str(args.nanogpt_dir))} && {shlex.join(cmd)}",
        "wall_s": wall,
        **summarize_nanogpt(records, args.shape, args.warmup),
    }


def run_recur(args: argparse.Namespace, paths: dict[str, Path], name: str, r: int | None, steps: int) -> dict:
    runs = args.work_dir / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)  # train.py refuses to start a new run over an old one
    cmd = recur_command(args.shape, steps, paths, runs, name, r)
    env = child_env(ROOT)
    if not args.no_recompile_log:
        env["TORCH_LOGS"] = "recompiles"
    _, stderr, wall = run_logged(cmd, ROOT, args.work_dir / name, args.timeout, env)
    prefix = "" if args.no_recompile_log else "TORCH_LOGS=recompiles "
    return {
        "command": prefix + shlex.join(cmd),
        "wall_s": wall,
        "recompiles": None if args.no_recompile_log else count_recompiles(stderr),
        **summarize_recur(read_recur_metrics(runs / name), args.warmup),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def headline(runs: dict[str, dict]) -> dict:
    """The figures issue 17 asks for, from the runs that succeeded (None where one failed)."""
    get = lambda run, key: runs.get(run, {}).get(key)  # noqa: E731
    return {
        "recur_tokens_per_s": get("recur_baseline", "tokens_per_s"),
        "nanogpt_tokens_per_s": get("nanogpt", "tokens_per_s"),
        "ratio": ratio(get("recur_baseline", "tokens_per_s"), get("nanogpt", "tokens_per_s")),
        "recurrent_r1_tokens_per_s": get("recurrent_r1", "tokens_per_s"),
        "recurrent_r4_tokens_per_s": get("recurrent_r4", "tokens_per_s"),
        "recurrent_mfu_over_baseline_mfu_r1": ratio(get("recurrent_r1", "mfu"), get("recur_baseline", "mfu")),
        "recurrent_mfu_over_baseline_mfu_r4": ratio(get("recurrent_r4", "mfu"), get("recur_baseline", "mfu")),
        "recompiles": {name: run.get("recompiles") for name, run in runs.items() if name != "nanogpt"},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
    except ValueError as error:
        print(f"train_vs_nanogpt.py: error: {error}", file=sys.stderr)
        return 2
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    shape = args.shape
    rows = max(args.steps, args.r4_steps) * shape.batch + 64
    log(
        f"writing {rows} rows of {shape.seq_len + 1} synthetic tokens (nanoGPT .bin + recur parquet) in {args.work_dir}"
    )
    paths = write_datasets(args.work_dir, shape, rows)
    plan = {
        "nanogpt": lambda: run_nanogpt(args, paths),
        "recur_baseline": lambda: run_recur(args, paths, "recur_baseline", None, args.steps),
        "recurrent_r1": lambda: run_recur(args, paths, "recurrent_r1", 1, args.steps),
        "recurrent_r4": lambda: run_recur(args, paths, "recurrent_r4", 4, args.r4_steps),
    }
    runs: dict[str, dict] = {}
    for name, run in plan.items():
        log(f"{name}: running (logs: {args.work_dir / name}.std*)")
        try:  # one failing run must not cost the others' GPU time
            runs[name] = run()
            log(
                f"{name}: {runs[name]['tokens_per_s'] or 0:,.0f} tokens/s, {runs[name]['wall_s']:.0f}s wall"
                + (f", recompiles {runs[name]['recompiles']}" if runs[name].get("recompiles") is not None else "")
            )
        except RuntimeError as error:
            runs[name] = {"error": str(error)}
            log(f"{name}: FAILED: {error}")
    result = {
        **headline(runs),
        "environment": environment_line(),
        "smoke": args.smoke,
        "shape": {
            **shape.__dict__,
            "bias": False,
            "dropout": 0.0,
            "dtype": "bf16" if shape.device == "cuda" else "fp32",
        },
        "steps": {"baseline_and_r1": args.steps, "r4": args.r4_steps, "warmup_skipped": args.warmup},
        "script": shlex.join(["bench/train_vs_nanogpt.py"] + (sys.argv[1:] if argv is None else argv)),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    log(f"wrote {args.out}: ratio {result['ratio']}, r1 MFU/baseline {result['recurrent_mfu_over_baseline_mfu_r1']}")
    return 1 if any("error" in run for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
