"""Untie embedding and LM head of a local Hugging Face checkpoint (fair non-recurrent baselines).

    python utils/untie_embeddings.py --model_path /models/Llama-3.2-1B --out models/Llama-3.2-1B-untied

The head becomes a copy of the embedding and config.json gets tie_word_embeddings = false; the output
computes exactly what the input did, but the two matrices then train independently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recur.convert.untie import untie_hf_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="local Hugging Face model directory with tied embeddings")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        out = untie_hf_checkpoint(args.model_path, args.out, args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"untie_embeddings: {err}", file=sys.stderr)
        return 2
    print(f"[untie] {args.model_path} -> {out}: lm_head is now an independent copy of the embedding", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
