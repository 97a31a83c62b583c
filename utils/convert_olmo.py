"""Convert a local Hugging Face OLMo-2 checkpoint: `utils/convert_hf.py --arch olmo2` (see that file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_hf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_arch="olmo2"))
