"""Export a training checkpoint (DCP of any world size, or DeepSpeed ZeRO) as a Hugging Face directory.

    python utils/export_checkpoint.py --checkpoint runs/<name>[/checkpoints/step_N] --out_dir exported/<name>

The directory (config.json, model.safetensors, generation_config.json, modeling_recur.py, tokenizer
files; see recur/hf_model.py) is the one model format: `eval_hub.py --checkpoint exported/<name>`,
`train.py --init_from exported/<name>`, the lm-eval adapter and
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` all load it. Runs in one process on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recur.parallel.export import export_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or checkpoint directory")
    parser.add_argument("--out_dir", required=True, type=Path, help="the Hugging Face directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out_dir if it exists")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"export_checkpoint.py: error: {error}", file=sys.stderr)
        return 2
    print(f"[export] {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
