#!/usr/bin/env python3
"""Depth-scaling experiment in one command: does a looped model use its depth?

    python scripts/depth_scaling.py --out_dir runs/depth_scaling [--size nano] [--steps 2500] [--tasks chain]
        [--arm NAME='train.py flags' ...] [--parallel 2] [--smoke] [train.py flags for every arm...]

Packs one dataset (train + held-out) from the generated tasks; trains every arm through `train.py` on it
with the same seed, steps and batch (default arms: `baseline` and `recurrent`, each with its default
recipe; `--arm` adds or replaces one, e.g. `--arm "prenorm=--variant recurrent --model.block_norm pre"`);
sweeps each final checkpoint with `utils/depth_sweep.py` at r = 1, 2, 4, ..., 64 on the training and OOD
difficulties; then writes under --out_dir:
    sweeps/sweep_<arm>_step_<N>.json   the project's sweep schema, one per arm
    depth_scaling.json / .md           loss vs depth, accuracy vs (depth × difficulty) with n and 95%
                                       intervals, chance levels, and the targets evaluated per looped arm
    loss_vs_depth.png, accuracy_vs_depth.png
`--retrofit P,B,C` adds the retrofitting recipe: once `baseline` has trained, its final checkpoint is exported
and looped (utils/convert_hf.py: layers 0..P-1 prelude, the next B the recurrent block, the last C coda; the
adapter starts as a pass-through, so r = 1 is the baseline), and two more arms train from it for
--retrofit_steps on the same data: `retrofit` (the looped model, --retrofit_flags on top of the recipe) and
its control `baseline_continued` (the baseline trained on just as long, fresh optimizer as well). The
report compares `retrofit` with `baseline_continued`, the other looped arms with `baseline`.
`--smoke` shrinks everything (tiny preset, a few steps, r ≤ 4) to check the pipeline on a CPU in ~1 min.
Unknown flags go to every train.py call (e.g. `--device cuda --compile true`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from recur.checkpoint import write_json_atomic
from recur.cli_common import child_env, one_line, run_cli
from recur.data.generated import recipe_changes
from recur.data.packing import pack_dataset
from recur.data.shard_writer import MANIFEST_NAME, write_atomic_bytes
from recur.data.tasks import get_task
from recur.data.validate import read_manifest
from recur.eval.depth_scaling import Arm, depth_report, plot_depth_scaling, report_markdown
from recur.eval.sweep import DEFAULT_DEPTHS
from recur.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARMS = {"baseline": "--variant baseline", "recurrent": "--variant recurrent"}
# The recipe of issue 14's experiment: r̄ ramps to 8 over the first half (1-sqrt), 4 iterations with grads;
# peak lr 3e-4: at 1e-3 and 2e-3 every nano sandwich arm collapsed to a constant prediction after a loss
# spike near the end of warmup (docs/recurrence.md), at 3e-4 none did.
RECIPE_FLAGS = [
    "--recurrence.mean_recurrence",
    "8",
    "--recurrence.backprop_depth",
    "4",
    "--recurrence.mean_schedule",
    "1-sqrt",
    "--recurrence.mean_warmup",
    "0.5",
    "--optim.schedule.lr",
    "3e-4",
]
# r̄ 4 with full backprop: the best retrofit arm of the recall probes (docs/recurrence.md, probes 7-9; r̄ 8 with
# k 4 learned slower).
RETROFIT_FLAGS = "--recurrence.mean_recurrence 4 --recurrence.backprop_depth 4"
RETROFIT, CONTROL = "retrofit", "baseline_continued"


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="depth_scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", required=True)
    p.add_argument("--size", default="nano")
    p.add_argument("--tasks", nargs="+", default=["chain"])
    # A task mixed in only to teach a skill (e.g. `copy`, which teaches the lookup that every chain hop
    # composes) need not be swept: long copy answers at r = 64 would cost more than the rest of the sweep.
    p.add_argument("--sweep_tasks", nargs="+", help="tasks the depth sweeps score (default: --tasks)")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--num_docs", type=int, default=300_000)
    p.add_argument("--depths", type=int, nargs="+", default=DEFAULT_DEPTHS)
    p.add_argument("--num_samples", type=int, default=256, help="problems per (task, difficulty, depth)")
    # The fp32 held-out loss dominates a sweep at large r (1,024 rows at r = 64: ~100 s with six sweeps on one GPU).
    p.add_argument("--max_rows", type=int, default=256, help="held-out rows scored per depth")
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="an arm and its train.py flags (repeatable; replaces a default arm of the same name)",
    )
    p.add_argument("--only", nargs="+", help="train/sweep only these arms (default: all)")
    p.add_argument("--parallel", type=int, default=1, help="arms trained at once (one GPU fits several nano runs)")
    p.add_argument(
        "--train_budget_s",
        type=float,
        help="preempt training (SIGTERM: checkpoint, exit 0) after this many seconds; sweeps use it",
    )
    p.add_argument(
        "--retrofit",
        metavar="P,B,C",
        type=loop_split,
        help="also loop the trained baseline into prelude P / block B / coda C layers and train it on",
    )
    p.add_argument("--retrofit_steps", type=int, help="steps of the retrofit arm and its control (default: --steps)")
    p.add_argument("--retrofit_flags", default=RETROFIT_FLAGS, help="train.py flags of the retrofit arm")
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized pipeline check")
    args, train_args = p.parse_known_args()
    if args.smoke:
        args.size, args.steps, args.batch_size, args.seq_len = "tiny", 12, 8, 256
        args.num_docs, args.depths, args.num_samples, args.max_rows = 600, [1, 2, 4], 8, 32
        train_args = ["--device", "cpu", *train_args]
    for name in [*args.tasks, *(args.sweep_tasks or [])]:
        get_task(name)  # an unknown name fails here, not after every arm has trained
    if args.retrofit_steps is None:
        args.retrofit_steps = args.steps
    for flag in ("steps", "batch_size", "num_docs", "num_samples", "parallel", "retrofit_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args, train_args


def loop_split(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or parts[1] < 1:
        raise argparse.ArgumentTypeError(f"expected prelude,block,coda layer counts (e.g. 1,4,1), got '{text}'")
    return parts


def arm_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    arms = dict(DEFAULT_ARMS)
    for item in args.arm:
        name, sep, flags = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--arm: expected NAME='train.py flags' with NAME a plain identifier, got '{item}'")
        arms[name] = flags
    second = {RETROFIT, CONTROL} if args.retrofit else set()
    if second & set(arms):
        raise ValueError(f"--arm: the names {RETROFIT} and {CONTROL} are the --retrofit arms")
    if args.only:
        unknown = set(args.only) - set(arms) - second
        if unknown:
            known = ", ".join([*arms, *sorted(second)])
            raise ValueError(f"--only: unknown arm(s) {', '.join(sorted(unknown))}; known: {known}")
        arms = {k: v for k, v in arms.items() if k in args.only}
    return {name: shlex.split(flags) for name, flags in arms.items()}


def retrofit_arms(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """Export the finished baseline, loop it and return the two arms that start from them: the looped model
    and the baseline trained on. Made once: a rerun reuses them when they came from the same checkpoint and
    split (recorded in exported/retrofit.json) and refuses otherwise, as prepare_data refuses other data."""
    from recur.convert.hf import convert_to_dir
    from recur.eval.load import resolve_checkpoint
    from recur.hf_model import read_config_json
    from recur.parallel.export import export_checkpoint

    if not RunDir(out / "baseline").summary.exists():
        raise ValueError("the baseline arm has not finished training (no summary.json); rerun to finish it first")
    made = out / "exported"
    exported, looped, record_file = made / "baseline", made / "retrofit", made / "retrofit.json"
    source = resolve_checkpoint(out / "baseline")
    record = {"baseline_checkpoint": source.name, "split": list(args.retrofit)}
    if record_file.exists():
        recorded = json.loads(record_file.read_text())
        if recorded != record:
            raise ValueError(f"--retrofit: {made} was made from {recorded}, not {record}; use a new --out_dir")
    else:
        shutil.rmtree(made, ignore_errors=True)  # what an interrupted earlier attempt left
        export_checkpoint(source, exported)
        prelude, block, coda = args.retrofit
        convert_to_dir(exported, looped, prelude, prelude, block, coda)
        write_json_atomic(record_file, record)
        layers = read_config_json(exported)["n_layers"]
        print(
            f"[depth_scaling] looped the baseline ({source.name}, {layers} layers) into {prelude}/{block}/{coda}: "
            f"{looped}",
            file=sys.stderr,
            flush=True,
        )
    arms = {
        RETROFIT: ["--variant", "recurrent", "--init_from", str(looped), *shlex.split(args.retrofit_flags)],
        CONTROL: ["--variant", "baseline", "--init_from", str(exported)],
    }
    return {name: flags for name, flags in arms.items() if not args.only or name in args.only}


def prepare_data(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """One packed train + held-out pair shared by every arm (same tokens, same order). A rerun into the same
    --out_dir reuses it and the arms already trained on it, so other data settings are refused, not rebuilt:
    the finished arms would then be compared with arms trained on different data."""
    train, val = out / "data" / "train", out / "data" / "val"
    recipe = {"--tasks": list(args.tasks), "--seq_len": args.seq_len, "--num_docs": args.num_docs}
    for path, docs, seed in ((train, args.num_docs, 0), (val, max(512, args.num_docs // 50), 1)):
        if (path / MANIFEST_NAME).exists():
            recorded = read_manifest(path).get("recipe")
            if recorded != recipe:
                raise ValueError(
                    f"--out_dir {out}: its data was generated with other settings "
                    f"({recipe_changes(recorded, recipe)}); use a new --out_dir"
                )
            continue
        pack_dataset(
            path,
            tokenizer="byte",
            seq_len=args.seq_len,
            tasks=args.tasks,
            num_docs=docs,
            seed=seed,
            packing="bfd",
            mask_non_assistant=True,
            overwrite=True,
            recipe=recipe,
        )
    return train, val


def train_command(
    name: str,
    flags: list[str],
    args: argparse.Namespace,
    out: Path,
    data: tuple[Path, Path],
    train_args: list[str],
    steps: int,
) -> list[str]:
    warmup = max(1, min(100, steps // 10))
    # An arm stopped by --train_budget_s (or a crash) continues from its checkpoint when the command is rerun.
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--model_size",
        args.size,
        "--model.vocab_size",
        "320",
        "--model.max_seq_len",
        str(args.seq_len),
        "--steps",
        str(steps),
        "--out_dir",
        str(out),
        "--run_name",
        name,
        "--checkpoint.resume",
        "auto",
        "--data.path",
        str(data[0]),
        "--data.val_path",
        str(data[1]),
        "--data.global_batch_size",
        str(args.batch_size),
        "--data.tasks",
        json.dumps(args.tasks),
        "--optim.schedule.warmup_steps",
        str(warmup),
        "--checkpoint.interval",
        str(max(1, steps // 10)),
        "--eval.depths",
        "[1]",
        "--eval.num_samples",
        "8",
        "--log.interval",
        str(max(1, steps // 25)),
        *RECIPE_FLAGS,
        *train_args,
        *flags,
    ]


def sweep_command(name: str, args: argparse.Namespace, out: Path, val: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "utils" / "depth_sweep.py"),
        "--checkpoint",
        str(out / name),
        "--out_dir",
        str(out / "sweeps"),
        "--latest_only",
        "--ood",
        "--tasks",
        *(args.sweep_tasks or args.tasks),
        "--depths",
        *map(str, args.depths),
        "--num_samples",
        str(args.num_samples),
        "--max_rows",
        str(args.max_rows),
        "--data",
        str(val),
        "--batch_size",
        "64",
    ]


def training_status(run_dir: Path) -> str:
    """'step N | loss L | T tok/s' from the newest metrics line of a run, or 'starting'."""
    metrics = RunDir(run_dir).metrics
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    try:
        last = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):  # not started, or a line being written
        return "starting"
    spread = f" | spread {last['stat/state_spread']:.3f}" if "stat/state_spread" in last else ""
    return f"step {last['step'] + 1} | loss {last['loss']:.4f} | {last['tokens_per_s']:,.0f} tok/s{spread}"


def run_all(
    commands: dict[str, list[str]],
    parallel: int,
    logs: Path,
    budget_s: float | None = None,
    status: Callable[[str], str] | None = None,
    status_every_s: float = 30.0,
) -> list[str]:
    """Run the commands, `parallel` at a time, each logging to logs/<name>.log; returns the names that failed
    (one arm failing does not stop the others). After `budget_s` seconds the ones still running get
    SIGTERM, which train.py answers with a checkpoint and exit 0. Every `status_every_s` a line per running
    command shows `status(name)`."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(commands.items()), {}, []
    env = child_env(ROOT)
    deadline = time.monotonic() + budget_s if budget_s else None
    next_status = time.monotonic() + status_every_s
    while pending or running:
        if status is not None and running and time.monotonic() > next_status:
            for name in running:
                print(f"[depth_scaling] {name}: {status(name)}", file=sys.stderr, flush=True)
            next_status = time.monotonic() + status_every_s
        if deadline is not None and time.monotonic() > deadline:
            for name, (proc, _) in running.items():
                print(f"[depth_scaling] {name}: training budget spent, preempting", file=sys.stderr, flush=True)
                proc.terminate()
            pending, deadline = [], None
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            print(f"[depth_scaling] {name}: {shlex.join(cmd[1:])}", file=sys.stderr, flush=True)
            log = open(logs / f"{name}.log", "w")
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode:
                tail = "\n".join((logs / f"{name}.log").read_text().splitlines()[-5:])
                print(
                    f"[depth_scaling] {name}: FAILED (exit {proc.returncode}), log {logs / name}.log:\n{tail}",
                    file=sys.stderr,
                    flush=True,
                )
                failed.append(name)
            else:
                print(f"[depth_scaling] {name}: done", file=sys.stderr, flush=True)
        time.sleep(0.5)
    return failed


def train_arms(
    arms: dict[str, list[str]],
    args: argparse.Namespace,
    out: Path,
    data: tuple[Path, Path],
    train_args: list[str],
    steps: int,
    deadline: float | None,
) -> list[str]:
    """Train the arms not yet finished (a rerun skips those with a summary.json) until `deadline` (monotonic
    seconds, shared by both phases of --retrofit); returns the failed ones."""
    todo = {name: flags for name, flags in arms.items() if not RunDir(out / name).summary.exists()}
    if not todo:
        return []
    budget = None if deadline is None else deadline - time.monotonic()
    if budget is not None and budget <= 0:
        print(f"[depth_scaling] {', '.join(todo)}: training budget spent; a rerun trains them", file=sys.stderr)
        return list(todo)
    return run_all(
        {n: train_command(n, f, args, out, data, train_args, steps) for n, f in todo.items()},
        args.parallel,
        out / "logs",
        budget,
        lambda name: training_status(out / name),
    )


def main() -> int:
    args, train_args = parse_args()
    out = Path(args.out_dir)
    arms = arm_flags(args)
    data = prepare_data(args, out)
    deadline = time.monotonic() + args.train_budget_s if args.train_budget_s else None
    failed = train_arms(arms, args, out, data, train_args, args.steps, deadline)
    if args.retrofit:
        try:
            second = retrofit_arms(args, out)
        except (ValueError, FileNotFoundError) as error:  # the other arms are still swept and reported
            print(f"[depth_scaling] {RETROFIT}, {CONTROL}: not trained: {one_line(error)}", file=sys.stderr)
            failed += [RETROFIT, CONTROL]
        else:
            failed += train_arms(second, args, out, data, train_args, args.retrofit_steps, deadline)
            arms.update(second)
    trained = [n for n in arms if n not in failed]
    failed += run_all(
        {f"sweep_{n}": sweep_command(n, args, out, data[1]) for n in trained}, args.parallel, out / "logs"
    )
    loaded = []
    for name in arms:
        sweeps = sorted((out / "sweeps").glob(f"sweep_{name}_step_*.json"))
        if name not in failed and f"sweep_{name}" not in failed and sweeps:
            loaded.append(Arm(name, out / name, json.loads(sweeps[-1].read_text())))
    if not loaded:
        print(f"depth_scaling.py: error: no arm trained and swept; failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    controls = {RETROFIT: CONTROL} if args.retrofit else None
    report = depth_report(loaded, baseline="baseline" if "baseline" in arms else None, controls=controls)
    report["command"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    report["failed"] = failed
    write_json_atomic(out / "depth_scaling.json", report)
    markdown = report_markdown(report)
    write_atomic_bytes(out / "depth_scaling.md", markdown.encode())
    plot_depth_scaling(report, out)
    print(markdown)
    print(f"wrote {out}/depth_scaling.json, depth_scaling.md, loss_vs_depth.png, accuracy_vs_depth.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli("depth_scaling.py", main))
