"""Convert a local Hugging Face Llama / OLMo-2 checkpoint, or a recur `baseline` exported with
utils/export_checkpoint.py, into a recurrent model (prelude / block / coda).

    python utils/convert_hf.py --arch llama --model_path /models/TinyLlama-1.1B \
        --prelude_size 4 --start_index 10 --block_size 8 --coda_size 4 --out models/tinyllama-4-8-4

Layers [0, prelude_size) become the prelude, [start_index, start_index + block_size) the recurrent block
and the last coda_size layers the coda; the rest are dropped (utils/layer_analysis.py suggests a split).
The adapter starts as a pass-through, so at r = 1 the output equals the source model without the dropped
layers (`--adapter_init state`: the identity on the state with s_0 = the prelude output, the same at r = 1;
docs/recurrence.md, probe 9, compares the two). The output directory (model.safetensors + config.json + tokenizer files) loads with
`recur.hf_model.from_pretrained` and trains with `train.py --init_from <out>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recur.convert.hf import ARCHS, convert_to_dir
from recur.flops import count_params
from recur.hf_model import DTYPES


def build_parser(default_arch: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default=default_arch,
        help="source architecture; default: the model_type in the source config.json",
    )
    p.add_argument("--model_path", required=True, help="local Hugging Face model directory (no hub downloads)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--prelude_size", type=int, required=True)
    p.add_argument("--start_index", type=int, required=True)
    p.add_argument("--block_size", type=int, required=True)
    p.add_argument("--coda_size", type=int, required=True)
    p.add_argument("--default_num_steps", type=int, default=None, help="recurrence used when none is given")
    p.add_argument(
        "--adapter_init",
        choices=["passthrough", "state"],
        default="passthrough",
        help="the concat adapter's start: adapter([s, e]) = e (passthrough), or = s with s_0 = e (state)",
    )
    p.add_argument(
        "--init_state",
        choices=["random", "zeros", "input"],
        default=None,
        help="initial recurrent state (default: input with the state adapter, which needs it, else "
        "the ModelConfig default)",
    )
    p.add_argument(
        "--untie_embeddings",
        action="store_true",
        help="give a tied source an independent lm_head (a copy of the embedding)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage precision of the weights")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None, default_arch: str | None = None) -> int:
    args = build_parser(default_arch).parse_args(argv)
    chosen = (
        ("default_num_steps", args.default_num_steps),
        ("init_state", args.init_state),
        ("adapter_init", args.adapter_init),
    )
    overrides = {k: v for k, v in chosen if v is not None}
    if args.untie_embeddings:
        overrides["tie_embeddings"] = False
    try:
        model = convert_to_dir(
            args.model_path,
            args.out,
            args.prelude_size,
            args.start_index,
            args.block_size,
            args.coda_size,
            arch=args.arch,
            dtype=args.dtype,
            overwrite=args.overwrite,
            **overrides,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"convert_hf: {err}", file=sys.stderr)
        return 2
    cfg, params = model.cfg, count_params(model)
    print(
        f"[convert] {args.model_path} -> {args.out}: prelude {cfg.n_prelude}, recurrent block {cfg.n_core}, "
        f"coda {cfg.n_coda} layers; {params['total']:,} params "
        f"(adapter {params.get('adapter', 0):,}, {cfg.adapter_init})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
