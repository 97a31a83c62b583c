"""Export a training checkpoint (DCP of any world size, or DeepSpeed ZeRO) to single-device files.

    python utils/export_checkpoint.py --checkpoint runs/<name>[/checkpoints/step_N] --out_dir exported/<name>

Writes model.pt, model.safetensors and config.json (see recur/parallel/export.py); evaluate with
`--checkpoint exported/<name>/model.safetensors`. Runs in one process on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a plain script, sys.path[0] is utils/; the repo root holds the (uninstalled) package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recur.parallel.export import export_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory (newest checkpoint) or checkpoint directory")
    parser.add_argument("--out_dir", required=True, type=Path, help="where model.pt / model.safetensors / config.json go")
    args = parser.parse_args(argv)
    try:
        files = export_checkpoint(args.checkpoint, args.out_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"export_checkpoint.py: error: {error}", file=sys.stderr)
        return 2
    for kind, path in files.items():
        print(f"[export] {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
