#!/usr/bin/env python
"""How long a recur model sits on the associative-recall plateau, per answer format (issue 14 research tool).

Every hop of the `chain` task is one content-addressed lookup ("?W" -> find "W=..." -> read the value). A
model that has not learned that lookup predicts "one of the root digits" (chance 1/pairs) on every level,
which is where every nano arm of `scripts/depth_scaling.py` stayed. This probe trains a recur model directly
on freshly drawn chain prompts (no packing, no train.py) and prints exact-match accuracy of the root digit
of the full-length query every --eval_interval steps, so the plateau and its exit are visible:

    python scripts/recall_probe.py --pairs 3 --format chat  --d_model 128 --n_layers 2 --lr 3e-3
    python scripts/recall_probe.py --pairs 3 --format echo  ...   # answer repeats the name: "W=9"
    python scripts/recall_probe.py --pairs 3 --format direct ...  # no template tokens before the answer

Formats: `chat` is the product's byte chat template (answer after <|end|><|assistant|>); `echo` keeps the
template but the answer first repeats the queried name and "=", so the digit is predicted right after its
key; `direct` drops the template tokens between query and answer. Results: docs/recurrence.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import random
import string
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy
import torch
import torch.nn.functional as F

from recur.data.tasks import binding_chains, spread_statements
from recur.data.tokenizer import ByteTokenizer
from recur.models import create_model
from recur.models.config import LOOPED_VARIANTS, ModelConfig
from recur.models.layers import Rotary, apply_rotary
from recur.parallel.compile import compile_model
from recur.recurrence import RecurrenceConfig, RecurrenceSampler

TOKENIZER = ByteTokenizer()
FORMATS = ("chat", "echo", "direct")


class RopeBlock(torch.nn.Module):
    """`--positions rope` for the reference GPT: its pre-norm GELU block with recur's rotary embedding on q, k."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(d_model, bias=False), torch.nn.LayerNorm(d_model, bias=False)
        self.qkv, self.out = (
            torch.nn.Linear(d_model, 3 * d_model, bias=False),
            torch.nn.Linear(d_model, d_model, bias=False),
        )
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d_model, 4 * d_model, bias=False),
            torch.nn.GELU(),
            torch.nn.Linear(4 * d_model, d_model, bias=False),
        )

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + self.out(att.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.norm2(h))


class ReferenceGPT(torch.nn.Module):
    """The control arm (`--variant reference_gpt`): a GPT-2-style decoder in plain PyTorch — learned absolute
    positions, pre-norm, GELU MLP, untied head, PyTorch's default init. It leaves the 2-pair plateau in ~2k
    CPU steps where recur's Llama-style model does not (docs/recurrence.md, probe 3): what differs is the lead."""

    def __init__(
        self, vocab: int, d_model: int, n_layers: int, n_heads: int = 4, max_len: int = 1024, positions: str = "learned"
    ) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, d_model)
        # "learned" (GPT-2), "rope" (recur's rotary in a GELU block) or "none" (NoPE: the causal mask only)
        self.positions = torch.nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.rotary = (
            Rotary(ModelConfig(d_model=d_model, n_heads=n_heads, max_seq_len=max_len).resolved())
            if positions == "rope"
            else None
        )
        if self.rotary is not None:
            self.blocks = torch.nn.ModuleList(RopeBlock(d_model, n_heads) for _ in range(n_layers))
        else:
            self.blocks = torch.nn.ModuleList(
                torch.nn.TransformerEncoderLayer(
                    d_model,
                    n_heads,
                    4 * d_model,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                    bias=False,
                )
                for _ in range(n_layers)
            )
        self.norm, self.head = torch.nn.RMSNorm(d_model), torch.nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        h = self.tokens(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        if self.positions is not None:
            h = h + self.positions(positions)
        if self.rotary is not None:
            cos, sin = self.rotary(positions)
            for block in self.blocks:
                h = block(h, cos, sin)
        else:
            causal = torch.nn.Transformer.generate_square_subsequent_mask(ids.shape[1], device=ids.device)
            for block in self.blocks:
                h = block(h, src_mask=causal, is_causal=True)
        return SimpleNamespace(logits=self.head(self.norm(h)))


def chain_document(
    rng: random.Random,
    pairs: int,
    hops: int,
    queries: int,
    fmt: str,
    max_offset: int = 0,
    pad_statements: int = 0,
    span: tuple[int, int] = (0, 0),
) -> tuple[list[int], list[int]]:
    """`pairs` shuffled binding chains with distinct root digits, then `queries` questions (the first asks for
    the variable `hops` hops from its root, the rest any variable 0..hops hops deep) -> (ids, loss mask).
    Every chain is `hops` hops long unless `span` = (lo, hi) draws a longer length from lo..hi (never below
    `hops`): with hi = twice the training hops, a training prompt is as long as a test prompt of twice the
    hops, so a deeper question is not also a longer prompt, and the extra statements are real distractors.
    0 to `max_offset` leading spaces shift every statement, so absolute positions no longer name a statement.
    `pad_statements` spreads spaces at random between the statements until they fill as many tokens as that
    many statements (the same aim as `span`, by padding)."""
    lo, hi = max(hops, span[0]), max(hops, span[1])
    length = rng.randint(lo, hi) if hi > lo else lo  # no draw without a span: earlier probes' data stays as it was
    bound = binding_chains(rng, pairs, length)
    rng.shuffle(bound.statements)
    text = spread_statements(rng, bound.statements, pad_statements * (len(bound.statements[0]) + 1) - 1)
    t = TOKENIZER
    ids = [t.bos_id, t.role_ids["user"]] + t.encode("chain " + " " * rng.randint(0, max_offset) + text)
    mask = [0] * len(ids)
    for q in range(queries):
        c = rng.randrange(pairs)
        name = bound.variable(c, hops if q == 0 else rng.randrange(hops + 1))
        question = t.encode(f" ?{name}") + ([] if fmt == "direct" else [t.end_id, t.role_ids["assistant"]])
        answer = t.encode((f"{name}=" if fmt == "echo" else "") + bound.roots[c]) + [t.end_id]
        ids += question + answer
        mask += [0] * len(question) + [1] * len(answer)
        if fmt != "direct" and q + 1 < queries:
            ids.append(t.role_ids["user"])
            mask.append(0)
    return ids, mask


def copy_document(rng: random.Random, length: int) -> tuple[list[int], list[int]]:
    """A random string of names, digits and '=' repeated once, loss on the repeat: the plain induction pattern
    ("find where the current token was before, emit what followed it") that every chain lookup composes."""
    t = TOKENIZER
    text = "".join(rng.choice(string.ascii_letters + string.digits + "= ") for _ in range(length))
    prompt, answer = [t.bos_id, t.role_ids["user"]] + t.encode("copy " + text + " ?"), t.encode(text) + [t.end_id]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def batch(
    rng: random.Random,
    args: argparse.Namespace,
    rows: int,
    queries: int,
    hops: int | None,
    device: str,
    copy_fraction: float = 0.0,
    multiple: int = 1,
):
    """`rows` documents padded to a common width (rounded up to `multiple`, so a compiled model sees few shapes)."""
    docs = [
        copy_document(rng, rng.randint(8, args.copy_length))
        if rng.random() < copy_fraction
        else chain_document(
            rng,
            args.pairs,
            rng.randint(0, args.max_hops) if hops is None else hops,
            queries,
            args.format,
            args.max_offset,
            args.pad_statements,
            args.span,
        )
        for _ in range(rows)
    ]
    width = -(-max(len(ids) for ids, _ in docs) // multiple) * multiple
    x = torch.full((rows, width), TOKENIZER.pad_id, dtype=torch.long)
    m = torch.zeros(rows, width)
    for i, (ids, mask) in enumerate(docs):
        x[i, : len(ids)], m[i, : len(mask)] = torch.tensor(ids), torch.tensor(mask, dtype=torch.float)
    return x.to(device), m.to(device)


def training_batch(args: argparse.Namespace, step: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Step `step`'s batch, drawn from its own seed: worker processes can build it ahead of the GPU and a
    resumed run sees the same data without carrying a generator state."""
    x, m = batch(
        random.Random(args.seed * 1_000_003 + step),
        args,
        args.batch_size,
        args.queries,
        None,
        "cpu",
        args.copy_fraction,
        multiple=32,
    )
    return x.numpy(), m.numpy()  # plain pickles: tensors cross processes as file descriptors, which ran out


def retrofit(model: torch.nn.Module, baseline: dict[str, torch.Tensor]) -> None:
    """Load a baseline's weights into a looped model of the same unique layers: layer i goes to the prelude,
    core or coda in order, and everything outside the layers (embeddings, final norm, head) as is."""
    sections = [f"{name}.{i}" for name in ("prelude", "core", "coda") for i in range(len(getattr(model, name)))]
    mapped = {}
    for key, value in baseline.items():
        if key.startswith("layers."):
            index, rest = key[len("layers.") :].split(".", 1)
            key = f"{sections[int(index)]}.{rest}"
        mapped[key] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) - {"adapter.weight", "state_norm.weight"}:  # new in the looped model
        sys.exit(f"--retrofit_from: layers do not match the model (missing {missing}, unexpected {unexpected})")


def model_overrides(pairs: list[str]) -> dict[str, object]:
    """`--set` FIELD=VALUE pairs as ModelConfig keywords; values are JSON (1, true, 0.5) or plain strings."""
    overrides = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--set: expected FIELD=VALUE, got '{pair}'")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=FORMATS, default="chat")
    p.add_argument("--pairs", type=int, default=3, help="chains per prompt (chance = 1/pairs)")
    p.add_argument("--max_hops", type=int, default=0, help="training draws hops from 0..max_hops; eval asks max_hops")
    p.add_argument("--max_offset", type=int, default=0, help="up to this many leading spaces per prompt")
    p.add_argument(
        "--pad_statements", type=int, default=0, help="spaces between statements fill this many statements' length"
    )
    p.add_argument(
        "--span",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("LO", "HI"),
        help="chains are LO..HI hops long (at least the question's hops), in training and evaluation alike",
    )
    p.add_argument(
        "--copy_fraction",
        type=float,
        default=0.0,
        help="share of training rows that are copy documents (a random string, then its repeat)",
    )
    p.add_argument("--copy_length", type=int, default=48, help="copy strings draw 8..copy_length characters")
    p.add_argument("--queries", type=int, default=8, help="questions per training prompt")
    p.add_argument(
        "--variant",
        default="baseline",
        help="a recur variant, reference_gpt (the control arm) or hf_llama (transformers' Llama)",
    )
    p.add_argument("--mean_recurrence", type=int, default=4, help="looped variants: r̄ of the sampled depth")
    p.add_argument("--backprop_depth", type=int, default=4, help="looped variants: iterations with gradients")
    p.add_argument(
        "--eval_hops", type=int, nargs="+", help="final grid: hop counts to score (default 0..max_hops and 2x max_hops)"
    )
    p.add_argument(
        "--eval_depths",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32],
        help="final grid: recurrence depths to score (looped variants)",
    )
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--n_layers", type=int, default=2)
    p.add_argument("--init_std", type=float, default=0.02, help="recur's weight init std (ModelConfig.init_std)")
    p.add_argument("--untied", action="store_true", help="separate input embedding and output head")
    p.add_argument(
        "--positions",
        choices=("learned", "rope", "none"),
        default="learned",
        help="reference_gpt's positions: learned (GPT-2), rope (recur's rotary), none (NoPE)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--time_limit_s", type=float, help="stop after this many seconds")
    p.add_argument("--eval_interval", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="append the result as one JSON line")
    p.add_argument(
        "--block_norm",
        choices=("pre", "post", "sandwich"),
        help="recur variants: block norm placement (default: the variant's)",
    )
    p.add_argument(
        "--retrofit_from",
        type=Path,
        help="a --checkpoint of a trained recur baseline: a recurrent model starts from its layers "
        "(first | middle | last n_coda as prelude | core | coda, passthrough adapter)",
    )
    p.add_argument(
        "--adapter_init",
        choices=("passthrough", "state"),
        default="passthrough",
        help="--retrofit_from: the adapter's start (`state` also starts the state as the prelude output, "
        "so the core iterates on its own output)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="recur variants: ModelConfig overrides, e.g. n_prelude=1 n_core=1 n_coda=1 state_norm=true",
    )
    p.add_argument(
        "--single_pass_fraction",
        type=float,
        default=0.0,
        help="looped variants: train at r = 1 for this fraction of the steps first (the retrofit in one run)",
    )
    p.add_argument("--compile", action="store_true", help="recur variants: torch.compile every block")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--data_workers", type=int, default=2, help="processes drawing training batches ahead")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="resume from this file if it exists and save to it at the end (chains device calls)",
    )
    args = p.parse_args()
    args.eval_hops = args.eval_hops or sorted({*range(args.max_hops + 1), 2 * args.max_hops})
    most_hops = max(args.max_hops, *args.eval_hops, args.span[1])
    if args.pairs < 1 or args.pairs * (most_hops + 1) > len(string.ascii_letters) or args.pairs > 10:
        p.error(f"--pairs {args.pairs} x (hops {most_hops} + 1) must fit 52 names and 10 root digits")
    torch.manual_seed(args.seed)
    eval_rng = random.Random(args.seed + 1)
    if args.variant == "reference_gpt":
        model = ReferenceGPT(TOKENIZER.vocab_size, args.d_model, args.n_layers, positions=args.positions).to(
            args.device
        )
    elif args.variant == "hf_llama":  # transformers' Llama of recur's shape: is the plateau the architecture's?
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=TOKENIZER.vocab_size,
                hidden_size=args.d_model,
                intermediate_size=-(-8 * args.d_model // 192) * 64,
                num_hidden_layers=args.n_layers,
                num_attention_heads=4,
                max_position_embeddings=1024,
                initializer_range=args.init_std,
                tie_word_embeddings=not args.untied,
            )
        ).to(args.device)
    else:
        extra = {"block_norm": args.block_norm} if args.block_norm else {}
        if args.retrofit_from:  # the retrofitting paper's start: r = 1 reproduces the baseline
            extra.update(
                block_norm=args.block_norm or "pre",
                adapter_init=args.adapter_init,
                **({"init_state": "input"} if args.adapter_init == "state" else {}),
            )
        extra.update(model_overrides(args.set))
        model = create_model(
            "tiny",
            variant=args.variant,
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=4,
            vocab_size=TOKENIZER.vocab_size,
            max_seq_len=1024,
            init_std=args.init_std,
            tie_embeddings=not args.untied,
            **extra,
        ).to(args.device)
        if args.retrofit_from:
            retrofit(model, torch.load(args.retrofit_from, map_location=args.device, weights_only=False)["model"])
    if args.compile and args.variant not in ("reference_gpt", "hf_llama"):
        compile_model(model)
    autocast = torch.autocast("cuda", torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    looped = args.variant in LOOPED_VARIANTS
    sampler = RecurrenceSampler(
        RecurrenceConfig(
            mean_recurrence=args.mean_recurrence,
            backprop_depth=args.backprop_depth,
            single_pass_fraction=args.single_pass_fraction,
            seed=args.seed,
        ),
        args.steps,
    )
    eval_sets = {hops: batch(eval_rng, args, 512, 1, hops, args.device) for hops in args.eval_hops}

    def score(hops: int, depth: int | None) -> float:
        """Exact match of the root digit on 512 fresh prompts of `hops` hops at recurrence `depth`."""
        x, m = eval_sets[hops]
        digits = (m[:, 1:] > 0) & (x[:, 1:] >= ord("0")) & (x[:, 1:] <= ord("9"))
        model.eval()  # looped models start from their fixed evaluation state, not training noise
        with torch.no_grad(), autocast:
            kwargs = {"num_steps": depth} if looped else {}
            predicted = model(x[:, :-1], **kwargs).logits.argmax(-1)
        model.train()
        return (predicted[digits] == x[:, 1:][digits]).float().mean().item()

    start, accuracy, first_090, first_step = time.time(), 0.0, None, 1
    if args.checkpoint and args.checkpoint.exists():
        saved = torch.load(args.checkpoint, map_location=args.device, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"].cpu())  # map_location moved it to the device
        if saved["cuda_rng"]:  # the looped models' initial-state noise is drawn on the device
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda_rng"]])
        first_step, first_090 = saved["step"] + 1, saved["first_090"]
        print(f"resumed from {args.checkpoint} at step {saved['step']}", flush=True)
    step = first_step - 1
    pool = multiprocessing.get_context("spawn").Pool(args.data_workers) if args.data_workers else None
    steps = range(first_step, args.steps + 1)
    make = functools.partial(training_batch, args)
    batches = pool.imap(make, steps, chunksize=4) if pool else map(make, steps)
    for step, (x, m) in zip(steps, batches):
        if args.time_limit_s is not None and time.time() - start > args.time_limit_s:
            step -= 1  # this step did not run
            break
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 100)
        x, m = torch.from_numpy(x).to(args.device), torch.from_numpy(m).to(args.device)
        depth = sampler(step)
        with autocast:
            logits = (
                model(x[:, :-1], num_steps=(depth.no_grad_steps, depth.grad_steps)).logits
                if looped
                else model(x[:, :-1]).logits
            )
        losses = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="none")
        loss = (losses * m[:, 1:].flatten()).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_interval == 0:
            accuracy = score(args.max_hops, args.mean_recurrence if looped else None)
            first_090 = first_090 or (step if accuracy >= 0.9 else None)
            print(
                f"step {step} loss {loss.item():.3f} acc {accuracy:.3f} (n=512, chance {1 / args.pairs:.2f}) "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    if pool:
        pool.terminate()
    if args.checkpoint:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "first_090": first_090,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            args.checkpoint.with_suffix(".tmp"),
        )
        args.checkpoint.with_suffix(".tmp").replace(args.checkpoint)
    depths = args.eval_depths if looped else [None]
    grid = {str(hops): {str(d or "-"): round(score(hops, d), 4) for d in depths} for hops in args.eval_hops}
    for hops, row in grid.items():
        print(f"hops {hops}: " + " ".join(f"r={d} {a:.3f}" for d, a in row.items()), flush=True)
    result = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "steps_run": step,
        "accuracy": accuracy,
        "first_step_acc_0.9": first_090,
        "seconds": round(time.time() - start, 1),
        "grid": grid,
    }
    print(json.dumps(result))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
